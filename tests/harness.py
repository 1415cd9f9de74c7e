"""The real `aiinfra-agent` on this machine (process backend), against the kit's stub engines over real
HTTP: what the agent's tests and the benchmarks run. No GPU layer unless given the fake NVML."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from aiinfra.agent import client
from aiinfra.installer.lab import kit_files as kit

STUB = str(kit.STUB_ENGINE)
AGENT = str(Path(sys.executable).with_name("aiinfra-agent"))
FAST_POLICY = {
    "tick_s": 0.1,
    "startup_timeout_s": 10,
    "readiness_interval_s": 0.2,
    "probe_timeout_s": 1,
    "liveness_interval_s": 0.5,
    "liveness_timeout_s": 0.5,
    "liveness_failures": 2,
    "backoff_initial_s": 0.5,
    "backoff_max_s": 2,
    "backoff_reset_after_s": 60,
    "crash_loop_failures": 10,
    "crash_loop_window_s": 60,
    "stop_grace_s": 2,
}


# Ports free_port has handed out in this process: one agent takes three (status, router, engine)
# before it binds any, so a port still free may already be promised (CI saw an agent's router refused
# the port its own status listener had just taken).
_promised: set[int] = set()


def free_port() -> int:
    """A loopback port nothing is bound to and not handed out before by this process, chosen below
    the kernel's ephemeral range: a port the kernel hands out itself (bind to 0) may become some
    outgoing connection's source port before the engine binds it (a test saw "port … is already in
    use" for the whole of its setup)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(10000, max(low, 10001))
        if port in _promised:
            continue
        _promised.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in 10000-{low}")


# Hands a listening socket to the program that follows as systemd does (fd 3, LISTEN_PID, LISTEN_FDS).
HANDOVER = """import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="router")
os.execv(sys.argv[2], sys.argv[2:])"""


def stub(*flags: str, runtime: str = "vllm") -> list[str]:
    return [sys.executable, STUB, "--runtime", runtime, *flags]


def vllm(port: int, *flags: str, gpus: list[int] | None = None) -> dict[str, Any]:
    """A vLLM engine run by the stub; its misbehaviour flags ride in extra_args, as an operator's would."""
    return {
        "runtime": "vllm",
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "served_name": f"m{port}",
        "gpus": gpus or [0],
        "port": port,
        "extra_args": list(flags),
    }


class Agent:
    """The real aiinfra-agent (process backend) on this machine, its engines the kit's stub unless told
    otherwise, its files in TMP."""

    def __init__(
        self,
        tmp: Path,
        engines: dict[str, dict],
        profiles: dict[str, list[str]],
        default: str,
        policy: dict | None = None,
    ) -> None:
        self.tmp = tmp
        self.listen = f"127.0.0.1:{free_port()}"
        self.socket = str(tmp / "control.sock")
        self.read_from: str | None = self.listen  # where status() reads; None: the control socket
        self.config_path = tmp / "agent.yml"
        self.config: dict[str, Any] = {
            "engines": engines,
            "profiles": profiles,
            "default_profile": default,
            "backend": "process",
            "status_listen": self.listen,
            "control_socket": self.socket,
            "state_dir": str(tmp / "state"),
            "data_dir": str(tmp / "data"),
            "model_storage_mount": str(tmp / "models"),
            "engine_user": None,
            "policy": {**FAST_POLICY, **(policy or {})},
            "router_listen": f"127.0.0.1:{free_port()}",
            "keys_file": str(tmp / "keys.json"),
            "audit_log": str(tmp / "audit.log"),
            "router_timeout_s": 5,
            "vllm_command": stub(),
            "ollama_command": stub(runtime="ollama"),
            "gpu": None,  # no GPU layer, unless a test gives it the fake NVML
        }
        self.proc: subprocess.Popen[str] | None = None
        self.env: dict[str, str] = {}
        self.router_socket: socket.socket | None = None

    def hold_router_socket(self) -> None:
        """Listen on the router's address here and hand the socket to every agent started, as systemd's
        aiinfra-router.socket does: connections wait in it while no agent runs."""
        host, port = self.config["router_listen"].rsplit(":", 1)
        self.router_socket = socket.create_server((host, int(port)), backlog=1024)

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        for engine in self.config["engines"].values():  # staged weights, as the vllm role leaves them
            if engine["runtime"] == "vllm":
                staged = Path(self.config["model_storage_mount"]) / "models" / engine["model"]
                staged.mkdir(parents=True, exist_ok=True)
                if not (staged / "config.json").exists():  # a real model's is left alone
                    (staged / "config.json").write_text("{}")

    def start(self) -> Agent:
        self.write_config()
        self.log = open(self.tmp / "agent.log", "a")  # noqa: SIM115
        argv, kept = [AGENT, "run", "--config", str(self.config_path)], tuple[int, ...]()
        if self.router_socket is not None:  # systemd's way: fd 3, named, for this very process
            kept = (self.router_socket.fileno(),)
            argv = [sys.executable, "-c", HANDOVER, str(kept[0]), *argv]
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **self.env},
            pass_fds=kept,
        )
        self.wait(lambda s: True, timeout=15, what="the agent to answer")
        return self

    def status(self) -> dict[str, Any]:
        return client.status(self.read_from, socket_path=self.socket)

    def engine_key(self, name: str) -> str:
        """The key engine NAME asks of every request: what only the agent (and so a bench) can know."""
        from aiinfra.agent.engines import engine_key

        return engine_key((Path(self.config["state_dir"]) / "engine-keys.secret").read_bytes(), name)

    def engine(self, name: str) -> dict[str, Any]:
        return self.status()["engines"][name]

    def wait(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
                if predicate(last):
                    return last
            except client.AgentUnavailable as exc:
                last = exc
                if self.proc is not None and self.proc.poll() is not None:
                    break
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; last status: {last}\nagent log:\n{self.agent_log()}")

    def wait_phase(self, name: str, phase: str, timeout: float = 15) -> dict[str, Any]:
        return self.wait(lambda s: s["engines"][name]["phase"] == phase, timeout, f"{name} to be {phase}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AGENT, *args], capture_output=True, text=True, timeout=60, check=False)

    def agent_log(self) -> str:
        path = self.tmp / "agent.log"
        return path.read_text()[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class PeakMemory:
    """A process's resident memory, sampled every 20 ms from a thread: its peak over the baseline."""

    def __init__(self, pid: int) -> None:
        import psutil  # type: ignore[import-untyped]  # the tests' and benches' (aiinfra[test]), not the box's

        self.process = psutil.Process(pid)
        self.baseline = self.peak = self.process.memory_info().rss
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def growth_mib(self) -> float:
        self.done.set()
        self.thread.join()
        return (self.peak - self.baseline) / 2**20
