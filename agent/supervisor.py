"""The reconcile loop: observe the engines, fold what was seen in, decide, act.

Decisions are pure (reconcile.py); this module polls the backend, reads the probes (probes.Prober),
the GPUs (gpu.watch) and the traffic (traffic.py), carries the actions out, and records each change
of an engine's state as an event, in one place (_set). The router sees it through view.Engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from aiinfra.agent import identity, reconcile
from aiinfra.agent.audit import audit
from aiinfra.agent.config import AgentConfig
from aiinfra.agent.effects import Backend, StartError, StartPending
from aiinfra.agent.energy import Ledger
from aiinfra.agent.engines import Launch, launch, vllm_build
from aiinfra.agent.events import Events
from aiinfra.agent.gating import Gatekeeper
from aiinfra.agent.gpu.monitor import GpuMonitor
from aiinfra.agent.gpu.watch import GpuWatch
from aiinfra.agent.probes import Prober
from aiinfra.agent.ranks import Ranks
from aiinfra.agent.reconcile import Action, EngineState, Observation, Phase, Stop, decide, observe, started, stopping
from aiinfra.agent.records import RestartCounts, engine_secret
from aiinfra.agent.traffic import Traffic
from aiinfra.agent.view import View

LEDGER_SAVE_S = 60  # the energy ledger is written this often (and at stop)


class Supervisor:
    def __init__(self, config: AgentConfig, backend: Backend, clock: Callable[[], float] = time.monotonic,
                 gpu: GpuMonitor | None = None, prober: Prober | None = None) -> None:  # fmt: skip
        self.config = config
        self.policy = config.policy
        self.backend = backend
        self.clock = clock
        self.prober = prober or Prober(config.policy)
        secret = engine_secret(Path(config.state_dir))
        configured = {name: launch(name, config, secret) for name in config.engines}
        self.gates = Gatekeeper(config, configured, clock, self.prober.ask)
        self.launches: dict[str, Launch] = {name: self.gates.launch(name) for name in config.engines}
        self.served = frozenset(m for target in self.launches.values() for m in target.served)
        # Restart counts outlive the agent, a reboot and a rebuild (the records on the model disk).
        self.counts = RestartCounts(Path(config.data_dir) / "restarts.json")
        self.states = {name: EngineState(name, restarts=self.counts.counts.get(name, 0)) for name in config.engines}
        self.profile = config.default_profile
        self.switched_at: float | None = None
        self.switch_cause: dict[str, Any] = {}  # the last switch: reason, key, model, wall time
        self.switches: Counter[tuple[str, str]] = Counter()  # (profile, reason)
        self.stops: dict[str, asyncio.Task[None]] = {}
        self.events = Events()
        self.history = identity.History(Path(config.data_dir) / "identities.json")
        self.serving: dict[str, identity.Identity] = {}  # what each engine started with
        self.changes: dict[str, asyncio.Event] = {}  # set when an engine's phase (or the profile) changes
        self.last_tick: float | None = None
        self.ledger = Ledger(Path(config.data_dir) / "energy.json")
        self.ledger_saved = clock()
        self.traffic = Traffic(self.ledger, clock)
        self.ranks = Ranks(config, clock) if config.peer_listen() is not None else None
        cpu_vllm = vllm_build(config) == "cpu"
        self.gpu = None if gpu is None else GpuWatch(gpu, config.engines, cpu_vllm, self.ledger, self.events.add)

    # -- what the operator and the router ask for --------------------------------------------------

    def desired(self) -> list[str]:
        return self.config.profile_engines(self.profile)

    def view(self) -> View:
        return View(self.profile, MappingProxyType(self.config.profiles), tuple(self.desired()),
                    MappingProxyType(dict(self.states)), MappingProxyType(self.launches), self.served,
                    MappingProxyType(self.config.profile_switching))  # fmt: skip

    def fresh(self) -> bool:
        """The loop ticked lately (liveness of the agent itself, for /healthz)."""
        return self.last_tick is not None and self.clock() - self.last_tick < max(5 * self.policy.tick_s, 5)

    def switch(self, profile: str) -> list[str]:
        """The operator's switch."""
        if profile not in self.config.profiles:
            raise KeyError(profile)
        return self._switch(profile, "operator")

    def request_switch(self, profile: str, key: str | None, model: str) -> float:
        current = self.config.profile_switching.get(self.profile or "")
        wait = reconcile.dwell_left(self.switched_at, current.min_dwell_s if current else 0, self.clock())
        if wait > 0:
            return wait
        self._switch(profile, "request", key, model)
        return 0.0

    def back_to_default_in(self) -> float | None:
        """Seconds before a profile switched to on request goes back to the default; None: it stays."""
        policy = self.config.profile_switching.get(self.profile or "")
        if policy is None or self.config.default_profile in (None, self.profile):
            return None
        last = self.traffic.last_request(self.desired())
        return reconcile.back_to_default_in(last, self.switched_at, policy.back_after_idle_s, policy.min_dwell_s,
                                            self.clock())  # fmt: skip

    def _switch(self, profile: str, reason: str, key: str | None = None, model: str | None = None) -> list[str]:
        by = f" (a request for {model} by key {key or '-'})" if reason == "request" else f" ({reason})"
        self.events.add(None, "profile", f"switching to profile {profile}{by}")
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
        state, stops = reconcile.operator_restart(self.states[name], self.clock())
        self.launches[name] = self.gates.retry(name)
        self._set(name, state)
        for stop in stops:  # the loop starts it again
            self._stop(stop.name, stop.reason)
        self.events.add(name, "restart", "restart asked for by the operator")

    # -- the loop ----------------------------------------------------------------------------------

    async def adopt(self) -> None:
        for name, pid in (await self.backend.adopt()).items():
            if name in self.states:
                adopted = started(self.states[name], pid, self.clock())
                self.serving[name] = self.history.last(name) or identity.of(self.launches[name])
                self._set(name, adopted, "adopted", f"found running (pid {pid}); probing it")

    async def tick(self) -> None:
        now = self.clock()
        for name, state in list(self.states.items()):
            if name in self.traffic.succeeded:  # real traffic stands in for the liveness probe
                state = reconcile.traffic_ok(state, self.traffic.succeeded[name])
            self._set(name, observe(state, await self._observe(name, state), now, self.policy))
            self._gate(name, now)
        held: set[str] = set()
        if self.ranks is not None:
            for name, reason in self.ranks.stops(self.states, self.launches):
                self._stop(name, reason)
            held = self.ranks.held(self.launches)
            self.ranks.poll()
        back_in = self.back_to_default_in()
        if back_in == 0 and not self.traffic.holding(self.desired()):
            assert self.config.default_profile is not None
            self._switch(self.config.default_profile, "idle")
        if self.gpu is not None:
            await self.gpu.tick(now, self.states, self._restart_all)
        may_start = self.gpu is None or not self.gpu.hold
        await self._act(decide(self.desired(), self.states, now, may_start, self.traffic.busy(),
                               self.policy.drain_timeout_s, held), now)  # fmt: skip
        self.prober.schedule(self.states, self.launches, now)
        self.counts.save({name: state.restarts for name, state in self.states.items()})
        if now - self.ledger_saved >= LEDGER_SAVE_S:
            self.ledger.save()
            self.ledger_saved = now
        self.last_tick = now

    async def run(self, stop: asyncio.Event, on_tick: Callable[[], None] = lambda: None) -> None:
        while not stop.is_set():
            await self.tick()
            on_tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.policy.tick_s)

    async def close(self, stop_engines: bool) -> None:
        await self.gates.close()
        await self.prober.close()
        if self.ranks is not None:
            await self.ranks.close()
        if stop_engines:
            for name, state in self.states.items():
                if state.running:
                    self._stop(name, "agent shutting down")
        if self.stops:
            await asyncio.gather(*self.stops.values(), return_exceptions=True)
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
        if self.ranks is not None and self.launches[name].rank:
            return Observation(ready=self.ranks.ready(name))
        ready, latency, alive = self.prober.results(name)
        return Observation(ready=ready, alive=alive, probe_latency_ms=latency)

    async def _act(self, actions: list[Action], now: float) -> None:
        """Carry the decided actions out, in their order (decide() puts the stops first)."""
        for action in actions:
            if isinstance(action, Stop):
                self._stop(action.name, action.reason)
            else:
                await self._start(action.name, now)

    async def _restart_all(self, reason: str) -> None:
        await self._act(reconcile.driver_changed(self.states, reason), self.clock())

    async def _start(self, name: str, now: float) -> None:
        target = self.launches[name]
        if self.gpu is not None and (nccl := self.gpu.nccl_env(name)):  # the operator's setting wins
            target = replace(target, env={**nccl, **target.env})
        # The launch's identity, not the NCCL setting the GPUs' links add: that follows the hardware. Kept
        # before the start: an agent that dies meanwhile adopts the engine as what it is.
        self.serving[name] = identity.of(self.launches[name])
        self.history.started(name, self.serving[name])
        if self.ranks is not None and name in self.ranks.spans:
            self.ranks.started(name, target.rank)
        try:
            pid = await self.backend.start(target)
        except StartPending:
            return  # decide() asks again at the next tick
        except (StartError, OSError) as exc:  # OSError: its launch file or log could not be written
            failed = observe(self.states[name], Observation(start_error=str(exc)), now, self.policy)
            self._set(name, failed, "start_failed", str(exc))
            return
        due = not target.rank and self.gates.due(name, self.serving[name])  # the head's gate speaks for its ranks
        self.gates.started(name, due)
        note = f"pid {pid}" + (", its gate due" if due else "")
        self._set(name, started(self.states[name], pid, now, due), "started", note)
        if self.gpu is not None:
            self.gpu.monitor.engines_started()
        self.prober.started(name)

    def _gate(self, name: str, now: float) -> None:
        """The gate's part of a tick: a ready engine serving other than its target is replaced; a changed
        identity, once ready, is asked its gate; the outcome makes it serve, or brings back the one before."""
        state, serving = self.states[name], self.serving.get(name)
        died = state.phase == Phase.BACKOFF or (state.phase == Phase.FAILED and not state.running)
        if serving is not None and state.gate_due and died:
            # Starting is the gate's first check: a changed identity that dies or never gets ready fails it.
            self._gate_failed(name, state, serving, f"did not start: {state.last_error}", now)
            return
        if serving is None or not state.running or self.launches[name].rank:
            return
        if state.phase == Phase.READY and state.leaving_since is None:
            if self.gates.ready(name, serving, self.launches[name]):
                self._stop(name, "what it serves changes (model, program or arguments): the new one has a gate")
        elif state.phase == Phase.GATING:
            self.gates.begin(name, self.launches[name], serving)
            outcome = self.gates.outcome(name)
            if outcome is None:
                return
            if outcome.passed:
                self.gates.passed(name, serving, self.launches[name], outcome)
                self._set(name, reconcile.gate_passed(state, now), "gate_passed", "serves from now on")
                return
            self._gate_failed(name, state, serving, outcome.check, now)

    def _gate_failed(self, name: str, state: EngineState, serving: identity.Identity, check: str, now: float) -> None:
        back = self.gates.failed(name, serving, check)
        if back is None:
            last_error = f"gate failed: {check}; no identity that passed before to go back to"
            self._set(name, state.to(Phase.FAILED, now, gate_due=False, last_error=last_error))
            return
        self.launches[name] = back
        state, stops = reconcile.gate_failed(state, check, now)
        self._set(name, state, "gate_failed", f"{check}; going back to the identity that passed before")
        for stop in stops:
            self._stop(stop.name, stop.reason)

    def _stop(self, name: str, reason: str) -> None:
        if name in self.stops and not self.stops[name].done():
            return
        self.gates.stopped(name)
        self._set(name, stopping(self.states[name], self.clock()), "stopping", reason)
        self.prober.stopped(name)
        self.stops[name] = asyncio.create_task(self.backend.stop(name, self.policy.stop_grace_s))

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
            self.events.add(name, event, message)

    def _wake(self, name: str) -> None:
        event = self.changes.pop(name, None)
        if event is not None:
            event.set()

    async def changed(self, name: str, timeout: float) -> None:
        event = self.changes.setdefault(name, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
