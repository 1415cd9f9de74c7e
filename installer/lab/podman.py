"""Podman, run with the project's containers.conf (runc, file limits) rather than changing the machine's
configuration, and the lab image: a minimal Debian with systemd, debootstrapped and imported (no
registry pulls). Molecule's hosts use the same image."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

from aiinfra.installer.workstation import CONTAINERS_CONF, EnvironmentProblem

RELEASES = ("bookworm", "trixie")


PYTHON_OF_RELEASE = {"bookworm": "3.11", "trixie": "3.13"}


# python3-apt (for Ansible's apt module, and check mode on a fresh host) and sudo: Ubuntu server has both;
# the rest is what a minimal Debian needs to act as a systemd host that Ansible can reach.
IMAGE_PACKAGES = "python3,python3-apt,sudo,systemd,systemd-sysv,dbus,ca-certificates"


CONTAINER_PREFIX = "aiinfra-lab-"


def image_name(release: str) -> str:
    return f"localhost/aiinfra-lab:{release}"


def podman(
    *args: str, check: bool = True, capture: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    if not shutil.which("podman"):
        raise EnvironmentProblem("podman not found: apt-get install podman runc debootstrap")
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    proc = subprocess.run(["podman", *args], env=env, text=True, check=False, capture_output=capture, input=input_text)
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()
        raise EnvironmentProblem(f"podman {args[0]} failed: {detail[-1] if detail else proc.returncode}")
    return proc


def image_exists(release: str) -> bool:
    return podman("image", "exists", image_name(release), check=False).returncode == 0


def build_image(release: str, say: Callable[[str], None], *, rebuild: bool = False) -> str:
    """Build the lab image for a Debian release once; later calls reuse it."""
    if release not in RELEASES:
        raise ValueError(f"release {release!r}: choose one of {', '.join(RELEASES)}")
    name = image_name(release)
    if image_exists(release) and not rebuild:
        return name
    if not shutil.which("debootstrap"):
        raise EnvironmentProblem("debootstrap not found: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise EnvironmentProblem("building the lab image needs root (debootstrap)")
    say(f"building {name} with debootstrap (about a minute)...")
    with tempfile.TemporaryDirectory(prefix="aiinfra-rootfs-") as rootfs:
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={IMAGE_PACKAGES}", release, rootfs],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise EnvironmentProblem(f"debootstrap {release} failed: {' | '.join(tail)}")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
        imported = subprocess.run(
            ["podman", "import", "--change", 'CMD ["/sbin/init"]', "-", name],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise EnvironmentProblem(f"podman import of {name} failed: {imported.stderr.strip()}")
    say(f"built {name}")
    return name


def container_name(host: str) -> str:
    return CONTAINER_PREFIX + host


def wait_for_systemd(name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        proc = podman("exec", name, "systemctl", "is-system-running", check=False)
        state = proc.stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise EnvironmentProblem(f"{name}: systemd did not finish starting in {timeout_s:.0f}s (state {state!r})")
