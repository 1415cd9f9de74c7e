"""An engine across two boxes, in fake time: two supervisors (the head's node thor, the follower's node
odin), each with its test-double backend and probes, hearing each other through a test double of the
network (each one's /ranks document read directly; tests/agent/test_multinode.py runs the real HTTP and
a real vLLM). What vLLM does is the test's to say: when the head is ready, when a rank dies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aiinfra.agent.client import format_spans, span_phases
from aiinfra.agent.config import AgentConfig
from aiinfra.agent.ranks import Rank, Ranks, Seen, follower_stop, head_restart
from aiinfra.agent.reconcile import EngineState, Phase
from aiinfra.agent.status import report
from aiinfra.agent.supervisor import Supervisor
from tests.unit.agent.test_loop import Clock, Probes, Processes, in_loop, phase, tick

NODES = {"thor": "127.0.0.1:18077", "odin": "127.0.0.1:18078"}
BIG = {"runtime": "vllm", "model": "org/big", "gpus": [0], "port": 8001,
       "span": {"nodes": ["thor", "odin"], "parallel": "pipeline", "port": 29500}}  # fmt: skip


class Heard(Ranks):
    """Test double of the network between the agents: each asks the other's document directly; a node in
    `silent` answers nothing."""

    fleet: dict[str, Supervisor] = {}
    silent: set[str] = set()

    async def _ask(self, node: str, url: str) -> None:
        other = self.fleet[node]
        if node in self.silent or other.ranks is None:
            self.heard.pop(node, None)
            return
        doc = other.ranks.document(other.states)
        self.heard[node] = ({n: Rank(**r) for n, r in doc["engines"].items()}, self.clock())


class Box:
    def __init__(self, node: str, tmp: Path, clock: Clock) -> None:
        self.config = AgentConfig.model_validate({
            "engines": {"big": BIG}, "profiles": {"on": ["big"]}, "default_profile": "on",
            "node": node, "nodes": NODES,
            "state_dir": str(tmp / node / "state"), "data_dir": str(tmp / node / "data"),
            "model_storage_mount": str(tmp / node / "models"),
            "policy": {"backoff_initial_s": 10, "crash_loop_failures": 5, "readiness_interval_s": 1},
        })  # fmt: skip
        self.backend, self.probes = Processes(), Probes(self.config)
        self.supervisor = Supervisor(self.config, self.backend, clock, prober=self.probes)
        ranks = self.supervisor.ranks
        assert ranks is not None
        ranks.__class__ = Heard


@pytest.fixture
def fleet(tmp_path: Path) -> tuple[Box, Box, Clock]:
    clock = Clock()
    head, follower = Box("thor", tmp_path, clock), Box("odin", tmp_path, clock)
    Heard.fleet = {"thor": head.supervisor, "odin": follower.supervisor}
    Heard.silent = set()
    return head, follower, clock


async def both(head: Box, follower: Box, clock: Clock, seconds: float = 1.0, times: int = 1) -> None:
    for _ in range(times):
        await tick(head.supervisor, clock, seconds)
        await tick(follower.supervisor, clock, 0)


def start_of(box: Box) -> str | None:
    assert box.supervisor.ranks is not None
    return box.supervisor.ranks.starts.get("big")


async def ready_again(head: Box, follower: Box, clock: Clock) -> None:
    """vLLM's head is ready (the test says so, as vLLM once all ranks joined); then so is the follower."""
    head.probes.ready.add("big")
    await both(head, follower, clock, times=4)
    assert (phase(head.supervisor, "big"), phase(follower.supervisor, "big")) == ("ready", "ready")


async def serving(head: Box, follower: Box, clock: Clock) -> None:
    """The engine comes up: the follower joins the head's start; the head is ready (vLLM is, once all
    its ranks are: the test says when); the follower hears it."""
    await both(head, follower, clock, times=3)
    assert "big" in follower.backend.running and start_of(follower) == start_of(head) is not None
    await ready_again(head, follower, clock)


def test_each_rank_gets_vllms_multi_node_flags_and_only_the_head_serves(fleet):
    head, follower, _ = fleet
    lead, rank = head.supervisor.launches["big"], follower.supervisor.launches["big"]
    assert (lead.rank, lead.served, rank.rank, rank.served) == (0, ["org/big"], 1, [])
    for argv, node_rank in ((lead.argv, "0"), (rank.argv, "1")):
        text = " ".join(argv)
        assert "--pipeline-parallel-size 2 --distributed-executor-backend mp --nnodes 2" in text
        assert f"--node-rank {node_rank} --master-addr 127.0.0.1 --master-port 29500" in text
    assert "--headless" in rank.argv and "--headless" not in lead.argv


@in_loop
async def test_a_follower_joins_only_a_start_of_the_head_and_is_ready_when_the_head_is(fleet):
    head, follower, clock = fleet
    Heard.silent = {"thor"}  # the head's agent not up yet: the follower has nothing to join
    await both(head, follower, clock, times=3)
    assert follower.backend.started == [] and head.backend.started == ["big"]
    Heard.silent = set()
    await serving(head, follower, clock)
    assert follower.backend.started == ["big"]


@in_loop
async def test_a_dead_follower_brings_the_whole_engine_back_in_one_new_start(fleet):
    head, follower, clock = fleet
    await serving(head, follower, clock)
    first = start_of(head)
    follower.backend.die("big", -9)
    head.probes.ready.discard("big")  # vLLM's head is not ready again without all its ranks
    await both(head, follower, clock, times=5)
    # The head heard the rank go down: it starts again (a stop, then a start, no backoff of its own) ...
    assert head.backend.started == ["big", "big"] and start_of(head) != first
    assert any("its rank on odin is down" in (e["message"] or "") for e in head.supervisor.events.recent(50))
    # ... and the follower, once its backoff is over, joins the new start.
    await both(head, follower, clock, seconds=5, times=3)
    assert follower.backend.started == ["big", "big"] and start_of(follower) == start_of(head)
    await ready_again(head, follower, clock)


@in_loop
async def test_the_fleet_view_says_the_engine_is_ready_only_when_every_rank_is_ready_in_one_start(fleet):
    head, follower, clock = fleet
    await serving(head, follower, clock)
    reports = {"thor": report(head.supervisor), "odin": report(follower.supervisor)}
    assert span_phases(reports)["big"]["phase"] == "ready"
    assert format_spans(reports) == ["big across thor, odin: ready (thor rank 0 ready, odin rank 1 ready)"]
    assert span_phases({"thor": reports["thor"]})["big"]["phase"] == "unknown (no word from odin)"
    follower.backend.die("big", -9)
    await both(head, follower, clock)
    reports = {"thor": report(head.supervisor), "odin": report(follower.supervisor)}
    assert span_phases(reports)["big"]["phase"] == "starting"  # the head still ready, a rank down: not ready


@in_loop
async def test_a_dead_head_takes_its_followers_rank_down_with_it_and_both_come_back(fleet):
    head, follower, clock = fleet
    await serving(head, follower, clock)
    head.probes.ready.discard("big")
    head.backend.die("big", -9)  # vLLM's follower would wait for it hung: its agent stops it
    await both(head, follower, clock, times=2)
    assert "big" not in follower.backend.running
    assert any("the head's rank stopped" in (e["message"] or "") for e in follower.supervisor.events.recent(50))
    await both(head, follower, clock, seconds=6, times=3)  # the head's backoff, then its new start
    assert head.backend.started == ["big", "big"] and follower.backend.started == ["big", "big"]
    assert start_of(follower) == start_of(head)
    await ready_again(head, follower, clock)


@in_loop
async def test_a_silent_peer_stops_no_rank(fleet):
    head, follower, clock = fleet
    await serving(head, follower, clock)
    Heard.silent = {"thor", "odin"}  # both agents restarting, or the network blinked
    await both(head, follower, clock, times=5)
    assert (head.backend.started, follower.backend.started) == (["big"], ["big"])
    assert "big" in head.backend.running and "big" in follower.backend.running


def ready_head(since: float) -> EngineState:
    return EngineState("big", Phase.READY, running=True, ready_since=since)


def test_the_head_goes_only_on_what_a_follower_said_after_it_was_ready():
    down = Rank("backoff", False, "s1")
    assert head_restart(ready_head(100), {"odin": Seen(down, 99)}, "s1") is None  # said before: not joined yet
    assert "odin is down" in str(head_restart(ready_head(100), {"odin": Seen(down, 101)}, "s1"))
    other = Rank("ready", True, "s0")  # still in the start before
    assert head_restart(ready_head(100), {"odin": Seen(other, 101)}, "s1") is not None
    assert head_restart(ready_head(100), {"odin": None}, "s1") is None


def test_a_follower_stops_for_a_new_start_or_a_stopped_head_not_for_one_unheard():
    running = EngineState("big", Phase.READY, running=True)
    assert follower_stop(running, None, "s1") is None
    assert follower_stop(running, Rank("ready", True, "s1"), "s1") is None
    assert follower_stop(running, Rank("starting", True, "s2"), "s1") is not None
    assert follower_stop(running, Rank("backoff", False, "s1"), "s1") is not None


def test_an_engine_that_spans_boxes_needs_this_box_among_its_nodes_and_every_nodes_address():
    with pytest.raises(ValueError) as raised:
        AgentConfig.model_validate({"engines": {"big": BIG}, "node": "loki", "nodes": {"thor": NODES["thor"]}})
    text = str(raised.value)
    assert "engines.big.span.nodes: this box (loki) is not one of them" in text
    assert "nodes: no address for odin (engine big spans them)" in text


def test_a_profile_switched_on_request_holds_the_engines_across_boxes_that_the_default_profile_holds():
    small = {"runtime": "vllm", "model": "org/small", "gpus": [1], "port": 8002}
    base = {"engines": {"big": BIG, "small": small}, "node": "thor", "nodes": NODES, "default_profile": "on"}
    with pytest.raises(ValueError, match=r"profile_switching\.solo: switching to it or back would start or stop big"):
        AgentConfig.model_validate(
            base | {"profiles": {"on": ["big"], "solo": ["small"]}, "profile_switching": {"solo": {}}}
        )
    # The span in both: a switch leaves it running.
    AgentConfig.model_validate(base | {"profiles": {"on": ["big"], "more": ["big", "small"]},
                                       "profile_switching": {"more": {}}})  # fmt: skip


def test_vllms_multi_node_flags_are_the_spans_alone():
    extra: dict[str, Any] = {**BIG, "extra_args": ["--nnodes=3"]}
    with pytest.raises(ValueError, match="--nnodes is set by aiinfra"):
        AgentConfig.model_validate({"engines": {"big": extra}, "node": "thor", "nodes": NODES})


def test_a_rank_keeps_its_traffic_on_the_trusted_address_and_its_interface(fleet):
    """vLLM would advertise its default route's address, and gloo its host name's (127.0.1.1 on Ubuntu)."""
    head, _, _ = fleet
    env = head.supervisor.launches["big"].env
    assert (env["VLLM_HOST_IP"], env["GLOO_SOCKET_IFNAME"], env["NCCL_SOCKET_IFNAME"]) == ("127.0.0.1", "lo", "lo")
