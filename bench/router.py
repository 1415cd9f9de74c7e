"""Router overhead: the same stub engine asked directly and through the agent's router, side by side.

    .venv/bin/python -m bench.router [--requests 2000]

Prints, at concurrency 1 and 32: latency p50/p99 direct and routed, the added latency, and the
throughput ratio; the CPU time the router, the stub engine and this bench's own client spend per
routed request (where the ceiling of the ratio comes from when the three share a few cores); then
time to first token of a stream, direct and routed. Runs alternate
(direct, routed, direct, routed) so that machine noise falls on both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

from aiinfra.installer.kit.local_agent import AGENT, Agent, free_port, vllm

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def run(url: str, model: str, key: str, concurrency: int, requests: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {key}"}
    queue = iter(range(requests))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            for _ in queue:
                started = time.perf_counter()
                async with session.post(url, json={**BODY, "model": model}, headers=headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, requests / (time.perf_counter() - started)


async def ttft(url: str, model: str, key: str, rounds: int) -> list[float]:
    firsts = []
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            started = time.perf_counter()
            async with session.post(
                url, json={**BODY, "model": model, "stream": True}, headers={"Authorization": f"Bearer {key}"}
            ) as resp:
                await resp.content.readany()
                firsts.append(time.perf_counter() - started)
                await resp.read()
    return firsts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def compare(
    direct: str, routed: str, model: str, key: str, requests: int, router: psutil.Process, engine: psutil.Process
) -> None:
    for concurrency in (1, 32):
        count = requests // 4 if concurrency == 1 else requests
        await run(direct, model, key, concurrency, 50)  # warm both paths
        await run(routed, model, key, concurrency, 50)
        results = {"direct": ([], []), "routed": ([], [])}
        spent = {"router": 0.0, "engine": 0.0, "client": 0.0}
        me = psutil.Process()
        for _ in range(2):
            for name, url in (("direct", direct), ("routed", routed)):
                before = (cpu_s(router), cpu_s(engine), cpu_s(me))
                lat, rps = await run(url, model, key, concurrency, count // 2)
                if name == "routed":
                    spent["router"] += cpu_s(router) - before[0]
                    spent["engine"] += cpu_s(engine) - before[1]
                    spent["client"] += cpu_s(me) - before[2]
                results[name][0].extend(lat)
                results[name][1].append(rps)
        d_lat, d_rps = results["direct"]
        r_lat, r_rps = results["routed"]
        print(
            f"concurrency {concurrency:>2}: p50 direct {pct(d_lat, 0.5):.2f} ms, routed {pct(r_lat, 0.5):.2f} ms, "
            f"added {pct(r_lat, 0.5) - pct(d_lat, 0.5):.2f} ms; p99 direct {pct(d_lat, 0.99):.2f} ms, routed "
            f"{pct(r_lat, 0.99):.2f} ms, added {pct(r_lat, 0.99) - pct(d_lat, 0.99):.2f} ms; throughput "
            f"{statistics.mean(r_rps):.0f}/{statistics.mean(d_rps):.0f} req/s = "
            f"{100 * statistics.mean(r_rps) / statistics.mean(d_rps):.0f}% of direct; CPU a routed request: "
            f"router {1e6 * spent['router'] / count:.0f} µs, stub engine {1e6 * spent['engine'] / count:.0f} µs, "
            f"this bench's client {1e6 * spent['client'] / count:.0f} µs"
        )
    d_first = await ttft(direct, model, key, 50)
    r_first = await ttft(routed, model, key, 50)
    print(
        f"stream time to first chunk: direct p50 {pct(d_first, 0.5):.2f} ms, routed p50 {pct(r_first, 0.5):.2f} ms, "
        f"added {pct(r_first, 0.5) - pct(d_first, 0.5):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aiinfra-bench-") as tmp:
        port = free_port()
        agent = Agent(
            Path(tmp),
            {"e": vllm(port, "--chunk-delay", "0.01")},
            {"p": ["e"]},
            "p",
            policy={"liveness_interval_s": 3600},
        )
        if os.environ.get("BENCH_NO_AUDIT"):
            agent.config["audit_log"] = None
        try:
            agent.start()
            agent.wait_phase("e", "ready", 30)
            key = subprocess.run(
                [AGENT, "keys", "add", "bench", "--file", agent.config["keys_file"]],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            model = agent.engine("e")["served"][0]
            direct = f"http://127.0.0.1:{port}/v1/chat/completions"
            routed = f"http://{agent.config['router_listen']}/v1/chat/completions"
            print(f"stub engine (test double) vs the same through the router (auth on, audit log on), {sys.platform}")
            router = psutil.Process(agent.proc.pid)
            engine = psutil.Process(agent.engine("e")["pid"])
            asyncio.run(compare(direct, routed, model, key, args.requests, router, engine))
        finally:
            agent.stop()


if __name__ == "__main__":
    main()
