"""Run the real `aiinfra-agent` (process backend) against stub engines, over real HTTP."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import AGENT, FAST_POLICY, STUB, Agent, free_port, stub, vllm  # noqa: F401


def audit_lines(agent: Agent, at_least: int = 1) -> list[dict]:
    """The audit log's lines, once it has AT_LEAST (the line is written as the response completes)."""
    path, deadline, lines = Path(agent.config["audit_log"]), time.monotonic() + 5, []
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        if len(lines) >= at_least:
            break
        time.sleep(0.05)
    return lines


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited: it only waits to be reaped
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def make_agent(tmp_path) -> Iterator[Callable[..., Agent]]:
    agents: list[Agent] = []

    def make(engines, profiles, default, policy=None) -> Agent:
        agent = Agent(tmp_path / f"agent{len(agents)}", engines, profiles, default, policy)
        agent.tmp.mkdir()
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.stop()


class Senders:
    """Clients sending one request after another, each in its own thread, until stopped: every
    request a stream or a whole answer in turn (ASK(stream) returns whether the answer was whole);
    what raised is counted as cut."""

    def __init__(self, ask: Callable[[bool], bool], clients: int = 2) -> None:
        self.ask, self.stopping = ask, threading.Event()
        self.answered, self.cut = 0, list[str]()
        self.threads = [threading.Thread(target=self._send) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _send(self) -> None:
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                assert self.ask(n % 2 == 1)
                self.answered += 1
            except Exception as exc:  # a cut request: what the caller counts
                self.cut.append(f"{exc!r} <- {exc.__cause__!r}")

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(120)
