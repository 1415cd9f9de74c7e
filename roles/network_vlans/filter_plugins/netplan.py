"""Filters of the network_vlans role: the spec's VLANs as netplan's `vlans` mapping, and what `ip`
reports about the links against them."""

from __future__ import annotations

import ipaddress
import json

# A VLAN's default route must not take over from the host's own (netplan's DHCP routes have metric
# 100, networkd's 1024, a static one 0): by default it gets 10000 + its id, one metric per VLAN.
ROUTE_METRIC_BASE = 10000


def netplan_vlans(vlans: list[dict]) -> dict:
    """[{id, link, name, addresses, gateway, route_metric, dns, mtu}] -> {name: {id, link, addresses, routes, ...}}."""
    rendered = {}
    for vlan in vlans:
        entry: dict = {"id": int(vlan["id"]), "link": vlan["link"]}
        if vlan.get("addresses"):
            entry["addresses"] = list(vlan["addresses"])
        if vlan.get("gateway"):
            metric = vlan.get("route_metric")
            metric = ROUTE_METRIC_BASE + int(vlan["id"]) if metric is None else int(metric)
            entry["routes"] = [{"to": "default", "via": vlan["gateway"], "metric": metric}]
        if vlan.get("dns"):
            entry["nameservers"] = {"addresses": list(vlan["dns"])}
        if vlan.get("mtu"):
            entry["mtu"] = int(vlan["mtu"])
        rendered[vlan["name"]] = entry
    return rendered


def vlan_link_problems(results: list[dict]) -> list[str]:
    """What `ip -j -d addr show dev NAME` says against each VLAN of the spec (a looped task's results)."""
    problems = []
    for result in results:
        vlan = result["item"]
        if result.get("rc") != 0:
            problems.append(f"{vlan['name']} did not come up: {(result.get('stderr') or '').strip() or 'no such link'}")
            continue
        (link,) = json.loads(result["stdout"])
        info = link.get("linkinfo", {})
        if info.get("info_kind") != "vlan" or info.get("info_data", {}).get("id") != int(vlan["id"]):
            problems.append(f"{vlan['name']} is not VLAN {vlan['id']} on {vlan['link']}: {info}")
        have = {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])}
        missing = [a for a in vlan.get("addresses") or [] if str(ipaddress.ip_interface(a)) not in have]
        if missing:
            problems.append(f"{vlan['name']} lacks {', '.join(missing)} (has {', '.join(sorted(have)) or 'none'})")
    return problems


class FilterModule:
    def filters(self):
        return {"netplan_vlans": netplan_vlans, "vlan_link_problems": vlan_link_problems}
