"""Secure Boot, read where aiinfra runs on the box itself: what `aiinfra validate` and `aiinfra plan`
say of it before an install (the nvidia_driver role reads it again on the host and acts on it)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from aiinfra.installer.spec import HostSpec


def state(efivar: str) -> bool | None:
    """The firmware's SecureBoot variable (4 bytes of attributes, then 1 for on); None: not there."""
    try:
        data = Path(efivar).read_bytes()
    except OSError:
        return None
    return len(data) >= 5 and data[4] == 1


def is_here(host: str, hostvars: dict[str, Any]) -> bool:
    """HOST is this machine (the inventory says local, or names it so)."""
    return hostvars.get("ansible_connection") == "local" or host in ("localhost", socket.gethostname())


def note(host: str, spec: HostSpec) -> str | None:
    """One line on what Secure Boot means for this host's driver install; None where nothing is read."""
    if not spec.nvidia_driver_version:
        return None
    on = state(spec.nvidia_driver_secure_boot_efivar)
    if not on:
        return f"{host}: Secure Boot is off here: DKMS builds the driver's modules"
    repo = spec.nvidia_driver_custom_repo
    layout = repo.layout if spec.nvidia_driver_source == "custom" and repo else spec.nvidia_driver_source
    if spec.nvidia_driver_secure_boot_modules == "dkms":
        way = f"DKMS's modules, signed with the enrolled key {spec.nvidia_driver_mok_certificate}"
    elif layout == "ubuntu":
        way = "Canonical's signed modules for the running kernel, if they were built for the pinned driver"
    else:
        way = ("a refusal before the driver is touched: NVIDIA's CUDA repository has no modules signed for "
               "Ubuntu's kernel (use nvidia_driver_source: ubuntu, or enroll a key and set "
               "nvidia_driver_secure_boot_modules: dkms)")  # fmt: skip
    return f"{host}: Secure Boot is on here: the driver install means {way}"
