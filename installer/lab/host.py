"""A lab host's life: `aiinfra lab up` (the container, its model disk, its kept address, its inventory
entry) and `aiinfra lab down`."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import yaml

from aiinfra.agent import box
from aiinfra.installer.lab.engines import LAB_MIRROR, engine_doubles, mirror_dir, real_vllm, write_mirror
from aiinfra.installer.lab.hardware import EXAMPLE_SPEC, install_kit, lab_driver_vars
from aiinfra.installer.lab.podman import build_image, container_name, podman, wait_for_systemd
from aiinfra.installer.workstation import EnvironmentProblem, lab_dir


def lab_inventory_dir() -> Path:
    return lab_dir() / "inventory"


def address_file(host: str) -> Path:
    """The lab host's address, kept from its first start so a rebuilt host answers where it did."""
    return lab_dir() / f"{host}.address"


def kept_address(host: str) -> str:
    """The address HOST had before ("" for a first start); a damaged file is one clear error."""
    path = address_file(host)
    if not path.exists():
        return ""
    text = path.read_text().strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise EnvironmentProblem(f"{path} holds {text[:40]!r}, not an address: fix or remove it") from None
    return text


def disk_volume(host: str) -> str:
    return container_name(host) + "-disk"


def address(host: str) -> str:
    return podman("inspect", "-f", "{{.NetworkSettings.IPAddress}}", container_name(host)).stdout.strip()


def up(host: str, release: str, spec: Path | None, say: Callable[[str], None]) -> Path:
    """Start (or keep) the lab container for HOST and write it into the lab inventory.

    The host's variables come from SPEC, else stay as an earlier `lab up` left them, else are the
    example thor spec.
    """
    kept = kept_address(host)  # first: a damaged file stops it before anything is built or started
    spec_file = lab_inventory_dir() / "host_vars" / f"{host}.yml"
    new_spec = spec is not None or not spec_file.exists()
    source = (spec or EXAMPLE_SPEC) if new_spec else spec_file
    spec_vars = yaml.safe_load(source.read_text()) or {}
    if not isinstance(spec_vars, dict):
        raise ValueError(f"{source}: a host spec is a mapping of variables")
    spec_vars |= lab_driver_vars(spec_vars)
    image = build_image(release, say)
    name = container_name(host)
    if new_spec or not mirror_dir(host).exists():
        write_mirror(host, spec_vars)
    running = podman("container", "inspect", "--format", "{{.State.Running}}", name, check=False)
    if running.returncode != 0:
        say(f"starting {name} from {image}" + (f" at {kept}" if kept else ""))
        podman(
            "run",
            *(["--ip", kept] if kept else []),
            "-d",
            "--name",
            name,
            "--hostname",
            host,
            "--systemd=always",
            "--label",
            "aiinfra.lab=1",
            "--volume",
            f"{mirror_dir(host)}:{LAB_MIRROR}:ro",  # the NAS a real box would mount
            # The model disk: a volume that outlives the container, as a real one outlives a fresh OS.
            "--volume",
            f"{disk_volume(host)}:{spec_vars.get('model_storage_mount', box.MODEL_STORAGE_MOUNT)}",
            # vLLM's processes talk through shared memory (160 MiB an engine); podman's default /dev/shm
            # is 64 MiB, a real box's is half its memory.
            "--shm-size",
            "2g",
            # trixie's systemd keeps CAP_SYS_ADMIN across User= to sandbox the engine units; a real
            # host's PID 1 has it, podman's default set does not.
            *(["--cap-add", "SYS_ADMIN"] if release == "trixie" else []),
            image,
            "/sbin/init",
        )
    elif running.stdout.strip() != "true":
        podman("start", name)
    wait_for_systemd(name)
    address_file(host).parent.mkdir(parents=True, exist_ok=True)
    address_file(host).write_text(address(host) + "\n")
    write_inventory(host, name, engine_doubles(host, say) | real_vllm(release, say))
    if new_spec:
        spec_file.write_text(
            f"# Host spec of the lab host {host}, written by `aiinfra lab up`: the driver comes from the\n"
            "# hardware kit's repository, laid out as the spec's source (a TEST DOUBLE).\n"
            + yaml.safe_dump(spec_vars, sort_keys=False)
        )
    install_kit(name, spec_vars, say)
    return lab_inventory_dir()


def down(host: str) -> bool:
    """Remove HOST's lab container, its model disk and its inventory entry. False when there was none."""
    existed = podman("container", "exists", container_name(host), check=False).returncode == 0
    if existed:
        podman("rm", "-f", "-t", "5", container_name(host))
    podman("volume", "rm", "-f", disk_volume(host), check=False)
    inventory = lab_inventory_dir()
    hosts_file = inventory / "hosts.yml"
    if hosts_file.exists():
        data = yaml.safe_load(hosts_file.read_text()) or {}
        data.get("lab", {}).get("hosts", {}).pop(host, None)
        hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))
    (inventory / "host_vars" / f"{host}.yml").unlink(missing_ok=True)
    address_file(host).unlink(missing_ok=True)
    return existed


def write_inventory(host: str, container: str, doubles: dict) -> None:
    """The lab inventory: group `lab` (child of `inference`), one file of host variables per host."""
    inventory = lab_inventory_dir()
    (inventory / "host_vars").mkdir(parents=True, exist_ok=True)
    hosts_file = inventory / "hosts.yml"
    data = (yaml.safe_load(hosts_file.read_text()) if hosts_file.exists() else None) or {}
    data.setdefault("inference", {"children": {"lab": {}}})
    lab_hosts = data.setdefault("lab", {}).get("hosts") or {}
    lab_hosts[host] = {
        # containers.podman's connection, pipelined (playbooks/connection_plugins/podman.py)
        "ansible_connection": "podman",
        "ansible_host": container,
        "ansible_python_interpreter": "/usr/bin/python3",
        # Its address on the lab's network (podman's), which the lab's engines across boxes talk on.
        "trusted_address": address(host),
        **doubles,
    }
    data["lab"]["hosts"] = lab_hosts
    hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))
