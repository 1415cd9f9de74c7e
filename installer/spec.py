"""The host spec: the variables aiinfra's roles read, validated before any task runs.

Input is one host's merged variables as Ansible sees them (see inventory.py). Output is either a
HostSpec or a list of SpecError, each one line naming host, variable, what is wrong and the fix.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from aiinfra.agent import box
from aiinfra.agent.schema import (
    VllmEngine,
    did_you_mean,
    engine_problems,
    engines_model_at,
    error_lines,
    switching_problems,
)
from aiinfra.installer import plan
from aiinfra.installer.inventory import Inventory
from aiinfra.installer.variables import DriverRepo, Variables, Vlan, driver_layout
from aiinfra.installer.workstation import project_dir

# A variable of the operator's other roles passes; one that looks like ours does not.
OUR_PREFIXES = (
    "aiinfra_",
    "host_base_",
    "nvidia_",
    "gpu_",
    "vlan",
    "network_vlans_",
    "model_storage_",
    "engine",
    "profile",
    "default_profile",
    "router_",
    "vllm_",
    "ollama_",
    "proxmox_",
)


class HostSpec(Variables):
    """One host's variables (variables.py declares each), checked across fields."""

    @model_validator(mode="after")
    def _consistent(self) -> HostSpec:
        problems = list(_cross_checks(self))
        if problems:
            # One ValueError carries several "field: message" lines; split again in _errors().
            raise ValueError("\n".join(problems))
        return self


def _cross_checks(spec: HostSpec) -> list[str]:
    problems = engine_problems(spec.engines, spec.profiles, spec.default_profile)
    problems += switching_problems(spec.profile_switching, spec.profiles, spec.default_profile, spec.engines)
    if spec.nvidia_driver_source == "custom" and spec.nvidia_driver_custom_repo is None:
        problems.append(
            "nvidia_driver_custom_repo: source custom needs the repository, e.g. {uris: ..., suites: ./, key_url: ...}"
        )
    repo = spec.nvidia_driver_custom_repo
    layout = driver_layout(spec.nvidia_driver_source, repo.layout if repo else None)
    if layout == "cuda" and spec.nvidia_driver_flavour == "server" and spec.nvidia_driver_version:
        problems.append(
            "nvidia_driver_flavour: NVIDIA's CUDA repository has no -server packages; set nvidia_driver_flavour: "
            "desktop, or use nvidia_driver_source: ubuntu with a version Ubuntu ships"
        )
    router_port = int(spec.router_listen.rpartition(":")[2])
    gpus = spec.gpu_expected_count
    for name, engine in spec.engines.items():
        if engine.port == router_port:
            problems.append(f"engines.{name}.port: {engine.port} is the router's port (router_listen)")
        span = engine.span if isinstance(engine, VllmEngine) else None
        if span is not None and span.port in (router_port, box.PEER_PORT):
            taken = "the router's port (router_listen)" if span.port == router_port else "the agents' peer port"
            problems.append(f"engines.{name}.span.port: {span.port} is {taken}")
        for gpu in engine.gpus if gpus is not None else ():
            if gpus is not None and gpu >= gpus:
                problems.append(
                    f"engines.{name}.gpus: GPU {gpu} does not exist; the host has {gpus} (gpu_expected_count), "
                    f"indices 0..{gpus - 1}"
                )
    if isinstance(spec.gpu_power_limit_watts, dict) and gpus is not None:
        for gpu in spec.gpu_power_limit_watts:
            if gpu >= gpus:
                problems.append(
                    f"gpu_power_limit_watts: GPU {gpu} does not exist; the host has {gpus} (gpu_expected_count)"
                )
    problems += _fit_problems(spec)
    ids = [vlan.id for vlan in spec.vlans]
    for vlan_id in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"vlans: VLAN id {vlan_id} is listed more than once")
    if spec.ollama_archive_file and not spec.ollama_archive_file.endswith((".tgz", ".tar.zst")):
        problems.append(
            f"ollama_archive_file: {spec.ollama_archive_file!r} is not an Ollama release archive "
            "(ollama-linux-ARCH.tar.zst, or .tgz before 0.14.0)"
        )
    if spec.ollama_archive_file and not spec.ollama_archive_sha256:
        problems.append("ollama_archive_sha256: required with ollama_archive_file; the sha256 of that archive")
    if spec.aiinfra_agent_policy:
        from aiinfra.agent.config import Policy

        unknown = sorted(set(spec.aiinfra_agent_policy) - set(Policy.model_fields))
        problems += [
            f"aiinfra_agent_policy.{key}: unknown setting{did_you_mean(key, Policy.model_fields)}" for key in unknown
        ]
    mount = spec.model_storage_mount.rstrip("/") or "/"
    if mount in SYSTEM_DIRS or any(mount.startswith(d + "/") for d in ("/proc", "/sys", "/dev", "/run", "/boot")):
        problems.append(
            f"model_storage_mount: {spec.model_storage_mount!r} is a system directory; "
            "give the model disk a mount point of its own, e.g. /mnt/nvme"
        )
    if not spec.aiinfra_agent_router_auth and _all_interfaces(spec.router_listen):
        problems.append(
            f"aiinfra_agent_router_auth: false with router_listen {spec.router_listen!r} opens every engine to "
            "anyone who can reach the box; keep keys on, or listen on 127.0.0.1 or one VLAN's address"
        )
    if spec.model_storage_fstype == "xfs" and len(spec.model_storage_label) > 12:
        problems.append(f"model_storage_label: xfs labels have at most 12 characters ({spec.model_storage_label!r})")
    names = [vlan.name for vlan in spec.vlans]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"vlans: interface name {name!r} is used by more than one VLAN")
    return problems


# Where a model disk must never be mounted.
SYSTEM_DIRS = {"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root", "/run",
               "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib", "/var/log"}  # fmt: skip


def _all_interfaces(listen: str) -> bool:
    return ipaddress.ip_address(listen.rpartition(":")[0].strip("[]")).is_unspecified


def _fit_problems(spec: HostSpec) -> list[str]:
    """Tensor parallelism against the model's heads, and whether each vLLM engine fits its GPUs."""
    if spec.gpu_model is not None and spec.gpu_model not in plan.GPU_MEMORY_GIB:
        return [
            f"gpu_model: unknown card {spec.gpu_model!r}{did_you_mean(spec.gpu_model, plan.GPU_MEMORY_GIB)} "
            f"(known: {', '.join(plan.GPU_MEMORY_GIB)}); or set gpu_memory_gb"
        ]
    try:
        gpu_gib = plan.gpu_memory_gib(spec.gpu_model, spec.gpu_memory_gb)
    except plan.PlanError:
        gpu_gib = None  # nothing to size against: only the tensor-parallel check runs
    problems: list[str] = []
    for name, engine in spec.engines.items():
        if not isinstance(engine, VllmEngine) or (engine.skip_fit_check and gpu_gib is None):
            continue
        try:
            facts = plan.model_facts(engine, spec.model_mirror)
        except plan.PlanError as exc:
            if gpu_gib is not None and not engine.skip_fit_check:
                problems.append(f"engines.{name}.model: {exc}")
            continue
        problems += plan.problems(name, engine, facts, gpu_gib)
    return problems


def advice(host: str, spec: HostSpec) -> list[SpecWarning]:
    """What is valid but likely not meant: warnings, the install still runs."""
    notes = []
    addresses = [a.split("/")[0] for vlan in spec.vlans for a in vlan.addresses]
    if addresses and _all_interfaces(spec.router_listen):
        port = spec.router_listen.rpartition(":")[2]
        notes.append(
            SpecWarning(
                host,
                "router_listen",
                f"{spec.router_listen!r} listens on every interface, not only the VLANs'; to serve them alone, "
                f"listen on {' or '.join(a + ':' + port for a in addresses)}",
            )
        )
    status_host = spec.aiinfra_agent_status_listen.rpartition(":")[0].strip("[]")
    if not ipaddress.ip_address(status_host).is_loopback and spec.status_token_sha256 is None:
        notes.append(
            SpecWarning(
                host,
                "aiinfra_agent_status_listen",
                f"{spec.aiinfra_agent_status_listen!r} is not loopback: /status names keys, engines, pids and GPUs "
                "to whoever asks, and each /metrics scrape makes the agent scrape every engine; keep it on "
                "127.0.0.1, or ask for a bearer token (status_token_sha256) and let only the scraper reach it",
            )
        )
    for name, engine in spec.engines.items():
        if isinstance(engine, VllmEngine) and (said := plan.quantization_advice(engine, spec.gpu_model)):
            notes.append(SpecWarning(host, f"engines.{name}.quantization", said))
    return notes


@dataclass(frozen=True)
class SpecFinding:
    host: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.host}: {self.field}: {self.message}"


class SpecError(SpecFinding):
    """Nothing may run until it is fixed."""


class SpecWarning(SpecFinding):
    """The install may run; the operator is told."""


KNOWN = tuple(HostSpec.model_fields)


def unknown_variables(host: str, variables: dict[str, Any]) -> list[SpecError]:
    """Top-level variables that look like ours but are not: typos of known names or our prefixes."""
    errors = []
    for key in variables:
        if key in KNOWN or key.startswith("ansible_"):
            continue
        hint = did_you_mean(key, KNOWN)
        if hint or key.startswith(OUR_PREFIXES):
            errors.append(SpecError(host, key, f"unknown variable{hint or '; see the README for the variables'}"))
    return errors


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    if not loc:
        return HostSpec
    if loc[0] == "vlans" and len(loc) == 2:
        return Vlan
    if loc == ["nvidia_driver_custom_repo"]:
        return DriverRepo
    return engines_model_at(loc)


def validate(host: str, variables: dict[str, Any]) -> tuple[HostSpec | None, list[SpecError]]:
    """Validate one host's merged variables. Returns the spec, or the errors (never both)."""
    errors = unknown_variables(host, variables)
    ours = {k: v for k, v in variables.items() if k in KNOWN}
    try:
        spec = HostSpec.model_validate(ours)
    except ValidationError as exc:
        errors += [SpecError(host, field, message) for field, message in error_lines(exc, _model_at)]
        return None, errors
    return (None, errors) if errors else (spec, [])


def installed_groups() -> tuple[str, ...]:
    """The inventory groups playbooks/site.yml installs, read from its plays."""
    plays = yaml.safe_load((project_dir() / "playbooks" / "site.yml").read_text())
    groups = (group for play in plays for group in str(play["hosts"]).split(":"))
    return tuple(dict.fromkeys(groups))


def trusted_address(node: str, variables: dict[str, Any]) -> str:
    """NODE's address on its trusted_network (a VLAN's name, or a private network in CIDR), where the ranks
    of an engine across boxes reach each other; raises ValueError saying what is missing."""
    network = variables.get("trusted_network")
    if not network:
        raise ValueError("trusted_network: not set; name the VLAN (or the private network in CIDR) that the "
                         "engine's nodes reach each other on")  # fmt: skip
    vlans = [v for v in variables.get("vlans") or [] if isinstance(v, dict)]
    named = [a for v in vlans if v.get("name") == network for a in v.get("addresses") or []]
    if named:
        address = ipaddress.ip_interface(named[0]).ip
    else:
        try:
            net = ipaddress.ip_network(network, strict=False)
        except ValueError:
            names = ", ".join(str(v.get("name")) for v in vlans) or "none"
            raise ValueError(f"trusted_network: {network!r} is neither one of the host's VLANs ({names}) nor a "
                             "network in CIDR") from None  # fmt: skip
        vlan_addresses = (a.split("/")[0] for v in vlans for a in v.get("addresses") or [])
        mine = [variables.get("trusted_address"), variables.get("ansible_host") or node, *vlan_addresses]
        found = [ip for ip in (_ip_or_none(a) for a in mine) if ip is not None and ip in net]
        if not found:
            raise ValueError(f"trusted_network: the host has no address in {net} (trusted_address, ansible_host or "
                             "a VLAN's)")  # fmt: skip
        address = found[0]
    if not address.is_private or address.is_loopback:
        raise ValueError(f"trusted_network: {address} is not a private address; vLLM's traffic between the nodes "
                         "is neither authenticated nor encrypted, so it stays on a private network")  # fmt: skip
    return f"[{address}]:{box.PEER_PORT}" if address.version == 6 else f"{address}:{box.PEER_PORT}"


def _ip_or_none(text: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        return None


def span_nodes(inv: Inventory, hosts: list[str]) -> tuple[list[SpecError], dict[str, str]]:
    """The checks across the hosts of engines that span boxes, and each node's peer address
    (aiinfra_agent_nodes): every node is in the inventory, installed in this run, declares the engine the
    same way, and has an address on a private trusted network."""
    errors: list[SpecError] = []
    nodes: dict[str, str] = {}
    for host in hosts:
        for name, engine in (inv.hostvars[host].get("engines") or {}).items():
            span = engine.get("span") if isinstance(engine, dict) else None
            if not isinstance(span, dict) or not isinstance(span.get("nodes"), list):
                continue
            field = f"engines.{name}.span.nodes"
            if host not in span["nodes"]:
                errors.append(SpecError(host, field, "this host is not one of the engine's nodes; declare it on "
                                                     "its nodes only (a group of them)"))  # fmt: skip
            for node in span["nodes"]:
                if node not in inv.hostvars:
                    errors.append(SpecError(host, field, f"{node!r} is not in the inventory"))
                elif node not in hosts:
                    errors.append(SpecError(host, field, f"{node} is not installed in this run; install the "
                                                         "engine's nodes together (--host GROUP)"))  # fmt: skip
                elif (inv.hostvars[node].get("engines") or {}).get(name) != engine:
                    differs = f"declared otherwise on {node}; an engine across boxes is the same on each node"
                    errors.append(SpecError(host, f"engines.{name}", differs))
                elif node not in nodes:
                    try:
                        nodes[node] = trusted_address(node, inv.hostvars[node])
                    except ValueError as exc:
                        field_, _, message = str(exc).partition(": ")
                        errors.append(SpecError(node, field_, message))
                        nodes[node] = ""
    unique = list(dict.fromkeys(errors))
    return unique, {n: a for n, a in nodes.items() if a}


def check_specs(inv: Inventory, hosts: list[str]) -> tuple[list[SpecError], list[SpecWarning]]:
    """The errors (nothing may run) and the warnings (it may) of each host's spec."""
    errors, warnings = span_nodes(inv, hosts)[0], []
    for host in hosts:
        if not any(host in inv.groups.get(group, []) for group in installed_groups()):
            errors.append(
                SpecError(
                    host,
                    "groups",
                    f"not in group {' or '.join(map(repr, installed_groups()))}, the hosts "
                    "site.yml installs: add it to that group in the inventory",
                )
            )
        spec, found = validate(host, inv.hostvars[host])
        errors.extend(found)
        warnings.extend(advice(host, spec) if spec else [])
    return errors, warnings
