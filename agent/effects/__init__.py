"""Thin effects: how engines are started and stopped. Two backends, one interface (Backend).

- systemd: each engine in its own `aiinfra-engine@NAME` unit (own cgroup: a stop takes the whole
  process tree and its VRAM; engines outlive an agent restart and are adopted). Used on the box.
- process: each engine in its own process group (SIGTERM, grace, SIGKILL of the group). Used where
  there is no systemd or the agent is not root: a developer's machine, the integration tests.
`backend: auto` picks systemd when running as root under systemd with the template installed.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Protocol

from aiinfra.agent.engines import LOOPBACK, Launch


class StartError(Exception):
    """The engine could not be started at all (port taken, program missing): say what to fix."""


class StartPending(Exception):
    """What the engine's last run left is still being ended (its unit deactivating): start it a tick later."""


class Backend(Protocol):
    name: str

    async def start(self, launch: Launch) -> int | None:
        """Start the engine; return its main pid. Raises StartError."""

    async def poll(self, name: str) -> int | None:
        """None while the engine runs; its exit code (negative: killed by that signal) once it ended."""

    async def stop(self, name: str, grace_s: float) -> None:
        """Stop the engine and everything it started; return once it is gone."""

    async def adopt(self) -> dict[str, int | None]:
        """Engines already running (after an agent restart): name → main pid."""

    def log_tail(self, name: str, lines: int = 5) -> str:
        """The engine's last log lines, one string, for failure reasons."""


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers do: connections of the engine's last run in TIME_WAIT must not count as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartError(
                    f"port {port} is already in use by another process; free it or change the engine's port"
                ) from None
            raise


def process_tree(pid: int) -> set[int]:
    """PID and every process under it (vLLM's EngineCore and workers), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                ppid = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in tree:
            tree.add(current)
            todo += children.get(current, [])
    return tree
