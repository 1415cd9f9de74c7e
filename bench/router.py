"""Router overhead: the same stub engine asked directly and through the agent's router, side by side.

    .venv/bin/python -m bench.router [--requests 4000] [--pairs 6]

Prints, at concurrency 1 and 32: latency p50/p99 direct and routed, the added latency, and the
throughput, routed against direct: the median of PAIRS side-by-side runs (direct then routed, routed
then direct, ...), so that machine noise falls on both; the CPU time the router, the stub engine and
this bench's own client spend per routed request (where the ceiling of the ratio comes from when the
three share a few cores); then time to the first chunk of a stream, direct and routed, in alternating
rounds. The load comes from a lean client of the bench's own (httptools on uvloop, as the router),
not an HTTP library: on 2 cores aiohttp's client cost more CPU a request than the router, and the
ratio measured the client's share of the cores more than the router.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httptools
import psutil
import uvloop

from tests.harness import AGENT, Agent, free_port, vllm

BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class Client(asyncio.Protocol):
    """One kept-alive connection of this bench's load generator: a prepared request written whole,
    the answer parsed by httptools (as the router parses). It spends a fraction of an HTTP library's
    CPU a request, so that on a machine of few cores the router and the engine, not this client, are
    what the ratio measures."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[int] | None = None
        self.first: float | None = None  # when the answer's first body bytes arrived

    @classmethod
    async def open(cls, host: str, port: int) -> Client:
        _, client = await asyncio.get_running_loop().create_connection(cls, host, port)
        return client

    def connection_made(self, transport) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("the server closed the connection"))

    def on_body(self, body: bytes) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def on_message_complete(self) -> None:
        if self.done is not None:
            self.done.set_result(self.parser.get_status_code())

    async def ask(self, request: bytes) -> int:
        """Send REQUEST, wait for its whole answer; its status."""
        assert self.transport is not None
        self.first, self.done = None, asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def post(url: str, model: str, key: str, stream: bool = False) -> tuple[str, int, bytes]:
    """Host, port and the bytes of the bench's POST to URL."""
    parts = urlsplit(url)
    body = json.dumps({**BODY, "model": model, "stream": stream}).encode()
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return parts.hostname or "127.0.0.1", parts.port or 80, head.encode() + body


async def run(url: str, model: str, key: str, concurrency: int, requests: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    host, port, request = post(url, model, key)
    clients = [await Client.open(host, port) for _ in range(concurrency)]
    queue = iter(range(requests))

    async def worker(client: Client) -> None:
        for _ in queue:
            started = time.perf_counter()
            status = await client.ask(request)
            assert status == 200, status
            latencies.append(time.perf_counter() - started)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        return latencies, requests / (time.perf_counter() - started)
    finally:
        for client in clients:
            client.close()


async def ttft(url: str, model: str, key: str, rounds: int) -> list[float]:
    host, port, request = post(url, model, key, stream=True)
    client = await Client.open(host, port)
    firsts = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            status = await client.ask(request)
            assert status == 200 and client.first is not None, status
            firsts.append(client.first - started)
    finally:
        client.close()
    return firsts


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def compare(
    direct: str,
    routed: str,
    model: str,
    keys: dict[str, str],  # url → the key it asks for (the engine's own, a router key)
    requests: int,
    pairs: int,
    router: psutil.Process,
    engine: psutil.Process,
) -> None:
    me = psutil.Process()
    for concurrency in (1, 32):
        count = requests // 4 if concurrency == 1 else requests
        await run(direct, model, keys[direct], concurrency, 50)  # warm both paths
        await run(routed, model, keys[routed], concurrency, 50)
        latencies: dict[str, list[float]] = {"direct": [], "routed": []}
        ratios, rates = [], {"direct": 0.0, "routed": 0.0}
        spent = {"router": 0.0, "engine": 0.0, "client": 0.0}
        for n in range(pairs):  # each pair side by side, its order alternating: noise falls on both
            order = (("direct", direct), ("routed", routed))
            rps = {}
            for name, url in order if n % 2 == 0 else order[::-1]:
                before = (cpu_s(router), cpu_s(engine), cpu_s(me))
                lat, rps[name] = await run(url, model, keys[url], concurrency, count // pairs)
                if name == "routed":
                    spent["router"] += cpu_s(router) - before[0]
                    spent["engine"] += cpu_s(engine) - before[1]
                    spent["client"] += cpu_s(me) - before[2]
                latencies[name].extend(lat)
                rates[name] += rps[name] / pairs
            ratios.append(rps["routed"] / rps["direct"])
        d_lat, r_lat = latencies["direct"], latencies["routed"]
        done = count // pairs * pairs
        print(
            f"concurrency {concurrency:>2}: p50 direct {pct(d_lat, 0.5):.2f} ms, routed {pct(r_lat, 0.5):.2f} ms, "
            f"added {pct(r_lat, 0.5) - pct(d_lat, 0.5):.2f} ms; p99 direct {pct(d_lat, 0.99):.2f} ms, routed "
            f"{pct(r_lat, 0.99):.2f} ms, added {pct(r_lat, 0.99) - pct(d_lat, 0.99):.2f} ms; throughput "
            f"{rates['routed']:.0f}/{rates['direct']:.0f} req/s, routed/direct median of {pairs} pairs "
            f"{100 * statistics.median(ratios):.0f}% (range {100 * min(ratios):.0f}-{100 * max(ratios):.0f}%); "
            f"CPU a routed request: router {1e6 * spent['router'] / done:.0f} µs, stub engine "
            f"{1e6 * spent['engine'] / done:.0f} µs, this bench's client {1e6 * spent['client'] / done:.0f} µs"
        )
    firsts: dict[str, list[float]] = {"direct": [], "routed": []}
    for _ in range(5):
        firsts["direct"] += await ttft(direct, model, keys[direct], 20)
        firsts["routed"] += await ttft(routed, model, keys[routed], 20)
    d_first, r_first = firsts["direct"], firsts["routed"]
    print(
        f"stream time to first chunk: direct p50 {pct(d_first, 0.5):.2f} ms, routed p50 {pct(r_first, 0.5):.2f} ms, "
        f"added {pct(r_first, 0.5) - pct(d_first, 0.5):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000, help="requests at concurrency 32, per path")
    parser.add_argument("--pairs", type=int, default=6, help="side-by-side runs (direct, routed) they are split into")
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
            keys = {direct: agent.engine_key("e"), routed: key}
            uvloop.run(compare(direct, routed, model, keys, args.requests, args.pairs, router, engine))
        finally:
            agent.stop()


if __name__ == "__main__":
    main()
