"""Run on the box itself: what this machine's GPUs and Secure Boot mean for the spec, for validate and plan."""

from __future__ import annotations

from aiinfra.installer import secure_boot
from aiinfra.installer.inventory import Inventory
from aiinfra.installer.spec import validate


def secure_boot_here(inv: Inventory, hosts: list[str]) -> list[str]:
    """Run on the box: what its Secure Boot state means for the driver install."""
    lines = []
    for host in hosts:
        if secure_boot.is_here(host, inv.hostvars[host]):
            spec, _ = validate(host, inv.hostvars[host])
            if spec is not None and (said := secure_boot.note(host, spec)):
                lines.append(said)
    return lines


def gpu_links_here(engines: dict[str, list[int]]) -> list[str]:
    """Run on the box (NVML answers here): how each tensor-parallel engine's GPUs are linked, as the
    agent will find it, so that a pair without P2P is known before the profile first starts."""
    from aiinfra.agent.gpu.nvml import Nvml
    from aiinfra.agent.gpu.policy import tensor_path

    spanning = {name: sorted(gpus) for name, gpus in engines.items() if len(gpus) > 1}
    nvml = Nvml()
    if not spanning or nvml.read().state != "ok":
        return []
    lines = []
    try:
        for name, gpus in spanning.items():
            pairs = [(a, b) for i, a in enumerate(gpus) for b in gpus[i + 1 :]]
            path = tensor_path(gpus, {p: nvml.links(*p) for p in pairs})
            said = {"nvlink": "NVLink", "pcie": "P2P over PCIe"}.get(path.path, path.reason)
            lines.append(f"GPU links here (NVML): engine {name} on GPUs {', '.join(map(str, gpus))}: {said}")
    finally:
        nvml.shutdown()
    return lines
