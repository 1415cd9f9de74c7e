"""Filters of the roles: spec in, netplan or package names out; tool output in, verdicts out."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import re

import yaml

from tests.conftest import ROOT


def load(path: str):
    spec = importlib.util.spec_from_file_location(path.replace("/", "_"), ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


netplan = load("roles/network_vlans/filter_plugins/netplan.py")
blkid = load("roles/model_storage/filter_plugins/blkid.py")
driver = load("roles/nvidia_driver/filter_plugins/driver_packages.py")
passthrough = load("roles/proxmox_passthrough/filter_plugins/passthrough.py")


def load_script(path: str):
    loader = importlib.machinery.SourceFileLoader(path.replace("/", "_").replace("-", "_"), str(ROOT / path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


network_apply = load_script("roles/network_vlans/files/aiinfra-network-apply")

TRUSTED = {"id": 110, "link": "eno1", "name": "trusted", "addresses": ["10.0.110.20/24"], "gateway": "10.0.110.1"}


def test_vlans_render_as_netplan():
    assert netplan.netplan_vlans(
        [TRUSTED | {"dns": ["10.0.110.1"], "mtu": 9000}, {"id": 120, "link": "eno1", "name": "lab"}]
    ) == {
        "trusted": {
            "id": 110,
            "link": "eno1",
            "addresses": ["10.0.110.20/24"],
            "routes": [{"to": "default", "via": "10.0.110.1", "metric": 10110}],
            "nameservers": {"addresses": ["10.0.110.1"]},
            "mtu": 9000,
        },
        "lab": {"id": 120, "link": "eno1"},
    }


def test_each_vlans_default_route_has_a_metric_of_its_own():
    rendered = netplan.netplan_vlans([TRUSTED, TRUSTED | {"id": 120, "name": "lab", "route_metric": 50}])
    assert [v["routes"][0]["metric"] for v in rendered.values()] == [10110, 50]


def ip_result(vlan: dict, kind="vlan", vid=110, addrs=(("10.0.110.20", 24),), rc=0, stderr=""):
    link = {"ifname": vlan["name"], "linkinfo": {"info_kind": kind, "info_data": {"id": vid}},
            "addr_info": [{"family": "inet", "local": a, "prefixlen": p} for a, p in addrs]}  # fmt: skip
    return {"item": vlan, "rc": rc, "stdout": json.dumps([link]) if rc == 0 else "", "stderr": stderr}


def test_links_are_checked_against_the_spec():
    assert netplan.vlan_link_problems([ip_result(TRUSTED)]) == []
    assert netplan.vlan_link_problems([ip_result(TRUSTED, rc=1, stderr='Device "trusted" does not exist.')]) == [
        'trusted did not come up: Device "trusted" does not exist.'
    ]
    assert netplan.vlan_link_problems([ip_result(TRUSTED, vid=111)]) == [
        "trusted is not VLAN 110 on eno1: {'info_kind': 'vlan', 'info_data': {'id': 111}}"
    ]
    assert netplan.vlan_link_problems([ip_result(TRUSTED, addrs=(("10.0.110.21", 24),))]) == [
        "trusted lacks 10.0.110.20/24 (has 10.0.110.21/24)"
    ]


def test_blkid_export_is_read_as_a_mapping():
    lines = ["DEVNAME=/dev/loop1", "UUID=7393b19a", "LABEL=photos", "TYPE=ext4", "", "junk"]
    assert blkid.blkid_export(lines) == {"DEVNAME": "/dev/loop1", "UUID": "7393b19a", "LABEL": "photos", "TYPE": "ext4"}
    assert blkid.blkid_export(["PTTYPE=gpt", "PTUUID=a=b"]) == {"PTTYPE": "gpt", "PTUUID": "a=b"}


def test_driver_packages_are_named_as_each_source_names_them():
    ubuntu = driver.driver_packages("580.159.03", "ubuntu", "server", "open")
    assert (ubuntu["driver"], ubuntu["dkms"], ubuntu["problem"]) == (
        "nvidia-driver-580-server-open",
        "nvidia-dkms-580-server-open",
        "",
    )
    assert driver.driver_packages("580.105.08", "cuda", "desktop", "open")["driver"] == "nvidia-driver-580-open"
    assert driver.driver_packages("580.105.08", "cuda", "desktop", "proprietary")["dkms"] == "nvidia-dkms-580"
    assert driver.driver_packages("590.44.01", "cuda", "desktop", "open")["driver"] == "nvidia-driver-open"
    assert "has no -server packages" in driver.driver_packages("580.105.08", "cuda", "server", "open")["problem"]


def test_a_driver_version_matches_only_its_own_sources_revision():
    ubuntu = re.compile(driver.driver_packages("580.105.08", "ubuntu", "server", "open")["version_regex"])
    cuda = re.compile(driver.driver_packages("580.105.08", "cuda", "desktop", "open")["version_regex"])
    assert ubuntu.match("580.105.08-0ubuntu0.24.04.1") and not ubuntu.match("580.105.08-0ubuntu1")
    assert cuda.match("580.105.08-0ubuntu1") and cuda.match("580.105.08-1ubuntu1") and cuda.match("580.105.08-1")
    assert not cuda.match("580.105.08-0ubuntu0.24.04.1")  # Ubuntu's build of the same name
    assert not cuda.match("580.105.081-0ubuntu1")


def test_signed_modules_are_the_running_kernels_and_must_be_built_for_the_pinned_driver():
    signed = driver.signed_modules("580.105.08", "ubuntu", "server", "open", "6.8.0-149-generic")
    assert (signed["package"], signed["meta"], signed["problem"]) == (
        "linux-modules-nvidia-580-server-open-6.8.0-149-generic",
        "linux-modules-nvidia-580-server-open-generic",
        "",
    )
    assert driver.signed_modules("580.105.08", "ubuntu", "desktop", "open", "6.11.0-19-lowlatency")["meta"] == (
        "linux-modules-nvidia-580-open-lowlatency"
    )
    assert (
        "no modules signed"
        in driver.signed_modules("580.105.08", "cuda", "desktop", "open", "6.8.0-1-generic")["problem"]
    )
    # As `apt-cache show` gives the Depends of linux-modules-nvidia-580-server-open-6.8.0-149-generic.
    depends = (
        "linux-image-6.8.0-149-generic | linux-image-unsigned-6.8.0-149-generic, "
        "linux-signatures-nvidia-6.8.0-149-generic (= 6.8.0-149.149), "
        "nvidia-kernel-common-580-server (= 580.105.08-0ubuntu0.24.04.1)"
    )
    assert driver.signed_modules_fit(depends, "580.105.08-0ubuntu0.24.04.1") == ""
    assert driver.signed_modules_fit(depends, "580.126.09-0ubuntu0.24.04.1") == (
        "they were built for driver 580.105.08-0ubuntu0.24.04.1, not the pinned 580.126.09-0ubuntu0.24.04.1"
    )
    assert driver.signed_modules_fit("linux-image-6.8.0-149-generic", "580.105.08-0ubuntu0.24.04.1") == (
        "they name no driver version they were built for"
    )


# As proxmox-boot-tool prints its status (pve-kernel-helper), one line per ESP.
PBT_STATUS = """Re-executing '/usr/sbin/proxmox-boot-tool' in new private mount namespace..
System currently booted with legacy bios
2A5B-0C1D is configured with: grub (versions: 6.8.12-4-pve, 6.8.12-5-pve)
2A5B-0C2E is configured with: uefi,grub (versions: 6.8.12-4-pve)
"""


def test_boot_loaders_are_read_per_esp():
    assert passthrough.boot_loaders(PBT_STATUS) == ["grub", "systemd-boot"]
    assert passthrough.boot_loaders(PBT_STATUS.replace("uefi,grub", "grub")) == ["grub"]
    assert passthrough.boot_loaders("E: /etc/kernel/proxmox-boot-uuids does not exist.") == []


def test_bridges_may_share_a_gpus_iommu_group_other_devices_may_not():
    listing = "\n".join(
        f"/sys/kernel/iommu_groups/{group}/devices/{address}/class:{cls}"
        for group, address, cls in [
            ("12", "0000:41:00.0", "0x030000"),
            ("12", "0000:41:00.1", "0x040300"),
            ("12", "0000:40:01.1", "0x060400"),  # the root port above the card
            ("13", "0000:42:00.0", "0x030000"),
            ("13", "0000:05:00.0", "0x020000"),  # a network card
        ]
    )
    verdict = passthrough.iommu_group_problems(listing, ["0000:41:00", "0000:42:00", "0000:43:00"])
    assert verdict["unchecked"] == ["0000:43:00"]
    assert len(verdict["problems"]) == 1
    assert verdict["problems"][0].startswith("GPU 0000:42:00.0 shares IOMMU group 13 with 0000:05:00.0;")


def test_a_vm_is_refused_for_what_would_keep_it_from_starting():
    good = {"machine": "pc-q35-9.0", "bios": "ovmf", "memory": "49152", "sockets": "2"}
    assert passthrough.vm_problems(good, 120, 48, 2) == []
    assert passthrough.vm_problems(good | {"memory": "98304"}, 120, 0, 2) == []  # no pages asked for
    problems = passthrough.vm_problems({"memory": "50000"}, 120, 48, 1)
    assert [p.split(":")[0] for p in problems] == [
        "VM 120 has machine type i440fx (the default)",
        "VM 120 boots with seabios (the default)",
        "VM 120 has memory 50000 MiB",
        "VM 120 has memory 50000 MiB, more than the 48 GiB of huge pages reserved (proxmox_passthrough_hugepages_1g)",
    ]
    (numa,) = passthrough.vm_problems(good | {"sockets": "1"}, 120, 48, 2)
    assert "all 48 GiB come from host NUMA node 0, which holds 24 of the 48 huge pages" in numa


def test_a_vlan_changed_under_its_name_is_made_again():
    before = {
        "trusted": {"id": 110, "link": "eno1"},
        "lab": {"id": 120, "link": "eno1"},
        "old": {"id": 9, "link": "eno1"},
    }
    after = {"trusted": {"id": 111, "link": "eno1"}, "lab": {"id": 120, "link": "eno1", "mtu": 9000}}
    assert network_apply.stale_links(before, after) == (["old"], ["trusted"])
    assert network_apply.stale_links(before, before | {"lab": {"id": 120, "link": "eno2"}}) == ([], ["lab"])


def test_the_staging_task_passes_each_models_pin_and_none_where_none_is_given():
    import jinja2

    task = next(t for t in yaml.safe_load((ROOT / "roles" / "vllm" / "tasks" / "models.yml").read_text())
                if t["name"].startswith("Stage each model"))  # fmt: skip
    argv = task["ansible.builtin.command"]["argv"]
    pin = jinja2.Environment().from_string(argv[argv.index("--manifest-sha256") + 1])
    engines = {"a": {"runtime": "vllm", "model": "org/m", "model_sha256": "f" * 64},
               "b": {"runtime": "vllm", "model": "org/n"}, "c": {"runtime": "ollama", "models": ["x:1b"]}}  # fmt: skip
    assert pin.render(engines=engines, item="org/m") == "f" * 64
    assert pin.render(engines=engines, item="org/n") == ""
