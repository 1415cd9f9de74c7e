"""An unchanged re-install against the first install, on a fresh lab host with real vLLM engines.

    .venv/bin/python -m bench.reinstall [--host benchthor] [--keep]

Starts the lab host HOST from the example thor spec (`aiinfra lab up`), installs the appliance on it
(`aiinfra install --json`), then installs again with nothing changed, and prints both runs' times,
what each changed, the re-install as a share of the first, and the tasks where each spent longest
(from the run's events). The lab host is removed at the end unless --keep. Minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from bench.lab_switch import AIINFRA, timed


def install(what: str, host: str, inventory: str) -> dict:
    summary = json.loads(timed(what, [AIINFRA, "install", "--host", host, "-i", inventory, "--json"]))
    slowest = ", ".join(f"{task} {seconds:.1f} s" for task, seconds in summary["slowest"][:3])
    print(f"  {summary['duration_s']:.0f} s, changed {summary['changed']}; slowest: {slowest}", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="benchthor")
    parser.add_argument("--keep", action="store_true", help="leave the lab host running")
    args = parser.parse_args()
    try:
        inventory = timed(f"aiinfra lab up {args.host}", [AIINFRA, "lab", "up", args.host])
        first = install("first install", args.host, inventory)
        again = install("unchanged re-install", args.host, inventory)
    finally:
        if not args.keep:
            subprocess.run([AIINFRA, "lab", "down", args.host], capture_output=True, check=False)
    print(
        f"lab host {args.host} ({os.cpu_count()} cores): first install {first['duration_s']:.0f} s "
        f"(changed {first['changed']}), unchanged re-install {again['duration_s']:.0f} s (changed "
        f"{again['changed']}) = {100 * again['duration_s'] / first['duration_s']:.0f}% of the first"
    )
    if again["changed"]:
        sys.exit("the re-install changed something: it is not idempotent")


if __name__ == "__main__":
    main()
