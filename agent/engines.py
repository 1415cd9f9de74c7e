"""Engine specs → what to run: argv, environment, and the HTTP surfaces the probes use."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiinfra.agent.config import AgentConfig
from aiinfra.agent.schema import OllamaEngine, VllmEngine

LOOPBACK = "127.0.0.1"  # engines listen on loopback only; the router is the way in


@dataclass(frozen=True)
class Launch:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    runtime: str
    served: list[str] = field(default_factory=list)  # model names this engine answers to

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def launch(name: str, config: AgentConfig) -> Launch:
    engine = config.engines[name]
    gpus = ",".join(str(g) for g in engine.gpus)
    storage = config.model_storage_mount.rstrip("/")
    if isinstance(engine, VllmEngine):
        return Launch(
            name,
            vllm_argv(engine, config.vllm_command, f"{storage}/models/{engine.model}"),
            {
                "CUDA_VISIBLE_DEVICES": gpus,
                "HF_HOME": f"{storage}/hf-cache",
                "VLLM_NO_USAGE_STATS": "1",
                "HF_HUB_OFFLINE": "1",
            },
            engine.port,
            "vllm",
            [engine.served],
        )
    assert isinstance(engine, OllamaEngine)
    return Launch(
        name,
        [*config.ollama_command, "serve"],
        {
            "CUDA_VISIBLE_DEVICES": gpus,
            "OLLAMA_HOST": f"{LOOPBACK}:{engine.port}",
            "OLLAMA_MODELS": f"{storage}/ollama",
            "OLLAMA_KEEP_ALIVE": engine.keep_alive,
        },
        engine.port,
        "ollama",
        list(engine.models),
    )


def vllm_argv(engine: VllmEngine, command: list[str], model_dir: str) -> list[str]:
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
        str(len(engine.gpus)),
        "--dtype",
        engine.dtype,
    ]
    if engine.max_model_len is not None:
        argv += ["--max-model-len", str(engine.max_model_len)]
    if engine.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(engine.max_num_seqs)]
    if engine.quantization is not None:
        argv += ["--quantization", engine.quantization]
    argv.append("--enable-prefix-caching" if engine.enable_prefix_caching else "--no-enable-prefix-caching")
    argv.append("--enable-chunked-prefill" if engine.enable_chunked_prefill else "--no-enable-chunked-prefill")
    # Custom all-reduce misbehaves on consumer cards over PCIe/NVLink bridges; NCCL is the safe path.
    argv.append("--disable-custom-all-reduce")
    return argv + list(engine.extra_args)
