"""The host spec: the variables aiinfra's roles read, validated before any task runs.

Input is one host's merged variables as Ansible sees them (see inventory.py). Output is either a
HostSpec or a list of SpecError, each one line naming host, variable, what is wrong and the fix.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from aiinfra.agent.schema import (
    Engine,
    Strict,
    VllmEngine,
    did_you_mean,
    engine_problems,
    engines_model_at,
    error_lines,
)
from aiinfra.installer import plan

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

# An exact driver version, e.g. 580.105.08 or 550.54.15: the branch alone is not a pin.
DRIVER_VERSION = re.compile(r"^\d{3}\.\d{2,3}(\.\d{2,3})?$")
# Mapping keys arrive as strings from ansible-inventory's JSON ({"0": 350}): accept digits there.
GpuKey = Annotated[int, Field(ge=0, le=15, strict=False)]
Watts = Annotated[int, Field(ge=50, le=1000)]


class DriverRepo(Strict):
    """nvidia_driver_custom_repo: an apt repository of the driver's packages (deb822 fields)."""

    uris: str
    suites: str
    components: str | None = None
    key_url: str | None = None
    signed_by: str | None = None
    trusted: bool = False
    layout: Literal["ubuntu", "cuda"] = "ubuntu"  # whose package names and versions the mirror copies

    @model_validator(mode="after")
    def _one_trust(self) -> DriverRepo:
        if sum((self.key_url is not None, self.signed_by is not None, self.trusted)) != 1:
            raise ValueError("give exactly one of key_url, signed_by or trusted: true")
        return self


class Vlan(Strict):
    id: Annotated[int, Field(ge=1, le=4094)]
    link: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,15}$")]
    addresses: list[str] = []
    gateway: str | None = None
    route_metric: Annotated[int, Field(ge=0, le=4294967295)] | None = None  # default 10000 + id
    dns: list[str] = []
    mtu: Annotated[int, Field(ge=576, le=9216)] | None = None

    @field_validator("addresses")
    @classmethod
    def _cidr(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_interface(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an address with prefix, e.g. 10.0.110.20/24") from None
            if "/" not in value:
                raise ValueError(f"{value!r} needs a prefix length, e.g. {value}/24")
        return values

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, value: str | None) -> str | None:
        if value is not None:
            _ip(value)
        return value

    @field_validator("dns")
    @classmethod
    def _dns(cls, values: list[str]) -> list[str]:
        for value in values:
            _ip(value)
        return values


def _ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _absolute(value: str | None) -> str | None:
    if value is not None and not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    return value


class ApiKey(Strict):
    """A router key held in the inventory by its hash (`aiinfra keys new NAME` prints both)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    models: list[str] = []
    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None


class HostSpec(Strict):
    """Every variable aiinfra's roles read. The roles' defaults/main.yml are the real defaults; the ones
    here serve the cross-checks below."""

    # aiinfra as a whole
    aiinfra_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "aiinfra"
    aiinfra_group: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "aiinfra"

    # role host_base
    host_base_packages: list[str] = []
    host_base_extra_packages: list[str] = []
    host_base_time_sync: bool = True
    host_base_journald_persistent: bool = True
    host_base_journald_max_use: Annotated[str, Field(pattern=r"^\d+[KMGT]$")] = "2G"
    host_base_sysctl: dict[str, int | str] = {}
    host_base_hugepages: Annotated[int, Field(ge=0)] = 0
    host_base_unattended_upgrades_blacklist: list[str] = []

    # role host_reboot (whether to reboot at all is `aiinfra install --allow-reboot`)
    host_reboot_timeout_s: Annotated[int, Field(ge=60)] = 900

    # GPUs and driver (roles nvidia_driver, gpu_tuning)
    nvidia_driver_version: str | None = None  # None or empty: the driver is left alone
    nvidia_driver_source: Literal["ubuntu", "cuda", "custom"] = "ubuntu"
    nvidia_driver_custom_repo: DriverRepo | None = None
    nvidia_driver_kernel_modules: Literal["open", "proprietary"] = "open"
    nvidia_driver_flavour: Literal["server", "desktop"] = "server"
    nvidia_driver_kernel_headers_package: str | None = None
    nvidia_driver_blacklist_nouveau: bool = True
    gpu_expected_count: Annotated[int, Field(ge=0, le=16)] | None = None
    gpu_persistence_mode: bool = True
    gpu_model: str | None = None  # a card capacity planning knows (installer/plan.py), e.g. rtx3090
    gpu_memory_gb: Annotated[float, Field(gt=0, le=1024, strict=False)] | None = None  # GiB per GPU
    gpu_power_limit_watts: Watts | dict[GpuKey, Watts] | None = None  # all GPUs, or per GPU index
    gpu_tuning_settings_file: str = "/etc/aiinfra/gpu.yml"

    # role aiinfra_package (aiinfra itself on the box)
    aiinfra_package_prefix: str = "/opt/aiinfra"
    aiinfra_package_source: str | None = None
    aiinfra_package_cache: str | None = None
    aiinfra_package_wheels_dir: str = "/var/cache/aiinfra/wheels"

    # network and storage (roles network_vlans, model_storage)
    vlans: list[Vlan] = []
    network_vlans_apply: bool = False  # or `aiinfra install --allow-network-change`, for one run
    network_vlans_rollback_after_s: Annotated[int, Field(ge=30, le=3600)] = 120
    network_vlans_netplan_file: Annotated[str, Field(pattern=r"^/etc/netplan/[^/]+\.yaml$")] = (
        "/etc/netplan/60-aiinfra-vlans.yaml"
    )
    model_storage_mount: str = "/mnt/nvme"
    model_storage_device: str | None = None
    model_storage_mount_options: Annotated[str, Field(pattern=r"^[a-z0-9_=,.-]+$")] = "noatime,nofail"
    model_storage_fstype: Literal["ext4", "xfs"] = "ext4"
    model_storage_format: bool = False  # only ever a blank device
    model_storage_label: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")] = "aiinfra-models"
    model_storage_dirs: dict[str, Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]] = {}
    model_storage_dir_mode: Annotated[str, Field(pattern=r"^0?[0-7]{3}$")] = "0750"
    model_mirror: str | None = None  # a path on the box or an rsync source host:/path (roles vllm, ollama)

    # role proxmox_passthrough (hosts of group proxmox_hosts)
    proxmox_passthrough_enabled: bool = False
    proxmox_passthrough_cpu_vendor: Literal["auto", "intel", "amd"] = "auto"
    proxmox_passthrough_extra_kernel_args: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.,:=/-]+$")]] = []
    proxmox_passthrough_bootloader: Literal["auto", "grub", "systemd-boot"] = "auto"
    proxmox_passthrough_gpu_ids: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$")]] = []
    proxmox_passthrough_hugepages_1g: Annotated[int, Field(ge=0, le=4096)] = 0
    proxmox_passthrough_vm_id: Annotated[int, Field(ge=100, le=999999999)] | None = None
    proxmox_passthrough_sysfs_root: str = "/sys"

    # role vllm
    vllm_version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+([.+-][A-Za-z0-9.]+)?$")] = "0.32.0"
    vllm_build: Literal["gpu", "cpu"] = "gpu"
    vllm_prefix: str = "/opt/vllm"
    vllm_pip_packages: list[str] = []
    vllm_wheelhouse: str = ""
    vllm_pip_extra_args: str = ""
    vllm_models_dir: str | None = None
    vllm_hf_home: str | None = None
    vllm_download_command: str | None = None
    vllm_hf_token: str = ""
    vllm_models: list[str] | None = None

    # role ollama
    ollama_version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+(-rc\d+)?$")] = "0.32.15"
    ollama_arch: Literal["amd64", "arm64"] | None = None
    ollama_archive_url: str | None = None
    ollama_archive_file: str = ""
    ollama_archive_sha256: Annotated[str, Field(pattern=r"^([0-9a-f]{64})?$")] = ""
    ollama_archive_checksum_url: str | None = None
    ollama_prefix: str = "/opt/ollama"
    ollama_models_dir: str | None = None
    ollama_models: list[str] | None = None
    ollama_pull_port: Annotated[int, Field(ge=1, le=65535)] = 11499

    # role aiinfra_agent
    aiinfra_agent_config_file: str = "/etc/aiinfra/agent.yml"
    aiinfra_agent_router_auth: bool = True
    aiinfra_agent_api_keys: list[ApiKey] = []
    aiinfra_agent_keys_file: str = "/etc/aiinfra/keys.json"
    aiinfra_agent_policy: dict[str, float | int] = {}
    aiinfra_agent_vllm_command: list[str] | None = None
    aiinfra_agent_ollama_command: list[str] | None = None
    aiinfra_agent_vllm_env: dict[str, str] = {}
    aiinfra_agent_vllm_extra_args: list[str] = []
    aiinfra_agent_status_listen: str = "127.0.0.1:8079"
    aiinfra_agent_ready_timeout_s: Annotated[int, Field(ge=10)] = 900

    # engines and the agent
    engines: dict[str, Engine] = {}
    profiles: dict[str, list[str]] = {}
    default_profile: str | None = None
    router_listen: str = "0.0.0.0:8000"

    @field_validator("nvidia_driver_version")
    @classmethod
    def _driver_version(cls, value: str | None) -> str | None:
        if value and not DRIVER_VERSION.match(value):  # empty: the driver is not managed
            raise ValueError(f'{value!r} is not an exact driver version; write it quoted in full, e.g. "580.105.08"')
        return value

    _paths = field_validator(
        "model_storage_mount",
        "model_storage_device",
        "proxmox_passthrough_sysfs_root",
        "vllm_prefix",
        "vllm_models_dir",
        "vllm_hf_home",
        "ollama_prefix",
        "ollama_models_dir",
        "aiinfra_agent_config_file",
        "aiinfra_agent_keys_file",
        "gpu_tuning_settings_file",
        "aiinfra_package_prefix",
        "aiinfra_package_wheels_dir",
    )(_absolute)

    @field_validator("model_mirror")
    @classmethod
    def _mirror(cls, value: str | None) -> str | None:
        if value and not value.startswith("/") and not re.match(r"^[\w.@-]+:/", value):
            raise ValueError(f"{value!r}: give an absolute path on the box, or an rsync source like nas:/models")
        return value or None

    @field_validator("router_listen", "aiinfra_agent_status_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT, e.g. 0.0.0.0:8000")
        _ip(host.strip("[]"))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HostSpec:
        problems = list(_cross_checks(self))
        if problems:
            # One ValueError carries several "field: message" lines; split again in _errors().
            raise ValueError("\n".join(problems))
        return self


def _cross_checks(spec: HostSpec) -> list[str]:
    problems = engine_problems(spec.engines, spec.profiles, spec.default_profile)
    if spec.nvidia_driver_source == "custom" and spec.nvidia_driver_custom_repo is None:
        problems.append(
            "nvidia_driver_custom_repo: source custom needs the repository, e.g. {uris: ..., suites: ./, key_url: ...}"
        )
    repo = spec.nvidia_driver_custom_repo
    layout = repo.layout if spec.nvidia_driver_source == "custom" and repo else spec.nvidia_driver_source
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
        for gpu in engine.gpus if gpus is not None else ():
            if gpu >= gpus:
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


def advice(host: str, spec: HostSpec) -> list[SpecError]:
    """What is valid but likely not meant: warnings, the install still runs."""
    notes = []
    addresses = [a.split("/")[0] for vlan in spec.vlans for a in vlan.addresses]
    if addresses and _all_interfaces(spec.router_listen):
        port = spec.router_listen.rpartition(":")[2]
        notes.append(
            SpecError(
                host,
                "router_listen",
                f"{spec.router_listen!r} listens on every interface, not only the VLANs'; to serve them alone, "
                f"listen on {' or '.join(a + ':' + port for a in addresses)}",
            )
        )
    for name, engine in spec.engines.items():
        if isinstance(engine, VllmEngine) and (said := plan.quantization_advice(engine, spec.gpu_model)):
            notes.append(SpecError(host, f"engines.{name}.quantization", said))
    return notes


@dataclass(frozen=True)
class SpecError:
    host: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.host}: {self.field}: {self.message}"


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
