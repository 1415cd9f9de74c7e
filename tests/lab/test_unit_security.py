"""Every unit aiinfra installs scores at most 3.0 in `systemd-analyze security` (0 is locked down, 10
is fully exposed), read offline from the unit files by the systemd of the lab image."""

from __future__ import annotations

import re

import pytest

from aiinfra.installer import lab
from tests import units
from tests.lab.conftest import podman, require_lab

pytestmark = pytest.mark.lab
UNITS = sorted(u for u in units.UNITS if u.endswith(".service"))


@pytest.mark.parametrize("unit", UNITS)
def test_each_unit_is_locked_down(unit, tmp_path):
    require_lab()
    (tmp_path / unit).write_text(units.render(unit))
    done = podman("run", "--rm", "-v", f"{tmp_path}:/units:ro", lab.image_name("trixie"),
                  "systemd-analyze", "security", "--offline=yes", "--no-pager", f"/units/{unit}")  # fmt: skip
    plain = re.sub(r"\x1b\[[0-9;]*m|\x1b\]8;;[^\x1b]*\x1b\\", "", done.stdout + done.stderr)
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", plain)
    assert found, plain[-2000:]
    print(f"systemd-analyze security {unit}: {found.group(1)}")
    assert float(found.group(1)) <= 3.0, plain[-4000:]
