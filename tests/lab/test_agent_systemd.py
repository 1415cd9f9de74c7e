"""The agent under a real systemd (a lab container): Type=notify, the engine template unit,
engines adopted across an agent restart, an engine's death noticed, journald fields, hardening."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aiinfra.installer.lab import kit_files as kit
from tests import units
from tests.conftest import ROOT
from tests.lab.conftest import podman, require_lab

pytestmark = pytest.mark.lab
HOST = "agenttest"
CONTAINER = f"aiinfra-lab-{HOST}"
AIINFRA = str(Path(sys.executable).with_name("aiinfra"))
AGENT_BIN = "/opt/aiinfra/bin/aiinfra-agent"
CONFIG = {
    "backend": "systemd",
    "model_storage_mount": "/var/lib/aiinfra/models",
    "vllm_command": ["/opt/aiinfra/bin/python", "/opt/aiinfra/stub_engine.py"],
    # As Ollama 0.30 and later: a llama-server child per loaded model (the stub's double of it).
    "ollama_command": ["/opt/aiinfra/bin/python", "/opt/aiinfra/stub_engine.py", "--runtime", "ollama"],
    "engines": {
        "alpha": {
            "runtime": "vllm",
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "served_name": "alpha",
            "gpus": [0],
            "port": 8101,
        },
        "beta": {
            "runtime": "vllm",
            "model": "Qwen/Qwen2.5-14B-Instruct-AWQ",
            "served_name": "beta",
            "gpus": [0],
            "port": 8102,
        },
        "gamma": {"runtime": "ollama", "gpus": [1], "port": 8103, "models": ["llama3.2:3b"]},
        "delta": {
            "runtime": "vllm",
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "served_name": "delta",
            "gpus": [0],
            "port": 8104,
            "extra_args": ["--ignore-sigterm"],  # the stub's misbehaviour flag
        },
    },
    "profiles": {"one": ["alpha", "gamma"], "two": ["beta"], "three": ["delta"]},
    "default_profile": "one",
    "gpu": None,  # a container has no GPU; tests/agent/test_gpu.py covers the GPU layer
    "policy": {
        "tick_s": 0.2,
        "readiness_interval_s": 0.3,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 2,
        "liveness_interval_s": 1,
        "liveness_timeout_s": 2,
        "stop_grace_s": 2,  # the engine unit's own TimeoutStopSec is 30
    },
}


def sh(command: str, check: bool = True) -> str:
    proc = podman("exec", CONTAINER, "bash", "-c", command)
    if check:
        assert proc.returncode == 0, f"{command}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def status() -> dict:
    return json.loads(sh(f"{AGENT_BIN} status --json"))


def wait(predicate, timeout: float, what: str) -> dict:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        out = podman("exec", CONTAINER, AGENT_BIN, "status", "--json")
        if out.returncode == 0:
            last = json.loads(out.stdout)
            if predicate(last):
                return last
        time.sleep(0.2)
    journal = sh("journalctl -u aiinfra-agent -n 30 --no-pager", check=False)
    raise AssertionError(f"timed out waiting for {what}: {last}\n{journal}")


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A lab container with aiinfra installed as the aiinfra_agent role will: a wheel in /opt/aiinfra."""
    require_lab()
    tmp = tmp_path_factory.mktemp("agentbox")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "state")}
    up = subprocess.run([AIINFRA, "lab", "up", HOST], capture_output=True, text=True, env=env, check=False)
    assert up.returncode == 0, up.stderr
    wheels = tmp / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert podman("cp", str(wheels), f"{CONTAINER}:/tmp/wheels").returncode == 0
    assert podman("cp", str(kit.STUB_ENGINE), f"{CONTAINER}:/opt/stub_engine.py").returncode == 0
    for unit in ("aiinfra-agent.service", "aiinfra-engine@.service", "aiinfra-router.socket", "aiinfra-status.socket"):
        (tmp / unit).write_text(units.render(unit))
        assert podman("cp", str(tmp / unit), f"{CONTAINER}:/etc/systemd/system/{unit}").returncode == 0
    sh(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-systemd"
        " >/dev/null"
    )
    sh(
        "python3 -m venv --system-site-packages /opt/aiinfra"
        " && /opt/aiinfra/bin/pip install -q --no-index --find-links /tmp/wheels aiinfra"
        " && mv /opt/stub_engine.py /opt/aiinfra/stub_engine.py"
        " && (getent passwd aiinfra || useradd --system --home /var/lib/aiinfra --shell /usr/sbin/nologin aiinfra)"
        " && mkdir -p /etc/aiinfra && for m in Qwen2.5-7B-Instruct Qwen2.5-14B-Instruct-AWQ;"
        " do d=/var/lib/aiinfra/models/models/Qwen/$m; mkdir -p $d && echo {} > $d/config.json"
        " && (cd $d && sha256sum config.json > SHA256SUMS); done"
        " && chown -R aiinfra: /var/lib/aiinfra && chmod 0750 /var/lib/aiinfra/models/models"  # as the vllm role
        " && mkdir -m 0700 -p /mnt/nvme/aiinfra-agent"  # the agent's records, as the aiinfra_agent role makes them
    )
    sh(f"cat > /etc/aiinfra/agent.yml <<'EOF'\n{yaml.safe_dump(CONFIG)}EOF")
    sh("systemctl daemon-reload && systemctl start aiinfra-agent")  # Type=notify: returns at READY=1
    yield {"inventory": up.stdout.strip(), "env": env}
    subprocess.run([AIINFRA, "lab", "down", HOST], capture_output=True, env=env, check=False)


def test_start_returns_at_ready_and_the_engine_runs_unprivileged_in_its_unit(box):
    assert sh("systemctl is-active aiinfra-agent").strip() == "active"
    assert re.search(r"StatusText=profile one: \d/2 engines ready", sh("systemctl show -p StatusText aiinfra-agent"))
    report = wait(lambda s: s["engines"]["alpha"]["phase"] == "ready", 30, "alpha ready")
    assert report["backend"] == "systemd"
    pid = report["engines"]["alpha"]["pid"]
    assert sh("systemctl is-active aiinfra-engine@alpha").strip() == "active"
    assert sh("systemctl show -p MainPID --value aiinfra-engine@alpha").strip() == str(pid)
    assert sh(f"stat -c %U /proc/{pid}").strip() == "aiinfra"
    # What it serves, read by the agent under its unit (no CAP_DAC_OVERRIDE) from the engines' files.
    manifest = sh("sha256sum /var/lib/aiinfra/models/models/Qwen/Qwen2.5-7B-Instruct/SHA256SUMS").split()[0]
    assert report["engines"]["alpha"]["identity"]["model"] == manifest
    # The engine answers the agent (ready: its probe listed the served name with the engine's key), and
    # no other local process: without its key, 401.
    sh(f"cat > /tmp/around.py <<'EOF'\n{AROUND}EOF")
    assert sh("/opt/aiinfra/bin/python /tmp/around.py").split() == ["401", "200"]
    # The engines' user may not drive the box: the control socket is root's and the operators'.
    refused = podman("exec", "--user", "aiinfra", CONTAINER, AGENT_BIN, "profile", "two", "--no-wait")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused.stdout + refused.stderr
    assert status()["profile"] == "one"


AROUND = """
import urllib.error, urllib.request
try:
    urllib.request.urlopen("http://127.0.0.1:8101/v1/models")
except urllib.error.HTTPError as error:
    print(error.code)
print(urllib.request.urlopen("http://127.0.0.1:8101/health").status)
"""


def test_engines_are_adopted_across_an_agent_restart(box):
    before = wait(lambda s: s["engines"]["alpha"]["phase"] == "ready", 30, "alpha ready")["engines"]["alpha"]
    sh("systemctl restart aiinfra-agent")
    after = wait(lambda s: s["engines"]["alpha"]["phase"] == "ready", 30, "alpha ready again")
    assert after["engines"]["alpha"]["pid"] == before["pid"]  # the same process: adopted, not restarted
    assert any(e["event"] == "adopted" and e["engine"] == "alpha" for e in after["events"])
    assert after["engines"]["alpha"]["restarts"] == 0


def test_an_engine_death_is_noticed_and_restarted(box):
    pid = wait(lambda s: s["engines"]["alpha"]["phase"] == "ready", 30, "alpha ready")["engines"]["alpha"]["pid"]
    sh(f"kill -9 {pid}")
    report = wait(
        lambda s: s["engines"]["alpha"]["restarts"] == 1 and s["engines"]["alpha"]["phase"] == "ready", 30, "a restart"
    )
    assert report["engines"]["alpha"]["pid"] != pid
    backoff = [e for e in report["events"] if e["event"] == "backoff" and e["engine"] == "alpha"]
    assert backoff[-1]["message"].startswith("exited with signal 9")


# A client inside the box that asks the status and router sockets without pause and counts the answers,
# the refused connections and any other failure.
HAMMER = """
import json, socket, sys, time
deadline, counts = time.monotonic() + float(sys.argv[1]), {"answered": 0, "refused": 0, "failed": 0}
while time.monotonic() < deadline:
    for port, path in ((8079, "/healthz"), (8000, "/v1/models")):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(f"GET {path} HTTP/1.0\\r\\n\\r\\n".encode())
                counts["answered" if s.recv(12).startswith(b"HTTP/1.") else "failed"] += 1
        except ConnectionRefusedError:
            counts["refused"] += 1
        except OSError:
            counts["failed"] += 1
print(json.dumps(counts))
"""


def test_an_agent_restart_refuses_no_connection_and_keeps_the_restart_counts(box):
    before = wait(lambda s: s["engines"]["alpha"]["phase"] == "ready", 30, "alpha ready")["engines"]["alpha"]
    assert sh("systemctl is-active aiinfra-router.socket aiinfra-status.socket").split() == ["active", "active"]
    sh(f"cat > /tmp/hammer.py <<'EOF'\n{HAMMER}EOF")
    sh("systemd-run --unit aiinfra-test-hammer -p StandardOutput=file:/tmp/hammer.out python3 /tmp/hammer.py 12")
    time.sleep(2)
    for _ in range(2):
        sh("systemctl restart aiinfra-agent")  # returns once the new agent said READY=1
        time.sleep(1)
    wait(lambda s: sh("systemctl is-active aiinfra-test-hammer", check=False).strip() != "active", 30, "the client")
    counts = json.loads(sh("cat /tmp/hammer.out"))
    print(f"across two agent restarts: {counts}")
    assert counts["refused"] == 0 and counts["failed"] == 0 and counts["answered"] > 20, counts
    after = wait(lambda s: s["engines"]["alpha"]["phase"] == "ready", 30, "alpha ready again")["engines"]["alpha"]
    assert after["restarts"] == before["restarts"] and after["pid"] == before["pid"]


def unit_processes(engine: str) -> dict[int, str]:
    """Every process in the engine's unit (its cgroup), by pid: its name."""
    found = sh(f"grep -l 'aiinfra-engine@{engine}.service' /proc/[0-9]*/cgroup", check=False).split()
    pids = sorted(int(path.split("/")[2]) for path in found)
    return {pid: sh(f"cat /proc/{pid}/comm", check=False).strip() for pid in pids}


def test_ollamas_llama_server_is_adopted_with_it_and_goes_with_a_killed_ollama_serve(box):
    def runner() -> int:
        return next((p for p, name in unit_processes("gamma").items() if name == "llama-server"), 0)

    leader = wait(lambda s: s["engines"]["gamma"]["phase"] == "ready", 30, "gamma ready")["engines"]["gamma"]["pid"]
    wait(lambda s: runner() != 0, 30, "the liveness probe to load the model in a llama-server")
    child = runner()
    sh("systemctl restart aiinfra-agent")
    adopted = wait(lambda s: s["engines"]["gamma"]["phase"] == "ready", 30, "gamma adopted")["engines"]["gamma"]
    assert (adopted["pid"], runner()) == (leader, child)  # adopted: neither restarted

    sh(f"kill -9 {leader}")  # as Ollama's runner, the llama-server would outlive it and keep its VRAM
    deadline = time.monotonic() + 5  # the unit's KillMode=mixed: SIGKILL at once to what the leader left
    while time.monotonic() < deadline and sh(f"test -e /proc/{child} || echo gone").strip() != "gone":
        time.sleep(0.2)
    assert sh(f"test -e /proc/{child} || echo gone").strip() == "gone", unit_processes("gamma")
    # Under podman's cgroup v1 systemd may miss the emptied cgroup and hold the unit "deactivating" until
    # TimeoutStopSec (30 s); the agent reports the exit at once and starts the engine as soon as it can.
    back = wait(lambda s: s["engines"]["gamma"]["restarts"] == 1 and s["engines"]["gamma"]["phase"] == "ready", 60,
                "gamma restarted")  # fmt: skip
    assert back["engines"]["gamma"]["pid"] != leader
    assert "exited with signal 9" in back["engines"]["gamma"]["last_error"] or any(
        e["event"] == "backoff" and e["message"].startswith("exited with signal 9") for e in back["events"]
    )


def test_a_profile_switch_stops_the_unit_of_the_leaving_engine(box):
    wait(lambda s: s["engines"]["alpha"]["phase"] == "ready", 30, "alpha ready")
    out = sh(f"{AGENT_BIN} profile two --timeout 60")
    assert "profile two ready: beta" in out
    assert sh("systemctl is-active aiinfra-engine@alpha", check=False).strip() in ("inactive", "failed")
    assert sh("systemctl is-active aiinfra-engine@beta").strip() == "active"


def test_an_engine_ignoring_sigterm_is_killed_after_the_agents_grace_not_the_units_timeout(box):
    assert "profile three ready: delta" in sh(f"{AGENT_BIN} profile three --timeout 60")
    started = time.monotonic()
    assert "profile two ready: beta" in sh(f"{AGENT_BIN} profile two --timeout 60")
    assert time.monotonic() - started < 15  # 2 s of grace, then SIGKILL: not the unit's 30 s
    assert "SIGTERM ignored" in sh("journalctl -u aiinfra-engine@delta -o cat --no-pager")
    assert not sh("pgrep -f 'served-model-name [d]elta'", check=False).strip()


def test_journald_gets_structured_engine_events(box):
    lines = sh("journalctl -u aiinfra-agent ENGINE=beta -o json --no-pager").splitlines()
    events = {json.loads(line).get("EVENT") for line in lines}
    assert "started" in events


def test_security_exposure_of_the_agent_and_engine_units(box):
    for unit in ("aiinfra-agent.service", "aiinfra-engine@beta.service"):
        out = sh(f"systemd-analyze security {unit} --no-pager")
        score = float(re.search(rf"Overall exposure level for {re.escape(unit)}: ([\d.]+)", out).group(1))
        print(f"systemd-analyze security {unit}: {score}")
        assert score <= 2.5, out


def test_aiinfra_status_reads_the_agent_through_the_inventory(box):
    wait(lambda s: any(e["phase"] == "ready" for e in s["engines"].values()), 60, "an engine ready")
    proc = subprocess.run(
        [AIINFRA, "status", "--host", HOST, "-i", box["inventory"], "--json"],
        capture_output=True,
        text=True,
        env=box["env"],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)[HOST]
    assert report["backend"] == "systemd" and set(report["engines"]) == {"alpha", "beta", "gamma", "delta"}
    table = subprocess.run(
        [AIINFRA, "status", "--host", HOST, "-i", box["inventory"]],
        capture_output=True,
        text=True,
        env=box["env"],
        check=False,
    )
    assert table.stdout.startswith(f"== {HOST}: profile ")


def test_the_watchdog_is_fed(box):
    def stamp() -> int:
        return int(sh("systemctl show -p WatchdogTimestampMonotonic --value aiinfra-agent").strip() or 0)

    first = stamp()
    time.sleep(1.5)
    assert stamp() > first > 0


def test_a_change_under_the_real_units_is_gated_and_a_failed_one_gives_way_to_the_one_before(box):
    """The install writes a new agent.yml and restarts the agent: the adopted engine is replaced by the
    new identity through its gate (its answers held to the golden set and, same model, to the ones
    before), and a change that fails comes back as the identity that passed, under the same unit."""
    sh(f"{AGENT_BIN} profile one")
    wait(lambda s: s["engines"]["alpha"]["phase"] == "ready", 30, "alpha")
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    gate = {"golden": [{"prompt": "Say hello", "contains": "stub", "max_latency_s": 5}]}

    def install(extra_args: list[str]) -> dict:
        config["engines"]["alpha"] |= {"gate": gate, "extra_args": extra_args}
        sh(f"cat > /etc/aiinfra/agent.yml <<'EOF'\n{yaml.safe_dump(config)}EOF")
        sh("systemctl restart aiinfra-agent")
        return wait(lambda s: s["engines"]["alpha"]["phase"] == "ready" and (s["engines"]["alpha"]["gate"] or {}).get(
            "state") in ("passed", "failed"), 60, "alpha's gate")["engines"]["alpha"]  # fmt: skip

    passed = install(["--chunks", "8"])  # streamed chunks only: the same greedy answers
    assert (passed["gate"]["state"], passed["gate"]["agreement"]) == ("passed", 1.0), passed["gate"]
    assert set(passed["gate"]["took"]) == {"stop", "start", "gate"}
    assert "--chunks" in sh(f"cat /proc/{passed['pid']}/cmdline").replace("\0", " ")

    failed = install(["--chunks", "8", "--answer", "garbage"])
    gate_report = failed["gate"]
    assert gate_report["state"] == "failed" and "lacks 'stub'" in gate_report["check"], gate_report
    assert failed["identity"] == passed["identity"] == gate_report["serving"]
    assert "--answer" not in sh(f"cat /proc/{failed['pid']}/cmdline").replace("\0", " ")
    assert sh("systemctl show -p MainPID --value aiinfra-engine@alpha").strip() == str(failed["pid"])
    print(f"gated change under systemd, seconds per step: passed {passed['gate']['took']}, "
          f"failed {gate_report['took']}")  # fmt: skip
    assert "gate: alpha's change failed" in sh(f"{AGENT_BIN} status")
    events = sh("journalctl -u aiinfra-agent -o json --no-pager EVENT=gate_failed ENGINE=alpha")
    assert "lacks 'stub'" in events
    sh(f"cat > /etc/aiinfra/agent.yml <<'EOF'\n{yaml.safe_dump(CONFIG)}EOF")  # as the module began
    sh("systemctl restart aiinfra-agent")
