"""Every Molecule scenario under molecule/, run in full (create … verify … destroy) by Molecule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiinfra.installer import lab
from tests.conftest import ROOT
from tests.lab.conftest import require_lab

pytestmark = pytest.mark.lab
SCENARIOS = sorted(p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml"))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario):
    require_lab()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(lab.CONTAINERS_CONF),
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run(
        [str(bin_dir / "molecule"), "test", "-s", scenario],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"molecule test -s {scenario} failed:\n{output[-15000:]}"
    assert "failed=0" in output and "failed=1" not in output
