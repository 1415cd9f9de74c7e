"""The GPU layer's part of the reconcile loop: read NVML, re-apply drifted settings, judge the driver."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiinfra.agent.gpu.apply import apply_action
from aiinfra.agent.gpu.nvml import Nvml, Snapshot
from aiinfra.agent.gpu.policy import (
    CannotApply,
    SetPersistence,
    SetPowerLimit,
    TensorPath,
    Verdict,
    driver_verdict,
    settings_actions,
    tensor_path,
)

log = logging.getLogger("aiinfra.agent")
REBOOT_MARKER = Path("/run/reboot-required")
READ_WAIT_S = 1.0  # a tick waits this long on NVML, then goes on (the watchdog, the engines, the router)


class GpuMonitor:
    def __init__(self, config: Any, state_dir: Path, nvml: Nvml | None = None) -> None:
        self.config = config  # GpuConfig
        self.nvml = nvml or Nvml()
        self.driver_file = state_dir / "engines-driver"  # the driver the engines were started under
        self.snapshot = Snapshot("unknown", "not read yet")
        self.verdict = Verdict("unknown", True, False, "not read yet")
        self.last_try: dict[tuple[int, str], float] = {}
        self.reapplied: Counter[str] = Counter()
        self.refused: list[str] = []
        self.drift_restarts = 0
        self.xids: Counter[int] = Counter()
        self.last_success: float | None = None
        self.last_read: float | None = None
        # The NVML work in hand (a read, then the settings it calls for), in a thread: at most one, and
        # the loop never waits on it long, since a GPU off the bus can hang an NVML call for good.
        self.work: asyncio.Future[Snapshot] | None = None
        self.work_since = 0.0

    @property
    def engines_driver(self) -> str | None:
        try:
            return self.driver_file.read_text().strip() or None
        except OSError:
            return None

    def engines_started(self) -> None:
        """Engines now run under the loaded driver: remember which."""
        if self.snapshot.driver and self.engines_driver != self.snapshot.driver:
            self.driver_file.parent.mkdir(parents=True, exist_ok=True)
            self.driver_file.write_text(self.snapshot.driver + "\n")

    async def tensor_paths(self, gpu_sets: set[tuple[int, ...]]) -> dict[tuple[int, ...], TensorPath]:
        """How each set of GPUs a tensor-parallel engine spans is linked (P2P and NVLink, from NVML)."""

        def read() -> dict[tuple[int, ...], TensorPath]:
            found = {}
            for gpus in gpu_sets:
                pairs = [(a, b) for i, a in enumerate(gpus) for b in gpus[i + 1 :]]
                found[gpus] = tensor_path(list(gpus), {p: self.nvml.links(*p) for p in pairs})
            return found

        return await asyncio.to_thread(read)

    def due(self, now: float) -> bool:
        return self.last_read is None or now - self.last_read >= self.config.interval_s

    async def tick(self, now: float) -> Verdict:
        """Read the GPUs and re-apply drifted settings, in a thread, waiting at most READ_WAIT_S: NVML work
        not back by then goes on while the loop does; past the GPU settings' read_timeout_s the GPU layer
        is `hung` and engine starts are held, until it returns."""
        self.last_read = now
        if self.work is None:
            self.work = asyncio.ensure_future(asyncio.to_thread(self._read_and_apply, now))
            self.work_since = now
        done, _ = await asyncio.wait({self.work}, timeout=READ_WAIT_S)
        if not done:
            waited = now - self.work_since
            if waited >= self.config.read_timeout_s and self.snapshot.state != "hung":
                self.snapshot = Snapshot("hung", f"an NVML call has not returned for {waited:.0f}s (a GPU off the "
                                                 "bus, Xid 79?); engine starts are held until it does")  # fmt: skip
                self.verdict = driver_verdict(self.snapshot, None, None, None, False)
            return self.verdict
        work, self.work = self.work, None
        self.snapshot = work.result()
        if self.snapshot.state == "ok":
            self.last_success = time.time()
        for gpu, xid in self.snapshot.xids:
            self.xids[gpu] += 1
            log.warning("GPU %s: XID %s", gpu, xid, extra={"EVENT": "xid"})
        self.verdict = driver_verdict(
            self.snapshot,
            self.engines_driver,
            self.config.driver_version,
            self.config.expected_count,
            REBOOT_MARKER.exists(),
        )
        return self.verdict

    def _read_and_apply(self, now: float) -> Snapshot:
        """In a thread: one NVML read, then the settings it shows drifted."""
        snapshot = self.nvml.read()
        actions = settings_actions(
            snapshot,
            self.config.power_limit_watts,
            self.config.persistence_mode,
            self.last_try,
            now,
            self.config.reapply_min_interval_s,
        )
        self.refused = [a.reason for a in actions if isinstance(a, CannotApply)]
        for action in actions:
            if not isinstance(action, CannotApply):
                self._apply(action, now)
        return snapshot

    def _apply(self, action: SetPowerLimit | SetPersistence, now: float) -> None:
        kind = "power" if isinstance(action, SetPowerLimit) else "persistence"
        self.last_try[(action.gpu, kind)] = now
        try:
            what = apply_action(self.nvml, action)
        except Exception as exc:  # NVML says no (permissions, a lost GPU): report, retry later
            log.warning("GPU %s: could not apply %s: %s", action.gpu, kind, exc, extra={"EVENT": "gpu_apply_failed"})
            return
        self.reapplied[kind] += 1
        log.info("GPU %s: re-applied %s", action.gpu, what, extra={"EVENT": "gpu_reapplied"})

    def status(self) -> dict[str, Any]:
        snap, verdict = self.snapshot, self.verdict
        return {
            "state": verdict.state,
            "message": verdict.message,
            "warnings": list(verdict.warnings) + self.refused,
            "driver": {
                "loaded": snap.driver,
                "library": snap.library,
                "kernel_module": snap.kernel_module,
                "pinned": self.config.driver_version,
                "engines_started_under": self.engines_driver,
            },
            "gpus": [vars(g) | {"xid_errors": self.xids[g.index]} for g in snap.gpus],
            "reapplied": dict(self.reapplied),
            "drift_restarts": self.drift_restarts,
            "nvml_last_success": self.last_success,
        }
