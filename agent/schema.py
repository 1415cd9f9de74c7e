"""Schemas shared by the agent's config and the installer's host spec: engines, profiles, and the
one-line error messages both print ("field: what is wrong; the fix")."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# Model ids become paths under the model store: Hugging Face's `org/name` (or a bare `name`), each
# part starting with a letter or digit, so that none is absolute, `..` or hidden.
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# Ollama's names, `[namespace/]model[:tag]`, become paths under its store's manifests the same way.
OLLAMA_MODEL = re.compile(r"^([a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*(:[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def model_id_problem(model: str, pattern: re.Pattern[str] = MODEL_ID) -> str | None:
    """Why MODEL cannot name a folder inside the model store; None when it can."""
    if pattern.fullmatch(model) and ".." not in model:  # whole: a trailing newline is no part of an id
        return None
    example = "llama3.2:3b" if pattern is OLLAMA_MODEL else "Qwen/Qwen2.5-7B-Instruct"
    return f"{model!r} is not a model id like {example!r}: it must stay inside the model store"


def _model_id(value: str) -> str:
    if (problem := model_id_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _ollama_models(values: list[str]) -> list[str]:
    for value in values:
        if (problem := model_id_problem(value, OLLAMA_MODEL)) is not None:
            raise ValueError(problem)
    return values


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


# Engines run unprivileged: a port below 1024 would need a capability they are not given.
EnginePort = Annotated[int, Field(ge=1024, le=65535)]
GpuIndex = Annotated[int, Field(ge=0, le=15)]
# A GPU index as a mapping key: keys arrive as strings from ansible-inventory's JSON ({"0": 350}).
GpuKey = Annotated[int, Field(ge=0, le=15, strict=False)]
Watts = Annotated[int, Field(ge=50, le=1000)]  # a GPU's power limit
Seconds = Annotated[float, Field(gt=0, strict=False)]


class Queue(Strict):
    """Requests for an engine that is starting, restarting or being switched in wait for it, up to these
    bounds; past them, and at once for a failed engine, they get a 503 with a Retry-After."""

    max_waiting: Annotated[int, Field(ge=0, le=10000)] = 64  # 0: none wait
    max_wait_s: Annotated[float, Field(ge=0, le=3600, strict=False)] = 300


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


class Golden(Strict):
    """One prompt of an engine's golden set: its greedy answer must pass every check given, in time."""

    prompt: Annotated[str, Field(min_length=1, max_length=8192)]
    contains: str | None = None  # the answer holds this text
    matches: Annotated[str, AfterValidator(_regex)] | None = None  # a regular expression found in the answer
    valid_json: bool = False  # the answer parses as JSON
    max_latency_s: Seconds = 30


class Gate(Strict):
    """What a change of the engine's identity (model, program, arguments) must pass before it serves."""

    # None given: one request ("Hello") answered within its bound.
    golden: Annotated[list[Golden], Field(max_length=100)] = []
    max_tokens: Annotated[int, Field(ge=1, le=1024)] = 32
    # The regression check: the greedy answers of the identity before, against the new one's, agree
    # (per prompt 1 when identical, else the share of the longer answer before the first difference)
    # this much on average. 0.8 lets a reordered floating-point sum move a late token, not a broken model.
    agreement: Annotated[float, Field(ge=0, le=1, strict=False)] = 0.8
    # auto: only when the model stays (another program or arguments); always; never.
    regression: Literal["auto", "always", "never"] = "auto"


class EngineBase(Strict):
    gpus: Annotated[list[GpuIndex], Field(min_length=1)]
    port: EnginePort
    queue: Queue = Queue()
    gate: Gate = Gate()


class ModelFacts(Strict):
    """What capacity planning needs of a model the built-in table does not know."""

    params_b: Annotated[float, Field(gt=0, strict=False)]  # billions of parameters
    layers: Annotated[int, Field(ge=1)]
    attention_heads: Annotated[int, Field(ge=1)]
    kv_heads: Annotated[int, Field(ge=1)]
    head_dim: Annotated[int, Field(ge=1)]
    max_context: Annotated[int, Field(ge=256)]


# vLLM flags that the agent sets from the spec: in extra_args one would win (vLLM takes the last), so
# an engine could listen beyond loopback, without the router's key, on another port or name.
OWNED_FLAGS = {
    "--host": "engines listen on loopback, behind the router",
    "--port": "the engine's port",
    "--uds": "the engine's port",
    "--served-model-name": "served_name",
    "--api-key": "the agent's own key for the engine",
    "--model": "model",
    "--tensor-parallel-size": "gpus (one rank a GPU)",
    "-tp": "gpus (one rank a GPU)",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--max-model-len": "max_model_len",
    "--max-num-seqs": "max_num_seqs",
    "--quantization": "quantization",
    "-q": "quantization",
    "--dtype": "dtype",
    # Serving across boxes: span (its nodes, its kind of parallelism, its port) says these.
    **{
        flag: "span"
        for flag in (
            "--nnodes",
            "-n",
            "--node-rank",
            "-r",
            "--master-addr",
            "--master-port",
            "--headless",
            "--pipeline-parallel-size",
            "-pp",
            "--distributed-executor-backend",
            "--data-parallel-size",
            "-dp",
            "--data-parallel-size-local",
            "-dpl",
            "--data-parallel-address",
            "-dpa",
            "--data-parallel-rpc-port",
            "-dpp",
            "--data-parallel-start-rank",
            "-dpr",
            "--data-parallel-rank",
            "-dpn",
        )
    },
}


def _own_flags_untouched(args: list[str]) -> list[str]:
    for arg in args:
        flag = arg.partition("=")[0]
        if flag in OWNED_FLAGS:
            raise ValueError(f"{flag} is set by aiinfra ({OWNED_FLAGS[flag]}); leave it out of the extra arguments")
    return args


VllmArgs = Annotated[list[str], AfterValidator(_own_flags_untouched)]


class Span(Strict):
    """An engine served across boxes by vLLM's own multi-node serving (its mp backend); the first node is
    the head, which serves the engine's port; the others run their ranks headless. Each node gives the
    engine the same `gpus`. tensor: one model split across every GPU of every node (needs a fast link);
    pipeline: its layers split across the nodes (suits plain Ethernet); data: a whole replica a node,
    for throughput."""

    nodes: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(min_length=2, max_length=16)]
    parallel: Literal["tensor", "pipeline", "data"] = "pipeline"
    # vLLM's distributed traffic (torch's store, or data parallel's RPC) on the head: unauthenticated and
    # unencrypted, so it travels only on the trusted network (trusted_network).
    port: EnginePort = 29500

    @property
    def size(self) -> int:
        return len(self.nodes)


class VllmEngine(EngineBase):
    runtime: Literal["vllm"]
    model: Annotated[str, Field(min_length=1), AfterValidator(_model_id)]
    # The SHA-256 of the model's SHA256SUMS: staging refuses a mirror copy or a download with another.
    model_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    # the name clients ask for; default: the model id. No control characters: it reaches argv and the logs.
    served_name: Annotated[str, Field(pattern=r"^[^\x00-\x1f\x7f]{1,256}$")] | None = None
    max_model_len: Annotated[int, Field(ge=256)] | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0.1, le=0.98)] = 0.9
    max_num_seqs: Annotated[int, Field(ge=1)] | None = None
    quantization: Literal["awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "bitsandbytes"] | None = None
    dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool = True
    extra_args: VllmArgs = []
    model_facts: ModelFacts | None = None  # for a model capacity planning does not know
    span: Span | None = None  # served across boxes
    skip_fit_check: bool = False  # the operator knows better than the sizing model

    @property
    def served(self) -> str:
        return self.served_name or self.model

    @property
    def tensor_parallel(self) -> int:
        """The GPUs one layer is split over: its own, times its nodes when it spans them tensor-parallel."""
        return len(self.gpus) * (self.span.size if self.span is not None and self.span.parallel == "tensor" else 1)

    @property
    def pipeline_stages(self) -> int:
        return self.span.size if self.span is not None and self.span.parallel == "pipeline" else 1


class OllamaEngine(EngineBase):
    runtime: Literal["ollama"]
    keep_alive: Annotated[str, Field(pattern=r"^(-1|\d+[smh]?)$")] = "30m"
    models: Annotated[list[str], AfterValidator(_ollama_models)] = []  # the first serves the liveness probe
    # Ollama's cloud models send the prompt to ollama.com: off (OLLAMA_NO_CLOUD=1) unless said here.
    cloud: bool = False
    # Ollama's scheduler, under its own names (OLLAMA_<NAME>); unset: Ollama's default (OLLAMA_KNOBS).
    num_parallel: Annotated[int, Field(ge=1)] | None = None
    max_loaded_models: Annotated[int, Field(ge=1)] | None = None
    context_length: Annotated[int, Field(ge=256)] | None = None
    max_queue: Annotated[int, Field(ge=1)] | None = None


# Ollama's scheduler settings an engine may set, and Ollama's defaults (its FAQ and docs/context-length,
# checked December 2026 against 0.34.2).
OLLAMA_KNOBS = {
    "num_parallel": "requests each loaded model answers at once (default 1)",
    "max_loaded_models": "models loaded at once (default 3 per GPU, 3 on a CPU)",
    "context_length": "the context of each request, in tokens (default by VRAM: 4k under 24 GiB, 32k to 48 GiB, "
    "256k above)",
    "max_queue": "requests queued while busy before Ollama refuses more (default 512)",
}


Engine = Annotated[VllmEngine | OllamaEngine, Field(discriminator="runtime")]


class SwitchPolicy(Strict):
    """profile_switching.NAME: profile NAME is switched to when a request asks for one of its models
    (by a key that may switch), and back to the default profile once idle."""

    on_request: bool = True
    back_after_idle_s: Annotated[float, Field(gt=0, strict=False)] = 600  # no request for its models this long
    min_dwell_s: Annotated[float, Field(ge=0, strict=False)] = 120  # once switched to, it stays at least this long


def spanning_engines(engines: Mapping[str, VllmEngine | OllamaEngine]) -> dict[str, Span]:
    """The engines across boxes, and how each spans them."""
    return {n: e.span for n, e in engines.items() if isinstance(e, VllmEngine) and e.span is not None}


def switching_problems(
    policies: Mapping[str, SwitchPolicy],
    profiles: Mapping[str, list[str]],
    default_profile: str | None,
    engines: Mapping[str, VllmEngine | OllamaEngine],
) -> list[str]:
    problems = [
        f"profile_switching.{name}: not one of the profiles{did_you_mean(name, profiles)}"
        for name in policies
        if name not in profiles
    ]
    if policies and default_profile is None:
        problems.append("profile_switching: needs a default_profile to switch back to")
    # An agent switches its own box only: an engine across boxes must not come or go with such a switch.
    spanning = set(spanning_engines(engines))
    back = spanning.intersection(profiles.get(default_profile or "", []))
    for name in (n for n in policies if n in profiles):
        if moved := sorted(spanning.intersection(profiles[name]) ^ back):
            problems.append(
                f"profile_switching.{name}: switching to it or back would start or stop {', '.join(moved)} on this "
                f"box alone, and it spans boxes; switch its nodes together with `aiinfra profile {name} --host GROUP`"
            )
    return problems


def did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def engine_problems(
    engines: Mapping[str, VllmEngine | OllamaEngine], profiles: Mapping[str, list[str]], default_profile: str | None
) -> list[str]:
    """Checks across engines and profiles, as 'field: message' lines."""
    problems: list[str] = []
    ports: dict[int, str] = {}
    pinned: dict[str, tuple[str, str]] = {}  # model → (engine, the manifest digest it pins)
    for name, engine in engines.items():
        if not NAME.fullmatch(name):
            problems.append(f"engines.{name!r}: engine names are lower-case letters, digits, '-' and '_'")
        if engine.port in ports:
            problems.append(f"engines.{name}.port: {engine.port} is already used by engine {ports[engine.port]!r}")
        ports.setdefault(engine.port, name)
        span = engine.span if isinstance(engine, VllmEngine) else None
        if span is not None:
            if span.port in ports:
                problems.append(f"engines.{name}.span.port: {span.port} is already used by engine {ports[span.port]!r}")
            ports.setdefault(span.port, name)
            if len(set(span.nodes)) != len(span.nodes):
                problems.append(f"engines.{name}.span.nodes: names a node twice")
        if len(set(engine.gpus)) != len(engine.gpus):
            problems.append(f"engines.{name}.gpus: lists a GPU twice")
        if isinstance(engine, VllmEngine) and engine.model_sha256 is not None:
            first, pin = pinned.setdefault(engine.model, (name, engine.model_sha256))
            if pin != engine.model_sha256:
                problems.append(f"engines.{name}.model_sha256: engine {first!r} pins model {engine.model} to another "
                                "manifest; one copy of a model is staged, so one pin")  # fmt: skip
    for profile, members in profiles.items():
        if not NAME.fullmatch(profile):
            problems.append(f"profiles.{profile!r}: profile names are lower-case letters, digits, '-' and '_'")
        taken: dict[int, str] = {}
        for member in members:
            found = engines.get(member)
            if found is None:
                problems.append(f"profiles.{profile}: unknown engine {member!r}{did_you_mean(member, engines)}")
                continue
            for gpu in found.gpus:
                if gpu in taken:
                    problems.append(
                        f"profiles.{profile}: engines {taken[gpu]!r} and {member!r} both use "
                        f"GPU {gpu}; put them in different profiles"
                    )
                taken.setdefault(gpu, member)
    if default_profile is not None and default_profile not in profiles:
        problems.append(
            f"default_profile: {default_profile!r} is not one of the profiles ({', '.join(profiles) or 'none defined'})"
        )
    if engines and profiles and default_profile is None:
        problems.append("default_profile: required when profiles are defined; name the one the agent starts")
    return problems


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (
        part in ("int", "str", "float", "bool", "none")
        or part.startswith(("constrained-", "function-", "dict[", "list[", "nullable["))
    )


def _without_union_tags(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A value that matches no member of a union gets one error per member, each path tagged with
    the member ("gpu_power_limit_watts.constrained-int"). Keep the member that got furthest."""
    plain: list[dict[str, Any]] = []
    members: dict[tuple[Any, ...], dict[str, list[dict[str, Any]]]] = {}
    for error in errors:
        loc = list(error["loc"])
        # Discriminated unions put the runtime in the path ("engines.a.vllm.port"): only one reports.
        if len(loc) >= 3 and loc[0] == "engines" and loc[2] in ("vllm", "ollama"):
            del loc[2]
        tag = next((i for i, part in enumerate(loc) if _is_union_tag(part)), None)
        if tag is None:
            plain.append({**error, "loc": tuple(loc)})
            continue
        untagged = {**error, "loc": tuple(loc[:tag] + loc[tag + 1 :])}
        members.setdefault(tuple(loc[:tag]), {}).setdefault(loc[tag], []).append(untagged)
    for by_member in members.values():
        plain.extend(max(by_member.values(), key=lambda errs: max(len(e["loc"]) for e in errs)))
    return plain


ModelAt = Callable[[list[str]], type[BaseModel] | None]


def _describe(error: dict[str, Any], model_at: ModelAt) -> tuple[str, str]:
    loc = [str(p) for p in error["loc"]]
    field = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = model_at(loc[:-1])
        hint = did_you_mean(loc[-1], parent.model_fields) if parent else ""
        return field, f"unknown key{hint}"
    if kind == "missing":
        return field, "required, but not set"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return field + ".runtime", "must be one of 'vllm', 'ollama'"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "greater_than_equal" and loc[0] == "engines" and loc[-1] == "port":
        message = "engines run unprivileged, so ports below 1024 are not theirs; pick one from 1024"
    if kind != "value_error" and "input" in error:  # value errors quote the value themselves
        message = f"{message[0].lower()}{message[1:]} (got {error['input']!r})"
    return field, message


def error_lines(exc: ValidationError, model_at: ModelAt) -> list[tuple[str, str]]:
    """(field, message) pairs for a validation error, one per problem.

    A model validator reports several problems at once as 'field: message' lines in one ValueError.
    """
    lines: list[tuple[str, str]] = []
    for error in _without_union_tags(exc.errors()):
        if error["type"] == "value_error" and not error["loc"]:
            for line in str(error["ctx"]["error"]).splitlines():
                field, _, message = line.partition(": ")
                lines.append((field, message))
        else:
            lines.append(_describe(error, model_at))
    return lines


def engines_model_at(loc: list[str]) -> type[BaseModel] | None:
    """The model at a path under `engines`, for "did you mean" hints."""
    if len(loc) == 2 and loc[0] == "engines":
        return VllmEngine  # close enough for a suggestion: most keys are shared
    return None
