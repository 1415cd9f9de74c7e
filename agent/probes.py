"""Readiness and liveness probes against an engine's own HTTP surface (loopback)."""

from __future__ import annotations

import time

import aiohttp

from aiinfra.agent.engines import Launch


async def readiness(session: aiohttp.ClientSession, launch: Launch, timeout_s: float) -> tuple[bool, float]:
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
