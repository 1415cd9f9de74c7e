"""Each engine's probes against its own HTTP surface (loopback), run as tasks beside the loop: a startup
probe while it starts, a liveness probe while it is ready and real traffic has not vouched for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import aiohttp

from aiinfra.agent import gate
from aiinfra.agent.config import Policy
from aiinfra.agent.engines import Launch
from aiinfra.agent.reconcile import EngineState, Phase, liveness_due
from aiinfra.agent.schema import Golden


async def startup(session: aiohttp.ClientSession, launch: Launch, timeout_s: float) -> tuple[bool, float]:
    """vLLM: /health answers and /v1/models lists the served name. Ollama: /api/version answers."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        if launch.runtime == "ollama":
            async with session.get(f"{launch.base_url}/api/version", timeout=timeout) as resp:
                ok = resp.status == 200
        else:
            async with session.get(f"{launch.base_url}/health", timeout=timeout) as resp:
                ok = resp.status == 200
            if ok:
                async with session.get(f"{launch.base_url}/v1/models", timeout=timeout, headers=launch.auth) as resp:
                    served = {m.get("id") for m in (await resp.json()).get("data", [])} if resp.status == 200 else set()
                ok = set(launch.served) <= served
    except (aiohttp.ClientError, TimeoutError, ValueError):
        ok = False
    return ok, (time.monotonic() - started) * 1000


async def liveness(session: aiohttp.ClientSession, launch: Launch, timeout_s: float) -> bool:
    """A real one-token request: a hung engine still answers /health, only inference shows it."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        if launch.runtime == "ollama":
            if not launch.served:  # no model to ask: the API answering is all there is to check
                async with session.get(f"{launch.base_url}/api/version", timeout=timeout) as resp:
                    return resp.status == 200
            body = {"model": launch.served[0], "prompt": "ping", "stream": False, "options": {"num_predict": 1}}
            async with session.post(f"{launch.base_url}/api/generate", json=body, timeout=timeout) as resp:
                return resp.status == 200
        body = {"model": launch.served[0], "prompt": "ping", "max_tokens": 1}
        async with session.post(f"{launch.base_url}/v1/completions", json=body, timeout=timeout,
                                headers=launch.auth) as resp:  # fmt: skip
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


class Prober:
    """The probes in flight and when each engine was last probed; a result is read once, at the tick
    after its probe ended. check_startup and check_alive are the probes themselves."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.session: aiohttp.ClientSession | None = None
        self.startups: dict[str, asyncio.Task[tuple[bool, float]]] = {}
        self.lives: dict[str, asyncio.Task[bool]] = {}
        self.last_startup: dict[str, float] = {}
        self.last_live: dict[str, float] = {}

    def client(self) -> aiohttp.ClientSession:
        """The probes' HTTP session (the gates' requests share it)."""
        if self.session is None:
            self.session = aiohttp.ClientSession()
        return self.session

    async def check_startup(self, launch: Launch) -> tuple[bool, float]:
        return await startup(self.client(), launch, self.policy.probe_timeout_s)

    async def ask(self, launch: Launch, golden: Golden, max_tokens: int) -> tuple[str, float]:
        """A golden prompt's greedy answer and its latency (a gate's request)."""
        return await gate.ask(self.client(), launch, golden, max_tokens)

    async def check_alive(self, launch: Launch) -> bool:
        return await liveness(self.client(), launch, self.policy.liveness_timeout_s)

    def results(self, name: str) -> tuple[bool | None, float | None, bool | None]:
        """(ready, its latency in ms, alive) of the probes that ended since the last call; None: none did."""
        ready = latency = alive = None
        task = self.startups.get(name)
        if task is not None and task.done():
            del self.startups[name]
            ready, latency = task.result()
        live = self.lives.get(name)
        if live is not None and live.done():
            del self.lives[name]
            alive = live.result()
        return ready, latency, alive

    def schedule(self, states: Mapping[str, EngineState], launches: Mapping[str, Launch], now: float) -> None:
        for name, state in states.items():
            if launches[name].rank:  # a follower's rank has no HTTP: its head's agent vouches for it (ranks.py)
                continue
            if state.phase == Phase.STARTING and name not in self.startups:
                last = self.last_startup.get(name)
                if last is None or now - last >= self.policy.readiness_interval_s:
                    self.last_startup[name] = now
                    self.startups[name] = asyncio.create_task(self.check_startup(launches[name]))
            if name not in self.lives and liveness_due(state, self.last_live.get(name), now, self.policy):
                self.last_live[name] = now
                self.lives[name] = asyncio.create_task(self.check_alive(launches[name]))

    def started(self, name: str) -> None:
        """The engine (re)started: probe it from scratch."""
        self.last_startup.pop(name, None)
        self.last_live.pop(name, None)

    def stopped(self, name: str) -> None:
        """The engine is being stopped: its probes in flight mean nothing now."""
        for tasks in (self.startups, self.lives):
            task = tasks.pop(name, None)
            if task is not None:
                task.cancel()

    async def close(self) -> None:
        for task in [*self.startups.values(), *self.lives.values()]:
            task.cancel()
        if self.session is not None:
            await self.session.close()
