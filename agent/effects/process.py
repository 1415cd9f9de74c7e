"""Engines as plain child processes, each the leader of its own process group."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import pwd
import shutil
import signal
from collections import deque
from pathlib import Path
from typing import IO

from aiinfra.agent.effects import StartError, check_port_free
from aiinfra.agent.engines import Launch, environment

PR_SET_PDEATHSIG = 1


def _child_setup(user: str | None) -> None:
    """In the child, before exec: die with the agent (even by SIGKILL), then drop to the engine user."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.initgroups(user, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)


class ProcessBackend:
    name = "process"

    def __init__(self, state_dir: Path, user: str | None) -> None:
        self.dir = state_dir / "engines"  # made at an engine's start: one that cannot be is that start's failure
        self.user = user if user and os.geteuid() == 0 else None  # dropping privileges needs root
        self.procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, launch: Launch) -> int | None:
        check_port_free(launch.port)
        if shutil.which(launch.argv[0], path=launch.env.get("PATH", os.environ.get("PATH"))) is None:
            raise StartError(f"{launch.argv[0]}: no such program; install the {launch.runtime} engine")
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / f"{launch.name}.log", "ab")  # noqa: SIM115 - the child keeps it open
        try:
            proc = await self._spawn(launch, log)
        except OSError as exc:  # the exec itself failed: permissions, a bad interpreter
            as_user = f" as {self.user}" if self.user else ""
            raise StartError(f"cannot run {launch.argv[0]}{as_user}: {exc.strerror or exc}") from None
        finally:
            log.close()
        self.procs[launch.name] = proc
        record = {"pgid": proc.pid, "start": _start_time(proc.pid)}
        try:
            (self.dir / f"{launch.name}.pgid").write_text(json.dumps(record))
        except OSError as exc:  # unrecorded, it could not be found again: it does not run
            os.killpg(proc.pid, signal.SIGKILL)
            raise StartError(f"cannot record the engine's process group: {exc.strerror or exc}") from None
        return proc.pid

    async def _spawn(self, launch: Launch, log: IO[bytes] | int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *launch.argv,
            env=environment(launch.env, os.environ, pwd.getpwnam(self.user).pw_dir if self.user else None),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(_child_setup, self.user),
            cwd="/",
        )

    async def poll(self, name: str) -> int | None:
        proc = self.procs.get(name)
        if proc is None:
            return 0
        if proc.returncode is None:
            return None
        # The leader ended by itself: what it started (vLLM's EngineCore and Worker) may still hold
        # the port and the GPU memory. They are in its process group, which outlives it.
        _signal_group(proc.pid, signal.SIGKILL)
        self._forget(name)
        return proc.returncode

    async def stop(self, name: str, grace_s: float) -> None:
        proc = self.procs.get(name)
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # whatever of the tree outlived its leader
        self._forget(name)

    async def adopt(self) -> dict[str, int | None]:
        """A process backend cannot adopt: what engines of an agent that was killed left running is
        removed (the leaders die with the agent; their children may not)."""
        for record in self.dir.glob("*.pgid"):
            with contextlib.suppress(ValueError, OSError, KeyError, TypeError):
                data = json.loads(record.read_text())
                for pid in leftovers(int(data["pgid"]), int(data["start"])):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            record.unlink(missing_ok=True)
        return {}

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = self.dir / f"{name}.log"
        if not path.exists():
            return ""
        with path.open(errors="replace") as log:
            return " | ".join(line.strip() for line in deque(log, lines) if line.strip())

    def _forget(self, name: str) -> None:
        self.procs.pop(name, None)
        (self.dir / f"{name}.pgid").unlink(missing_ok=True)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stat(pid: int | str) -> tuple[int, int] | None:
    """(process group, start time in clock ticks since boot) of a process, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[2]), int(fields[19])  # fields 5 and 22 of proc(5), counted after the name


def _start_time(pid: int) -> int:
    stat = _stat(pid)
    return stat[1] if stat else 0


def leftovers(pgid: int, start: int) -> list[int]:
    """Processes that provably belong to an engine whose leader was PGID, started at START: members of
    its process group started no earlier than it. A live leader with another start time means the
    PID (and so the group) is someone else's now: nothing is.
    """
    leader = _stat(pgid)
    if leader is not None and leader[0] == pgid and leader[1] != start:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(entry.name)
            if stat is not None and stat[0] == pgid and stat[1] >= start:
                found.append(int(entry.name))
    return found
