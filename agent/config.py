"""The agent's configuration, /etc/aiinfra/agent.yml: the host spec's engines and profiles, plus
where and how the agent runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from aiinfra.agent import box
from aiinfra.agent.schema import (
    Engine,
    GpuKey,
    Seconds,
    Span,
    Strict,
    SwitchPolicy,
    VllmArgs,
    Watts,
    engine_problems,
    engines_model_at,
    error_lines,
    spanning_engines,
    switching_problems,
)

DEFAULT_PATH = Path(box.CONFIG_FILE)
GPU_SETTINGS_PATH = Path(box.GPU_SETTINGS_FILE)


class Policy(Strict):
    """Probe timings and the restart policy. Defaults suit multi-minute vLLM model loads."""

    tick_s: Seconds = 0.5  # how often processes are checked: an exit is noticed within this
    startup_timeout_s: Seconds = 900  # a model load may take this long before it counts as failed
    readiness_interval_s: Seconds = 5
    probe_timeout_s: Seconds = 5
    liveness_interval_s: Seconds = 30
    liveness_timeout_s: Seconds = 60  # a one-token request on a busy engine can be slow
    liveness_failures: Annotated[int, Field(ge=1)] = 3  # consecutive, before a restart
    traffic_grace_s: Seconds = 60  # real traffic that succeeded this recently stands in for liveness
    backoff_initial_s: Seconds = 10
    backoff_max_s: Seconds = 300
    backoff_reset_after_s: Seconds = 600  # ready this long: the next failure starts the backoff afresh
    crash_loop_failures: Annotated[int, Field(ge=1)] = 5  # failures within the window: give up
    crash_loop_window_s: Seconds = 900
    stop_grace_s: Seconds = 30  # SIGTERM, then SIGKILL of the whole process group / cgroup
    # Requests in hand get this long to finish when their engine leaves the profile, or the agent stops;
    # past it the engine is stopped (the agent exits) and what is left ends with an error.
    drain_timeout_s: Seconds = 30


class GpuConfig(Strict):
    """GPU settings the agent keeps in place, and the driver it expects (from the host spec)."""

    power_limit_watts: Watts | dict[GpuKey, Watts] | None = None
    persistence_mode: bool | None = True  # None: leave it alone
    driver_version: str | None = None  # the pinned driver (nvidia_driver_version); another loaded is drift
    expected_count: Annotated[int, Field(ge=0)] | None = None
    interval_s: Seconds = 5
    reapply_min_interval_s: Seconds = 60  # a setting that will not stick is retried at most this often
    read_timeout_s: Seconds = 10  # an NVML call out this long: the GPU layer is hung, engine starts held


class CostConfig(Strict):
    """What the cards cost, for `aiinfra cost` (gpu_card_cost, gpu_card_lifetime_years, gpu_expected_count)."""

    card_cost: Annotated[float, Field(ge=0, strict=False)] | None = None  # per card, in the tariff's currency
    lifetime_years: Annotated[float, Field(gt=0, strict=False)] = 4
    cards: Annotated[int, Field(ge=0)] | None = None  # None: the GPUs the engines use


class AgentConfig(Strict):
    engines: dict[str, Engine] = {}
    profiles: dict[str, list[str]] = {}
    default_profile: str | None = None
    profile_switching: dict[str, SwitchPolicy] = {}  # profiles switched to on request, and back when idle
    backend: Literal["auto", "systemd", "process"] = "auto"
    model_storage_mount: str = box.MODEL_STORAGE_MOUNT
    # Where the roles put each engine's files (vllm_models_dir, vllm_hf_home, ollama_models_dir);
    # unset: the default folders under model_storage_mount.
    models_dir: str | None = None
    hf_home: str | None = None
    ollama_models_dir: str | None = None
    status_listen: str = box.STATUS_LISTEN  # read-only: /healthz, /status, /metrics, /cost
    # Set: the status surface wants `Authorization: Bearer <token>` (but /healthz), the token's SHA-256 here.
    status_token_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    control_socket: str = box.CONTROL_SOCKET  # profile switch, restarts: root and the operators' group
    control_group: str = box.OPERATORS_GROUP
    state_dir: str = box.STATE_DIR  # engine launch files, logs, the process backend's records
    data_dir: str = box.DATA_DIR  # what outlives a reboot and a rebuild: ledger, audit log, restart counts
    cost: CostConfig = CostConfig()
    engine_user: str | None = box.USER  # engines run unprivileged; None: as the agent's user
    router_listen: str | None = box.ROUTER_LISTEN  # the OpenAI-compatible endpoint; None: no router
    router_auth: bool = True  # API keys required; false is an explicit choice that /status shows
    keys_file: str = box.KEYS_FILE
    router_timeout_s: Annotated[float, Field(gt=0, strict=False)] = 600
    router_max_body_mb: Annotated[float, Field(gt=0, strict=False)] = 16
    # A client has router_head_timeout_s to send a request's head (an idle kept-alive connection is
    # closed after it too), then router_read_timeout_s for its body; an answer it leaves unread for
    # router_write_timeout_s cuts the connection. Slow, half-sent or unread requests hold nothing long.
    router_head_timeout_s: Annotated[float, Field(gt=0, strict=False)] = 10
    router_read_timeout_s: Annotated[float, Field(gt=0, strict=False)] = 30
    router_write_timeout_s: Annotated[float, Field(gt=0, strict=False)] = 30
    # Connections open at once on the router, and from one client address (an IPv6 client: its /64);
    # past either a new one gets a 503 and is closed. Each takes two descriptors (the client's, the
    # engine's): the agent's unit gives it LimitNOFILE=8192.
    router_max_connections: Annotated[int, Field(ge=1, le=3000)] = 1024
    router_max_connections_per_client: Annotated[int, Field(ge=1, le=3000)] = 128
    # Completion tokens a request that names no max_tokens reserves against its key's tpm until its
    # answer ends (its whole context would refuse most such clients).
    router_reserve_tokens: Annotated[int, Field(ge=1)] = 256
    audit_log: str | None = box.AUDIT_LOG  # one JSON line per request, a path under data_dir; None: none
    audit_include_text: bool = False  # prompts stay out of the audit log unless this says otherwise
    vllm_command: list[str] = box.VLLM_COMMAND  # role vllm: one venv per version
    ollama_command: list[str] = box.OLLAMA_COMMAND
    vllm_env: dict[str, str] = {}  # for every vLLM engine (a CPU-only box: VLLM_CPU_KVCACHE_SPACE)
    vllm_extra_args: VllmArgs = []  # for every vLLM engine, before each engine's own extra_args
    policy: Policy = Policy()
    # Engines across boxes (an engine's span): this box's name among the nodes, and where each node's agent
    # answers the others about its ranks (ADDRESS:PORT, the address on the trusted network, which vLLM's
    # ranks reach each other on too). The installer writes both from the inventory.
    node: str | None = None
    nodes: dict[str, Annotated[str, Field(pattern=r"^[0-9A-Za-z.:\[\]-]+:[0-9]{1,5}$")]] = {}
    # None: no GPU layer (a developer's machine), engines start regardless. A path names a file of GPU
    # settings (gpu.yml): the boot unit's `gpu apply` reads the same file, so the two cannot disagree.
    gpu: GpuConfig | None = GpuConfig()

    @model_validator(mode="after")
    def _consistent(self) -> AgentConfig:
        problems = engine_problems(self.engines, self.profiles, self.default_profile)
        problems += switching_problems(self.profile_switching, self.profiles, self.default_profile, self.engines)
        problems += self._span_problems()
        if problems:
            raise ValueError("\n".join(problems))
        self.models_dir = self.models_dir or box.model_dir(self.model_storage_mount, "models")
        self.hf_home = self.hf_home or box.model_dir(self.model_storage_mount, "hf_cache")
        self.ollama_models_dir = self.ollama_models_dir or box.model_dir(self.model_storage_mount, "ollama")
        return self

    def spans(self) -> dict[str, Span]:
        """The engines across boxes, and how each spans them."""
        return spanning_engines(self.engines)

    def _span_problems(self) -> list[str]:
        problems = []
        for name, span in self.spans().items():
            if self.node not in span.nodes:
                here = self.node or "node not set"
                problems.append(f"engines.{name}.span.nodes: this box ({here}) is not one of them")
            if missing := [n for n in span.nodes if n not in self.nodes]:
                problems.append(f"nodes: no address for {', '.join(missing)} (engine {name} spans them)")
        return problems

    def peer_listen(self) -> str | None:
        """Where this agent answers the other nodes' agents; None: no engine spans boxes."""
        return self.nodes.get(self.node or "") if self.spans() else None

    def audit_path(self) -> str | None:
        return None if self.audit_log is None else str(Path(self.data_dir) / self.audit_log)

    def profile_engines(self, profile: str | None) -> list[str]:
        if profile is None:
            return []
        return list(self.profiles[profile])


class ConfigError(Exception):
    """The configuration is unreadable or invalid; each line names a field and the fix."""

    def __init__(self, path: Path, lines: list[str]) -> None:
        super().__init__("\n".join(f"{path}: {line}" for line in lines))
        self.lines = lines


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    if not loc:
        return AgentConfig
    if loc == ["policy"]:
        return Policy
    return engines_model_at(loc)


def parse(data: object, path: Path = DEFAULT_PATH) -> AgentConfig:
    if not isinstance(data, dict):
        raise ConfigError(path, ["the configuration is a mapping of settings"])
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, [f"{field}: {message}" for field, message in error_lines(exc, _model_at)]) from None


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"not valid YAML: {' '.join(str(exc).split())}"]) from None


def load(path: Path = DEFAULT_PATH) -> AgentConfig:
    data = _read_yaml(path)
    if isinstance(data, dict) and isinstance(data.get("gpu"), str):
        data["gpu"] = load_gpu_settings(Path(data["gpu"])).model_dump()
    return parse(data, path)


def load_gpu_settings(path: Path = GPU_SETTINGS_PATH) -> GpuConfig:
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(path, ["the GPU settings are a mapping, e.g. power_limit_watts: 350"])
    try:
        return GpuConfig.model_validate(data)
    except ValidationError as exc:
        lines = error_lines(exc, lambda loc: None if loc else GpuConfig)
        raise ConfigError(path, [f"{field}: {message}" for field, message in lines]) from None
