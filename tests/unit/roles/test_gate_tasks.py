"""The agent role's wait for the engines and its check of their gates, run by real Ansible on this
machine against status documents as the agent writes them: the wait goes on while a gate is due or
running, and a failed gate fails the install naming the engine, the check and what serves instead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
TASKS = yaml.safe_load((ROOT / "roles" / "aiinfra_agent" / "tasks" / "service.yml").read_text())
IDENTITY = {"model": "a" * 64, "program": "vllm 0.32.0", "args": "b" * 64}
BEFORE = {"model": "c" * 64, "program": "vllm 0.32.0", "args": "d" * 64}


def task(name: str) -> dict:
    (found,) = [t for t in TASKS if t["name"] == name]
    return found


def engine(phase: str, gate: dict | None) -> dict:
    return {"phase": phase, "desired": True, "last_error": None, "gate": gate}


def play(tmp_path: Path, report: dict) -> subprocess.CompletedProcess[str]:
    """The wait's condition (as an assert on one status) and the gate check, on REPORT."""
    wait = task("Wait for the default profile's engines to be ready")
    tasks = [
        {"name": "The wait is over", "ansible.builtin.assert": {"that": wait["until"], "quiet": True},
         "vars": wait["vars"] | {"aiinfra_agent_status": {"rc": 0, "stdout": json.dumps(report)}},
         "ignore_errors": True},
        {"name": "Report", "ansible.builtin.set_fact": {"aiinfra_agent_report": report}},
        {k: v for k, v in task("Check that every change passed its gate").items() if k != "when"},
    ]  # fmt: skip
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    ansible = Path(sys.executable).with_name("ansible-playbook")
    return subprocess.run([str(ansible), "-i", "localhost,", "-c", "local", str(playbook)], capture_output=True,
                          text=True, check=False, cwd=tmp_path)  # fmt: skip


WAITS = [("ready", "due", True), ("ready", "gating", True), ("starting", "failed", True), ("ready", "passed", False)]


@pytest.mark.parametrize(("phase", "state", "waits"), WAITS)
def test_the_wait_goes_on_while_a_gate_is_due_or_running(tmp_path, phase, state, waits):
    gate = {"state": state, "identity": IDENTITY, "check": "golden prompt 1: no answer", "serving": BEFORE}
    proc = play(tmp_path, {"engines": {"qwen7b": engine(phase, gate)}})
    assert ("...ignoring" in proc.stdout) == waits, proc.stdout


def test_a_failed_gate_fails_the_install_naming_the_engine_the_check_and_what_serves_again(tmp_path):
    gate = {"state": "failed", "identity": IDENTITY, "check": "golden prompt 1 ('2+2='): the answer 'x' lacks '4'",
            "serving": BEFORE}  # fmt: skip
    proc = play(tmp_path, {"engines": {"qwen7b": engine("ready", gate), "ollama": engine("ready", None)}})
    assert proc.returncode == 2, proc.stdout
    assert "...ignoring" not in proc.stdout  # the identity before is back and ready: the wait is over
    message = " ".join(proc.stdout.split())
    expected = (
        "engine qwen7b: the change to model aaaaaaaaaaaa, vllm 0.32.0, arguments bbbbbbbbbbbb failed its "
        "gate: golden prompt 1 ('2+2='): the answer 'x' lacks '4'; the identity before serves again (model "
        "cccccccccccc, vllm 0.32.0, arguments dddddddddddd), nothing of it lost"
    )
    assert expected in message, message


def test_passed_gates_and_engines_never_changed_pass(tmp_path):
    passed = {"state": "passed", "identity": IDENTITY, "agreement": 1.0}
    proc = play(tmp_path, {"engines": {"qwen7b": engine("ready", passed), "ollama": engine("ready", None)}})
    assert proc.returncode == 0 and "...ignoring" not in proc.stdout, proc.stdout
