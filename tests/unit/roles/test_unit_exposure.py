"""The units as the roles render them, each at most 2.5 in `systemd-analyze security` (offline: the unit
files alone; tests/lab checks the installed units under a real systemd)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests import units

UNITS = {"aiinfra-agent.service": "aiinfra-agent.service", "aiinfra-engine@.service": "aiinfra-engine@x.service",
         "aiinfra-gpu-setup.service": "aiinfra-gpu-setup.service"}  # fmt: skip


@pytest.mark.parametrize("template", UNITS)
def test_every_unit_is_exposed_at_most_2_5(template, tmp_path):
    analyze = shutil.which("systemd-analyze")
    offline = analyze and "--offline" in subprocess.run([analyze, "security", "--help"], capture_output=True,
                                                        text=True, check=False).stdout  # fmt: skip
    if not offline:
        pytest.skip("no systemd-analyze with --offline (systemd 250+) here")
    path = tmp_path / UNITS[template]
    path.write_text(units.render(template))
    out = subprocess.run([analyze, "security", "--offline=yes", str(path)], capture_output=True, text=True,
                         check=False).stdout  # fmt: skip
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
    assert score <= 2.5, out
