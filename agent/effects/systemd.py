"""Engines as `aiinfra-engine@NAME` systemd units: own cgroup each, outliving the agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import time
from pathlib import Path

from aiinfra.agent.effects import StartError, StartPending, check_port_free
from aiinfra.agent.engines import Launch
from aiinfra.agent.files import write_private

UNIT = "aiinfra-engine@{}.service"
KILLED_WITHIN_S = 10  # a SIGKILLed process tree is gone within this


async def _systemctl(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "systemctl", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


def launch_file(state_dir: Path, name: str) -> Path:
    return state_dir / "engines" / f"{name}.json"


def write_launch_file(state_dir: Path, launch: Launch, group: int = -1) -> None:
    """What the unit's `aiinfra-agent exec-engine NAME` runs: argv and environment (its own key, the
    operator's vllm_env), nothing else. Root's, readable by the engines' GROUP only, not by others."""
    path = launch_file(state_dir, launch.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chown(path.parent, -1, group)
    os.chmod(path.parent, 0o750)
    write_private(path, json.dumps({"argv": launch.argv, "env": launch.env}).encode(), 0o640, group)


def available() -> bool:
    """Root, under systemd, with the template unit installed."""
    if os.geteuid() != 0 or not Path("/run/systemd/system").is_dir() or not shutil.which("systemctl"):
        return False
    return any(
        Path(d, "aiinfra-engine@.service").exists()
        for d in ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
    )


class SystemdBackend:
    name = "systemd"

    def __init__(self, state_dir: Path, engine_user: str | None = None) -> None:
        self.state_dir = state_dir
        self.group = -1  # the engine units' Group=, which alone may read their launch files
        with contextlib.suppress(KeyError):
            self.group = pwd.getpwnam(engine_user).pw_gid if engine_user else -1

    async def start(self, launch: Launch) -> int | None:
        # A start queued behind a stop still ending (its processes not all gone: a cgroup v1 host may take
        # the unit's whole stop timeout) would hold `systemctl start`, and the loop with it, that long.
        if (await self._show(launch.name)).get("ActiveState") == "deactivating":
            raise StartPending(f"{UNIT.format(launch.name)} is still stopping")
        check_port_free(launch.port)
        write_launch_file(self.state_dir, launch, self.group)
        unit = UNIT.format(launch.name)
        await _systemctl("reset-failed", unit)
        rc, out = await _systemctl("start", unit)
        if rc != 0:
            raise StartError(f"systemctl start {unit} failed: {' '.join(out.split())}")
        pid = (await self._show(launch.name)).get("MainPID")
        return pid if isinstance(pid, int) else None

    async def _show(self, name: str) -> dict[str, int | str]:
        _, out = await _systemctl(
            "show", UNIT.format(name), "--property", "ActiveState,MainPID,ExecMainCode,ExecMainStatus"
        )
        props: dict[str, int | str] = {}
        for line in out.splitlines():
            key, _, value = line.partition("=")
            props[key] = int(value) if value.lstrip("-").isdigit() else value
        return props

    async def poll(self, name: str) -> int | None:
        props = await self._show(name)
        state = props.get("ActiveState")
        # Deactivating with no main process: the leader died by itself and systemd is ending what it left
        # (KillMode=mixed); the engine has exited, whatever systemd still waits for.
        if state in ("active", "activating", "reloading") or (state == "deactivating" and props.get("MainPID")):
            return None
        status = int(props.get("ExecMainStatus") or 0)
        # ExecMainCode: 1 exited (status is the exit code), 2 killed / 3 dumped (status is the signal)
        return -status if props.get("ExecMainCode") in (2, 3) else status

    async def stop(self, name: str, grace_s: float) -> None:
        """SIGTERM to the engine (KillMode=mixed), GRACE_S for it to end, then SIGKILL of everything in
        its unit. The unit's own TimeoutStopSec is for the stops that are not the agent's."""
        unit = UNIT.format(name)
        await _systemctl("stop", "--no-block", unit)
        if not await self._ended(name, grace_s):
            await _systemctl("kill", "--kill-whom=all", "--signal=SIGKILL", unit)
            await self._ended(name, KILLED_WITHIN_S)

    async def _ended(self, name: str, within_s: float) -> bool:
        """The engine's leader has exited (the rest of its unit goes with it), within WITHIN_S."""
        deadline = time.monotonic() + within_s
        while True:
            props = await self._show(name)
            if props.get("ActiveState") in ("inactive", "failed") or not props.get("MainPID"):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)

    async def adopt(self) -> dict[str, int | None]:
        _, out = await _systemctl("list-units", "--plain", "--no-legend", "--state=active", "aiinfra-engine@*")
        found: dict[str, int | None] = {}
        for line in out.splitlines():
            unit = line.split()[0] if line.split() else ""
            if unit.startswith("aiinfra-engine@") and unit.endswith(".service"):
                name = unit.removeprefix("aiinfra-engine@").removesuffix(".service")
                pid = (await self._show(name)).get("MainPID")
                found[name] = int(pid) if pid else None
        return found

    def log_tail(self, name: str, lines: int = 5) -> str:
        import subprocess

        proc = subprocess.run(
            ["journalctl", "-u", UNIT.format(name), "-n", str(lines), "-o", "cat", "--no-pager"],
            capture_output=True,
            text=True,
            check=False,
        )
        return " | ".join(line.strip() for line in proc.stdout.splitlines() if line.strip())
