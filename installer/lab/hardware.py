"""The hardware kit in a lab or Molecule host (TEST DOUBLES at the hardware boundary): NVIDIA driver
packages in a flat repository, NVML, update-initramfs, Secure Boot's EFI variable; and the netplan
file an OS installer leaves."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from aiinfra.installer.lab import kit_files as hardware_kit
from aiinfra.installer.lab.engines import LAB_MIRROR, engine_doubles, mirror_dir, stub_vllm, write_mirror
from aiinfra.installer.lab.podman import podman
from aiinfra.installer.variables import driver_layout
from aiinfra.installer.workstation import EnvironmentProblem

EXAMPLE_SPEC = Path(__file__).parent.parent / "example-thor.yml"


def lab_driver_vars(spec_vars: dict) -> dict:
    """The lab has no GPU and no NVIDIA repository: the driver comes from the hardware kit's TEST DOUBLE
    repository, laid out as the source the spec names (Ubuntu's archive or NVIDIA's CUDA repository)."""
    mirrored = spec_vars.get("nvidia_driver_custom_repo") or {}
    layout = driver_layout(spec_vars.get("nvidia_driver_source") or "ubuntu", mirrored.get("layout"))
    return {
        "nvidia_driver_source": "custom",
        "nvidia_driver_custom_repo": {
            "uris": "file:/srv/fake-nvidia",
            "suites": "./",
            "trusted": True,
            "layout": layout,
        },
        "nvidia_driver_kernel_headers_package": "",  # the container runs this machine's kernel
        "nvidia_driver_secure_boot_efivar": hardware_kit.SECURE_BOOT,
    }


def install_hardware_kit(
    name: str,
    say: Callable[[str], None],
    versions: list[str],
    layout: str = "ubuntu",
    flavour: str = "server",
    modules: str = "open",
) -> None:
    """Fake NVIDIA driver packages (a flat apt repository at /srv/fake-nvidia, holding VERSIONS with the
    names and revisions LAYOUT's source gives them), the fake pynvml, put in front of the real one for
    aiinfra's units, and a fake update-initramfs: on a lab host (`up`) and a Molecule host (`lab
    hardware`, `lab kit`) alike."""
    marker = "/srv/fake-nvidia/.built-" + "-".join([*versions, layout, flavour, modules])
    if podman("exec", name, "test", "-e", marker, check=False).returncode == 0:
        return
    say(f"{name}: hardware kit (test doubles: NVIDIA driver {', '.join(versions)} packages, NVML)")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "fake-nvidia"
        argv = [sys.executable, str(hardware_kit.FAKE_DRIVER), str(repo), *versions]
        built = subprocess.run(
            [*argv, "--layout", layout, "--flavour", flavour, "--modules", modules],
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            raise EnvironmentProblem(f"building the fake driver packages failed: {built.stderr.strip()[-300:]}")
        (repo / Path(marker).name).touch()
        podman("exec", name, "rm", "-rf", "/srv/fake-nvidia")
        podman("exec", name, "mkdir", "-p", "/srv/fake-nvidia", "/opt/fake-nvml", "/var/lib/fake-nvidia")
        podman("cp", f"{repo}/.", f"{name}:/srv/fake-nvidia")
    podman("cp", str(hardware_kit.FAKE_NVML / "pynvml.py"), f"{name}:/opt/fake-nvml/pynvml.py")
    # Secure Boot off, as efivarfs shows it (attributes NV|BS|RT, then 0), until a test says otherwise.
    podman("exec", name, "sh", "-c", f"printf '\\007\\000\\000\\000\\000' > {hardware_kit.SECURE_BOOT}")
    # In front of the real pynvml for every Python on the host that sees the system's site-packages,
    # as aiinfra's environment does: its units and the gpu_tuning role's checks alike.
    podman(
        "exec", "-i", name, "sh", "-c", "cat > /usr/lib/python3/dist-packages/aiinfra-fake-nvml.pth",
        input_text='import os, sys; sys.path.insert(0, "/opt/fake-nvml"); '
        'os.environ.setdefault("AIINFRA_FAKE_NVML", "/var/lib/fake-nvidia/state.json")  # TEST DOUBLE\n',
    )  # fmt: skip
    dropin = (
        "# TEST DOUBLE (aiinfra lab): the fake GPUs' state, which the units' sandbox would hide.\n[Service]\n"
        "ReadWritePaths=-/var/lib/fake-nvidia\n"
    )
    podman(
        "exec", "-i", name, "sh", "-c",
        "cat > /usr/local/sbin/update-initramfs && chmod 755 /usr/local/sbin/update-initramfs",
        input_text="#!/bin/sh\n# TEST DOUBLE for update-initramfs (aiinfra lab): a container boots no initramfs.\n"
        'echo "update-initramfs $*" >> /var/log/fake-calls.log\n',
    )  # fmt: skip
    for unit in ("aiinfra-gpu-setup.service", "aiinfra-agent.service"):
        podman(
            "exec", "-i", name, "sh", "-c",
            f"mkdir -p /etc/systemd/system/{unit}.d && cat > /etc/systemd/system/{unit}.d/test-double.conf",
            input_text=dropin,
        )  # fmt: skip


def install_kit(container: str, host_vars: dict, say: Callable[[str], None]) -> None:
    """What every lab host gets, made by `up` or by Molecule: the netplan file for the VLANs' links and
    the hardware kit at the spec's driver version."""
    write_installer_netplan(container, host_vars)
    install_hardware_kit(
        container,
        say,
        [
            str(
                host_vars.get("nvidia_driver_version")
                or yaml.safe_load(EXAMPLE_SPEC.read_text())["nvidia_driver_version"]
            )
        ],
        lab_driver_vars(host_vars)["nvidia_driver_custom_repo"]["layout"],
        host_vars.get("nvidia_driver_flavour") or "server",
        host_vars.get("nvidia_driver_kernel_modules") or "open",
    )


def write_installer_netplan(name: str, host_vars: dict) -> None:
    """The netplan file Ubuntu's installer leaves on a box, defining the links the VLANs sit on: the
    lab container has none, and netplan refuses a VLAN on a link it does not know."""
    links = sorted({vlan["link"] for vlan in host_vars.get("vlans") or [] if isinstance(vlan, dict) and "link" in vlan})
    netplan = {"network": {"version": 2, "renderer": "networkd", "ethernets": {link: {} for link in links}}}
    header = "# Written by `aiinfra lab up`, standing in for the OS installer's file.\n"
    podman(
        "exec", "-i", name, "sh", "-c",
        "mkdir -p /etc/netplan && umask 077 && cat > /etc/netplan/01-lab-installer.yaml",
        input_text=header + yaml.safe_dump(netplan),
    )  # fmt: skip


def kit(container: str, release: str, host_vars: dict, say: Callable[[str], None]) -> dict:
    """The hardware kit in a container that something else made (Molecule): what `up` puts in a lab
    host, the mirror copied in rather than mounted. Returns the variables the lab inventory would hold."""
    install_kit(container, host_vars, say)
    write_mirror(container, host_vars)
    podman("exec", container, "mkdir", "-p", LAB_MIRROR)
    podman("cp", f"{mirror_dir(container)}/.", f"{container}:{LAB_MIRROR}")
    return {**lab_driver_vars(host_vars), **engine_doubles(container, say), **stub_vllm(container, release, say)}
