"""The agent supervising stub engines as real processes, observed through its real HTTP status."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.agent.conftest import free_port, pid_alive, vllm


def started_times(status: dict, engine: str) -> list[float]:
    return [e["time"] for e in status["events"] if e["engine"] == engine and e["event"] == "started"]


def test_a_slow_start_is_not_killed_inside_the_startup_window(make_agent):
    port = free_port()
    agent = make_agent(
        {"slow": vllm(port, "--startup-delay", "2")}, {"p": ["slow"]}, "p", policy={"startup_timeout_s": 6}
    ).start()
    agent.wait_phase("slow", "starting", timeout=5)
    ready = agent.wait_phase("slow", "ready", timeout=10)["engines"]["slow"]
    assert ready["restarts"] == 0 and ready["last_error"] is None
    assert ready["probe_latency_ms"] is not None


def test_a_crash_restarts_with_doubling_backoff(make_agent):
    port = free_port()
    agent = make_agent(
        {"crashy": vllm(port, "--crash-after", "0.2")},
        {"p": ["crashy"]},
        "p",
        policy={"backoff_initial_s": 0.5, "backoff_max_s": 2},
    ).start()
    status = agent.wait(lambda s: len(started_times(s, "crashy")) >= 5, timeout=30, what="five starts")
    starts = started_times(status, "crashy")
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # each gap: the run until the crash (~0.2 s after listening, plus start-up) and the backoff
    expected = [0.5, 1.0, 2.0, 2.0]
    for gap, backoff in zip(gaps, expected, strict=False):
        assert backoff + 0.2 <= gap <= backoff + 2.5, (gaps, expected)
    assert status["engines"]["crashy"]["restarts"] >= 4
    reasons = [e["message"] for e in status["events"] if e["engine"] == "crashy" and e["event"] == "backoff"]
    assert len(reasons) >= 4 and all(r.startswith("exited with code 3; last log: ") for r in reasons)


def test_a_crash_loop_ends_in_failed_with_the_reason(make_agent):
    port = free_port()
    agent = make_agent(
        {"broken": vllm(port, "--crash-after", "0")},
        {"p": ["broken"]},
        "p",
        policy={"backoff_initial_s": 0.1, "backoff_max_s": 0.2, "crash_loop_failures": 3},
    ).start()
    engine = agent.wait_phase("broken", "failed", timeout=20)["engines"]["broken"]
    assert engine["last_error"].startswith("crash loop: 3 failures in 60s; last: exited with code 3")
    assert "CUDA error: an illegal memory access" in engine["last_error"]  # the engine's own last words
    assert engine["pid"] is None
    time.sleep(1)
    assert agent.engine("broken")["phase"] == "failed"  # no more restarts by itself

    result = agent.cli("restart", "broken", "--socket", agent.socket)
    assert result.returncode == 0, result.stderr
    agent.wait(lambda s: s["engines"]["broken"]["phase"] in ("starting", "backoff"), 5, "a fresh start")


def test_a_hung_engine_is_found_by_the_liveness_probe_and_restarted(make_agent):
    port = free_port()
    agent = make_agent({"hangs": vllm(port, "--hang-after", "0.5")}, {"p": ["hangs"]}, "p").start()
    agent.wait_phase("hangs", "ready", timeout=10)
    status = agent.wait(lambda s: s["engines"]["hangs"]["restarts"] >= 1, timeout=20, what="a restart")
    reasons = [e["message"] for e in status["events"] if e["engine"] == "hangs" and e["event"] == "backoff"]
    assert reasons and reasons[0].startswith("hung: 2 liveness probes")


def test_a_taken_port_is_a_clear_failure(make_agent):
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        agent = make_agent({"e": vllm(port)}, {"p": ["e"]}, "p").start()
        status = agent.wait(lambda s: s["engines"]["e"]["last_error"], timeout=10, what="an error")
        assert status["engines"]["e"]["last_error"].startswith(f"port {port} is already in use by another process")
        assert status["engines"]["e"]["phase"] == "backoff"
    agent.wait_phase("e", "ready", timeout=15)  # the port freed: the next attempt works


def test_an_engine_ignoring_sigterm_is_killed_after_the_grace_period(make_agent):
    a, b = free_port(), free_port()
    agent = make_agent(
        {"stubborn": vllm(a, "--ignore-sigterm"), "other": vllm(b)},
        {"one": ["stubborn"], "two": ["other"]},
        "one",
        policy={"stop_grace_s": 1.5},
    ).start()
    pid = agent.wait_phase("stubborn", "ready")["engines"]["stubborn"]["pid"]
    asked = time.monotonic()
    result = agent.cli("profile", "two", "--socket", agent.socket, "--listen", agent.listen, "--timeout", "20")
    assert result.returncode == 0, result.stderr
    while pid_alive(pid) and time.monotonic() - asked < 10:
        time.sleep(0.05)
    took = time.monotonic() - asked
    assert not pid_alive(pid)
    assert 1.5 <= took < 6, took
    assert "SIGTERM ignored" in (agent.tmp / "state" / "engines" / "stubborn.log").read_text()


def test_killing_the_agent_leaves_no_orphaned_engine(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p").start()
    pid = agent.wait_phase("e", "ready")["engines"]["e"]["pid"]
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait()
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid), "engine outlived the agent"


def test_a_profile_switch_never_runs_two_profiles_at_once(make_agent):
    a, b = free_port(), free_port()
    agent = make_agent(
        {"small": vllm(a, "--ignore-sigterm"), "big": vllm(b, gpus=[0, 1])},
        {"fast": ["small"], "deep": ["big"]},
        "fast",
        policy={"stop_grace_s": 1},
    ).start()
    agent.wait_phase("small", "ready")
    result_holder = []
    proc = psutil.Popen([agent.proc.args[0], "profile", "deep", "--socket", agent.socket, "--listen", agent.listen])
    overlaps, seen_big = 0, False
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        ports = _engine_ports(agent.proc.pid)
        seen_big |= b in ports
        overlaps += a in ports and b in ports
        time.sleep(0.02)
    result_holder.append(proc.wait(5))
    assert result_holder == [0]
    assert seen_big and overlaps == 0
    status = agent.status()
    assert status["profile"] == "deep"
    assert status["engines"]["big"]["phase"] == "ready" and status["engines"]["small"]["phase"] == "stopped"


def _engine_ports(agent_pid: int) -> set[int]:
    """Ports named on the command lines of the agent's live engine processes."""
    ports = set()
    for child in psutil.Process(agent_pid).children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "--port" in cmd:
            ports.add(int(cmd[cmd.index("--port") + 1]))
    return ports


def test_ollama_is_ready_on_its_version_endpoint(make_agent):
    port = free_port()
    engines = {"ollama": {"runtime": "ollama", "gpus": [0], "port": port, "keep_alive": "30m"}}
    agent = make_agent(engines, {"home": ["ollama"]}, "home").start()
    engine = agent.wait_phase("ollama", "ready")["engines"]["ollama"]
    log = (agent.tmp / "state" / "engines" / "ollama.log").read_text()
    assert f"on 127.0.0.1:{port}" in log and "test double for ollama" in log
    assert engine["pid"] and pid_alive(engine["pid"])


def test_status_cli_lists_the_engines(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p").start()
    agent.wait_phase("e", "ready")
    table = agent.cli("status", "--listen", agent.listen)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0] == "profile p (backend process)"
    assert table.stdout.splitlines()[2].split()[:2] == ["e", "ready"]
    unknown = agent.cli("profile", "nope", "--socket", agent.socket)
    assert unknown.returncode == 2 and "unknown profile; profiles: p" in unknown.stderr


def test_the_control_socket_is_private(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p").start()
    assert oct(os.stat(agent.socket).st_mode & 0o777) == "0o660"


def test_the_installer_status_command_reads_a_local_agent(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p").start()
    agent.wait_phase("e", "ready")
    aiinfra = str(Path(sys.executable).with_name("aiinfra"))
    proc = subprocess.run(
        [aiinfra, "status", "--listen", agent.listen, "--json"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["localhost"]
    assert report["engines"]["e"]["phase"] == "ready" and report["profile"] == "p"
    agent.stop()
    gone = subprocess.run([aiinfra, "status", "--listen", agent.listen], capture_output=True, text=True, check=False)
    assert gone.returncode == 3 and "no agent answers" in gone.stderr


def test_a_crash_after_some_requests_is_restarted(make_agent):
    port = free_port()
    agent = make_agent(
        {"e": vllm(port, "--crash-after-requests", "2")}, {"p": ["e"]}, "p", policy={"liveness_interval_s": 0.2}
    ).start()
    # the liveness probe's one-token requests are real inference: the third one kills the engine
    status = agent.wait(lambda s: s["engines"]["e"]["restarts"] >= 1, timeout=20, what="a restart")
    reasons = [e["message"] for e in status["events"] if e["event"] == "backoff"]
    assert "CUDA error: out of memory (stub crash after 2 requests)" in reasons[0]


def test_healthz_answers_while_the_loop_runs(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p").start()
    body = urllib.request.urlopen(f"http://{agent.listen}/healthz", timeout=5).read()
    assert json.loads(body) == {"status": "ok"}


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def test_engines_left_by_a_killed_agent_are_removed_at_the_next_start(make_agent, tmp_path):
    leftover = subprocess.Popen(["sleep", "300"], start_new_session=True)
    # A process that reused an engine's PID: same number, started later than the engine was.
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p")
    engines_dir = agent.tmp / "state" / "engines"
    engines_dir.mkdir(parents=True)
    (engines_dir / "old.pgid").write_text(json.dumps({"pgid": leftover.pid, "start": start_time(leftover.pid)}))
    (engines_dir / "reused.pgid").write_text(json.dumps({"pgid": stranger.pid, "start": start_time(stranger.pid) - 1}))
    agent.start()
    try:
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert not (engines_dir / "old.pgid").exists() and not (engines_dir / "reused.pgid").exists()
        assert stranger.poll() is None, "a process that merely reused an engine's PID was killed"
    finally:
        stranger.kill()


def group_of(pid: int) -> list[int]:
    return [p.pid for p in psutil.process_iter() if _pgid(p.pid) == pid]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_an_engine_whose_leader_dies_leaves_no_worker_holding_its_port(make_agent):
    """vLLM's EngineCore and Worker outlive a killed `vllm serve` and keep its port: they go with it."""
    agent = make_agent({"e": vllm(free_port(), "--fork-grandchild")}, {"p": ["e"]}, "p").start()
    leader = agent.wait_phase("e", "ready")["engines"]["e"]["pid"]
    workers = [p for p in group_of(leader) if p != leader]
    assert len(workers) == 1
    os.kill(leader, signal.SIGKILL)
    status = agent.wait(
        lambda s: s["engines"]["e"]["restarts"] == 1 and s["engines"]["e"]["phase"] == "ready", 20, "ready again"
    )
    assert "port" not in (status["engines"]["e"]["last_error"] or "")
    assert not pid_alive(workers[0])


def test_a_killed_agent_leaves_no_engine_worker_behind_once_restarted(make_agent):
    agent = make_agent({"e": vllm(free_port(), "--fork-grandchild")}, {"p": ["e"]}, "p").start()
    leader = agent.wait_phase("e", "ready")["engines"]["e"]["pid"]
    (worker,) = (p for p in group_of(leader) if p != leader)
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait()
    assert pid_alive(worker)  # the leader died with the agent; its child did not
    agent.start()
    agent.wait_phase("e", "ready", timeout=20)
    assert not pid_alive(worker)


def test_the_installer_profile_command_switches_and_waits(make_agent):
    a, b = free_port(), free_port()
    agent = make_agent({"x": vllm(a), "y": vllm(b)}, {"one": ["x"], "two": ["y"]}, "one").start()
    agent.wait_phase("x", "ready")
    aiinfra = str(Path(sys.executable).with_name("aiinfra"))
    common = ["--socket", agent.socket, "--listen", agent.listen]
    done = subprocess.run([aiinfra, "profile", "two", *common], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "profile two ready: y"
    assert agent.engine("x")["phase"] == "stopped"
    unknown = subprocess.run([aiinfra, "profile", "three", *common], capture_output=True, text=True, check=False)
    assert unknown.returncode == 2 and "unknown profile; profiles: one, two" in unknown.stderr


def _nobody_can_run_python() -> bool:
    if os.geteuid() != 0:
        return False
    return (
        subprocess.run(
            ["runuser", "-u", "nobody", "--", sys.executable, "-c", "import aiohttp"], capture_output=True, check=False
        ).returncode
        == 0
    )


@pytest.mark.skipif(not _nobody_can_run_python(), reason="needs root, and a Python 'nobody' may run (not one in /root)")
def test_engines_run_as_the_unprivileged_engine_user(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p")
    agent.config["engine_user"] = "nobody"
    agent.start()
    pid = agent.wait_phase("e", "ready")["engines"]["e"]["pid"]
    assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam("nobody").pw_uid
    assert agent.proc.pid != pid and os.stat(f"/proc/{agent.proc.pid}").st_uid == 0


def test_an_engine_that_cannot_be_executed_is_a_clear_failure(make_agent, tmp_path):
    broken = tmp_path / "vllm"
    broken.write_text("#!/nonexistent/interpreter\n")
    broken.chmod(0o755)
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p")
    agent.config["vllm_command"] = [str(broken)]
    agent.start()
    status = agent.wait(lambda s: s["engines"]["e"]["last_error"], 10, "an error")
    assert status["engines"]["e"]["last_error"].startswith(f"cannot run {broken}: No such file or directory")
    assert agent.proc.poll() is None  # the agent itself carries on


def test_a_launch_that_cannot_be_written_is_that_engines_failed_start_not_the_agents_end(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p", policy={"liveness_interval_s": 60})
    (agent.tmp / "state").mkdir(parents=True)
    (agent.tmp / "state" / "engines").write_text("a file where the engines' folder goes")  # as a full or broken /run
    agent.start()
    failed = agent.wait(lambda s: s["engines"]["e"]["last_error"] is not None, 10, "the failed start")
    assert failed["engines"]["e"]["phase"] in ("backoff", "failed")
    assert agent.proc.poll() is None  # the agent runs on, and says why
    why = failed["engines"]["e"]["last_error"]
    assert "File exists" in why or "Not a directory" in why, why


ASK_AS_ANOTHER_USER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"POST /profile HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\nContent-Length: 15\\r\\n"
          b"Connection: close\\r\\n\\r\\n" b'{"profile":"p"}')
print(s.recv(65536).decode())
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a process as another user")
def test_control_is_for_operators_by_peer_credentials_and_every_action_is_named(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p", policy={"liveness_interval_s": 60})
    reachable = Path(tempfile.mkdtemp(prefix="aiinfra-control-"))  # pytest's own folders are root's alone
    reachable.chmod(0o755)
    agent.socket = agent.config["control_socket"] = str(reachable / "control.sock")
    agent.start().wait_phase("e", "ready")
    os.chmod(agent.socket, 0o666)  # even a socket anyone may open does not let anyone in
    other = subprocess.run(["/usr/bin/python3", "-c", ASK_AS_ANOTHER_USER, agent.socket], user="nobody",
                           capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert other.stdout.startswith("HTTP/1.1 403"), other.stdout + other.stderr
    assert "user nobody may not control this box" in other.stdout
    done = agent.cli("restart", "e", "--socket", agent.socket)  # root may
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for x in Path(agent.config["audit_log"]).read_text().splitlines() if '"control"' in x]
    assert [(x["action"], x["user"], x["status"]) for x in lines] == [
        ("POST /profile", "nobody", 403),
        ("POST /engines/e/restart", "root", 202),
    ]
    assert lines[0]["uid"] == pwd.getpwnam("nobody").pw_uid and lines[1]["uid"] == 0 and lines[1]["pid"] > 0
    assert "control: POST /profile by nobody" in agent.agent_log()
    shutil.rmtree(reachable, ignore_errors=True)


def test_the_status_surface_can_require_a_bearer_token_and_the_box_tools_read_through_the_socket(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p", policy={"liveness_interval_s": 60})
    agent.config["status_token_sha256"] = hashlib.sha256(b"scrape-me").hexdigest()
    agent.read_from = None  # the harness reads as the box's tools do: through the control socket
    agent.start().wait_phase("e", "ready")

    def get(path: str, token: str | None = None) -> tuple[int, str]:
        ask = urllib.request.Request(f"http://{agent.listen}{path}")
        if token is not None:
            ask.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(ask, timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()

    for path in ("/status", "/metrics", "/cost"):
        assert get(path)[0] == 401 and get(path, "guess")[0] == 401, path
        assert get(path, "scrape-me")[0] == 200, path
    assert get("/healthz") == (200, '{"status": "ok"}')  # a liveness check needs no token and learns nothing
    assert "a bearer token is required" in get("/status")[1]
    shown = agent.cli("status", "--socket", agent.socket, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["engines"]["e"]["phase"] == "ready", shown.stderr
    assert agent.cli("cost", "--socket", agent.socket, "--json").returncode == 0
    over_http = agent.cli("status", "--listen", agent.listen)
    assert over_http.returncode == 3 and "HTTP 401" in over_http.stderr
    # Reads on the control socket are not control actions: the audit log names none.
    audit = Path(agent.config["audit_log"])
    assert not audit.exists() or '"control"' not in audit.read_text()
