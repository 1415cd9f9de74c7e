"""Filters of the roles: spec in, netplan or package names out; tool output in, verdicts out."""

from __future__ import annotations

import importlib.util
import json
import re

from tests.conftest import ROOT


def load(path: str):
    spec = importlib.util.spec_from_file_location(path.replace("/", "_"), ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


netplan = load("roles/network_vlans/filter_plugins/netplan.py")
blkid = load("roles/model_storage/filter_plugins/blkid.py")
driver = load("roles/nvidia_driver/filter_plugins/driver_packages.py")

TRUSTED = {"id": 110, "link": "eno1", "name": "trusted", "addresses": ["10.0.110.20/24"], "gateway": "10.0.110.1"}


def test_vlans_render_as_netplan():
    assert netplan.netplan_vlans(
        [TRUSTED | {"dns": ["10.0.110.1"], "mtu": 9000}, {"id": 120, "link": "eno1", "name": "lab"}]
    ) == {
        "trusted": {
            "id": 110,
            "link": "eno1",
            "addresses": ["10.0.110.20/24"],
            "routes": [{"to": "default", "via": "10.0.110.1"}],
            "nameservers": {"addresses": ["10.0.110.1"]},
            "mtu": 9000,
        },
        "lab": {"id": 120, "link": "eno1"},
    }


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
