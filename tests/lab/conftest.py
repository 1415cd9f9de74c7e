"""Lab tests run real podman systemd containers. They skip where podman or the lab images are
missing, unless AIINFRA_REQUIRE_LAB=1 (set by scripts/test and CI), where that is a failure."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from aiinfra.installer import lab, workstation


def require_lab() -> None:
    missing = None
    if not shutil.which("podman"):
        missing = "podman is not installed"
    elif not all(lab.image_exists(release) for release in lab.RELEASES):
        missing = "lab images not built (aiinfra lab image)"
    if missing:
        if os.environ.get("AIINFRA_REQUIRE_LAB") == "1":
            pytest.fail(f"{missing}; AIINFRA_REQUIRE_LAB=1 demands the lab tests")
        pytest.skip(missing)


def podman(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": str(workstation.CONTAINERS_CONF)}
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env, check=False)


# Longest first, so that two workers (scripts/test) finish together: the lab install (about 25 min on
# two cores), the whole-site Molecule scenario (about 10) and the two-host lab (about 13) start first,
# the short ones fill in.
FIRST = ("tests/lab/test_install_lab.py", "tests/lab/test_molecule.py::TestMolecule_default::",
         "tests/lab/test_multinode_lab.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(FIRST) if item.nodeid.startswith(prefix)), len(FIRST))

    items.sort(key=rank)  # stable: within a rank, collection order
