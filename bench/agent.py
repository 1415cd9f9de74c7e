"""Agent footprint and reaction times, with two stub engines (process backend), printed as figures.

    .venv/bin/python -m bench.agent [--seconds 60]

- RSS and CPU of the agent over the sampling window with both engines ready (default policy ticks);
- engine death (SIGKILL) → noticed, and → restart issued (the configured first backoff included);
- hang (inference stops answering, /health still 200) → detected by the liveness probe;
- a request sent as its engine restarts (2 s load): how long it waited, against the restart's own
  time to ready (what the queue adds);
- a switch to deep on request and back when idle (2 s loads, stub engines): the request's answer time,
  and idle → the default profile ready again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from tests.harness import Agent, free_port, vllm


def event_time(status: dict, engine: str, event: str, after: float) -> float | None:
    times = [e["time"] for e in status["events"] if e["engine"] == engine and e["event"] == event and e["time"] > after]
    return min(times) if times else None


def footprint(tmp: Path, seconds: float) -> None:
    agent = Agent(
        tmp / "footprint",
        {"a": vllm(free_port()), "b": vllm(free_port(), gpus=[1])},
        {"p": ["a", "b"]},
        "p",
        policy={"tick_s": 0.5, "readiness_interval_s": 5, "liveness_interval_s": 30},
    )
    agent.tmp.mkdir()
    try:
        agent.start()
        agent.wait(lambda s: all(e["phase"] == "ready" for e in s["engines"].values()), 30, "both ready")
        proc = psutil.Process(agent.proc.pid)
        cpu_before = proc.cpu_times()
        started = time.monotonic()
        rss = []
        while time.monotonic() - started < seconds:
            rss.append(proc.memory_info().rss)
            time.sleep(1)
        cpu = proc.cpu_times()
        used = (cpu.user + cpu.system) - (cpu_before.user + cpu_before.system)
        elapsed = time.monotonic() - started
        print(
            f"agent with 2 ready engines over {elapsed:.0f} s: RSS max {max(rss) / 2**20:.1f} MiB, "
            f"mean {sum(rss) / len(rss) / 2**20:.1f} MiB; CPU {used:.2f} s = {100 * used / elapsed:.2f} % of one core"
        )
    finally:
        agent.stop()


def death(tmp: Path, rounds: int) -> None:
    backoff = 0.5
    agent = Agent(
        tmp / "death",
        {"a": vllm(free_port())},
        {"p": ["a"]},
        "p",
        # backoff_reset_after_s: each death meets the first backoff, not one doubled by the last death
        policy={"tick_s": 0.5, "backoff_initial_s": backoff, "crash_loop_failures": 100, "backoff_reset_after_s": 1},
    )
    agent.tmp.mkdir()
    noticed, issued = [], []
    try:
        agent.start()
        for _ in range(rounds):
            pid = agent.wait_phase("a", "ready", 30)["engines"]["a"]["pid"]
            time.sleep(1.5)  # past backoff_reset_after_s
            time.sleep(1.5)  # past backoff_reset_after_s
            killed = time.time()
            os.kill(pid, signal.SIGKILL)
            status = agent.wait(lambda s, k=killed: event_time(s, "a", "started", k) is not None, 30, "restart")
            noticed.append(event_time(status, "a", "backoff", killed) - killed)
            issued.append(event_time(status, "a", "started", killed) - killed)
    finally:
        agent.stop()
    print(
        f"engine death → noticed: median {1000 * sorted(noticed)[len(noticed) // 2]:.0f} ms, "
        f"max {1000 * max(noticed):.0f} ms (tick 0.5 s); → restart issued: median "
        f"{1000 * sorted(issued)[len(issued) // 2]:.0f} ms (first backoff {backoff} s included), n={rounds}"
    )


def hang(tmp: Path) -> None:
    interval, timeout, failures = 2.0, 2.0, 2
    agent = Agent(
        tmp / "hang",
        {"a": vllm(free_port(), "--hang-after", "3")},
        {"p": ["a"]},
        "p",
        policy={
            "tick_s": 0.5,
            "liveness_interval_s": interval,
            "liveness_timeout_s": timeout,
            "liveness_failures": failures,
        },
    )
    agent.tmp.mkdir()
    try:
        agent.start()
        ready = agent.wait_phase("a", "ready", 30)
        hung_at = next(e["time"] for e in ready["events"] if e["event"] == "started") + 3  # stub listens ~at start
        status = agent.wait(lambda s: event_time(s, "a", "backoff", hung_at) is not None, 60, "hang detected")
        detected = event_time(status, "a", "backoff", hung_at) - hung_at
    finally:
        agent.stop()
    print(
        f"hang → detected: {detected:.1f} s (liveness every {interval:.0f} s, {timeout:.0f} s timeout, "
        f"{failures} failures in a row; bound ≈ {failures * max(interval, timeout) + interval:.0f} s)"
    )


def through_restart(tmp: Path, rounds: int) -> None:
    load = 2.0
    agent = Agent(tmp / "queue", {"a": vllm(free_port(), "--startup-delay", str(load))}, {"p": ["a"]}, "p",
                  policy={"tick_s": 0.5, "readiness_interval_s": 0.2, "liveness_interval_s": 60})  # fmt: skip
    agent.config["router_auth"] = False
    agent.tmp.mkdir()
    waited, restarts = [], []
    try:
        agent.start()
        model = agent.wait_phase("a", "ready", 30)["engines"]["a"]["served"][0]
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()
        url = f"http://{agent.config['router_listen']}/v1/chat/completions"
        for _ in range(rounds):
            asked = time.time()
            assert agent.cli("restart", "a", "--socket", agent.socket).returncode == 0
            agent.wait(lambda s: s["engines"]["a"]["phase"] != "ready", 5, "the restart")
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as answer:
                assert answer.status == 200
            waited.append(time.time() - asked)
            status = agent.status()
            restarts.append(event_time(status, "a", "ready", asked) - asked)
    finally:
        agent.stop()
    mid = len(waited) // 2
    print(
        f"a request sent as its engine restarts ({load:.0f} s load): answered after median "
        f"{sorted(waited)[mid]:.2f} s; the engine was ready after median {sorted(restarts)[mid]:.2f} s: "
        f"the queue adds {1000 * (sorted(waited)[mid] - sorted(restarts)[mid]):.0f} ms, n={rounds}"
    )


def switch_and_back(tmp: Path, rounds: int) -> None:
    load, idle = 2.0, 2.0
    delay = ("--startup-delay", str(load))
    engines = {"a": vllm(free_port(), *delay), "b": vllm(free_port(), *delay)}
    agent = Agent(tmp / "switch", engines, {"fast": ["a"], "deep": ["b"]}, "fast",
                  policy={"tick_s": 0.5, "readiness_interval_s": 0.2, "liveness_interval_s": 60})  # fmt: skip
    agent.config |= {"router_auth": False, "profile_switching": {"deep": {"back_after_idle_s": idle, "min_dwell_s": 0}}}
    agent.tmp.mkdir()
    answered, back = [], []
    try:
        agent.start()
        agent.wait_phase("a", "ready", 30)
        deep = agent.engine("b")["served"][0]
        body = json.dumps({"model": deep, "messages": [{"role": "user", "content": "hi"}]}).encode()
        url = f"http://{agent.config['router_listen']}/v1/chat/completions"
        for _ in range(rounds):
            asked = time.monotonic()
            with urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}),
                                        timeout=60) as answer:  # fmt: skip
                assert answer.status == 200
            done = time.monotonic()
            answered.append(done - asked)
            agent.wait(lambda s: s["profile"] == "fast" and s["engines"]["a"]["phase"] == "ready", 60, "back")
            back.append(time.monotonic() - done)
    finally:
        agent.stop()
    mid = len(answered) // 2
    print(
        f"switch to deep on request ({load:.0f} s loads): answered after median {sorted(answered)[mid]:.2f} s; "
        f"back to fast, ready, median {sorted(back)[mid]:.2f} s after the last request (idle {idle:.0f} s "
        f"+ the load), n={rounds}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="footprint sampling window")
    parser.add_argument("--rounds", type=int, default=5, help="engine deaths to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aiinfra-bench-") as tmp:
        footprint(Path(tmp), args.seconds)
        death(Path(tmp), args.rounds)
        hang(Path(tmp))
        through_restart(Path(tmp), args.rounds)
        switch_and_back(Path(tmp), args.rounds)


if __name__ == "__main__":
    main()
