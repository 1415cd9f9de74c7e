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


def boot_loaders(status: str) -> list[str]:
    """The loaders `proxmox-boot-tool status` names for its ESPs ("2A5B-0C1D is configured with: grub
    (versions: ...)"): uefi there is systemd-boot, which reads /etc/kernel/cmdline; grub (legacy BIOS,
    or Secure Boot) reads GRUB's configuration."""
    found: set[str] = set()
    for line in status.splitlines():
        if " is configured with: " in line:
            kinds = line.split(" is configured with: ", 1)[1].split(" (", 1)[0]
            found |= {"systemd-boot" if kind.strip() == "uefi" else kind.strip() for kind in kinds.split(",")}
    return sorted(found)


def iommu_group_problems(listing: str, slots: list[str]) -> dict:
    """{problems, unchecked}: each GPU slot's IOMMU group from `grep -H . .../iommu_groups/*/devices/*/class`
    lines (".../iommu_groups/12/devices/0000:41:00.0/class:0x030000"). A group is passed whole, so any
    member outside the GPU's slot is a problem, except PCI bridges and root ports (class 0x0604), which
    stay with the host (Proxmox's passthrough documentation). A slot with no group yet is unchecked."""
    groups: dict[str, dict[str, str]] = {}
    for line in listing.splitlines():
        path, _, cls = line.rpartition(":")
        parts = path.split("/")
        if len(parts) >= 5 and parts[-5] == "iommu_groups":
            groups.setdefault(parts[-4], {})[parts[-2]] = cls.strip().lower()
    problems, unchecked = [], []
    for slot in slots:
        group = next((g for g, members in groups.items() if f"{slot}.0" in members), None)
        if group is None:
            unchecked.append(slot)
            continue
        strangers = sorted(
            address
            for address, cls in groups[group].items()
            if not address.startswith(f"{slot}.") and not cls.startswith("0x0604")
        )
        if strangers:
            problems.append(
                f"GPU {slot}.0 shares IOMMU group {group} with {', '.join(strangers)}; passing it through would "
                "hand those to the VM too. Move the card to another slot, or see the board's ACS settings"
            )
    return {"problems": problems, "unchecked": unchecked}


def vm_problems(current: dict[str, str], vm_id: int, hugepages_1g: int, host_numa_nodes: int) -> list[str]:
    """What the VM's own settings must be for the passthrough settings to start (qemu-server refuses
    otherwise), each with the operator's fix; the role does not change them itself, since a new
    machine type renames the guest's NICs and a new firmware leaves an installed OS unbootable."""
    problems = []
    if "q35" not in current.get("machine", "i440fx"):
        problems.append(
            f"VM {vm_id} has machine type {current.get('machine', 'i440fx (the default)')}: hostpci with pcie=1 needs "
            f"q35; run `qm set {vm_id} --machine q35` (the guest's NIC names may change)"
        )
    if current.get("bios", "seabios") != "ovmf":
        problems.append(
            f"VM {vm_id} boots with {current.get('bios', 'seabios (the default)')}: a passed-through GPU with "
            f"disable_vga needs OVMF; run `qm set {vm_id} --bios ovmf --efidisk0 STORAGE:1,efitype=4m` on a "
            "VM whose OS boots by UEFI"
        )
    if hugepages_1g > 0:
        memory = int(current.get("memory", "2048"))
        sockets = int(current.get("sockets", "1"))
        if memory % 1024:
            problems.append(f"VM {vm_id} has memory {memory} MiB: 1 GiB huge pages need a multiple of 1024")
        if memory > hugepages_1g * 1024:
            problems.append(
                f"VM {vm_id} has memory {memory} MiB, more than the {hugepages_1g} GiB of huge pages reserved "
                "(proxmox_passthrough_hugepages_1g)"
            )
        # The kernel spreads hugepages=N over the host's NUMA nodes; a one-socket VM takes all from node 0.
        per_node = hugepages_1g // max(host_numa_nodes, 1)
        if host_numa_nodes > 1 and sockets == 1 and memory > per_node * 1024:
            problems.append(
                f"VM {vm_id} has one socket, so all {memory // 1024} GiB come from host NUMA node 0, which holds "
                f"{per_node} of the {hugepages_1g} huge pages; give it {host_numa_nodes} sockets or reserve more"
            )
    return problems


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
            "boot_loaders": boot_loaders,
            "iommu_group_problems": iommu_group_problems,
            "vm_problems": vm_problems,
            "passthrough_kernel_args": passthrough_kernel_args,
            "replace_kernel_args": replace_kernel_args,
            "qm_config": qm_config,
            "qm_wanted": qm_wanted,
            "qm_changes": qm_changes,
            "qm_remember": qm_remember,
        }
