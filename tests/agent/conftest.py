"""Run the real `aiinfra-agent` (process backend) against stub engines, over real HTTP."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aiinfra.installer.kit.local_agent import AGENT, FAST_POLICY, STUB, Agent, free_port, stub, vllm  # noqa: F401


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
