"""The agent's decisions, without processes: state and observations in, state and actions out."""

from __future__ import annotations

from dataclasses import replace

from aiinfra.agent.config import Policy
from aiinfra.agent.reconcile import (
    EngineState,
    Observation,
    Phase,
    Start,
    Stop,
    backoff_delay,
    decide,
    liveness_due,
    observe,
    started,
)

POLICY = Policy(
    backoff_initial_s=10,
    backoff_max_s=300,
    crash_loop_failures=5,
    crash_loop_window_s=900,
    startup_timeout_s=600,
    liveness_failures=3,
    backoff_reset_after_s=600,
    traffic_grace_s=60,
    liveness_interval_s=30,
)


def running(name: str = "e", at: float = 0.0) -> EngineState:
    return started(EngineState(name), pid=100, now=at)


def test_backoff_doubles_from_10s_to_a_5_minute_cap():
    assert [backoff_delay(n, POLICY) for n in range(1, 8)] == [10, 20, 40, 80, 160, 300, 300]


def test_an_exit_schedules_a_start_after_the_backoff():
    state = observe(running(at=0), Observation(exited=1, log_tail="boom"), now=5, policy=POLICY)
    assert state.phase == Phase.BACKOFF and not state.running
    assert state.next_start_at == 15 and state.last_error == "exited with code 1; last log: boom"
    assert decide(["e"], {"e": state}, now=14.9) == []
    assert decide(["e"], {"e": state}, now=15) == [Start("e")]
    assert started(state, pid=101, now=15).restarts == 1


def test_a_signal_death_is_named():
    state = observe(running(), Observation(exited=-9), now=1, policy=POLICY)
    assert state.last_error == "exited with signal 9"


def test_five_failures_in_the_window_is_a_crash_loop():
    state, now = running(), 0.0
    for _ in range(4):
        now += 1
        state = observe(state, Observation(exited=2), now, POLICY)
        assert state.phase == Phase.BACKOFF
        state = started(state, pid=1, now=now)
    state = observe(state, Observation(exited=2), now + 1, POLICY)
    assert state.phase == Phase.FAILED
    assert state.last_error == "crash loop: 5 failures in 900s; last: exited with code 2"
    assert decide(["e"], {"e": state}, now=10_000) == []


def test_failures_outside_the_window_do_not_count():
    state = running()
    for now in (0, 1000, 2000, 3000, 4000, 5000):
        state = started(observe(state, Observation(exited=2), now, POLICY), pid=1, now=now)
    assert state.phase == Phase.STARTING


def test_a_slow_start_is_left_alone_until_the_startup_timeout():
    state = running(at=0)
    assert observe(state, Observation(ready=False), now=599, policy=POLICY).phase == Phase.STARTING
    late = observe(state, Observation(ready=False), now=601, policy=POLICY)
    assert late.phase == Phase.BACKOFF and late.last_error == "not ready 600s after start"
    assert decide(["e"], {"e": late}, now=602) == [Stop("e", "not ready 600s after start")]


def test_ready_then_three_failed_liveness_probes_is_a_hang():
    state = observe(running(), Observation(ready=True), now=1, policy=POLICY)
    assert state.phase == Phase.READY
    for now in (2, 3):
        state = observe(state, Observation(alive=False), now, POLICY)
        assert state.phase == Phase.READY
    state = observe(state, Observation(alive=False), 4, POLICY)
    assert state.phase == Phase.BACKOFF and state.last_error.startswith("hung: 3 liveness probes")
    assert decide(["e"], {"e": state}, now=4) == [Stop("e", state.last_error)]


def test_one_good_liveness_probe_clears_the_count():
    state = observe(running(), Observation(ready=True), now=1, policy=POLICY)
    state = observe(observe(state, Observation(alive=False), 2, POLICY), Observation(alive=True), 3, POLICY)
    assert state.liveness_failures == 0


def test_ten_minutes_ready_resets_the_backoff():
    state = observe(running(), Observation(exited=1), now=1, policy=POLICY)
    state = observe(started(state, pid=1, now=11), Observation(ready=True), now=12, policy=POLICY)
    assert state.streak == 1
    state = observe(state, Observation(), now=12 + 600, policy=POLICY)
    assert state.streak == 0
    assert observe(state, Observation(exited=1), now=700, policy=POLICY).next_start_at == 710


def test_liveness_is_skipped_after_recent_real_traffic():
    ready = observe(running(), Observation(ready=True), now=1, policy=POLICY)
    assert liveness_due(ready, last_probe=None, now=2, policy=POLICY)
    assert not liveness_due(ready, last_probe=1, now=20, policy=POLICY)
    served = EngineState(**{**ready.__dict__, "last_traffic_ok": 50.0})
    assert not liveness_due(served, last_probe=None, now=100, policy=POLICY)
    assert liveness_due(served, last_probe=None, now=111, policy=POLICY)
    assert not liveness_due(running(), last_probe=None, now=5, policy=POLICY)  # not ready yet


def test_a_switch_stops_the_leaving_engines_before_starting_any():
    states = {"small": observe(running("small"), Observation(ready=True), 1, POLICY), "big": EngineState("big")}
    assert decide(["big"], states, now=2) == [Stop("small", "not in the active profile")]
    states["small"] = states["small"].to(Phase.STOPPING, 2)
    assert decide(["big"], states, now=3) == []  # still holding its GPU
    states["small"] = observe(states["small"], Observation(exited=0), 4, POLICY)
    assert states["small"].phase == Phase.STOPPED
    assert decide(["big"], states, now=4) == [Start("big")]


# -- the transition table and the other inputs ----------------------------------------------------


def test_a_move_the_table_does_not_allow_is_refused():
    import pytest

    from aiinfra.agent.reconcile import IllegalTransition

    with pytest.raises(IllegalTransition, match="failed → ready"):
        EngineState("a", Phase.FAILED).to(Phase.READY, 1.0)
    with pytest.raises(IllegalTransition, match="stopping → starting"):
        started(EngineState("a", Phase.STOPPING, running=True), 42, 1.0)


def test_every_path_the_decisions_take_is_in_the_table():
    """A long random run of observations, inputs and actions: no decision moves an engine illegally."""
    import random

    from aiinfra.agent import reconcile

    rng = random.Random(7)
    states = {n: EngineState(n) for n in ("a", "b")}
    profiles, desired, seen = [["a"], ["b"], ["a", "b"]], ["a"], set()
    now = 0.0
    for _ in range(20000):
        now += rng.choice((0.5, 5, 60))
        for name, state in list(states.items()):
            looks = [Observation(), Observation(exited=rng.choice((0, 1, -9))), Observation(ready=True),
                     Observation(ready=False), Observation(alive=False), Observation(alive=True)]  # fmt: skip
            states[name] = observe(state, rng.choice(looks) if state.running else Observation(), now, POLICY)
        event = rng.random()
        if event < 0.05:
            desired = rng.choice(profiles)
            states = reconcile.switch(states, desired, now)
        elif event < 0.08:
            name = rng.choice(list(states))
            states[name], actions = reconcile.operator_restart(states[name], now)
            if actions:
                states[name] = reconcile.stopping(states[name], now)
        elif event < 0.1:
            for stop in reconcile.driver_changed(states, "driver 580.126.09 loaded"):
                states[stop.name] = reconcile.stopping(states[stop.name], now)
        elif event < 0.2:  # a gate's outcome for an engine gating
            for name, state in states.items():
                if state.phase == Phase.GATING and rng.random() < 0.5:
                    states[name] = reconcile.gate_passed(state, now)
                elif state.phase == Phase.GATING:
                    states[name], (stop,) = reconcile.gate_failed(state, "golden prompt 1: no answer", now)
                    states[name] = reconcile.stopping(states[stop.name], now)
        for action in decide(desired, states, now):
            if isinstance(action, Start) and rng.random() < 0.1:  # the start itself fails: port taken
                states[action.name] = observe(states[action.name], Observation(start_error="port taken"), now, POLICY)
            elif isinstance(action, Start):
                states[action.name] = started(states[action.name], 1, now, gate_due=rng.random() < 0.3)
            else:
                states[action.name] = reconcile.stopping(states[action.name], now)
        seen |= {s.phase for s in states.values()}
    assert seen == set(Phase)  # the walk went everywhere


def test_a_switch_lets_a_leaving_engine_forget_its_failure():
    from aiinfra.agent import reconcile

    states = {
        "a": EngineState("a", Phase.FAILED, last_error="crash loop"),
        "b": EngineState("b", Phase.READY, running=True),
        "c": EngineState("c", Phase.BACKOFF),
    }
    after = reconcile.switch(states, ["c"], 5.0)
    assert after["a"].phase == Phase.STOPPED  # leaves, holds nothing
    assert after["b"] == replace(states["b"], leaving_since=5.0)  # leaves, still running: decide() stops it
    assert after["c"] == states["c"]  # stays: its backoff goes on
    assert decide(["c"], after, 5.0) == [Stop("b", "not in the active profile")]


def test_the_operators_restart_and_a_driver_change_stop_what_runs():
    from aiinfra.agent import reconcile

    ready = EngineState("a", Phase.READY, running=True, failures=(1.0,), streak=1)
    state, actions = reconcile.operator_restart(ready, 9.0)
    assert (state.failures, state.streak, actions) == ((), 0, [Stop("a", "restart asked for by the operator")])
    failed = EngineState("b", Phase.FAILED, failures=(1.0, 2.0), last_error="crash loop")
    state, actions = reconcile.operator_restart(failed, 9.0)
    assert (state.phase, state.last_error, actions) == (Phase.STOPPED, None, [])
    assert decide(["b"], {"b": state}, 9.0) == [Start("b")]
    assert reconcile.driver_changed({"a": ready, "b": failed}, "driver changed") == [Stop("a", "driver changed")]


def test_a_busy_leaving_engine_is_stopped_at_its_drain_deadline_not_before():
    from aiinfra.agent import reconcile

    states = reconcile.switch({"a": EngineState("a", Phase.READY, running=True)}, [], 10.0)
    assert states["a"].leaving_since == 10.0
    assert decide([], states, 39.9, busy={"a"}, drain_s=30) == []  # its requests are still answered
    assert decide([], states, 40.0, busy={"a"}, drain_s=30) == [
        Stop("a", "not in the active profile; requests still in hand after the drain deadline (30s) end with an error")
    ]
    back = reconcile.switch(states, ["a"], 20.0)  # taken back before it stopped: no longer leaving
    assert back["a"].leaving_since is None and decide(["a"], back, 50.0, busy={"a"}, drain_s=30) == []
