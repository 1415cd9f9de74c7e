"""Ollama as it is now (0.34): a `llama-server` child per loaded model, cloud models off, its scheduler
from the spec. The kit's stub stands in for `ollama serve` and forks its llama-server as the real one does."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import psutil

from tests.agent.conftest import free_port, pid_alive, vllm

MODEL = "llama3.2:3b"


def ollama_engine(port: int, **settings) -> dict:
    return {"runtime": "ollama", "gpus": [0], "port": port, "models": [MODEL], **settings}


def llama_servers(leader: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(leader).children() if p.name() == "llama-server"]


def ports_of(pid: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN}


def load(port: int) -> None:
    """A request for the model, as a client's would: Ollama then loads it in a llama-server."""
    body = json.dumps({"model": MODEL, "prompt": "hi", "stream": False}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/generate", body), timeout=5):
        pass


def loaded(port: int, leader: int) -> psutil.Process:
    load(port)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        runners = llama_servers(leader)
        if runners and ports_of(runners[0].pid):
            return runners[0]
        time.sleep(0.05)
    raise AssertionError("no llama-server came up")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_killed_ollama_serve_leaves_no_llama_server_holding_its_port(make_agent):
    port = free_port()
    agent = make_agent({"o": ollama_engine(port)}, {"home": ["o"]}, "home", policy={"liveness_interval_s": 60})
    leader = agent.start().wait_phase("o", "ready")["engines"]["o"]["pid"]
    runner = loaded(port, leader)
    runner_port = ports_of(runner.pid).pop()
    assert os.getpgid(runner.pid) == leader  # in ollama serve's process group, as Ollama starts it

    os.kill(leader, signal.SIGKILL)  # the runner is left an orphan, holding the model's memory and its port
    agent.wait(lambda s: s["engines"]["o"]["restarts"] == 1 and s["engines"]["o"]["phase"] == "ready", 20, "back")
    assert not pid_alive(runner.pid) and port_free(runner_port)


def test_a_killed_agent_leaves_no_llama_server_once_restarted(make_agent):
    port = free_port()
    agent = make_agent({"o": ollama_engine(port)}, {"home": ["o"]}, "home", policy={"liveness_interval_s": 60})
    leader = agent.start().wait_phase("o", "ready")["engines"]["o"]["pid"]
    runner = loaded(port, leader)
    agent.proc.send_signal(signal.SIGKILL)
    agent.proc.wait()
    assert pid_alive(runner.pid)  # ollama serve died with the agent (parent-death signal); its runner did not
    agent.start().wait_phase("o", "ready", timeout=20)
    assert not pid_alive(runner.pid)


def test_a_stopped_ollama_takes_its_llama_server_along(make_agent):
    port, other = free_port(), free_port()
    engines = {"o": ollama_engine(port), "v": vllm(other, gpus=[1])}
    agent = make_agent(engines, {"home": ["o"], "work": ["v"]}, "home", policy={"liveness_interval_s": 60})
    leader = agent.start().wait_phase("o", "ready")["engines"]["o"]["pid"]
    runner = loaded(port, leader)
    assert agent.cli("profile", "work", "--socket", agent.socket, "--listen", agent.listen).returncode == 0
    assert not pid_alive(leader) and not pid_alive(runner.pid)


def test_prompts_stay_home_unless_the_spec_says_otherwise_and_the_scheduler_is_the_specs(make_agent):
    home, cloud = free_port(), free_port()
    engines = {
        "home": ollama_engine(home, num_parallel=4, max_loaded_models=2, context_length=8192, max_queue=64),
        "cloud": ollama_engine(cloud) | {"gpus": [1], "cloud": True},
    }
    agent = make_agent(engines, {"p": ["home", "cloud"]}, "p", policy={"liveness_interval_s": 60}).start()
    report = agent.wait(lambda s: all(e["phase"] == "ready" for e in s["engines"].values()), 15, "both ready")

    def environment(name: str) -> dict[str, str]:
        raw = Path(f"/proc/{report['engines'][name]['pid']}/environ").read_bytes()
        return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)

    home_env, cloud_env = environment("home"), environment("cloud")
    assert home_env["OLLAMA_NO_CLOUD"] == "1" and "OLLAMA_NO_CLOUD" not in cloud_env
    scheduler = {"OLLAMA_NUM_PARALLEL": "4", "OLLAMA_MAX_LOADED_MODELS": "2", "OLLAMA_CONTEXT_LENGTH": "8192",
                 "OLLAMA_MAX_QUEUE": "64"}  # fmt: skip
    assert {k: v for k, v in home_env.items() if k in scheduler} == scheduler
    assert not any(k in cloud_env for k in ("OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_QUEUE"))  # unset: Ollama's defaults
    assert (report["engines"]["home"]["cloud"], report["engines"]["cloud"]["cloud"]) == (False, True)
    table = agent.cli("status", "--listen", agent.listen).stdout
    assert "prompts: sent off the box by cloud (Ollama cloud models on)" in table
