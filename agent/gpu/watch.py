"""The GPUs' part of each tick of the loop: NVML read and settings kept (GpuMonitor), the driver's
verdict, whether each ready engine holds memory on exactly its GPUs, how the GPU sets of
tensor-parallel engines are linked, and the energy reading for the ledger."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiinfra.agent.effects import process_tree
from aiinfra.agent.energy import Ledger
from aiinfra.agent.gpu.monitor import GpuMonitor
from aiinfra.agent.gpu.policy import TensorPath, expects_memory, placement_problem
from aiinfra.agent.reconcile import EngineState, Phase
from aiinfra.agent.schema import Engine

log = logging.getLogger("aiinfra.agent")
Say = Callable[[str | None, str, str], None]  # engine (None: the box), event, message


class GpuWatch:
    def __init__(self, monitor: GpuMonitor, engines: Mapping[str, Engine], cpu_vllm: bool, ledger: Ledger,
                 say: Say) -> None:  # fmt: skip
        self.monitor = monitor
        self.engines = engines
        self.cpu_vllm = cpu_vllm  # a CPU build holds no GPU memory by design
        self.ledger = ledger
        self.say = say
        self.degraded: dict[str, str] = {}  # ready engines not holding memory on exactly their GPUs: name → why
        self.tp_sets = {tuple(sorted(e.gpus)) for e in engines.values() if len(e.gpus) > 1}
        self.tensor_paths: dict[tuple[int, ...], TensorPath] = {}  # read once NVML answers

    @property
    def hold(self) -> bool:
        """Engines may not start now (no GPU, a reboot pending, NVML hung)."""
        return self.monitor.verdict.hold

    async def tick(self, now: float, states: Mapping[str, EngineState],
                   restart_all: Callable[[str], Awaitable[None]]) -> None:  # fmt: skip
        """Read the GPUs when due; when the loaded driver changed under the engines, RESTART_ALL (once)."""
        monitor = self.monitor
        if not monitor.due(now):
            return
        before = monitor.verdict.state
        verdict = await monitor.tick(now)
        if verdict.state != before:
            self.say(None, f"gpu_{verdict.state}", verdict.message or f"GPUs {verdict.state}")
        if verdict.restart_engines:
            monitor.drift_restarts += 1
            self.say(None, "driver_changed", verdict.message + "; restarting the engines")
            await restart_all(verdict.message)
            monitor.engines_started()  # the restart that follows happens under the new driver
        self._check_placement(now, states)
        running: dict[int, list[str]] = {}
        for name, state in states.items():
            for gpu in self.engines[name].gpus if state.running else ():
                running.setdefault(gpu, []).append(name)
        self.ledger.observe(monitor.snapshot, running, time.time(), now)
        if self.tp_sets and not self.tensor_paths and monitor.snapshot.state == "ok":
            await self._read_tensor_paths()

    def nccl_env(self, name: str) -> dict[str, str]:
        """The NCCL setting the links of engine NAME's GPUs call for (empty: none)."""
        path = self.tensor_paths.get(tuple(sorted(self.engines[name].gpus)))
        return dict(path.env) if path is not None else {}

    async def _read_tensor_paths(self) -> None:
        """Before any tensor-parallel engine starts: a pair of its GPUs with no P2P path is reported
        now, and the engine gets the NCCL setting that works, instead of a hang at its first all-reduce."""
        try:
            self.tensor_paths = await self.monitor.tensor_paths(self.tp_sets)
        except Exception as exc:  # NVML without P2P queries: nothing to tell, engines start as told
            log.warning("GPU links could not be read: %s", exc, extra={"EVENT": "p2p_unknown"})
            return
        for path in self.tensor_paths.values():
            if path.path == "host":
                self.say(None, "no_p2p", f"engines {', '.join(self._on(path.gpus))}: {path.reason}")

    def _on(self, gpus: tuple[int, ...]) -> list[str]:
        return sorted(n for n, e in self.engines.items() if tuple(sorted(e.gpus)) == gpus)

    def _check_placement(self, now: float, states: Mapping[str, EngineState]) -> None:
        """Each ready engine on the GPUs it was given, by NVML's process lists: one that fell back to the
        CPU, or landed on another GPU, is degraded."""
        for name, state in states.items():
            engine = self.engines[name]
            problem = None
            if state.phase == Phase.READY and state.pid is not None:
                expect = expects_memory(engine.runtime, self.cpu_vllm, state.last_traffic_ok, now)
                problem = placement_problem(process_tree(state.pid), engine.gpus, self.monitor.snapshot, expect)
            if problem != self.degraded.get(name):
                if problem is None:
                    self.degraded.pop(name, None)
                    self.say(name, "placement_ok", "holds memory on its GPUs again")
                else:
                    self.degraded[name] = problem
                    self.say(name, "degraded", problem)

    def status(self) -> dict[str, Any]:
        paths = [{"gpus": list(p.gpus), "path": p.path, "nccl": dict(p.env), "reason": p.reason or None,
                  "engines": self._on(p.gpus)} for p in self.tensor_paths.values()]  # fmt: skip
        return self.monitor.status() | {"tensor_parallel": paths}
