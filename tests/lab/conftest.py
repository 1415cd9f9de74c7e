"""Lab tests run real podman systemd containers. They skip where podman or the lab images are
missing, unless AIINFRA_REQUIRE_LAB=1 (set by scripts/test and CI), where that is a failure."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from aiinfra.installer import lab


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
    env = {**os.environ, "CONTAINERS_CONF": str(lab.CONTAINERS_CONF)}
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env, check=False)
