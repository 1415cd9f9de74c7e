"""Wheels for a box: the same checkout gives byte-identical wheels (an unchanged checkout copies and
reinstalls nothing), and the dependencies are the box's Python's, not the controller's."""

from __future__ import annotations

import tarfile
import zipfile

import pytest

from aiinfra.installer import wheelhouse
from tests.conftest import ROOT

pytestmark = pytest.mark.lab  # builds a wheel and asks the package index: seconds, and the network


def test_wheels_are_reproducible_and_match_the_box(tmp_path):
    first = wheelhouse.build(ROOT, tmp_path / "a", "3.13", "x86_64")
    other = wheelhouse.build(ROOT, tmp_path / "b", "3.13", "x86_64")  # built afresh, the same bytes
    assert (first["sha256"], first["wheel"]) == (other["sha256"], other["wheel"])
    with tarfile.open(first["archive"]) as tar:
        names = set(tar.getnames())
    assert names == {p.name for p in (tmp_path / "a").iterdir()}
    assert first["wheel"] in names
    binary = [n for n in names if "-cp3" in n]
    assert binary and all("-cp313-" in n for n in binary), binary
    assert any(n.startswith("pydantic_core-") for n in binary)
    with zipfile.ZipFile(tmp_path / "a" / first["wheel"]) as wheel:
        shipped = wheel.namelist()
    assert "aiinfra/agent/gpu/nvml.py" in shipped
    # What the box gets is what the box runs: no test double, no test harness.
    assert not [n for n in shipped if "/kit/" in n or "stub_engine" in n or "fake" in n or "harness" in n]
