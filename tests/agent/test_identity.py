"""What an engine serves has an identity (its model's manifest, its program and version, its launch), and
every answer names it: the real agent (process backend) and router, the stub engine installed as the
vllm role installs vLLM (a versioned environment, `current` pointing at it), real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
from pathlib import Path

from aiinfra.agent import identity
from aiinfra.agent.engines import Launch
from tests.agent.conftest import audit_lines, free_port, vllm
from tests.agent.test_router import add_key, client
from tests.harness import STUB

MSG = [{"role": "user", "content": "hi"}]


def install_vllm(prefix: Path, version: str) -> None:
    """The stub (TEST DOUBLE for vLLM) in PREFIX/VERSION as the vllm role lays vLLM out, `current` at it."""
    venv = prefix / version
    (venv / "bin").mkdir(parents=True)
    program = venv / "bin" / "vllm"
    program.write_text(f'#!/bin/sh\nexec {sys.executable} {STUB} --runtime vllm "$@"\n')
    program.chmod(0o755)
    (venv / "aiinfra-serve-help.txt").write_text(f"# vllm {version}\n")
    current = prefix / "current"
    current.unlink(missing_ok=True)
    current.symlink_to(venv)


def test_each_answer_names_the_model_program_and_launch_that_made_it_and_a_change_is_a_new_identity(
    make_agent, tmp_path
):
    prefix = tmp_path / "vllm"
    install_vllm(prefix, "0.32.0")
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p")
    agent.config["vllm_command"] = [str(prefix / "current" / "bin" / "vllm")]
    agent.write_config()
    manifest = Path(agent.config["model_storage_mount"]) / "models" / "Qwen/Qwen2.5-7B-Instruct" / "SHA256SUMS"
    manifest.write_text(f"{'a' * 64}  model.safetensors\n")
    agent.start().wait_phase("e", "ready")

    first = agent.engine("e")["identity"]
    assert first["model"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert first["program"] == "vllm 0.32.0"
    api = client(agent, add_key(agent, "ann"))
    answer = api.chat.completions.with_raw_response.create(model=agent.engine("e")["served"][0], messages=MSG)
    assert answer.headers["x-aiinfra-engine"] == "e"
    assert answer.headers["x-aiinfra-model-digest"] == first["model"]
    assert answer.headers["x-aiinfra-program"] == "vllm 0.32.0"
    assert answer.headers["x-aiinfra-args-digest"] == first["args"]
    line = next(a for a in audit_lines(agent) if a["id"] == answer.headers["x-request-id"])
    assert line["identity"] == first
    stream = api.chat.completions.with_raw_response.create(model=agent.engine("e")["served"][0], messages=MSG,
                                                           stream=True)  # fmt: skip
    assert stream.headers["x-aiinfra-model-digest"] == first["model"]
    traced = agent.cli("trace", answer.headers["x-request-id"], "--config", str(agent.config_path))
    assert traced.returncode == 0, traced.stderr
    assert f"model manifest sha256 {first['model']}" in traced.stdout and "program vllm 0.32.0" in traced.stdout
    assert "engine e has served that identity since" in traced.stdout
    assert agent.cli("trace", "0" * 16, "--config", str(agent.config_path)).returncode == 1  # not in the log
    assert agent.cli("trace", "nonsense", "--config", str(agent.config_path)).returncode == 2
    metrics = urllib.request.urlopen(f"http://{agent.listen}/metrics", timeout=5).read().decode()
    assert (f'aiinfra_engine_identity_info{{args_digest="{first["args"]}",engine="e",model_digest="{first["model"]}",'
            'program="vllm 0.32.0"} 1.0') in metrics  # fmt: skip

    # A new vLLM and a new model version on disk: the running engine is still what it started as, and an
    # operator's restart starts that again (its launch names the vLLM folder it ran from).
    install_vllm(prefix, "0.33.0")
    manifest.write_text(f"{'b' * 64}  model.safetensors\n")
    assert agent.engine("e")["identity"] == first
    pid = agent.engine("e")["pid"]
    assert agent.cli("restart", "e", "--socket", agent.socket).returncode == 0
    again = agent.wait(lambda s: s["engines"]["e"]["pid"] != pid and s["engines"]["e"]["phase"] == "ready", 15,
                       "a restart")["engines"]["e"]  # fmt: skip
    assert again["identity"]["program"] == "vllm 0.32.0" and again["identity"]["model"] != first["model"]
    assert again["gate"]["state"] == "passed"  # the model on disk changed under it: a change, gated
    agent.stop()  # the install restarts the agent: the new version and model go through the gate
    agent.start()
    second = agent.wait(lambda s: s["engines"]["e"]["phase"] == "ready" and s["engines"]["e"]["identity"] != first,
                        15, "e started as a new identity")["engines"]["e"]  # fmt: skip
    assert second["gate"]["state"] == "passed"
    second = second["identity"]
    assert second["program"] == "vllm 0.33.0"
    assert second["model"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert second["args"] != first["args"]  # its argv names vLLM 0.33.0's folder
    kept = json.loads((Path(agent.config["data_dir"]) / "identities.json").read_text())
    assert [(e["engine"], e["program"], e["model"]) for e in kept] == [("e", "vllm 0.32.0", first["model"]),
        ("e", "vllm 0.32.0", second["model"]), ("e", "vllm 0.33.0", second["model"])]  # fmt: skip
    assert kept[0]["since"] < kept[1]["since"] < kept[2]["since"]
    assert oct(os.stat(Path(agent.config["data_dir"]) / "identities.json").st_mode & 0o777) == "0o600"


def test_the_history_keeps_one_entry_per_change_and_survives_damage(tmp_path):
    history = identity.History(tmp_path / "identities.json")
    started = identity.Identity("m" * 64, "vllm 0.32.0", "a" * 64)
    history.started("e", started)
    history.started("e", started)  # the same identity again: one entry
    assert identity.History(tmp_path / "identities.json").last("e") == started
    assert len(identity.History(tmp_path / "identities.json").entries) == 1
    (tmp_path / "identities.json").write_text("not json")  # a damaged history: starts afresh, no crash
    assert identity.History(tmp_path / "identities.json").last("e") is None


def test_the_launch_digest_leaves_the_engines_key_out_and_changes_with_any_argument():
    base = Launch("e", ["vllm", "serve", "m", "--port", "8001"], {"VLLM_API_KEY": "one", "HF_HOME": "/h"}, 8001, "vllm")
    other_key = Launch("e", base.argv, {**base.env, "VLLM_API_KEY": "two"}, 8001, "vllm")
    other_arg = Launch("e", [*base.argv, "--max-model-len", "4096"], base.env, 8001, "vllm")
    assert identity.of(base).args == identity.of(other_key).args
    assert identity.of(base).args != identity.of(other_arg).args
    assert "one" not in json.dumps(identity.of(base).headers("e"))
