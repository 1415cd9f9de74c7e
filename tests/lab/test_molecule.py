"""Every Molecule scenario under molecule/, run in full (create … verify … destroy) by Molecule.

One test class per scenario, so that pytest-xdist (`--dist loadscope`, scripts/test) can run two
scenarios, or a scenario and the lab install, at the same time: they wait on containers, not CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiinfra.installer import workstation
from tests.conftest import ROOT
from tests.lab.conftest import require_lab

pytestmark = pytest.mark.lab
# Longest first (by the last CI's times): xdist hands scopes out in collection order, so the long ones
# start early and the short ones fill in at the end, beside the lab install's module.
LONGEST_FIRST = ("default", "nvidia_driver", "gpu_tuning", "network_vlans", "model_storage", "proxmox_passthrough")
SCENARIOS = sorted((p.parent.name for p in (ROOT / "molecule").glob("*/molecule.yml")),
                   key=lambda s: (LONGEST_FIRST.index(s) if s in LONGEST_FIRST else len(LONGEST_FIRST), s))  # fmt: skip


def run_scenario(scenario: str) -> None:
    require_lab()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "CONTAINERS_CONF": str(workstation.CONTAINERS_CONF),
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


def _scenario_class(scenario: str) -> type:
    def test_molecule_scenario(self) -> None:
        run_scenario(scenario)

    return type(f"TestMolecule_{scenario}", (), {"test_molecule_scenario": test_molecule_scenario})


for _scenario in SCENARIOS:
    globals()[f"TestMolecule_{_scenario}"] = _scenario_class(_scenario)
