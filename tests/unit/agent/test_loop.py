"""The reconcile loop in process, in fake time: the supervisor with a test-double backend (processes
that live and die when the test says) and test-double probes, ticked by hand on a clock the test moves.
The subprocess tests (tests/agent) run the same loop in real time against real processes."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from aiinfra.agent.config import AgentConfig
from aiinfra.agent.effects import StartPending
from aiinfra.agent.engines import Launch
from aiinfra.agent.probes import Prober
from aiinfra.agent.schema import Golden
from aiinfra.agent.supervisor import Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Processes:
    """Test double of an effects.Backend: an engine 'runs' from start until it dies or is stopped."""

    name = "test-double"

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.exited: dict[str, int] = {}
        self.started: list[str] = []
        self.argvs: list[list[str]] = []
        self.next_pid = 100
        self.still_stopping = 0  # starts refused as pending, as a unit still deactivating refuses them

    async def start(self, launch: Launch) -> int:
        if self.still_stopping:
            self.still_stopping -= 1
            raise StartPending(f"aiinfra-engine@{launch.name}.service is still stopping")
        self.next_pid += 1
        self.running[launch.name] = self.next_pid
        self.exited.pop(launch.name, None)
        self.started.append(launch.name)
        self.argvs.append(launch.argv)
        return self.next_pid

    async def poll(self, name: str) -> int | None:
        return self.exited.get(name) if name not in self.running else None

    def die(self, name: str, code: int) -> None:
        del self.running[name]
        self.exited[name] = code

    async def stop(self, name: str, grace_s: float) -> None:
        if name in self.running:
            self.die(name, -15)

    async def adopt(self) -> dict[str, int | None]:
        return dict(self.running)  # what an earlier agent left running (systemd units outlive it)

    def log_tail(self, name: str, lines: int = 5) -> str:
        return "CUDA out of memory" if name in self.exited else ""


class Probes(Prober):
    """Test double of the probes: an engine is ready or alive when the test says so."""

    def __init__(self, config: AgentConfig) -> None:
        super().__init__(config.policy)
        self.ready: set[str] = set()
        self.hung: set[str] = set()
        self.alive_asked: list[str] = []
        self.asked: list[str] = []

    async def check_startup(self, launch: Launch) -> tuple[bool, float]:
        return launch.name in self.ready, 2.0

    async def check_alive(self, launch: Launch) -> bool:
        self.alive_asked.append(launch.name)
        return launch.name not in self.hung

    async def ask(self, launch: Launch, golden: Golden, max_tokens: int) -> tuple[str, float]:
        """A greedy answer: a launch with --broken in its arguments answers nonsense; --slower, later."""
        self.asked.append(" ".join(launch.argv))
        if "--broken" in launch.argv:
            return "zzz zzz", 0.1
        return ("The answer is four, said slowly" if "--slower" in launch.argv else "The answer is four."), 0.1


def engine(port: int) -> dict[str, Any]:
    return {"runtime": "vllm", "model": f"org/m{port}", "served_name": f"m{port}", "gpus": [0], "port": port}


@pytest.fixture
def loop(tmp_path: Path) -> tuple[Supervisor, Processes, Probes, Clock]:
    config = AgentConfig.model_validate({
        "engines": {"a": engine(8001), "b": engine(8002)},
        "profiles": {"one": ["a"], "two": ["b"]},
        "default_profile": "one",
        "profile_switching": {"two": {"on_request": True, "back_after_idle_s": 300, "min_dwell_s": 0}},
        "state_dir": str(tmp_path / "state"),
        "data_dir": str(tmp_path / "data"),
        "model_storage_mount": str(tmp_path / "models"),
        "policy": {"backoff_initial_s": 10, "crash_loop_failures": 3, "crash_loop_window_s": 900,
                   "readiness_interval_s": 5, "liveness_interval_s": 30, "liveness_failures": 2},
    })  # fmt: skip
    clock, backend, probes = Clock(), Processes(), Probes(config)
    return Supervisor(config, backend, clock, prober=probes), backend, probes, clock


async def tick(supervisor: Supervisor, clock: Clock, seconds: float = 1.0) -> None:
    """Move the clock on, tick once, and let the probes and stops the tick began run."""
    clock.now += seconds
    await supervisor.tick()
    for _ in range(3):
        await asyncio.sleep(0)


async def ready(supervisor: Supervisor, probes: Probes, clock: Clock, name: str) -> None:
    """Start engine NAME and see it ready: a start, its startup probe, the probe's answer read."""
    probes.ready.add(name)
    for _ in range(3):
        await tick(supervisor, clock)
    assert phase(supervisor, name) == "ready"


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def phase(supervisor: Supervisor, name: str) -> str:
    return supervisor.states[name].phase.value


@in_loop
async def test_an_engine_that_dies_backs_off_then_starts_again_and_a_crash_loop_stops_there(loop):
    supervisor, backend, probes, clock = loop
    await tick(supervisor, clock)
    assert (backend.started, phase(supervisor, "a")) == (["a"], "starting")
    probes.ready.add("a")
    await tick(supervisor, clock)
    assert phase(supervisor, "a") == "starting"  # the next startup probe is readiness_interval_s after the first
    await tick(supervisor, clock, 4)
    await tick(supervisor, clock)
    assert phase(supervisor, "a") == "ready"

    backend.die("a", 1)
    await tick(supervisor, clock)
    state = supervisor.states["a"]
    assert state.phase.value == "backoff" and "exited with code 1" in (state.last_error or "")
    assert "CUDA out of memory" in (state.last_error or "")  # the log's tail says why
    await tick(supervisor, clock, 5)
    assert backend.started == ["a"]  # not before the backoff's 10 s
    await tick(supervisor, clock, 6)
    assert backend.started == ["a", "a"] and supervisor.states["a"].restarts == 1

    for _ in range(2):  # it keeps dying before it is ready: the third failure in the window is the last
        backend.die("a", 1)
        await tick(supervisor, clock)
        await tick(supervisor, clock, 60)
    assert phase(supervisor, "a") == "failed"
    await tick(supervisor, clock, 600)
    assert backend.started.count("a") == 3  # failed engines wait for the operator
    assert [e["event"] for e in supervisor.events.recent(200) if e["engine"] == "a"][-1] == "failed"


@in_loop
async def test_a_switch_drains_the_leaving_engine_and_starts_the_next_only_once_it_is_gone(loop):
    supervisor, backend, probes, clock = loop
    await ready(supervisor, probes, clock, "a")
    supervisor.traffic.arrived("a")
    supervisor.traffic.started("a")  # a request in flight on a
    supervisor.switch("two")
    await tick(supervisor, clock)
    assert "a" in backend.running and backend.started == ["a"]  # draining: b waits for a's GPUs
    supervisor.traffic.done("a")
    supervisor.traffic.left("a")
    await tick(supervisor, clock)
    assert "a" not in backend.running
    await tick(supervisor, clock)
    assert backend.started == ["a", "b"] and phase(supervisor, "a") == "stopped"


@in_loop
async def test_a_profile_switched_to_on_request_goes_back_when_idle_and_not_while_a_request_waits(loop):
    supervisor, backend, probes, clock = loop
    probes.ready.update({"a", "b"})
    await tick(supervisor, clock)
    assert supervisor.request_switch("two", "alice", "m8002") == 0
    supervisor.traffic.arrived("b")  # waits for b to be ready
    await tick(supervisor, clock, 400)
    assert supervisor.profile == "two"  # a request still waits: not idle
    supervisor.traffic.left("b")
    await tick(supervisor, clock, 200)
    assert supervisor.profile == "two" and supervisor.back_to_default_in() == pytest.approx(100)
    await tick(supervisor, clock, 100)
    assert supervisor.profile == "one" and supervisor.switch_cause["reason"] == "idle"
    await tick(supervisor, clock)
    assert set(backend.running) == {"a"}


@in_loop
async def test_a_hung_engine_is_restarted_after_its_liveness_probes_and_traffic_stands_in_for_them(loop):
    supervisor, backend, probes, clock = loop
    await ready(supervisor, probes, clock, "a")
    assert (phase(supervisor, "a"), probes.alive_asked) == ("ready", ["a"])  # probed once it is ready
    await tick(supervisor, clock, 25)
    supervisor.traffic.ok("a")
    await tick(supervisor, clock, 40)
    assert probes.alive_asked == ["a"]  # real traffic vouched for it within traffic_grace_s
    probes.hung.add("a")
    await tick(supervisor, clock, 30)
    await tick(supervisor, clock, 31)
    assert probes.alive_asked == ["a", "a", "a"]
    await tick(supervisor, clock)  # the second failed probe's answer is read at the next tick
    assert phase(supervisor, "a") == "backoff" and "hung" in (supervisor.states["a"].last_error or "")
    assert "a" not in backend.running  # killed, to start again after the backoff


@in_loop
async def test_an_adopted_engine_is_what_it_started_as_not_what_the_disk_holds_now(loop, tmp_path):
    supervisor, backend, probes, clock = loop
    probes.ready.add("a")
    await tick(supervisor, clock)
    started_as = supervisor.serving["a"]
    manifest = tmp_path / "models" / "models" / "org" / "m8001" / "SHA256SUMS"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("f" * 64 + "  model.safetensors\n")  # a new model version staged meanwhile
    again = Supervisor(supervisor.config, backend, clock, prober=probes)  # the agent restarted
    await again.adopt()
    assert again.serving["a"] == started_as and again.states["a"].phase.value == "starting"
    restarted = Supervisor(supervisor.config, Processes(), clock, prober=probes)
    await tick(restarted, clock)  # started afresh: the disk's model now
    assert restarted.serving["a"].model != started_as.model


# -- a change of what an engine serves goes through its gate ---------------------------------------


def changed(supervisor: Supervisor, **engine: Any) -> AgentConfig:
    """The configuration an install writes next: engine a as ENGINE changes it."""
    data = supervisor.config.model_dump()
    data["engines"]["a"] |= engine
    return AgentConfig.model_validate(data)


GOLDEN = {"golden": [{"prompt": "2+2=", "contains": "four"}], "agreement": 0.9}


async def restarted(config: AgentConfig, backend: Processes, probes: Probes, clock: Clock) -> Supervisor:
    """The agent restarted on CONFIG (the install's handler): it adopts what runs."""
    again = Supervisor(config, backend, clock, prober=probes)
    await again.adopt()
    return again


async def settle(supervisor: Supervisor, clock: Clock, ticks: int = 12) -> None:
    for _ in range(ticks):
        await tick(supervisor, clock, 5)


@in_loop
async def test_a_changed_identity_serves_only_once_its_gate_passed(loop):
    supervisor, backend, probes, clock = loop
    supervisor = await restarted(changed(supervisor, gate=GOLDEN), backend, probes, clock)
    await ready(supervisor, probes, clock, "a")  # a first start: nothing to hold it to, no gate
    await tick(supervisor, clock)
    assert supervisor.gates.reports.get("a") is None and len(probes.asked) == 1  # its greedy answers, kept
    first = supervisor.serving["a"]

    supervisor = await restarted(changed(supervisor, extra_args=["--seed", "1"]), backend, probes, clock)
    assert supervisor.gates.reports["a"]["state"] == "due"  # before it is even ready again: the install waits
    seen = []
    for _ in range(12):
        await tick(supervisor, clock, 5)
        seen.append(phase(supervisor, "a"))
    # adopted, stopped once ready (its answers were kept); the new identity started, gated, then serving
    assert seen[:5] == ["starting", "stopping", "starting", "gating", "ready"] and seen[-1] == "ready"
    # the first identity's greedy answers were kept, then the new one's asked: the same text
    assert len(probes.asked) == 2 and "--seed" not in probes.asked[0] and "--seed" in probes.asked[1]
    report = supervisor.gates.reports["a"]
    assert (report["state"], report["agreement"]) == ("passed", 1.0)
    assert set(report["took"]) == {"stop", "start", "gate"}
    assert supervisor.serving["a"] != first and supervisor.gates.records.identity("a") == supervisor.serving["a"]


@in_loop
async def test_a_change_that_fails_its_gate_gives_way_to_the_identity_before_and_stays_refused(loop):
    supervisor, backend, probes, clock = loop
    supervisor = await restarted(changed(supervisor, gate=GOLDEN), backend, probes, clock)
    await ready(supervisor, probes, clock, "a")
    before, argv = supervisor.serving["a"], backend.argvs[-1]

    broken = changed(supervisor, extra_args=["--broken"])
    supervisor = await restarted(broken, backend, probes, clock)
    await settle(supervisor, clock)
    assert phase(supervisor, "a") == "ready" and supervisor.serving["a"] == before
    assert backend.argvs[-1] == argv and "--broken" in backend.argvs[-2]  # tried, then the one before again
    report = supervisor.gates.reports["a"]
    assert report["state"] == "failed" and report["serving"]["args"] == before.args
    assert "golden prompt 1 ('2+2=')" in report["check"] and "lacks 'four'" in report["check"]
    assert set(report["took"]) == {"stop", "start", "gate", "rollback"}
    events = [e["event"] for e in supervisor.events.recent(200) if e["engine"] == "a"]
    assert "gate_failed" in events and "gate_passed" not in events

    starts = len(backend.argvs)
    supervisor = await restarted(broken, backend, probes, clock)  # the agent restarts, same configuration
    await settle(supervisor, clock)
    assert len(backend.argvs) == starts and supervisor.gates.reports["a"]["state"] == "failed"  # not tried again
    supervisor.restart("a")  # the operator asks for it: it gets its gate again, and fails again
    await settle(supervisor, clock)
    assert "--broken" in backend.argvs[-2] and backend.argvs[-1] == argv and phase(supervisor, "a") == "ready"


@in_loop
async def test_the_regression_check_holds_the_same_model_to_the_answers_it_gave(loop):
    supervisor, backend, probes, clock = loop
    supervisor = await restarted(changed(supervisor, gate=GOLDEN), backend, probes, clock)
    await ready(supervisor, probes, clock, "a")
    before = supervisor.serving["a"]
    # the golden check passes ("four" is there), the greedy answer moved after 18 characters of 32
    supervisor = await restarted(changed(supervisor, extra_args=["--slower"]), backend, probes, clock)
    await settle(supervisor, clock)
    report = supervisor.gates.reports["a"]
    assert report["state"] == "failed" and report["check"].startswith("regression: the greedy answers agree 0.58")
    assert supervisor.serving["a"] == before
    # the same change with regression "never" (or a model change under "auto") is held to the golden set only
    lenient = changed(supervisor, extra_args=["--slower"], gate={**GOLDEN, "regression": "never"})
    supervisor = await restarted(lenient, backend, probes, clock)
    await settle(supervisor, clock)
    assert supervisor.gates.reports["a"]["state"] == "passed" and "--slower" in backend.argvs[-1]


@in_loop
async def test_a_changed_identity_that_dies_starting_fails_its_gate_and_the_one_before_starts_at_once(loop):
    supervisor, backend, probes, clock = loop
    await ready(supervisor, probes, clock, "a")
    argv = backend.argvs[-1]
    supervisor = await restarted(changed(supervisor, extra_args=["--seed", "2"]), backend, probes, clock)
    while "--seed" not in backend.argvs[-1]:  # adopted, ready, its answers kept, stopped, the new one started
        await tick(supervisor, clock)
    probes.ready.discard("a")
    await tick(supervisor, clock)
    backend.die("a", 1)  # the new one never gets ready: vLLM refuses the model and exits
    await tick(supervisor, clock)
    probes.ready.add("a")
    await settle(supervisor, clock, 3)
    assert backend.argvs[-1] == argv and phase(supervisor, "a") == "ready"
    report = supervisor.gates.reports["a"]
    assert report["state"] == "failed" and report["check"].startswith("did not start: exited with code 1")
    assert supervisor.states["a"].restarts == 0 and supervisor.states["a"].streak == 0  # no backoff for it


@in_loop
async def test_a_start_behind_a_stop_still_ending_waits_a_tick_and_counts_no_failure(loop):
    supervisor, backend, probes, clock = loop
    backend.still_stopping = 3
    for _ in range(3):
        await tick(supervisor, clock)
        assert phase(supervisor, "a") == "stopped" and backend.started == []
    await ready(supervisor, probes, clock, "a")
    state = supervisor.states["a"]
    assert (state.restarts, state.failures, state.last_error) == (0, (), None)
