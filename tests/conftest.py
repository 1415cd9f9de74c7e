"""Shared fixtures: an inventory on disk holding one host's spec, and the `aiinfra` CLI."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from aiinfra.installer.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = yaml.safe_load((ROOT / "installer" / "example-thor.yml").read_text())


def kit_script(name: str) -> ModuleType:
    """One of the hardware kit's scripts (installer/kit/NAME.py, not a package), loaded as a module."""
    spec = importlib.util.spec_from_file_location(f"kit_{name}", ROOT / "installer" / "kit" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def thor_spec() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE)


def write_inventory(
    directory: Path, host_vars: dict[str, Any], *, host: str = "thor", group: str = "inference"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.yml").write_text(yaml.safe_dump({group: {"hosts": {host: None}}}))
    (directory / "host_vars").mkdir(exist_ok=True)
    (directory / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(host_vars))
    return directory


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture(autouse=True)
def isolated_state(tmp_path_factory, monkeypatch):
    """Runs and lab inventories go to a temporary state directory, never the operator's."""
    if "AIINFRA_TEST_KEEP_STATE" not in os.environ:
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
