"""Pure decisions: each engine's state, what was observed, and the clock in; new state and actions out.

No processes, sockets or sleeps here: the supervisor feeds observations and the operator's, the
driver's and the router's inputs (a profile switch, a restart, a driver change, traffic) in, and
carries the actions out.

Phases: stopped → starting → ready (through gating when it serves a changed identity: its gate passed, it
serves; failed, it is stopped and the identity before starts again); a failure (exit, startup timeout,
liveness) → backoff → starting again after the delay; too many failures inside the window → failed
(until restarted by hand). The legal transitions are TRANSITIONS; EngineState.to refuses any other.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from aiinfra.agent.config import Policy


class Phase(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    GATING = "gating"
    READY = "ready"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FAILED = "failed"


# Where each phase may go (staying put is always allowed). A start or an adoption goes to starting; a
# failure to backoff, or failed past the crash-loop limit; a stop to stopping, then stopped on exit. A
# start of a changed identity is ready only through gating; a failed gate stops it.
# Backoff and failed keep their phase while their process is killed, and go to stopped when the
# profile drops them or the operator restarts them.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STOPPED: frozenset({Phase.STARTING, Phase.STOPPING, Phase.BACKOFF, Phase.FAILED}),
    Phase.STARTING: frozenset({Phase.READY, Phase.GATING, Phase.STOPPING, Phase.BACKOFF, Phase.FAILED}),
    Phase.GATING: frozenset({Phase.READY, Phase.STOPPING, Phase.BACKOFF, Phase.FAILED}),
    Phase.READY: frozenset({Phase.STOPPING, Phase.BACKOFF, Phase.FAILED}),
    Phase.BACKOFF: frozenset({Phase.STARTING, Phase.STOPPED, Phase.FAILED}),
    Phase.STOPPING: frozenset({Phase.STOPPED}),
    Phase.FAILED: frozenset({Phase.STOPPED}),
}


class IllegalTransition(Exception):
    """A decision would move an engine where TRANSITIONS does not allow: a bug, never an input."""


@dataclass(frozen=True)
class EngineState:
    name: str
    phase: Phase = Phase.STOPPED
    since: float = 0.0
    running: bool = False  # a process (or unit) is up for this engine
    pid: int | None = None
    started_at: float | None = None
    ready_since: float | None = None
    restarts: int = 0
    failures: tuple[float, ...] = ()  # times of recent failures, for crash-loop detection
    streak: int = 0  # failures since the engine was last ready long enough: drives the backoff
    next_start_at: float | None = None
    last_error: str | None = None
    liveness_failures: int = 0
    last_traffic_ok: float | None = None
    probe_latency_ms: float | None = None
    last_startup_s: float | None = None  # how long its last start took to be ready: the next one's guess
    leaving_since: float | None = None  # running, but no longer in the active profile: its drain began then
    gate_due: bool = False  # this start serves a changed identity: ready only once its gate passed

    def to(self, phase: Phase, now: float, **changes: Any) -> EngineState:
        if phase != self.phase and phase not in TRANSITIONS[self.phase]:
            raise IllegalTransition(f"{self.name}: {self.phase.value} → {phase.value}")
        return replace(self, phase=phase, since=now, **changes)


@dataclass(frozen=True)
class Observation:
    """What the supervisor saw this tick. None: not looked at this time."""

    exited: int | None = None  # exit code (negative: signal) of a process that ended by itself
    start_error: str | None = None  # the start itself failed (port taken, no binary)
    ready: bool | None = None  # readiness probe result
    alive: bool | None = None  # liveness probe result
    probe_latency_ms: float | None = None
    log_tail: str = ""


@dataclass(frozen=True)
class Start:
    name: str


@dataclass(frozen=True)
class Stop:
    name: str
    reason: str


Action = Start | Stop


def backoff_delay(streak: int, policy: Policy) -> float:
    """Delay before start number `streak + 1` after `streak` failures in a row: doubling, capped."""
    return min(policy.backoff_initial_s * 2 ** max(streak - 1, 0), policy.backoff_max_s)


def _fail(state: EngineState, reason: str, now: float, policy: Policy) -> EngineState:
    failures = (*tuple(t for t in state.failures if now - t < policy.crash_loop_window_s), now)
    streak = state.streak + 1
    if len(failures) >= policy.crash_loop_failures:
        window = f"{policy.crash_loop_window_s:.0f}s"
        return state.to(
            Phase.FAILED,
            now,
            failures=failures,
            streak=streak,
            next_start_at=None,
            last_error=f"crash loop: {len(failures)} failures in {window}; last: {reason}",
            ready_since=None,
            liveness_failures=0,
        )
    return state.to(
        Phase.BACKOFF,
        now,
        failures=failures,
        streak=streak,
        next_start_at=now + backoff_delay(streak, policy),
        last_error=reason,
        ready_since=None,
        liveness_failures=0,
    )


def observe(state: EngineState, seen: Observation, now: float, policy: Policy) -> EngineState:
    """Fold one observation into an engine's state."""
    if seen.probe_latency_ms is not None:
        state = replace(state, probe_latency_ms=seen.probe_latency_ms)
    if seen.start_error is not None:
        return _fail(replace(state, running=False, pid=None), seen.start_error, now, policy)
    if seen.exited is not None:
        state = replace(state, running=False, pid=None)
        if state.phase == Phase.STOPPING:
            return state.to(Phase.STOPPED, now)
        if state.phase in (Phase.STARTING, Phase.GATING, Phase.READY):
            tail = f"; last log: {seen.log_tail}" if seen.log_tail else ""
            return _fail(state, f"exited with {_exit_text(seen.exited)}{tail}", now, policy)
        return state
    if state.phase == Phase.STARTING:
        if seen.ready:
            took = None if state.started_at is None else now - state.started_at
            if state.gate_due:
                return state.to(Phase.GATING, now, last_startup_s=took)
            return state.to(Phase.READY, now, ready_since=now, liveness_failures=0, last_startup_s=took)
        if state.started_at is not None and now - state.started_at > policy.startup_timeout_s:
            return _fail(state, f"not ready {policy.startup_timeout_s:.0f}s after start", now, policy)
    elif state.phase == Phase.READY:
        if state.ready_since is not None and now - state.ready_since >= policy.backoff_reset_after_s:
            state = replace(state, streak=0)
        if seen.alive is False:
            state = replace(state, liveness_failures=state.liveness_failures + 1)
            if state.liveness_failures >= policy.liveness_failures:
                return _fail(
                    state,
                    f"hung: {state.liveness_failures} liveness probes (a one-token request) got no answer",
                    now,
                    policy,
                )
        elif seen.alive:
            state = replace(state, liveness_failures=0)
    return state


def _exit_text(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"code {code}"


def liveness_due(state: EngineState, last_probe: float | None, now: float, policy: Policy) -> bool:
    """A one-token request is sent only to a ready engine, and not when real traffic vouched for it."""
    if state.phase != Phase.READY:
        return False
    if state.last_traffic_ok is not None and now - state.last_traffic_ok < policy.traffic_grace_s:
        return False
    return last_probe is None or now - last_probe >= policy.liveness_interval_s


def decide(
    desired: Iterable[str],
    states: Mapping[str, EngineState],
    now: float,
    may_start: bool = True,
    busy: Collection[str] = (),
    drain_s: float = float("inf"),
    held: Collection[str] = (),
) -> list[Action]:
    """What to start and stop so that exactly the desired engines run.

    Engines leaving are stopped first, each once the requests it is answering (busy) are done, or
    drain_s after it began to leave, whichever comes first; none is started while one that leaves
    still holds its GPUs, so two profiles' engines never run at once. may_start=False (no GPU, a
    reboot pending) holds every start: stops still happen; HELD names engines whose start must wait
    (a follower's rank until its head starts).
    """
    wanted = set(desired)
    actions: list[Action] = []
    leaving = [s for s in states.values() if s.name not in wanted and s.running]
    for state in leaving:
        if state.phase == Phase.STOPPING:
            continue
        if state.name not in busy:
            actions.append(Stop(state.name, "not in the active profile"))
        elif state.leaving_since is not None and now - state.leaving_since >= drain_s:
            actions.append(Stop(state.name, f"not in the active profile; requests still in hand after the "
                                            f"drain deadline ({drain_s:g}s) end with an error"))  # fmt: skip
    for state in states.values():
        if state.name in wanted and state.running and state.phase in (Phase.BACKOFF, Phase.FAILED):
            actions.append(Stop(state.name, state.last_error or "failed"))  # hung or never ready: kill
    if leaving or not may_start:
        return actions
    for name in sorted(wanted):
        state = states[name]
        if state.running or name in held:
            continue
        if state.phase == Phase.STOPPED or (
            state.phase == Phase.BACKOFF and state.next_start_at is not None and now >= state.next_start_at
        ):
            actions.append(Start(name))
    return actions


def started(state: EngineState, pid: int | None, now: float, gate_due: bool = False) -> EngineState:
    restarts = state.restarts + (1 if state.phase == Phase.BACKOFF else 0)
    return state.to(
        Phase.STARTING,
        now,
        running=True,
        pid=pid,
        started_at=now,
        next_start_at=None,
        restarts=restarts,
        ready_since=None,
        liveness_failures=0,
        leaving_since=None,
        gate_due=gate_due,
    )


def gate_passed(state: EngineState, now: float) -> EngineState:
    return state.to(Phase.READY, now, ready_since=now, liveness_failures=0, gate_due=False)


def gate_failed(state: EngineState, problem: str, now: float) -> tuple[EngineState, list[Stop]]:
    """The changed identity failed its gate: it is stopped (decide() then starts the launch the
    supervisor put back at once). Not a failure of what comes back: its backoff and crash count start afresh."""
    state = replace(state, gate_due=False, last_error=f"gate failed: {problem}", failures=(), streak=0)
    if not state.running and state.phase in (Phase.BACKOFF, Phase.FAILED):  # it died starting
        return state.to(Phase.STOPPED, now, next_start_at=None), []
    if state.phase == Phase.BACKOFF:  # never ready, still running: killed, then the one before at once
        state = replace(state, next_start_at=now)
    return state, [Stop(state.name, f"gate failed: {problem}")]


def stopping(state: EngineState, now: float) -> EngineState:
    """A stop was issued. Failed/backoff engines keep their phase: only their process goes."""
    if state.phase in (Phase.BACKOFF, Phase.FAILED):
        return state
    return state.to(Phase.STOPPING, now)


def reset(state: EngineState, now: float) -> EngineState:
    """An operator's restart: forget the failures, start afresh."""
    return state.to(
        Phase.STOPPED if not state.running else state.phase,
        now,
        failures=(),
        streak=0,
        next_start_at=None,
        last_error=None,
    )


# -- the other inputs: the operator, the driver, the router ---------------------------------------


def switch(states: Mapping[str, EngineState], desired: Iterable[str], now: float) -> dict[str, EngineState]:
    """A profile switch: an engine that leaves and holds nothing forgets its backoff or failure (it
    starts afresh when a profile takes it again). Those still running begin their drain, and are
    stopped by decide(); one the new profile keeps is no longer leaving."""
    wanted = set(desired)
    switched = {}
    for name, state in states.items():
        if name in wanted:
            state = replace(state, leaving_since=None)
        elif state.running:
            state = replace(state, leaving_since=now if state.leaving_since is None else state.leaving_since)
        elif state.phase in (Phase.BACKOFF, Phase.FAILED):
            state = state.to(Phase.STOPPED, now)
        switched[name] = state
    return switched


def operator_restart(state: EngineState, now: float) -> tuple[EngineState, list[Stop]]:
    """The operator's restart: the failures forgotten, the process (if any) stopped; decide() starts it."""
    state = reset(state, now)
    return state, [Stop(state.name, "restart asked for by the operator")] if state.running else []


def driver_changed(states: Mapping[str, EngineState], reason: str) -> list[Action]:
    """Another driver was loaded: every running engine is stopped, to start again under it."""
    return [Stop(name, reason) for name, state in states.items() if state.running]


# Traffic is noted to the second (one state copy a second, not one a request): a liveness probe may
# come up to that much sooner than traffic_grace_s alone would say.
TRAFFIC_OK_RESOLUTION_S = 1.0


def traffic_ok(state: EngineState, now: float) -> EngineState:
    """Real traffic succeeded: it stands in for the liveness probe (liveness_due). Noted to the second:
    within one, the same state."""
    if state.last_traffic_ok is not None and now - state.last_traffic_ok < TRAFFIC_OK_RESOLUTION_S:
        return state
    return replace(state, last_traffic_ok=now)


# A start whose length nothing is known of yet (a first start): a small model's load.
FIRST_START_GUESS_S = 30.0


def expected_ready_in(state: EngineState, now: float) -> float | None:
    """Seconds until the engine is likely ready, its last start's length the guess; None: it will not
    be without the operator (failed)."""
    if state.phase == Phase.READY:
        return 0.0
    if state.phase == Phase.FAILED:
        return None
    load = state.last_startup_s or FIRST_START_GUESS_S
    if state.phase == Phase.STARTING and state.started_at is not None:
        return max(load - (now - state.started_at), 1.0)
    if state.phase == Phase.GATING:
        return 1.0
    if state.phase == Phase.BACKOFF and state.next_start_at is not None:
        return max(state.next_start_at - now, 0.0) + load
    return load  # stopped with a start due, or stopping before one


# -- profiles switched on request (profile_switching) ----------------------------------------------


def dwell_left(switched_at: float | None, min_dwell_s: float, now: float) -> float:
    """Seconds before the active profile may be left on request (0: now)."""
    return 0.0 if switched_at is None else max(switched_at + min_dwell_s - now, 0.0)


def back_to_default_in(last_request: float | None, switched_at: float | None, back_after_idle_s: float,
                       min_dwell_s: float, now: float) -> float | None:  # fmt: skip
    """Seconds before a profile switched to on request goes back to the default (0: now): back_after_idle_s
    after the last request for its models (after the switch, when none came), and not before its
    min_dwell_s. None: no switch to go back from."""
    if switched_at is None:
        return None
    idle_since = max(last_request or switched_at, switched_at)
    return max(idle_since + back_after_idle_s - now, dwell_left(switched_at, min_dwell_s, now), 0.0)
