"""Engine specs → what to run: argv, environment, and the HTTP surfaces the probes use."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import ipaddress
import json
import os
import re
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiinfra.agent.config import AgentConfig
from aiinfra.agent.schema import OLLAMA_KNOBS, OllamaEngine, Span, VllmEngine

LOOPBACK = "127.0.0.1"  # engines listen on loopback only; the router is the way in


@dataclass(frozen=True)
class Launch:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    runtime: str
    served: list[str] = field(default_factory=list)  # model names this engine answers to
    queue_max: int = 0  # requests that may wait for it to be ready (engine.queue)
    queue_wait_s: float = 0.0
    api_key: str | None = None  # what the engine asks of every request (vLLM): only the agent knows it
    model_dir: str = ""  # vLLM: the staged model folder it serves
    rank: int = 0  # an engine across boxes: this box's node rank (0: the head, which alone serves)

    @property
    def auth(self) -> dict[str, str]:
        """The header the router and the probes send the engine."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


# What an engine inherits from the one that starts it (the agent, or systemd for an engine unit); the
# rest of its environment is its Launch's. HOME is the engine user's own.
INHERITED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "PYTHONPATH")


def environment(env: Mapping[str, str], parent: Mapping[str, str], home: str | None = None) -> dict[str, str]:
    """An engine's whole environment, the same under both backends."""
    inherited = {k: v for k, v in parent.items() if k in INHERITED_ENV}
    return inherited | ({"HOME": home} if home else {}) | dict(env)


def engine_key(secret: bytes, name: str) -> str:
    """Engine NAME's own API key, from the agent's secret: the same across the agent's restarts (an
    adopted engine keeps its key), unknown to any other local process, so none bypasses the router."""
    return hmac.new(secret, name.encode(), hashlib.sha256).hexdigest()


def exact(command: list[str]) -> list[str]:
    """COMMAND with its program's folder links resolved (vllm/current/bin → vllm/0.32.0/bin): a launch
    names the version it runs, so the one kept to go back to still runs that version (as it names the
    model's version folder)."""
    folder, program = os.path.split(command[0])
    return [os.path.join(os.path.realpath(folder), program) if folder else program, *command[1:]]


def launch(name: str, config: AgentConfig, secret: bytes | None = None) -> Launch:
    """SECRET (the agent's, engine_key): vLLM engines then answer only requests that carry their key."""
    engine = config.engines[name]
    gpus = ",".join(str(g) for g in engine.gpus)
    if isinstance(engine, VllmEngine):
        key = engine_key(secret, name) if secret is not None else None
        model_dir = os.path.realpath(f"{config.models_dir}/{engine.model}")  # the version staged now
        rank = 0 if engine.span is None else engine.span.nodes.index(str(config.node))
        argv = vllm_argv(engine, exact(config.vllm_command), model_dir, config.vllm_extra_args)
        span_env: dict[str, str] = {}
        if engine.span is not None:
            argv += span_args(engine.span, rank, node_address(config.nodes[engine.span.nodes[0]]))
            span_env = trusted_env(node_address(config.nodes[str(config.node)]))
        return Launch(
            name,
            argv,
            {
                "CUDA_VISIBLE_DEVICES": gpus,
                "HF_HOME": str(config.hf_home),
                "VLLM_NO_USAGE_STATS": "1",  # vLLM's usage statistics stay off (and so DO_NOT_TRACK)
                "DO_NOT_TRACK": "1",
                "HF_HUB_OFFLINE": "1",
                **span_env,
                **config.vllm_env,
                **({"VLLM_API_KEY": key} if key else {}),  # in the environment, not argv: ps shows argv
            },
            engine.port,
            "vllm",
            [engine.served] if rank == 0 else [],  # a follower's rank has no API: the head serves
            engine.queue.max_waiting,
            engine.queue.max_wait_s,
            key,
            model_dir,
            rank,
        )
    assert isinstance(engine, OllamaEngine)
    return Launch(
        name,
        [*config.ollama_command, "serve"],
        {
            "CUDA_VISIBLE_DEVICES": gpus,
            "OLLAMA_HOST": f"{LOOPBACK}:{engine.port}",
            "OLLAMA_MODELS": str(config.ollama_models_dir),
            "OLLAMA_KEEP_ALIVE": engine.keep_alive,
            **({} if engine.cloud else {"OLLAMA_NO_CLOUD": "1"}),  # prompts stay on the box
            **{f"OLLAMA_{k.upper()}": str(v) for k in OLLAMA_KNOBS if (v := getattr(engine, k)) is not None},
        },
        engine.port,
        "ollama",
        list(engine.models),
        engine.queue.max_waiting,
        engine.queue.max_wait_s,
    )


def vllm_argv(engine: VllmEngine, command: list[str], model_dir: str, box_args: Sequence[str] = ()) -> list[str]:
    """MODEL_DIR holds the weights the vllm role staged (the agent never downloads); clients still ask
    for the served name, the model id unless served_name says otherwise."""
    argv = [
        *command,
        "serve",
        model_dir,
        "--served-model-name",
        engine.served,
        "--host",
        LOOPBACK,
        "--port",
        str(engine.port),
        "--gpu-memory-utilization",
        str(engine.gpu_memory_utilization),
        "--tensor-parallel-size",
        str(engine.tensor_parallel),
        "--dtype",
        engine.dtype,
    ]
    if engine.max_model_len is not None:
        argv += ["--max-model-len", str(engine.max_model_len)]
    if engine.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(engine.max_num_seqs)]
    if engine.quantization is not None:
        argv += ["--quantization", engine.quantization]
    # Prefix caching and chunked prefill are vLLM's defaults (V1): only turning them off takes a flag.
    if not engine.enable_prefix_caching:
        argv.append("--no-enable-prefix-caching")
    if not engine.enable_chunked_prefill:
        argv.append("--no-enable-chunked-prefill")
    # Custom all-reduce misbehaves on consumer cards over PCIe/NVLink bridges; NCCL is the safe path.
    argv.append("--disable-custom-all-reduce")
    return argv + list(box_args) + list(engine.extra_args)


def node_address(peer: str) -> str:
    """The address of a node's ADDRESS:PORT (its agent's peer endpoint): where its vLLM ranks are reached."""
    return peer.rpartition(":")[0].strip("[]")


def trusted_env(address: str) -> dict[str, str]:
    """What keeps a rank's traffic on the trusted network: vLLM advertises ADDRESS (else the address of its
    default route), and gloo and NCCL use its interface (else gloo takes the host name's address, which on
    Ubuntu is 127.0.1.1, out of the other nodes' reach)."""
    env = {"VLLM_HOST_IP": address}
    interface = interface_of(address)
    return env | ({"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface} if interface else {})


def interface_of(address: str) -> str | None:
    """The network interface of this host that holds ADDRESS; None: none does."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        with contextlib.suppress(OSError):  # /proc/net/if_inet6: address in hex, ..., interface name
            for line in Path("/proc/net/if_inet6").read_text().splitlines():
                fields = line.split()
                if len(fields) == 6 and ipaddress.IPv6Address(int(fields[0], 16)) == ip:
                    return fields[5]
        return None
    for _, name in socket.if_nameindex():
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("256s", name.encode()[:15])
            if socket.inet_ntoa(fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)[20:24]) == address:
                return name
    return None


SIOCGIFADDR = 0x8915  # Linux: an interface's IPv4 address


def span_args(span: Span, rank: int, head: str) -> list[str]:
    """vLLM's own multi-node flags for node RANK of SPAN (HEAD: the head's address). Tensor and pipeline
    parallel: one engine over N nodes (torch's store on the head's port); data: N replicas, one a node,
    behind the head's API server (its RPC on that port). Followers run headless: no API of their own."""
    follower = ["--headless"] if rank else []
    if span.parallel == "data":
        return ["--data-parallel-size", str(span.size), "--data-parallel-size-local", "1",
                "--data-parallel-address", head, "--data-parallel-rpc-port", str(span.port),
                *(["--data-parallel-start-rank", str(rank)] if rank else []), *follower]  # fmt: skip
    pipeline = ["--pipeline-parallel-size", str(span.size)] if span.parallel == "pipeline" else []
    return [*pipeline, "--distributed-executor-backend", "mp", "--nnodes", str(span.size), "--node-rank", str(rank),
            "--master-addr", head, "--master-port", str(span.port), *follower]  # fmt: skip


# What the vllm role writes in each vLLM environment: `vllm serve --help=all`, once per version, and
# the record of what it installed there ({packages, build}).
SERVE_HELP = "aiinfra-serve-help.txt"
HELP_HEADER = "# vllm "  # the help file's first line: HELP_HEADER and the version
INSTALL_RECORD = "aiinfra-installed.json"
FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")


def venv_of(program: str) -> Path:
    """The virtual environment PROGRAM (VENV/bin/vllm) runs from."""
    return Path(program).resolve().parent.parent


def vllm_venv(config: AgentConfig) -> Path:
    """The virtual environment the engines' `vllm` comes from."""
    return venv_of(config.vllm_command[0])


def vllm_build(config: AgentConfig) -> str | None:
    """Which vLLM build the vllm role installed (gpu, cpu), from its install record; None: unknown."""
    try:
        return str(json.loads((vllm_venv(config) / INSTALL_RECORD).read_text())["build"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def help_version(text: str) -> str | None:
    """The vLLM version a recorded help file (SERVE_HELP) is of."""
    first = text.partition("\n")[0]
    if not first.startswith(HELP_HEADER):
        return None
    return first.removeprefix(HELP_HEADER).strip() or None


def unknown_vllm_flags(config: AgentConfig) -> list[str]:
    """Lines naming each flag an engine would pass that the installed vLLM does not know, so that a
    spec asking for too new (or removed) a flag fails at install time, not as a crash loop later.
    Nothing to check where no help was recorded (no vLLM installed yet, a check-mode run)."""
    help_file = vllm_venv(config) / SERVE_HELP
    try:
        text = help_file.read_text()
    except OSError:
        return []
    known = set(FLAG.findall(text))
    version = help_version(text) or "?"
    problems = []
    for name, engine in config.engines.items():
        if not isinstance(engine, VllmEngine):
            continue
        argv = launch(name, config).argv
        for flag in dict.fromkeys(a.partition("=")[0] for a in argv if a.startswith("--")):
            if flag not in known:
                problems.append(
                    f"engines.{name}: vLLM {version} has no flag {flag}; remove it or pin a vLLM that has it"
                )
    return problems
