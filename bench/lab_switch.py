"""A switch to the deep profile on request and back when idle, on the lab box with real vLLM engines.

    .venv/bin/python -m bench.lab_switch [--host benchthor] [--rounds 2] [--idle 20] [--keep]

Starts the lab host HOST from the example thor spec (fast: qwen7b on GPU 0, qwen14b on GPU 1; deep:
qwen32b over both, tensor-parallel 2), with the deep profile switchable on request and a key that
may switch, installs the appliance on it (`aiinfra lab up`, `aiinfra install`: minutes, printed),
then, each round: asks the router for the deep model and times the answer (the fast engines drained
and stopped, the deep one started, its first answer), and times the way back (IDLE seconds without a
request, then the fast engines stopped and started, ready again). The engines are vLLM's CPU build
on this machine's cores with the kit's tiny models (TEST DOUBLE weights): the load times are a CPU's,
not a GPU's. The lab host is removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from aiinfra.agent.http import keys as keyfile
from aiinfra.installer import lab

AIINFRA = str(Path(sys.executable).with_name("aiinfra"))


def timed(what: str, argv: list[str]) -> str:
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}")
    print(f"{what}: {time.monotonic() - started:.0f} s", flush=True)
    return done.stdout.strip()


def call(url: str, key: str, body: dict | None = None, timeout: float = 600) -> dict:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as error:
        sys.exit(f"{url}: HTTP {error.code}: {error.read().decode(errors='replace')[:600]}")


def ready_models(base: str, key: str) -> dict[str, bool]:
    try:
        return {m["id"]: m["ready"] for m in call(f"{base}/models", key, timeout=10)["data"]}
    except OSError:
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="benchthor")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=float, default=20, help="back_after_idle_s of the deep profile")
    parser.add_argument("--keep", action="store_true", help="leave the lab host running")
    args = parser.parse_args()

    spec = yaml.safe_load(lab.EXAMPLE_SPEC.read_text())
    token = keyfile.new_token()
    spec["profile_switching"] = {"deep": {"on_request": True, "back_after_idle_s": args.idle, "min_dwell_s": 0}}
    # A host_vars key of the bench's own, which may switch (host_vars outrank the lab's inventory key).
    spec["aiinfra_agent_api_keys"] = [{"name": "bench", "sha256": keyfile.digest(token), "may_switch": True}]
    fast = [
        spec["engines"][name].get("served_name", spec["engines"][name]["model"]) for name in spec["profiles"]["fast"]
    ]
    (deep_engine,) = spec["profiles"]["deep"]
    deep = spec["engines"][deep_engine].get("served_name", spec["engines"][deep_engine]["model"])
    with tempfile.TemporaryDirectory(prefix="aiinfra-bench-") as tmp:
        spec_file = Path(tmp) / f"{args.host}.yml"
        spec_file.write_text(yaml.safe_dump(spec))
        try:
            inventory = timed(
                f"aiinfra lab up {args.host}", [AIINFRA, "lab", "up", args.host, "--spec", str(spec_file)]
            )
            timed("aiinfra install", [AIINFRA, "install", "--host", args.host, "-i", inventory])
            base = f"http://{lab.address(args.host)}:{spec['router_listen'].rpartition(':')[2]}/v1"
            answered, back = [], []
            for _ in range(args.rounds):
                deadline = time.monotonic() + 600
                while not all(ready_models(base, token).get(m) for m in fast):
                    if time.monotonic() > deadline:
                        sys.exit(f"the fast profile was not ready in 600 s: {ready_models(base, token)}")
                    time.sleep(0.5)
                asked = time.monotonic()
                call(f"{base}/chat/completions", token,
                     {"model": deep, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})  # fmt: skip
                done = time.monotonic()
                answered.append(done - asked)
                while not all(ready_models(base, token).get(m) for m in fast):
                    if time.monotonic() > done + 600:
                        sys.exit("the box did not switch back to fast in 600 s")
                    time.sleep(0.5)
                back.append(time.monotonic() - done)
                print(f"round: deep answered after {answered[-1]:.1f} s; fast ready {back[-1]:.1f} s after it "
                      f"({args.idle:g} s of them idle)", flush=True)  # fmt: skip
        finally:
            if not args.keep:
                subprocess.run([AIINFRA, "lab", "down", args.host], capture_output=True, check=False)
    mid = len(answered) // 2
    print(
        f"lab box {args.host} (vLLM CPU build, tiny models, {os.cpu_count()} cores): a request for {deep} "
        f"switches fast -> deep and is answered after median {sorted(answered)[mid]:.1f} s; back to fast, "
        f"ready, median {sorted(back)[mid] - args.idle:.1f} s after the {args.idle:g} s idle, n={args.rounds}"
    )


if __name__ == "__main__":
    main()
