"""The reconcile loop: observe engines, fold observations in (reconcile.observe), act (reconcile.decide).

Decisions are pure (reconcile.py), the operator's and the driver's inputs included; this module only
polls the backend, runs probes, carries actions out and records each change as an event, in one
place (_set). The router and the API read a Snapshot, never the loop's own dictionaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp

from aiinfra.agent import probes, reconcile
from aiinfra.agent.config import AgentConfig
from aiinfra.agent.effects import Backend, StartError, process_tree
from aiinfra.agent.energy import Ledger
from aiinfra.agent.engines import Launch, launch, vllm_build
from aiinfra.agent.files import write_private
from aiinfra.agent.gpu.monitor import GpuMonitor
from aiinfra.agent.gpu.policy import TensorPath, placement_problem
from aiinfra.agent.notify import audit
from aiinfra.agent.reconcile import (
    Action,
    EngineState,
    Observation,
    Phase,
    Stop,
    decide,
    liveness_due,
    observe,
    started,
    stopping,
)

log = logging.getLogger("aiinfra.agent")
SWITCH_REASONS = ("operator", "request", "idle")  # why the profile changed: the metrics' label


def engine_secret(state_dir: Path) -> bytes:
    """The agent's secret for the engines' keys (engines.engine_key), kept in its state so that engines it
    adopts after a restart keep theirs; readable by root alone."""
    path = state_dir / "engine-keys.secret"
    try:
        secret = path.read_bytes()
        if len(secret) == 32:
            return secret
    except OSError:
        pass
    secret = os.urandom(32)
    write_private(path, secret)
    return secret


def _read_counts(path: Path) -> dict[str, int]:
    try:
        counts = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(counts, dict):
        return {}
    return {k: v for k, v in counts.items() if isinstance(k, str) and isinstance(v, int) and v >= 0}


@dataclass(frozen=True)
class Snapshot:
    """What the router and the API may read: the profile and each engine's state at one moment."""

    profile: str | None
    profiles: Mapping[str, list[str]]
    desired: tuple[str, ...]
    states: Mapping[str, EngineState]
    launches: Mapping[str, Launch]
    served: frozenset[str]  # every name any engine serves, in any profile
    switching: Mapping[str, Any]  # profile → SwitchPolicy: the profiles a request may switch to

    def ready(self, name: str) -> bool:
        return self.states[name].phase == Phase.READY


class Supervisor:
    def __init__(
        self,
        config: AgentConfig,
        backend: Backend,
        clock: Callable[[], float] = time.monotonic,
        gpu: GpuMonitor | None = None,
    ) -> None:
        self.config = config
        self.policy = config.policy
        self.backend = backend
        self.clock = clock
        secret = engine_secret(Path(config.state_dir))
        self.launches: dict[str, Launch] = {name: launch(name, config, secret) for name in config.engines}
        # Restart counts outlive the agent, a reboot and a rebuild (the records on the model disk).
        self.counts_file = Path(config.data_dir) / "restarts.json"
        self.counts = _read_counts(self.counts_file)
        self.states: dict[str, EngineState] = {
            name: EngineState(name, restarts=self.counts.get(name, 0)) for name in config.engines
        }
        self.profile = config.default_profile
        self.stops: dict[str, asyncio.Task[None]] = {}
        self.ready_probes: dict[str, asyncio.Task[tuple[bool, float]]] = {}
        self.live_probes: dict[str, asyncio.Task[bool]] = {}
        self.last_ready_probe: dict[str, float] = {}
        self.last_live_probe: dict[str, float] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=200)
        self.last_tick: float | None = None
        self.session: aiohttp.ClientSession | None = None
        self.gpu: GpuMonitor | None = gpu
        self.changes: dict[str, asyncio.Event] = {}  # set when an engine's phase (or the profile) changes
        # The router's inputs: requests answered now (leaving engines drain them before they stop),
        # and when each engine last had one (a profile switched to on request goes back when idle).
        self.inflight: Counter[str] = Counter()
        self.requested_at: dict[str, float] = {}  # when a request last arrived or left, per engine
        self.active: Counter[str] = Counter()  # requests waiting for or being answered by each engine
        self.switched_at: float | None = None
        self.switch_cause: dict[str, Any] = {}  # the last switch: reason, key, model, wall time
        self.switches: Counter[tuple[str, str]] = Counter()  # (profile, reason)
        # Ready engines whose processes do not hold memory on exactly their GPUs: name → why.
        self.degraded: dict[str, str] = {}
        self.cpu_vllm = vllm_build(config) == "cpu"  # a CPU build holds no GPU memory by design
        # The GPU sets of tensor-parallel engines, and how each is linked (read once NVML answers).
        self.tp_sets = {tuple(sorted(e.gpus)) for e in config.engines.values() if len(e.gpus) > 1}
        self.tensor_paths: dict[tuple[int, ...], TensorPath] = {}
        self.ledger = Ledger(Path(config.data_dir) / "energy.json")
        self.busy_since: dict[str, float] = {}  # engine → when its first request in flight began
        self.ledger_saved = clock()
        # Every name any engine serves, in any profile: a fixed set, for the metrics' labels.
        self.served: frozenset[str] = frozenset(m for target in self.launches.values() for m in target.served)

    # -- what the operator asks for ----------------------------------------------------------------

    def desired(self) -> list[str]:
        return self.config.profile_engines(self.profile)

    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.profile,
            MappingProxyType(self.config.profiles),
            tuple(self.desired()),
            MappingProxyType(dict(self.states)),
            MappingProxyType(self.launches),
            self.served,
            MappingProxyType(self.config.profile_switching),
        )

    def fresh(self) -> bool:
        """The loop ticked lately (liveness of the agent itself, for /healthz)."""
        return self.last_tick is not None and self.clock() - self.last_tick < max(5 * self.policy.tick_s, 5)

    def switch(self, profile: str) -> list[str]:
        """The operator's switch."""
        if profile not in self.config.profiles:
            raise KeyError(profile)
        return self._switch(profile, "operator")

    def request_switch(self, profile: str, key: str | None, model: str) -> float:
        """A request for MODEL of PROFILE (switchable on request): switch, unless the active profile
        must stay a while longer (min_dwell_s): then the seconds left."""
        current = self.config.profile_switching.get(self.profile or "")
        wait = reconcile.dwell_left(self.switched_at, current.min_dwell_s if current else 0, self.clock())
        if wait > 0:
            return wait
        self._switch(profile, "request", key, model)
        return 0.0

    def _switch(self, profile: str, reason: str, key: str | None = None, model: str | None = None) -> list[str]:
        by = f" (a request for {model} by key {key or '-'})" if reason == "request" else f" ({reason})"
        self._event(None, "profile", f"switching to profile {profile}{by}")
        self.switch_cause = {"profile": profile, "reason": reason, "key": key, "model": model, "time": time.time()}
        audit(json.dumps({"time": round(time.time(), 3), "event": "profile_switch", "from": self.profile,
                                   "to": profile, "reason": reason, "key": key or "-", "model": model}))  # fmt: skip
        self.switches[(profile, reason)] += 1
        self.switched_at = self.clock()
        self.profile = profile
        for name, state in reconcile.switch(self.states, self.desired(), self.clock()).items():
            self._set(name, state)
        for name in list(self.changes):
            self._wake(name)
        return self.desired()

    def restart(self, name: str) -> None:
        if name not in self.states:
            raise KeyError(name)
        state, actions = reconcile.operator_restart(self.states[name], self.clock())
        self._set(name, state)
        for stop in actions:  # only stops: the loop starts it again
            assert isinstance(stop, reconcile.Stop)
            self._stop(stop.name, stop.reason)
        self._event(name, "restart", "restart asked for by the operator")

    def request_started(self, name: str) -> None:
        self.inflight[name] += 1
        self.requested_at[name] = self.clock()
        self.busy_since.setdefault(name, self.clock())

    def request_done(self, name: str) -> None:
        self.inflight[name] -= 1
        if self.inflight[name] == 0 and name in self.busy_since:
            self.ledger.busy(name, self.clock() - self.busy_since.pop(name), time.time())

    def count_tokens(self, name: str, tokens: int) -> None:
        """Tokens an engine made or read for a request the router answered (for the cost per token)."""
        self.ledger.tokens(name, tokens, time.time())

    def request_arrived(self, name: str) -> None:
        """A request for engine NAME's model arrived (it may wait for the engine): not idle until it left."""
        self.active[name] += 1
        self.requested_at[name] = self.clock()

    def request_left(self, name: str) -> None:
        self.active[name] -= 1
        self.requested_at[name] = self.clock()

    def traffic_ok(self, name: str) -> None:
        """Real traffic succeeded (the router says so): it stands in for the liveness probe."""
        self.states[name] = reconcile.traffic_ok(self.states[name], self.clock())

    # -- the loop ----------------------------------------------------------------------------------

    def _save_counts(self) -> None:
        counts = {name: state.restarts for name, state in self.states.items() if state.restarts}
        if counts != self.counts:
            self.counts = counts
            with contextlib.suppress(OSError):  # a count is worth less than a running agent
                write_private(self.counts_file, json.dumps(counts).encode())

    async def adopt(self) -> None:
        now = self.clock()
        for name, pid in (await self.backend.adopt()).items():
            if name in self.states:
                adopted = started(self.states[name], pid, now)
                self._set(name, adopted, "adopted", f"found running (pid {pid}); probing it")

    async def tick(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        now = self.clock()
        for name, state in list(self.states.items()):
            self._set(name, observe(state, await self._observe(name, state), now, self.policy))
        self._switch_back_when_idle(now)
        may_start = await self._gpu_tick(now)
        busy = {name for name, count in self.inflight.items() if count > 0}
        await self._act(decide(self.desired(), self.states, now, may_start, busy, self.policy.drain_timeout_s), now)
        self._schedule_probes(now)
        self._save_counts()
        if now - self.ledger_saved >= 60:
            self.ledger.save()
            self.ledger_saved = now
        self.last_tick = now

    def _switch_back_when_idle(self, now: float) -> None:
        policy = self.config.profile_switching.get(self.profile or "")
        default = self.config.default_profile
        if policy is None or default is None or self.profile == default:
            return
        if any(self.active[n] > 0 for n in self.desired()):
            return  # requests wait for or are answered by its engines: not idle
        last = max((self.requested_at.get(n, 0.0) for n in self.desired()), default=0.0) or None
        if reconcile.back_to_default_due(last, self.switched_at, policy.back_after_idle_s, policy.min_dwell_s, now):
            self._switch(default, "idle")

    def switching(self) -> dict[str, Any]:
        """The on-request policy, what the last switch was, and the time left before the switch back."""
        policy = self.config.profile_switching.get(self.profile or "")
        back_in = None
        if policy is not None and self.profile != self.config.default_profile and self.switched_at is not None:
            now = self.clock()
            last = max([self.switched_at, *(self.requested_at.get(n, 0.0) for n in self.desired())])
            dwell = reconcile.dwell_left(self.switched_at, policy.min_dwell_s, now)
            back_in = round(max(last + policy.back_after_idle_s - now, dwell, 0), 1)
        return {
            "policies": {name: p.model_dump() for name, p in self.config.profile_switching.items()},
            "last": self.switch_cause or None,
            "back_to_default_in_s": back_in,
            "switches": [{"profile": p, "reason": r, "count": n} for (p, r), n in sorted(self.switches.items())],
        }

    async def _gpu_tick(self, now: float) -> bool:
        """Read the GPUs when due; restart the engines once if the driver changed. False: hold starts."""
        if self.gpu is None:
            return True
        before = self.gpu.verdict.state
        if self.gpu.due(now):
            verdict = await self.gpu.tick(now)
            if verdict.state != before:
                self._event(None, f"gpu_{verdict.state}", verdict.message or f"GPUs {verdict.state}")
            if verdict.restart_engines:
                self.gpu.drift_restarts += 1
                self._event(None, "driver_changed", verdict.message + "; restarting the engines")
                await self._act(reconcile.driver_changed(self.states, verdict.message), now)
                self.gpu.engines_started()  # the restart below happens under the new driver
            self._check_placement(now)
            running: dict[int, list[str]] = {}
            for name, state in self.states.items():
                for gpu in self.config.engines[name].gpus if state.running else ():
                    running.setdefault(gpu, []).append(name)
            self.ledger.observe(self.gpu.snapshot, running, time.time(), now)
            if self.tp_sets and not self.tensor_paths and self.gpu.snapshot.state == "ok":
                await self._read_tensor_paths()
        return not self.gpu.verdict.hold

    async def _read_tensor_paths(self) -> None:
        """Before any tensor-parallel engine starts: a pair of its GPUs with no P2P path is reported
        now, and the engine gets the NCCL setting that works, instead of a hang at its first all-reduce."""
        assert self.gpu is not None
        try:
            self.tensor_paths = await self.gpu.tensor_paths(self.tp_sets)
        except Exception as exc:  # NVML without P2P queries: nothing to tell, engines start as told
            log.warning("GPU links could not be read: %s", exc, extra={"EVENT": "p2p_unknown"})
            return
        for path in self.tensor_paths.values():
            engines = [n for n, e in self.config.engines.items() if tuple(sorted(e.gpus)) == path.gpus]
            if path.path == "host":
                self._event(None, "no_p2p", f"engines {', '.join(engines)}: {path.reason}")

    def _check_placement(self, now: float) -> None:
        """Each ready engine on the GPUs it was given, by NVML's process lists (an engine that fell back
        to the CPU, or landed on another GPU, is degraded). Ollama loads a model on first use: it must
        hold memory only while it has answered lately."""
        assert self.gpu is not None
        for name, state in self.states.items():
            engine = self.config.engines[name]
            if state.phase != Phase.READY or state.pid is None:
                problem = None
            else:
                if engine.runtime == "vllm":
                    expect = not self.cpu_vllm
                else:
                    expect = state.last_traffic_ok is not None and now - state.last_traffic_ok < 60
                problem = placement_problem(process_tree(state.pid), engine.gpus, self.gpu.snapshot, expect)
            if problem != self.degraded.get(name):
                if problem is None:
                    self.degraded.pop(name, None)
                    self._event(name, "placement_ok", "holds memory on its GPUs again")
                else:
                    self.degraded[name] = problem
                    self._event(name, "degraded", problem)

    async def run(self, stop: asyncio.Event, on_tick: Callable[[], None] = lambda: None) -> None:
        while not stop.is_set():
            await self.tick()
            on_tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.policy.tick_s)

    async def close(self, stop_engines: bool) -> None:
        for task in [*self.ready_probes.values(), *self.live_probes.values()]:
            task.cancel()
        if stop_engines:
            for name, state in self.states.items():
                if state.running:
                    self._stop(name, "agent shutting down")
        if self.stops:
            await asyncio.gather(*self.stops.values(), return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        self.ledger.save()

    # -- effects -----------------------------------------------------------------------------------

    async def _observe(self, name: str, state: EngineState) -> Observation:
        if not state.running:
            return Observation()
        code = await self.backend.poll(name)
        if code is not None:
            # journalctl, for the systemd backend: not in the loop that serves the router
            tail = "" if state.phase == Phase.STOPPING else await asyncio.to_thread(self.backend.log_tail, name)
            return Observation(exited=code, log_tail=tail)
        ready = latency = alive = None
        task = self.ready_probes.get(name)
        if task is not None and task.done():
            del self.ready_probes[name]
            ready, latency = task.result()
        live = self.live_probes.get(name)
        if live is not None and live.done():
            del self.live_probes[name]
            alive = live.result()
        return Observation(ready=ready, alive=alive, probe_latency_ms=latency)

    async def _act(self, actions: list[Action], now: float) -> None:
        """Carry the decided actions out, in their order (decide() puts the stops first)."""
        for action in actions:
            if isinstance(action, Stop):
                self._stop(action.name, action.reason)
            else:
                await self._start(action.name, now)

    def _launch_of(self, name: str) -> Launch:
        """The engine's launch, with the NCCL setting its GPUs' links call for (the operator's wins)."""
        target = self.launches[name]
        path = self.tensor_paths.get(tuple(sorted(self.config.engines[name].gpus)))
        if path is None or not path.env:
            return target
        return replace(target, env={**dict(path.env), **target.env})

    async def _start(self, name: str, now: float) -> None:
        try:
            pid = await self.backend.start(self._launch_of(name))
        except (StartError, OSError) as exc:  # OSError: its launch file or log could not be written
            failed = observe(self.states[name], Observation(start_error=str(exc)), now, self.policy)
            self._set(name, failed, "start_failed", str(exc))
            return
        self._set(name, started(self.states[name], pid, now), "started", f"pid {pid}")
        if self.gpu is not None:
            self.gpu.engines_started()
        self.last_ready_probe.pop(name, None)
        self.last_live_probe.pop(name, None)

    def _stop(self, name: str, reason: str) -> None:
        if name in self.stops and not self.stops[name].done():
            return
        self._set(name, stopping(self.states[name], self.clock()), "stopping", reason)
        for probes_of in (self.ready_probes, self.live_probes):
            task = probes_of.pop(name, None)
            if task is not None:
                task.cancel()
        self.stops[name] = asyncio.create_task(self.backend.stop(name, self.policy.stop_grace_s))

    def _schedule_probes(self, now: float) -> None:
        assert self.session is not None
        for name, state in self.states.items():
            target = self.launches[name]
            if state.phase == Phase.STARTING and name not in self.ready_probes:
                last = self.last_ready_probe.get(name)
                if last is None or now - last >= self.policy.readiness_interval_s:
                    self.last_ready_probe[name] = now
                    self.ready_probes[name] = asyncio.create_task(
                        probes.readiness(self.session, target, self.policy.probe_timeout_s)
                    )
            if name not in self.live_probes and liveness_due(state, self.last_live_probe.get(name), now, self.policy):
                self.last_live_probe[name] = now
                self.live_probes[name] = asyncio.create_task(
                    probes.liveness(self.session, target, self.policy.liveness_timeout_s)
                )

    def _set(self, name: str, new: EngineState, event: str | None = None, message: str | None = None) -> None:
        """Every change of an engine's state goes through here: a change of phase is an event, named
        after the new phase unless the caller names it (started, stopping, adopted, ...)."""
        old = self.states[name]
        self.states[name] = new
        if new.phase != old.phase:
            self._wake(name)
        if event is None and new.phase != old.phase:
            event = new.phase.value
            failed = new.phase in (Phase.BACKOFF, Phase.FAILED)
            message = new.last_error if failed else f"{old.phase.value} → {new.phase.value}"
        if event is not None:
            self._event(name, event, message)

    def _wake(self, name: str) -> None:
        event = self.changes.pop(name, None)
        if event is not None:
            event.set()

    async def changed(self, name: str, timeout: float) -> None:
        """Return when engine NAME's phase or the profile changes, or after TIMEOUT seconds."""
        event = self.changes.setdefault(name, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _event(self, engine: str | None, event: str, message: str | None) -> None:
        record = {"time": time.time(), "engine": engine, "event": event, "message": message or ""}
        self.events.append(record)
        level = logging.WARNING if event in ("backoff", "failed", "start_failed") else logging.INFO
        log.log(
            level,
            "%s%s",
            f"{engine}: " if engine else "",
            message or event,
            extra={"ENGINE": engine or "", "EVENT": event},
        )

    # -- reporting ---------------------------------------------------------------------------------

    def _paths_status(self) -> list[dict[str, Any]]:
        return [
            {"gpus": list(p.gpus), "path": p.path, "nccl": dict(p.env), "reason": p.reason or None,
             "engines": sorted(n for n, e in self.config.engines.items() if tuple(sorted(e.gpus)) == p.gpus)}
            for p in self.tensor_paths.values()
        ]  # fmt: skip

    def status(self) -> dict[str, Any]:
        now, wall = self.clock(), time.time()
        desired = set(self.desired())
        engines = {}
        for name, state in self.states.items():
            target = self.launches[name]
            engines[name] = {
                "runtime": target.runtime,
                # Whether the engine may send a prompt off the box (Ollama's cloud models).
                "cloud": getattr(self.config.engines[name], "cloud", False),
                "phase": state.phase.value,
                "desired": name in desired,
                "pid": state.pid,
                "port": target.port,
                "served": target.served,
                "since": round(wall - (now - state.since), 3) if state.since else None,
                "restarts": state.restarts,
                "last_error": state.last_error,
                "degraded": self.degraded.get(name),
                "probe_latency_ms": None if state.probe_latency_ms is None else round(state.probe_latency_ms, 1),
                "next_start_in_s": None if state.next_start_at is None else round(max(state.next_start_at - now, 0), 1),
            }
        return {
            "profile": self.profile,
            "profiles": self.config.profiles,
            "backend": self.backend.name,
            "engines": engines,
            "gpu": None if self.gpu is None else self.gpu.status() | {"tensor_parallel": self._paths_status()},
            "switching": self.switching(),
            "energy": vars(self.ledger.totals()),
            "events": list(self.events)[-50:],
        }
