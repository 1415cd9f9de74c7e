"""Capacity planning: will a profile's engines fit in their GPUs, and at what context × concurrency?

Per GPU an engine may use `total × gpu_memory_utilization` (vLLM's budget). Inside it:
- weights: parameters × bytes per parameter (dtype or quantisation), split across tensor-parallel GPUs;
- runtime overhead: CUDA context, CUDA graphs, activations, NCCL buffers (OVERHEAD_GIB per GPU);
- KV cache: 2 (K and V) × layers × KV heads × head dim × bytes per element, per token; KV heads are
  split across tensor-parallel GPUs (GQA makes them few: Qwen2.5-7B has 4, Llama-2-7B 32).

vLLM refuses to start when one sequence of max_model_len tokens does not fit in what is left after
weights and overhead: that is a spec error. Configured concurrency × context beyond it is not an
error (vLLM queues and preempts) but the plan shows how many full-length sequences fit.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from aiinfra.agent.schema import ModelFacts, VllmEngine

GIB = 2**30
OVERHEAD_GIB = 1.5

# The cards by name: (memory in GiB as nvidia-smi reports it, CUDA compute capability).
GPUS = {
    "rtx3060": (12, (8, 6)),
    "rtx3090": (24, (8, 6)),
    "rtx3090ti": (24, (8, 6)),
    "rtx4060ti": (16, (8, 9)),
    "rtx4090": (24, (8, 9)),
    "rtx5090": (32, (12, 0)),
    "a4000": (16, (8, 6)),
    "a5000": (24, (8, 6)),
    "a6000": (48, (8, 6)),
    "l4": (24, (8, 9)),
    "l40s": (48, (8, 9)),
    "a10": (24, (8, 6)),
    "a100-40gb": (40, (8, 0)),
    "a100-80gb": (80, (8, 0)),
    "h100-80gb": (80, (9, 0)),
    "h200": (141, (9, 0)),
}
GPU_MEMORY_GIB = {name: memory for name, (memory, _) in GPUS.items()}

# vLLM's Marlin kernels (awq_marlin, gptq_marlin) run from compute capability 8.0 (Ampere) on, and
# vLLM picks them itself for an AWQ or GPTQ checkpoint; forcing `awq` or `gptq` takes the slow kernels.
MARLIN_MIN_CAPABILITY = (8, 0)
FORCED_SLOW_KERNELS = {"awq": "awq_marlin", "gptq": "gptq_marlin"}


def quantization_advice(engine: VllmEngine, gpu_model: str | None) -> str:
    """Why an engine's forced quantization is slower than what vLLM would pick on this card ("": it is not)."""
    better = FORCED_SLOW_KERNELS.get(engine.quantization or "")
    if better is None or gpu_model not in GPUS or GPUS[gpu_model][1] < MARLIN_MIN_CAPABILITY:
        return ""
    major, minor = GPUS[gpu_model][1]
    return (
        f"{engine.quantization!r} forces vLLM's slow kernel on a {gpu_model} (compute capability {major}.{minor}); "
        f"leave quantization out (vLLM picks {better} for this checkpoint) or set {better}"
    )


# Bytes per weight. 4-bit AWQ/GPTQ: 4 bits plus group scales/zeros (group 128) and the embeddings
# and lm_head left in 16 bits come to about 4.5 bits a parameter (Qwen2.5-32B-AWQ: 19 GB on disk).
# GGUF Q4_K_M ≈ 4.85 bits.
BYTES_PER_PARAM = {
    "float16": 2.0,
    "bfloat16": 2.0,
    "auto": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "awq": 0.5625,
    "awq_marlin": 0.5625,
    "gptq": 0.5625,
    "gptq_marlin": 0.5625,
    "bitsandbytes": 0.5625,
    "q4_k_m": 0.606,
}

# Architectures from each model's config.json on Hugging Face (num_hidden_layers, num_attention_heads,
# num_key_value_heads, head_dim or hidden_size / heads, max_position_embeddings); parameter counts
# from the model cards. Quantised variants (-AWQ, -GPTQ-Int4) share their base model's architecture.
KNOWN_MODELS = {
    "qwen2.5-7b": ModelFacts(params_b=7.62, layers=28, attention_heads=28, kv_heads=4, head_dim=128, max_context=32768),
    "qwen2.5-14b": ModelFacts(
        params_b=14.7, layers=48, attention_heads=40, kv_heads=8, head_dim=128, max_context=32768
    ),
    "qwen2.5-32b": ModelFacts(
        params_b=32.8, layers=64, attention_heads=40, kv_heads=8, head_dim=128, max_context=32768
    ),
    "llama-3.1-8b": ModelFacts(
        params_b=8.03, layers=32, attention_heads=32, kv_heads=8, head_dim=128, max_context=131072
    ),
    "llama-3.1-70b": ModelFacts(
        params_b=70.6, layers=80, attention_heads=64, kv_heads=8, head_dim=128, max_context=131072
    ),
    "mistral-7b": ModelFacts(params_b=7.25, layers=32, attention_heads=32, kv_heads=8, head_dim=128, max_context=32768),
    "llama-2-7b": ModelFacts(params_b=6.74, layers=32, attention_heads=32, kv_heads=32, head_dim=128, max_context=4096),
}


class PlanError(Exception):
    """The plan cannot be made (unknown model or GPU): say what to add to the spec."""


def model_key(model: str) -> str:
    name = model.rstrip("/").split("/")[-1].lower().removeprefix("meta-")
    return re.sub(r"-(instruct|chat|hf|awq|gptq-int4|gptq-int8|gptq|fp8|v0\.\d+)(?=-|$)", "", name)


def facts_from_config(path: Path) -> ModelFacts | None:
    """A staged model's config.json; the parameter count comes from its safetensors index if present."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    if "aiinfra_test_double" in config:
        # The hardware kit's tiny stand-in (the lab): size the model it stands in for, from the table.
        return None
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    params = None
    index = path / "model.safetensors.index.json"
    if index.is_file():  # total_size is bytes of the stored dtype: 16-bit checkpoints are 2 bytes a weight
        params = json.loads(index.read_text()).get("metadata", {}).get("total_size", 0) / 2 / 1e9
    if not params:
        return None
    return ModelFacts(
        params_b=round(params, 2),
        layers=config["num_hidden_layers"],
        attention_heads=heads,
        kv_heads=config.get("num_key_value_heads", heads),
        head_dim=head_dim,
        max_context=config.get("max_position_embeddings", 4096),
    )


def model_facts(engine: VllmEngine, mirror: str | None) -> ModelFacts:
    if engine.model_facts is not None:
        return engine.model_facts
    for base in filter(None, (mirror,)):
        staged = facts_from_config(Path(base) / engine.model)
        if staged is not None:
            return staged
    known = KNOWN_MODELS.get(model_key(engine.model))
    if known is None:
        raise PlanError(
            f"unknown model {engine.model!r}: give its parameters and architecture in the engine's "
            "model_facts (params_b, layers, attention_heads, kv_heads, head_dim, max_context)"
        )
    return known


def gpu_memory_gib(gpu_model: str | None, gpu_memory_gb: float | None) -> float:
    if gpu_memory_gb is not None:
        return gpu_memory_gb
    if gpu_model is not None:
        return GPU_MEMORY_GIB[gpu_model]
    raise PlanError("GPU memory unknown: set gpu_model (e.g. rtx3090) or gpu_memory_gb")


@dataclass(frozen=True)
class Fit:
    engine: str
    gpu: int
    tensor_parallel: int
    gpu_memory_gib: float
    utilization: float
    budget_gib: float
    weights_gib: float
    overhead_gib: float
    kv_per_token_kib: float
    context: int
    concurrency: int
    kv_configured_gib: float  # context × concurrency, the worst case the engine was configured for
    free_gib: float  # after weights, overhead and the configured KV cache (negative: over)
    kv_tokens: int  # tokens of KV cache the budget holds
    max_context: int  # largest context one sequence can have (capped at the model's)
    max_concurrency_at_context: int  # full-length sequences that fit at once
    max_context_at_concurrency: int  # context each of the configured sequences can have at once

    @property
    def starts(self) -> bool:
        return self.max_context >= self.context

    def as_dict(self) -> dict:
        rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}
        return {**rounded, "starts": self.starts}


def kv_bytes_per_token(facts: ModelFacts, tensor_parallel: int, kv_bytes: float) -> float:
    kv_heads_per_gpu = max(math.ceil(facts.kv_heads / tensor_parallel), 1)  # below 1, heads are replicated
    return 2 * facts.layers * kv_heads_per_gpu * facts.head_dim * kv_bytes


def fit(name: str, engine: VllmEngine, facts: ModelFacts, gpu_gib: float) -> list[Fit]:
    tp, stages = engine.tensor_parallel, engine.pipeline_stages
    weight_format = engine.quantization or ("awq" if "awq" in engine.model.lower() else engine.dtype)
    weights = facts.params_b * 1e9 * BYTES_PER_PARAM[weight_format] / tp / stages / GIB
    kv_bytes = 1.0 if _kv_cache_dtype(engine).startswith("fp8") else 2.0
    per_token = kv_bytes_per_token(facts, tp, kv_bytes) / stages  # each stage keeps its own layers' cache
    context = engine.max_model_len or facts.max_context
    concurrency = engine.max_num_seqs or 1
    budget = gpu_gib * engine.gpu_memory_utilization
    kv_room = budget - weights - OVERHEAD_GIB
    tokens = max(int(kv_room * GIB // per_token), 0)
    configured = per_token * context * concurrency / GIB
    return [
        Fit(
            engine=name,
            gpu=gpu,
            tensor_parallel=tp,
            gpu_memory_gib=gpu_gib,
            utilization=engine.gpu_memory_utilization,
            budget_gib=budget,
            weights_gib=weights,
            overhead_gib=OVERHEAD_GIB,
            kv_per_token_kib=per_token / 1024,
            context=context,
            concurrency=concurrency,
            kv_configured_gib=configured,
            free_gib=kv_room - configured,
            kv_tokens=tokens,
            max_context=min(tokens, facts.max_context),
            max_concurrency_at_context=tokens // context,
            max_context_at_concurrency=min(tokens // concurrency, facts.max_context),
        )
        for gpu in engine.gpus
    ]


def _kv_cache_dtype(engine: VllmEngine) -> str:
    args = engine.extra_args
    for i, arg in enumerate(args):
        if arg.startswith("--kv-cache-dtype="):
            return arg.split("=", 1)[1]
        if arg == "--kv-cache-dtype" and i + 1 < len(args):
            return args[i + 1]
    return "auto"


def problems(name: str, engine: VllmEngine, facts: ModelFacts, gpu_gib: float | None) -> list[str]:
    """Spec errors ('field: message') for one engine: tensor parallelism, and fit when memory is known."""
    tp = engine.tensor_parallel
    if facts.attention_heads % tp:
        across = f" ({len(engine.gpus)} GPUs × {tp // len(engine.gpus)} nodes)" if tp != len(engine.gpus) else ""
        return [
            f"engines.{name}.gpus: tensor parallel size {tp}{across} does not divide the model's "
            f"{facts.attention_heads} attention heads; use a divisor of it"
        ]
    if engine.pipeline_stages > facts.layers:
        return [f"engines.{name}.span.nodes: {engine.pipeline_stages} pipeline stages for the model's {facts.layers} "
                "layers; a stage needs a layer at least"]  # fmt: skip
    if gpu_gib is None or engine.skip_fit_check:
        return []
    first = fit(name, engine, facts, gpu_gib)[0]
    if first.starts:
        return []
    need = first.weights_gib + first.overhead_gib + first.kv_per_token_kib * 1024 * first.context / GIB
    return [
        f"engines.{name}: does not fit on GPU {first.gpu}: needs {need:.1f} GiB (weights {first.weights_gib:.1f}, "
        f"overhead {first.overhead_gib:.1f}, KV cache for one {first.context}-token sequence "
        f"{need - first.weights_gib - first.overhead_gib:.1f}) of {first.budget_gib:.1f} GiB "
        f"({first.gpu_memory_gib:g} GiB × {first.utilization}), short by {need - first.budget_gib:.1f} GiB; "
        "use a quantised model, more GPUs, a shorter max_model_len, or skip_fit_check: true"
    ]
