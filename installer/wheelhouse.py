"""Wheels for a box: aiinfra built from this checkout, and its dependencies for the box's Python and
CPU, downloaded here. The box installs from them offline, so it runs exactly the installer's version
and needs no package index of its own (role aiinfra_package).

    python -m aiinfra.installer.wheelhouse --source CHECKOUT --dest DIR --python 3.13 --arch x86_64

prints {"archive": DIR.tar, "wheel": "aiinfra-….whl", "sha256": …} as JSON: the archive holds every
wheel (one file to copy, where a folder costs a round trip per file), sha256 is the archive's.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

# Wheels carry file dates; a fixed one makes the same source give the same bytes, so an unchanged
# checkout copies nothing and reinstalls nothing on the box.
SOURCE_DATE_EPOCH = "315532800"
# Every glibc distribution aiinfra supports (Debian 12: 2.36, Ubuntu 24.04: 2.39) runs these.
MANYLINUX = ("manylinux2014", "manylinux_2_17", "manylinux_2_24", "manylinux_2_27", "manylinux_2_28",
             "manylinux_2_31", "manylinux_2_34", "manylinux_2_35", "manylinux_2_36")  # fmt: skip


class WheelhouseError(Exception):
    pass


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.startswith("ERROR")]
        raise WheelhouseError(f"pip {args[0]} failed: {' '.join(lines) or done.stderr.strip()[-500:]}")


@contextlib.contextmanager
def _locked(path: Path):
    """One builder at a time for PATH: runs in parallel (Molecule scenarios, the lab) share the
    cache, and a pip wheel of one checkout builds in its tree."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(source: Path, dest: Path, python: str, arch: str) -> dict[str, str]:
    with _locked(Path(tempfile.gettempdir()) / f"aiinfra-wheel-{hashlib.sha256(bytes(source)).hexdigest()[:12]}.lock"):
        return _build(source, dest, python, arch)


def source_digest(source: Path) -> str | None:
    """A hash of what goes into the wheel: pyproject.toml, its readme and its packages' folders
    (package-dir; without one, None: always build). Unchanged, the wheelhouse built last time is used
    as it is (pip wheel and download cost seconds a run)."""
    try:
        project = tomllib.loads((source / "pyproject.toml").read_text())
    except (OSError, ValueError) as exc:
        raise WheelhouseError(f"{source}/pyproject.toml cannot be read: {exc}") from None
    folders = set(project.get("tool", {}).get("setuptools", {}).get("package-dir", {}).values())
    if not folders:
        return None
    readme = project.get("project", {}).get("readme")
    digest = hashlib.sha256()
    for top in ["pyproject.toml", *([readme] if isinstance(readme, str) else []), *sorted(folders)]:
        paths = [source / top] if (source / top).is_file() else sorted((source / top).rglob("*"))
        for path in paths:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(source)}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _build(source: Path, dest: Path, python: str, arch: str) -> dict[str, str]:
    if not (source / "pyproject.toml").is_file():
        raise WheelhouseError(f"{source} is not a Python project (no pyproject.toml)")
    major, _, minor = python.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise WheelhouseError(f"{python!r} is not a Python version like 3.13")
    record = dest.with_name(dest.name + ".built.json")
    digest = source_digest(source)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):  # no usable record
        last: dict[str, str] = json.loads(record.read_text())
        if digest is not None and last.pop("source") == digest and Path(last["archive"]).is_file():
            return last
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}
        _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", tmp, str(source), env=env)
        (built,) = Path(tmp).glob("*.whl")
        for old in dest.glob(built.name.split("-")[0] + "-*.whl"):
            old.unlink()  # pip download keeps a file of the same name; this one must be the fresh build
        wheel = dest / built.name
        shutil.copyfile(built, wheel)
    _download([str(wheel)], dest, python, arch)
    archive = dest.with_name(dest.name + ".tar")
    _archive(dest, archive)
    made = {"archive": str(archive), "wheel": wheel.name, "sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}
    record.write_text(json.dumps({**made, "source": digest}))
    return made


def _download(requirements: list[str], dest: Path, python: str, arch: str) -> None:
    major, _, minor = python.partition(".")
    platforms = [arg for name in MANYLINUX for arg in ("--platform", f"{name}_{arch}")]
    _pip(
        "download", "--quiet", "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
        "--abi", f"cp{major}{minor}", *platforms, "--dest", str(dest), *requirements,
    )  # fmt: skip


def packages(requirements: list[str], dest: Path, python: str, arch: str) -> Path:
    """A wheelhouse archive of REQUIREMENTS (vLLM and its dependencies: gigabytes) for the box's Python
    and CPU, downloaded once: an archive made for the same requirements is used as it is."""
    archive = dest.with_name(dest.name + ".tar")
    stamp = dest.with_name(dest.name + ".requirements")
    wanted = "\n".join(requirements) + "\n"
    with _locked(dest.with_name(dest.name + ".lock")):
        if archive.exists() and stamp.exists() and stamp.read_text() == wanted:
            return archive
        dest.mkdir(parents=True, exist_ok=True)
        _download(requirements, dest, python, arch)
        _archive(dest, archive)
        stamp.write_text(wanted)
    return archive


def _archive(folder: Path, archive: Path) -> None:
    """The same wheels give the same bytes: sorted names, no dates, no owners. Written aside and moved
    into place, so that a run copying the archive never reads half of one."""
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(folder.glob("*.whl")):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
    partial.replace(archive)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="aiinfra checkout (or another Python project)")
    parser.add_argument("--dest", type=Path, required=True, help="wheelhouse directory (kept as a cache)")
    parser.add_argument("--python", required=True, help="the box's Python, e.g. 3.13")
    parser.add_argument("--arch", required=True, help="the box's CPU, e.g. x86_64 or aarch64")
    args = parser.parse_args()
    try:
        print(json.dumps(build(args.source.resolve(), args.dest, args.python, args.arch)))
    except WheelhouseError as exc:
        sys.exit(f"aiinfra wheelhouse: {exc}")


if __name__ == "__main__":
    main()
