"""A real vLLM under the agent: start → ready, router overhead against direct, death → ready again.

    .venv/bin/python -m bench.real_vllm [--requests 200] [--deaths 2]

vLLM is the CPU build the vllm role pins (`aiinfra lab vllm` installs it once), serving the hardware
kit's tiny real model; the agent runs it under the process backend. Prints:
- start → ready: from the agent's start of `vllm serve` to the readiness probe passing (the model
  load and vLLM's own start-up; on a GPU box the load dominates);
- router overhead: the same completion asked directly and through the router, alternating, at
  concurrency 1 and 8 (p50/p99 and throughput ratio), and a stream's time to first chunk;
- death → ready: SIGKILL of `vllm serve`, until the agent has it ready again (detection, backoff,
  the whole tree removed, a fresh start).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiinfra.installer import lab
from aiinfra.installer.lab import kit_files as kit
from bench.router import pct, run, ttft
from tests.harness import Agent, free_port

KIT = kit.FAKE_MODELS
MODEL = "Qwen/Qwen2.5-7B-Instruct"


def wait_ready(agent: Agent, timeout: float = 300) -> tuple[float, dict]:
    started = time.monotonic()
    status = agent.wait_phase("e", "ready", timeout)
    return time.monotonic() - started, status["engines"]["e"]


async def overhead(direct: str, routed: str, requests: int, engine_key: str) -> None:
    keys = {direct: engine_key, routed: "-"}  # the engine asks for its own key; the router here for none
    for concurrency in (1, 8):
        await run(direct, "tiny", keys[direct], concurrency, 10)
        await run(routed, "tiny", keys[routed], concurrency, 10)
        lat: dict[str, list[float]] = {"direct": [], "routed": []}
        rps: dict[str, list[float]] = {"direct": [], "routed": []}
        for _ in range(2):
            for name, url in (("direct", direct), ("routed", routed)):
                got, rate = await run(url, "tiny", keys[url], concurrency, requests // 2)
                lat[name].extend(got)
                rps[name].append(rate)
        d, r = lat["direct"], lat["routed"]
        ratio = 100 * statistics.mean(rps["routed"]) / statistics.mean(rps["direct"])
        print(f"  concurrency {concurrency}: p50 direct {pct(d, 0.5):.1f} ms, routed {pct(r, 0.5):.1f} ms "
              f"(+{pct(r, 0.5) - pct(d, 0.5):.2f} ms); p99 direct {pct(d, 0.99):.1f} ms, routed {pct(r, 0.99):.1f} "
              f"ms; throughput routed {ratio:.0f}% of direct")  # fmt: skip
    d_first, r_first = [], []
    for _ in range(2):
        d_first += await ttft(direct, "tiny", keys[direct], 10)
        r_first += await ttft(routed, "tiny", keys[routed], 10)
    print(f"  stream first chunk: p50 direct {pct(d_first, 0.5):.1f} ms, routed {pct(r_first, 0.5):.1f} ms "
          f"(+{pct(r_first, 0.5) - pct(d_first, 0.5):.2f} ms)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--deaths", type=int, default=2)
    args = parser.parse_args()
    vllm = lab.host_vllm(lambda line: print(line, file=sys.stderr))
    with tempfile.TemporaryDirectory(prefix="aiinfra-bench-") as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, str(KIT), str(root / "models" / "models"), "--vllm", MODEL], check=True)
        port = free_port()
        engine = {"runtime": "vllm", "model": MODEL, "served_name": "tiny", "gpus": [0], "port": port,
                  "max_model_len": 1024, "max_num_seqs": 8}  # fmt: skip
        policy = {"tick_s": 0.2, "readiness_interval_s": 0.5, "startup_timeout_s": 300, "liveness_interval_s": 3600,
                  "backoff_initial_s": 1, "crash_loop_failures": 10}  # fmt: skip
        agent = Agent(root, {"e": engine}, {"p": ["e"]}, "p", policy)
        agent.config |= {"vllm_command": [str(vllm)], "vllm_env": lab.LAB_VLLM_ENV,
                         "vllm_extra_args": lab.LAB_VLLM_ARGS, "router_auth": False}  # fmt: skip
        try:
            agent.start()
            took, _ = wait_ready(agent)
            print(f"vLLM {lab.vllm_version()} (CPU build, tiny kit model) under the agent, {os.cpu_count()} CPUs")
            print(f"start → ready: {took:.1f} s")
            print("router overhead on a real engine (4-token chat completions):")
            direct = f"http://127.0.0.1:{port}/v1/chat/completions"
            routed = f"http://{agent.config['router_listen']}/v1/chat/completions"
            asyncio.run(overhead(direct, routed, args.requests, agent.engine_key("e")))
            recoveries = []
            for _ in range(args.deaths):
                pid = agent.engine("e")["pid"]
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                agent.wait(lambda s: s["engines"]["e"]["phase"] != "ready", 30, "the death to be seen")
                agent.wait_phase("e", "ready", 300)
                recoveries.append(time.monotonic() - killed)
            print("death → ready (SIGKILL of vllm serve): " + ", ".join(f"{r:.1f} s" for r in recoveries)
                  + f" (backoff {policy['backoff_initial_s']} s included)")  # fmt: skip
        finally:
            agent.stop()


if __name__ == "__main__":
    main()
