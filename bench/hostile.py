"""The endpoint under hostile and careless clients, with the agent's default settings: figures.

    .venv/bin/python -m bench.hostile [--answer-mb 300]

- the agent's memory growth while 24 keyless clients each upload 15 MiB at once, and a keyed
  request's answer time meanwhile;
- a profile switch while a client has stopped reading a stream (default drain and write deadlines);
- 20 concurrent streamed requests of ~50 tokens from a key with tpm=100: tokens served;
- the agent's memory growth while an answer of --answer-mb MiB passes through the router.
Stub engines (the kit's test double), the real agent (process backend), real sockets.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.harness import AGENT, Agent, PeakMemory, free_port, vllm

MiB = 2**20
MSG = [{"role": "user", "content": "hi"}]


def started(tmp: Path, name: str, engines: dict, profiles: dict, default: str, **config) -> Agent:
    agent = Agent(tmp / name, engines, profiles, default, policy={"liveness_interval_s": 60})
    agent.tmp.mkdir()
    agent.config |= config
    agent.start()
    agent.wait(lambda s: s["engines"][next(iter(profiles[default]))]["phase"] == "ready", 30, "ready")
    return agent


def key(agent: Agent, name: str, *flags: str) -> str:
    done = subprocess.run([AGENT, "keys", "add", name, "--file", agent.config["keys_file"], *flags],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def request(agent: Agent, token: str | None, body: bytes) -> bytes:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    req = urllib.request.Request(f"http://{agent.config['router_listen']}/v1/chat/completions", body, headers)
    with urllib.request.urlopen(req, timeout=120) as answer:
        return answer.read()


def served(agent: Agent, engine: str) -> str:
    return agent.status()["engines"][engine]["served"][0]


def keyless_uploads(tmp: Path) -> None:
    agent = started(tmp, "uploads", {"e": vllm(free_port())}, {"p": ["e"]}, "p")
    try:
        token, model = key(agent, "good"), served(agent, "e")
        host, port = agent.config["router_listen"].rsplit(":", 1)
        body = b"x" * (15 * MiB)
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()

        def upload() -> None:
            try:
                with socket.create_connection((host, int(port))) as sock:
                    sock.sendall(head + body)
                    sock.recv(4096)
            except OSError:
                pass

        peak = PeakMemory(agent.proc.pid)
        with ThreadPoolExecutor(24) as pool:
            for _ in range(24):
                pool.submit(upload)
            t0 = time.monotonic()
            request(agent, token, json.dumps({"model": model, "messages": MSG}).encode())
            answered = time.monotonic() - t0
        print(f"24 keyless 15 MiB uploads at once: agent memory +{peak.growth_mib():.1f} MiB; "
              f"a keyed request answered in {answered * 1000:.0f} ms meanwhile")  # fmt: skip
    finally:
        agent.stop()


def stalled_switch(tmp: Path) -> None:
    engines = {"a": vllm(free_port(), "--chunks", "1000000", "--chunk-delay", "0"), "b": vllm(free_port())}
    agent = started(tmp, "stalled", engines, {"fast": ["a"], "deep": ["b"]}, "fast", router_timeout_s=600)
    try:
        token = key(agent, "lid")
        host, port = agent.config["router_listen"].rsplit(":", 1)
        body = json.dumps({"model": served(agent, "a"), "messages": MSG, "stream": True}).encode()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
            time.sleep(2)  # never read: the router's writes to it stop
            t0 = time.monotonic()
            subprocess.run([AGENT, "profile", "deep", "--socket", agent.socket, "--no-wait"], check=True,
                           capture_output=True)  # fmt: skip
            agent.wait(lambda s: s["engines"]["b"]["phase"] == "ready", 120, "deep ready")
            took = time.monotonic() - t0
        policy = agent.config["policy"]
        print(f"a switch while a client has stopped reading a stream: deep ready after {took:.1f} s "
              f"(drain deadline {policy.get('drain_timeout_s', 30)} s, write deadline 30 s: the defaults)")  # fmt: skip
    finally:
        agent.stop()


def token_limit(tmp: Path) -> None:
    engine = vllm(free_port(), "--chunks", "50", "--chunk-delay", "0.02")
    agent = started(tmp, "tpm", {"e": engine}, {"p": ["e"]}, "p")
    try:
        token, model = key(agent, "small", "--tpm", "100"), served(agent, "e")
        body = json.dumps({"model": model, "messages": MSG, "stream": True}).encode()

        def one() -> int:
            try:
                return request(agent, token, body).count(b'"delta"')
            except urllib.error.HTTPError:
                return 0

        with ThreadPoolExecutor(20) as pool:
            chunks = list(pool.map(lambda _: one(), range(20)))
        print(f"20 concurrent streams of ~50 tokens, key tpm=100: {sum(1 for c in chunks if c)} served, "
              f"{sum(chunks)} completion tokens (the limit: 100 a minute)")  # fmt: skip
    finally:
        agent.stop()


def large_answer(tmp: Path, mib: float) -> None:
    agent = started(tmp, "large", {"e": vllm(free_port(), "--answer-mb", str(mib))}, {"p": ["e"]}, "p",
                    router_timeout_s=600)  # fmt: skip
    try:
        token, model = key(agent, "big"), served(agent, "e")
        peak = PeakMemory(agent.proc.pid)
        t0 = time.monotonic()
        req = urllib.request.Request(f"http://{agent.config['router_listen']}/v1/chat/completions",
                                     data=json.dumps({"model": model, "messages": MSG}).encode(),
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        got = 0
        with urllib.request.urlopen(req, timeout=600) as answer:
            while part := answer.read(MiB):
                got += len(part)
        took = time.monotonic() - t0
        growth = peak.growth_mib()
        print(f"a {got / MiB:.0f} MiB answer through the router in {took:.1f} s: agent memory +{growth:.1f} MiB")
    finally:
        agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answer-mb", type=float, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            keyless_uploads(Path(tmp))
            stalled_switch(Path(tmp))
            token_limit(Path(tmp))
            large_answer(Path(tmp), args.answer_mb)
        except (AssertionError, subprocess.CalledProcessError, OSError) as exc:
            print(f"bench.hostile: {str(exc).splitlines()[0]}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
