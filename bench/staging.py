"""Staging a model from a mirror against a plain copy of the same files, side by side.

    .venv/bin/python -m bench.staging [--gib 4] [--files 6] [--rounds 3]

Makes a mirror holding one model (safetensors-sized files of random bytes and their SHA256SUMS),
then, round after round in alternating order: `cp -r` of the model's folder (no checking at all),
staging as aiinfra did before (copy, then hash every copy), `aiinfra.agent.staging.stage` (each file
read once, hashed while copied, several at a time), and the floor of any staging that checks what it
copies: reading and hashing the files, copying nothing. Prints the median of each and its ratio to
the plain copy. Before each, the mirror's files are dropped from the page cache (posix_fadvise), so
they are read from the disk, as from a NAS (in a virtual machine the host may still cache them);
with --warm they stay cached, which leaves only the CPU's work to compare. Where SHA-256 on every
core is slower than the copy (it runs at 1.0-1.6 GiB/s a core on these machines), hashing, not
copying, sets the pace: compare stage with the floor there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiinfra.agent import staging

MODEL = "bench/Model-7B"


def make_mirror(root: Path, total: int, files: int) -> Path:
    folder = root / MODEL
    folder.mkdir(parents=True)
    block = os.urandom(4 << 20)
    for n in range(files):
        with (folder / f"model-{n + 1:05d}-of-{files:05d}.safetensors").open("wb") as out:
            left = total // files
            while left > 0:
                out.write(block[: min(left, len(block))])
                left -= len(block)
    (folder / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    staging.write_manifest(folder)
    return root


def drop_from_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def plain_copy(mirror: Path, dest: Path) -> None:
    subprocess.run(["cp", "-r", str(mirror / MODEL), str(dest)], check=True)


def copy_then_check(mirror: Path, dest: Path) -> None:
    """aiinfra before: copytree, then every file of the copy read again for its hash."""
    shutil.copytree(mirror / MODEL, dest)
    assert staging.manifest_problems(dest) == []


def stage(mirror: Path, dest: Path) -> None:
    staging.stage(MODEL, dest, str(mirror), [])


def read_and_hash(mirror: Path, dest: Path) -> None:
    """The least any checked staging does: read and hash every file, as many at once as staging,
    copying nothing. Where this is slower than the plain copy, hashing is the floor, not the copy."""
    files = [p for p in (mirror / MODEL).rglob("*") if p.is_file()]
    with ThreadPoolExecutor(staging.COPIES_AT_ONCE) as pool:
        list(pool.map(staging._sha256, files))
    dest.mkdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.0, help="size of the model (GiB)")
    parser.add_argument("--files", type=int, default=6, help="weight files it is split into")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three, alternating")
    parser.add_argument("--warm", action="store_true", help="leave the mirror in the page cache")
    args = parser.parse_args()
    ways = {"plain copy (cp -r)": plain_copy, "copy, then hash the copy (before)": copy_then_check, "stage": stage,
            "read and hash only, no copy (floor)": read_and_hash}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory(prefix="aiinfra-bench-staging-") as tmp:
        mirror = make_mirror(Path(tmp) / "mirror", int(args.gib * (1 << 30)), args.files)
        cache = "cached" if args.warm else "read from the disk each time"
        print(f"mirror: {args.gib:g} GiB in {args.files} files, {cache}; {args.rounds} rounds, order alternating")
        for round_ in range(args.rounds):
            order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
            for name in order:
                dest = Path(tmp) / "dest"
                if not args.warm:
                    drop_from_cache(mirror)
                started = time.perf_counter()
                ways[name](mirror, dest)
                times[name].append(time.perf_counter() - started)
                shutil.rmtree(dest)
    floor = statistics.median(times["plain copy (cp -r)"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:<36} {median:6.2f} s  {median / floor:5.2f}× the plain copy")


if __name__ == "__main__":
    main()
