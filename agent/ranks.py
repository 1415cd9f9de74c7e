"""Engines across boxes: each node's agent runs its own rank of the engine (engines.span_args) and tells
the other nodes' agents how it stands (GET /ranks on its peer address); these rules keep the ranks of
one start together.

vLLM's ranks do not come back together on their own (seen with 0.32.0, CPU build): a follower outlives a
dead head, hung in its collective; a data-parallel head serves on beside a dead replica, and the requests
sent to that replica hang. So each start of the head has an id, and:
- a follower starts only while the head is starting, and joins that start (its id); it is ready once the
  head is ready in that start; it stops when the head starts again or stops;
- the head starts again when a follower says, after the head was ready, that its rank is down or in
  another start.
An agent that cannot be reached says nothing: no rank stops for a silent peer (an agent restarting, a
network blip) whose vLLM may be serving; vLLM's own failure and the head's liveness probe catch a dead box.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from aiinfra.agent.config import AgentConfig
from aiinfra.agent.engines import Launch
from aiinfra.agent.files import write_private
from aiinfra.agent.reconcile import EngineState, Phase

POLL_S = 1.0  # how often each other node's agent is asked
PATH = "/ranks"


@dataclass(frozen=True)
class Rank:
    """One node's rank of an engine, as its agent tells it."""

    phase: str
    running: bool
    start: str | None  # the head: its start's id; a follower: the head's start it joined


@dataclass(frozen=True)
class Seen:
    rank: Rank
    at: float  # when it was heard (the loop's clock)


# -- the rules (pure) -------------------------------------------------------------------------------


def follower_ready(head: Rank | None, joined: str | None) -> bool:
    return head is not None and joined is not None and head.phase == Phase.READY and head.start == joined


def follower_may_start(head: Rank | None) -> bool:
    """A follower joins a start of the head in progress: one that is waiting for its ranks."""
    return head is not None and head.running and head.phase == Phase.STARTING and head.start is not None


def follower_stop(state: EngineState, head: Rank | None, joined: str | None) -> str | None:
    """Why a running follower must stop; None: it stays."""
    if not state.running or state.phase == Phase.STOPPING or head is None:
        return None
    if not head.running:
        return "the head's rank stopped: this one would wait for it hung"
    if head.start != joined:
        return "the head started again: this rank stops, to join its new start"
    return None


def head_restart(state: EngineState, followers: Mapping[str, Seen | None], start: str | None) -> str | None:
    """Why a ready head must start again (the whole engine with it); None: it serves on."""
    if state.phase not in (Phase.READY, Phase.GATING) or not state.running or state.ready_since is None:
        return None
    for node, seen in sorted(followers.items()):
        # Only what a follower said after the head was ready: before, it may not have joined yet.
        if seen is None or seen.at <= state.ready_since:
            continue
        if not seen.rank.running or seen.rank.start != start:
            return f"its rank on {node} is down ({seen.rank.phase}): the whole engine starts again"
    return None


# -- the effects: the record of starts, the other agents ---------------------------------------------


class Ranks:
    """This node's ranks: the start each is in (kept in the state folder, so that an agent restarted
    beside running ranks adopts them as they are) and what the other nodes' agents last said."""

    def __init__(self, config: AgentConfig, clock: Callable[[], float]) -> None:
        self.node = str(config.node)
        self.clock = clock
        self.spans = {name: span.nodes for name, span in config.spans().items()}
        self.peers = {n: f"http://{config.nodes[n]}{PATH}" for nodes in self.spans.values() for n in nodes
                      if n != self.node}  # fmt: skip
        self.path = Path(config.state_dir) / "ranks.json"
        self.starts: dict[str, str] = _read(self.path)
        self.heard: dict[str, tuple[dict[str, Rank], float]] = {}
        self.asking: dict[str, asyncio.Task[None]] = {}
        self.asked: dict[str, float] = {}
        self.session: aiohttp.ClientSession | None = None

    def head(self, engine: str) -> str:
        return self.spans[engine][0]

    def rank_of(self, engine: str, node: str) -> Seen | None:
        heard = self.heard.get(node)
        if heard is None or engine not in heard[0]:
            return None
        return Seen(heard[0][engine], heard[1])

    def head_rank(self, engine: str) -> Rank | None:
        seen = self.rank_of(engine, self.head(engine))
        return None if seen is None else seen.rank

    # What the loop asks.

    def ready(self, engine: str) -> bool:
        return follower_ready(self.head_rank(engine), self.starts.get(engine))

    def held(self, launches: Mapping[str, Launch]) -> set[str]:
        """Followers that may not start now."""
        return {n for n in self.spans if launches[n].rank and not follower_may_start(self.head_rank(n))}

    def stops(self, states: Mapping[str, EngineState], launches: Mapping[str, Launch]) -> list[tuple[str, str]]:
        stops = []
        for name in self.spans:
            if launches[name].rank:
                reason = follower_stop(states[name], self.head_rank(name), self.starts.get(name))
            else:
                followers = {n: self.rank_of(name, n) for n in self.spans[name][1:]}
                reason = head_restart(states[name], followers, self.starts.get(name))
            if reason is not None:
                stops.append((name, reason))
        return stops

    def started(self, engine: str, rank: int) -> None:
        """A rank starts: the head's start gets a new id; a follower joins the head's start."""
        head = self.head_rank(engine)
        start = f"{self.node}-{time.time():.3f}" if rank == 0 else head.start if head is not None else None
        if start is None:
            self.starts.pop(engine, None)
        else:
            self.starts[engine] = start
        write_private(self.path, json.dumps(self.starts).encode())

    def document(self, states: Mapping[str, EngineState]) -> dict:
        """What this node says of its ranks (GET /ranks)."""
        ranks = {n: Rank(states[n].phase.value, states[n].running, self.starts.get(n)) for n in self.spans}
        return {"node": self.node, "engines": {n: asdict(r) for n, r in ranks.items()}}

    # Asking the others, beside the loop.

    def poll(self) -> None:
        now = self.clock()
        for node, url in self.peers.items():
            if node in self.asking and not self.asking[node].done():
                continue
            if now - self.asked.get(node, float("-inf")) >= POLL_S:
                self.asked[node] = now
                self.asking[node] = asyncio.create_task(self._ask(node, url))

    async def _ask(self, node: str, url: str) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                body = await resp.json() if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("engines"), dict):
            self.heard.pop(node, None)  # silent: nothing is concluded from it
            return
        ranks = {}
        for name, rank in body["engines"].items():
            with contextlib.suppress(TypeError, KeyError):
                ranks[name] = Rank(str(rank["phase"]), bool(rank["running"]), rank["start"])
        self.heard[node] = (ranks, self.clock())

    async def close(self) -> None:
        for task in self.asking.values():
            task.cancel()
        if self.session is not None:
            await self.session.close()


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
