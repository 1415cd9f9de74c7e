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
