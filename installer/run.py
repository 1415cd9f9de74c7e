"""Run a playbook through ansible-runner, follow its events, and sum the run up."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from aiinfra.agent.exits import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE
from aiinfra.installer.inventory import ansible_tool
from aiinfra.installer.workstation import ansible_environment, project_dir, state_dir


@dataclass
class HostTally:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    reboot_required: bool = False
    network_change_staged: bool = False  # role network_vlans: a VLAN change waits for --allow-network-change
    model_storage: str = ""  # role model_storage: the mount and its free space
    secure_boot: str = ""  # role nvidia_driver: the firmware's Secure Boot state, where the modules come from
    models: dict[str, int] = field(default_factory=dict)  # roles vllm, ollama: models by source (mirror, …)
    agent: str = ""  # role aiinfra_agent: the profile and its ready engines


@dataclass
class RunSummary:
    hosts: dict[str, HostTally]
    failures: list[str]
    duration_s: float
    run_dir: str
    check: bool
    rc: int
    slowest: list[tuple[str, float]] = field(default_factory=list)  # where the time went: (task, seconds)

    @property
    def exit_code(self) -> int:
        if any(t.unreachable for t in self.hosts.values()):
            return EXIT_UNREACHABLE
        if self.failures or any(t.failed for t in self.hosts.values()) or self.rc != 0:
            return EXIT_FAILED
        return EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "exit_code": self.exit_code,
            "changed": sum(t.changed for t in self.hosts.values()),
            "reboot_required": sorted(h for h, t in self.hosts.items() if t.reboot_required),
            "network_change_staged": sorted(h for h, t in self.hosts.items() if t.network_change_staged),
        }


@dataclass
class Progress:
    """Turns ansible-runner events into a live view: one rewritten line on a terminal, lines in a log."""

    out: TextIO | None
    live: Callable[[], bool] = lambda: False
    tally: dict[str, HostTally] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    task: str = ""
    tasks_seen: int = 0
    last_logged: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # task: its hosts' results' durations, summed

    def slowest(self, n: int = 5) -> list[tuple[str, float]]:
        ranked = sorted(self.seconds.items(), key=lambda kv: kv[1], reverse=True)[:n]
        return [(task, round(s, 1)) for task, s in ranked]

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        host = data.get("host")
        if kind == "playbook_on_task_start":
            role = data.get("role")
            self.task = f"{role} : {data.get('task', '')}" if role else data.get("task", "")
            self.tasks_seen += 1
            self._show()
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped"):
            tally = self.tally.setdefault(host, HostTally())
            result = data.get("res", {})
            self.seconds[self.task] = self.seconds.get(self.task, 0.0) + float(data.get("duration") or 0)
            if kind == "runner_on_ok":
                tally.ok += 1
                tally.changed += bool(result.get("changed"))
                # roles report through set_stats; its result carries the data per host
                stats = (result.get("ansible_stats") or {}).get("data") or {}
                if "aiinfra_reboot_required" in stats:
                    tally.reboot_required = str(stats["aiinfra_reboot_required"]).lower() == "true"
                if "aiinfra_network_change_staged" in stats:
                    tally.network_change_staged = str(stats["aiinfra_network_change_staged"]).lower() == "true"
                if "aiinfra_secure_boot" in stats:
                    tally.secure_boot = str(stats["aiinfra_secure_boot"]).strip()
                if "aiinfra_model_storage" in stats:
                    tally.model_storage = str(stats["aiinfra_model_storage"]).strip()
                for key in ("aiinfra_models_vllm", "aiinfra_models_ollama"):
                    for source in stats.get(key) or []:
                        tally.models[str(source)] = tally.models.get(str(source), 0) + 1
                if "aiinfra_agent_ready" in stats:
                    tally.agent = str(stats["aiinfra_agent_ready"]).strip()
            elif kind == "runner_on_skipped":
                tally.skipped += 1
            elif kind == "runner_on_unreachable":
                tally.unreachable += 1
                self._fail(f"{host}: unreachable: {_message(result)}")
            elif not data.get("ignore_errors"):
                tally.failed += 1
                self._fail(f"{host}: {self.task}: {_message(result)}")
            self._show()
        return True  # keep the event in the artifacts

    def _counts(self) -> str:
        ok = sum(t.ok for t in self.tally.values())
        changed = sum(t.changed for t in self.tally.values())
        failed = sum(t.failed + t.unreachable for t in self.tally.values())
        return f"ok={ok} changed={changed} failed={failed}"

    def _show(self) -> None:
        if self.out is None:
            return
        if self.live():
            line = f"[{self.tasks_seen:>3}] {self.task}"[:80]
            self.out.write(f"\r\x1b[2K{line}  {self._counts()}")
        elif self.task != self.last_logged:  # in a log: one line per task, not per host result
            self.last_logged = self.task
            self.out.write(f"  task {self.tasks_seen}: {self.task}\n")
        self.out.flush()

    def _fail(self, line: str) -> None:
        self.failures.append(line)
        if self.out is not None:
            prefix = "\r\x1b[2K" if self.live() else ""
            self.out.write(f"{prefix}FAILED {line}\n")

    def end(self) -> None:
        if self.out is not None and self.live():
            self.out.write("\r\x1b[2K")
            self.out.flush()


def _message(result: dict[str, Any]) -> str:
    for sub in (result.get("failed_modules") or {}).values():  # fact gathering nests its failures
        result = sub
    text = result.get("module_stderr") or result.get("msg") or result.get("stderr") or result.get("reason") or "failed"
    return " ".join(str(text).split())[:300]


def run_playbook(
    inventory: Path,
    limit: str,
    *,
    check: bool = False,
    diff: bool = False,
    tags: str | None = None,
    allow_reboot: bool = False,
    allow_network_change: bool = False,
    nodes: dict[str, str] | None = None,
    progress: Progress,
) -> RunSummary:
    import ansible_runner  # the installer extra; imported late so `aiinfra validate` stays quick

    root = project_dir()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = state_dir() / "runs" / f"{stamp}-{re.sub(r'[^A-Za-z0-9_.-]', '_', limit)}"
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # artifacts hold the run's environment
    cmdline = " ".join(flag for flag, on in (("--check", check), ("--diff", diff)) if on)
    started = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=str(run_dir),
        ident="ansible",
        playbook=str(root / "playbooks" / "site.yml"),
        inventory=str(inventory),
        limit=limit,
        tags=tags,
        cmdline=cmdline or None,
        extravars={
            "aiinfra_allow_reboot": allow_reboot,
            "aiinfra_allow_network_change": allow_network_change,
            "aiinfra_agent_nodes": nodes or {},
        },
        envvars={
            # ansible-playbook from the same environment as aiinfra, whatever PATH says
            "PATH": f"{Path(ansible_tool('ansible-playbook')).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # ansible-runner turns host key checking off unless told otherwise; aiinfra does not
            "ANSIBLE_HOST_KEY_CHECKING": os.environ.get("ANSIBLE_HOST_KEY_CHECKING", "True"),
            "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
            **ansible_environment(),
        },
        event_handler=progress,
        quiet=True,
    )
    progress.end()
    hosts = {h: progress.tally.get(h, HostTally()) for h in sorted(progress.tally)}
    return RunSummary(
        hosts=hosts,
        failures=progress.failures,
        duration_s=round(time.monotonic() - started, 1),
        run_dir=str(run_dir),
        check=check,
        rc=runner.rc if runner.rc is not None else 1,
        slowest=progress.slowest(),
    )
