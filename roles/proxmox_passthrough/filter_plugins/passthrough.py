"""Filters of the proxmox_passthrough role: which PCI functions to pass, and the kernel arguments."""

from __future__ import annotations

import re

# `lspci -Dnn`: 0000:41:00.0 VGA compatible controller [0300]: NVIDIA Corporation GA102 [...] [10de:2204] (rev a1)
LINE = re.compile(r"^(?P<address>\S+) .*?\[(?P<cls>[0-9a-f]{4})\]: .*\[(?P<id>[0-9a-f]{4}:[0-9a-f]{4})\]", re.I)
GPU_CLASSES = ("0300", "0302")  # VGA compatible, 3D controller
NVIDIA = "10de"


def passthrough_functions(lspci: str, ids: list[str]) -> list[dict[str, str]]:
    """PCI functions to hand to vfio-pci: those with the given ids, or (none given) every NVIDIA GPU
    and the other functions of its slot (HDMI audio, USB-C), which must travel with it."""
    devices = [m.groupdict() for m in map(LINE.match, lspci.splitlines()) if m]
    for device in devices:
        device["slot"] = device["address"].rsplit(".", 1)[0]
    if ids:
        wanted = {i.lower() for i in ids}
        return [d for d in devices if d["id"].lower() in wanted]
    slots = {d["slot"] for d in devices if d["cls"] in GPU_CLASSES and d["id"].startswith(NVIDIA)}
    return [d for d in devices if d["slot"] in slots]


def passthrough_kernel_args(vendor: str, hugepages_1g: int, extra: list[str]) -> list[str]:
    args = ["intel_iommu=on"] if vendor == "intel" else []
    args.append("iommu=pt")
    if hugepages_1g > 0:
        args += ["default_hugepagesz=1G", "hugepagesz=1G", f"hugepages={hugepages_1g}"]
    return args + list(extra)


def replace_kernel_args(cmdline: str, remove: list[str], add: list[str]) -> str:
    """A kernel command line without the arguments this role wrote before, with the ones it wants now."""
    kept = [a for a in cmdline.split() if a not in set(remove) | set(add)]
    return " ".join(kept + add)


def qm_config(stdout: str) -> dict[str, str]:
    """`qm config ID` → {key: value}."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


def qm_wanted(functions: list[dict[str, str]], hugepages_1g: int) -> dict[str, str]:
    """One hostpci entry per GPU slot (all its functions), NUMA, CPU type host, 1 GiB huge pages."""
    slots = sorted({f["slot"] for f in functions})
    wanted = {f"hostpci{i}": f"{slot},pcie=1,x-vga=0" for i, slot in enumerate(slots)}
    wanted |= {"numa": "1", "cpu": "host"}
    if hugepages_1g > 0:
        wanted["hugepages"] = "1024"
    return wanted


def qm_changes(current: dict[str, str], wanted: dict[str, str], saved: dict[str, str | None]) -> list[str]:
    """`qm set` arguments: what differs from wanted, and the values from before for keys no longer wanted."""
    args: list[str] = []
    deletes: list[str] = []
    for key, value in wanted.items():
        if current.get(key) != value:
            args += [f"--{key}", value]
    for key, before in saved.items():
        if key in wanted:
            continue
        if before is None and key in current:
            deletes.append(key)
        elif before is not None and current.get(key) != before:
            args += [f"--{key}", before]
    return args + (["--delete", ",".join(deletes)] if deletes else [])


def qm_remember(saved: dict[str, str | None], current: dict[str, str], wanted: dict[str, str]) -> dict:
    """The values the VM had before the role set each wanted key (None: the key was not there)."""
    return {key: saved[key] if key in saved else current.get(key) for key in wanted}


class FilterModule:
    def filters(self):
        return {
            "passthrough_functions": passthrough_functions,
            "passthrough_kernel_args": passthrough_kernel_args,
            "replace_kernel_args": replace_kernel_args,
            "qm_config": qm_config,
            "qm_wanted": qm_wanted,
            "qm_changes": qm_changes,
            "qm_remember": qm_remember,
        }
