"""What the box keeps for its engines and what may go: staged models and vLLM environments on disk
(laid out as the vllm role leaves them), `aiinfra-agent models list` and `models prune`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from aiinfra.agent import identity, staging

AGENT = str(Path(sys.executable).with_name("aiinfra-agent"))


def staged(root: Path, model: str, size: int) -> Path:
    folder = root / model
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w" * size)
    staging.write_manifest(folder)
    return folder


def vllm_env(prefix: Path, version: str, age: int) -> Path:
    env = prefix / version
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "vllm").write_text("#!/bin/sh\n")
    os.utime(env, (1_700_000_000 + age, 1_700_000_000 + age))
    return env


def box(tmp_path: Path) -> Path:
    """Two engines' models staged and a third no engine uses; vLLM 0.30, 0.31 and 0.32 (current)."""
    models = tmp_path / "disk" / "models"
    for model, size in (("org/a", 1000), ("org/b", 2000), ("org/old", 5000)):
        staged(models, model, size)
    prefix = tmp_path / "vllm"
    for version, age in (("0.30.0", 1), ("0.31.0", 2), ("0.32.0", 3)):
        vllm_env(prefix, version, age)
    (prefix / "current").symlink_to(prefix / "0.32.0")
    engine = {"runtime": "vllm", "gpus": [0]}
    config = {
        "engines": {"a": engine | {"model": "org/a", "port": 8001}, "b": engine | {"model": "org/b", "port": 8002}},
        "profiles": {"p": ["a"], "q": ["b"]},
        "default_profile": "p",
        "model_storage_mount": str(tmp_path / "disk"),
        "data_dir": str(tmp_path / "records"),
        "vllm_command": [str(prefix / "current" / "bin" / "vllm")],
    }
    path = tmp_path / "agent.yml"
    path.write_text(yaml.safe_dump(config))
    history = identity.History(tmp_path / "records" / "identities.json")
    old = hashlib.sha256((models / "org/old" / staging.MANIFEST).read_bytes()).hexdigest()
    history.started("a", identity.Identity(old, "vllm 0.30.0", "x" * 64))  # what engine a served once
    return path


def models(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, "models", *args, "--config", str(config)], capture_output=True, text=True,
                          check=False)  # fmt: skip


def test_list_says_what_keeps_each_and_prune_removes_only_what_nothing_keeps(tmp_path):
    config = box(tmp_path)
    listed = {(s["kind"], s["name"]): s for s in json.loads(models(config, "list", "--json").stdout)}
    assert {k: s["kept_for"] for k, s in listed.items()} == {
        ("model", "org/a"): "engine a", ("model", "org/b"): "engine b", ("model", "org/old"): "",
        ("vllm", "0.30.0"): "", ("vllm", "0.31.0"): "the way back", ("vllm", "0.32.0"): "current"}  # fmt: skip
    assert listed[("model", "org/old")]["last_used"] is not None  # engine a served it once
    assert listed[("model", "org/old")]["bytes"] > 5000

    told = models(config, "prune")  # without --yes: says, removes nothing
    assert told.returncode == 0 and "org/old" in told.stdout and "--yes" in told.stdout
    assert (tmp_path / "disk" / "models" / "org" / "old").is_dir()

    done = models(config, "prune", "--yes")
    assert done.returncode == 0, done.stderr
    assert "removed model org/old" in done.stdout and "removed vllm 0.30.0" in done.stdout
    assert "model disk free:" in done.stdout
    assert not (tmp_path / "disk" / "models" / "org" / "old").exists()
    assert not (tmp_path / "vllm" / "0.30.0").exists()
    for kept in ("disk/models/org/a", "disk/models/org/b", "vllm/0.31.0", "vllm/0.32.0"):
        assert (tmp_path / kept).is_dir(), kept
    assert "nothing to remove" in models(config, "prune", "--yes").stdout
    table = models(config, "list").stdout
    assert "the way back" in table and "engine a" in table
    installer = str(Path(sys.executable).with_name("aiinfra"))  # the workstation's command, this machine's box
    same = subprocess.run([installer, "models", "list", "--config", str(config)], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert same.returncode == 0 and same.stdout == table
    refused = subprocess.run([installer, "models", "stage", "x"], capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "list or prune" in refused.stderr


def test_a_bad_configuration_is_one_clear_error_and_exit_2(tmp_path):
    broken = tmp_path / "agent.yml"
    broken.write_text("engines: [not, a, mapping]\n")
    for argv in (["models", "list"], ["models", "prune", "--yes"], ["trace", "0" * 16]):
        done = subprocess.run([AGENT, *argv, "--config", str(broken)], capture_output=True, text=True, check=False)
        assert done.returncode == 2 and "engines" in done.stderr and "Traceback" not in done.stderr, argv


def test_of_a_models_versions_the_current_and_the_way_back_stay_and_an_older_one_may_go(tmp_path):
    from aiinfra.agent import gate
    from aiinfra.agent.engines import Launch

    config = box(tmp_path)
    models_dir = tmp_path / "disk" / "models"
    mirror = tmp_path / "nas"
    pins = []
    for version in (b"one", b"two", b"three"):  # three versions of org/a, staged as the spec's pin moved
        folder = mirror / "org" / "a"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(version * 100)
        staging.write_manifest(folder)
        pins.append(hashlib.sha256((folder / staging.MANIFEST).read_bytes()).hexdigest())
        staging.stage("org/a", models_dir, str(mirror), [], pins[-1])
    records = gate.Records(tmp_path / "records" / "gates.json")
    for pin in pins[1:]:  # version two passed its gate, then version three: two is the way back
        served = identity.Identity(pin, "vllm 0.32.0", "x" * 64)
        path = str(staging.version_dir(models_dir, "org/a", pin))
        records.passed("a", served, Launch("a", [str(tmp_path / "vllm/current/bin/vllm")], {}, 8001, "vllm",
                                           model_dir=path), None)  # fmt: skip
    listed = {s["name"]: s["kept_for"] for s in json.loads(models(config, "list", "--json").stdout)}
    version = {n: f"org/a@{p[:16]}" for n, p in zip(("one", "two", "three"), pins, strict=True)}
    assert listed[version["three"]] == "engine a" and listed[version["two"]] == "the way back for engine a"
    assert listed[version["one"]] == "" and "org/a" not in listed  # the link is no item of its own
    assert models(config, "prune", "--yes").returncode == 0
    left = sorted(p.name for p in (models_dir / staging.VERSIONS / "org" / "a").iterdir())
    assert left == sorted([pins[1][:16], pins[2][:16]])  # one, and the copy staged before versions, went
    assert (models_dir / "org" / "a" / "model.safetensors").read_bytes() == b"three" * 100
