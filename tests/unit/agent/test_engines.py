"""Exact command lines and environments for vLLM and Ollama."""

from __future__ import annotations

import pytest

from aiinfra.agent.config import ConfigError, parse
from aiinfra.agent.engines import SERVE_HELP, launch, unknown_vllm_flags

CONFIG = {
    "model_storage_mount": "/mnt/nvme",
    "engines": {
        "qwen7b": {
            "runtime": "vllm",
            "model": "Qwen/Qwen2.5-7B-Instruct",
            "gpus": [0],
            "port": 8001,
            "max_model_len": 32768,
            "gpu_memory_utilization": 0.88,
            "max_num_seqs": 32,
        },
        "qwen32b": {
            "runtime": "vllm",
            "model": "Qwen/Qwen2.5-32B-Instruct-AWQ",
            "quantization": "awq",
            "gpus": [0, 1],
            "port": 8003,
            "served_name": "qwen32b",
            "enable_prefix_caching": False,
            "extra_args": ["--kv-cache-dtype", "fp8"],
        },
        "ollama": {"runtime": "ollama", "gpus": [1], "port": 11434, "keep_alive": "30m", "models": ["llama3.1:8b"]},
    },
    "profiles": {"fast": ["qwen7b", "ollama"], "deep": ["qwen32b"]},
    "default_profile": "fast",
}


def test_vllm_single_gpu():
    run = launch("qwen7b", parse(CONFIG))
    assert run.argv == [
        "/opt/vllm/current/bin/vllm",
        "serve",
        "/mnt/nvme/models/Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name",
        "Qwen/Qwen2.5-7B-Instruct",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--gpu-memory-utilization",
        "0.88",
        "--tensor-parallel-size",
        "1",
        "--dtype",
        "auto",
        "--max-model-len",
        "32768",
        "--max-num-seqs",
        "32",
        "--disable-custom-all-reduce",
    ]
    assert run.env == {
        "CUDA_VISIBLE_DEVICES": "0",
        "HF_HOME": "/mnt/nvme/hf-cache",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }
    assert run.served == ["Qwen/Qwen2.5-7B-Instruct"]


def test_vllm_tensor_parallel_awq_with_extra_args():
    run = launch("qwen32b", parse(CONFIG))
    assert run.argv == [
        "/opt/vllm/current/bin/vllm",
        "serve",
        "/mnt/nvme/models/Qwen/Qwen2.5-32B-Instruct-AWQ",
        "--served-model-name",
        "qwen32b",
        "--host",
        "127.0.0.1",
        "--port",
        "8003",
        "--gpu-memory-utilization",
        "0.9",
        "--tensor-parallel-size",
        "2",
        "--dtype",
        "auto",
        "--quantization",
        "awq",
        "--no-enable-prefix-caching",
        "--disable-custom-all-reduce",
        "--kv-cache-dtype",
        "fp8",
    ]
    assert run.env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_ollama():
    run = launch("ollama", parse(CONFIG))
    assert run.argv == ["/usr/local/bin/ollama", "serve"]
    assert run.env == {
        "CUDA_VISIBLE_DEVICES": "1",
        "OLLAMA_HOST": "127.0.0.1:11434",
        "OLLAMA_MODELS": "/mnt/nvme/ollama",
        "OLLAMA_KEEP_ALIVE": "30m",
        "OLLAMA_NO_CLOUD": "1",  # prompts stay on the box unless the engine says cloud: true
    }
    assert run.served == ["llama3.1:8b"]


@pytest.mark.parametrize(
    ("change", "line"),
    [
        ({"backend": "docker"}, "backend: input should be 'auto', 'systemd' or 'process' (got 'docker')"),
        ({"policy": {"tick_s": 0}}, "policy.tick_s: input should be greater than 0 (got 0)"),
        ({"policy": {"backof_max_s": 5}}, "policy.backof_max_s: unknown key; did you mean 'backoff_max_s'?"),
        ({"default_profile": "turbo"}, "default_profile: 'turbo' is not one of the profiles (fast, deep)"),
    ],
)
def test_config_errors_are_one_line_each(change, line):
    with pytest.raises(ConfigError) as caught:
        parse({**CONFIG, **change})
    assert caught.value.lines == [line]


def test_box_wide_vllm_environment_and_arguments_come_before_the_engines_own():
    config = parse({**CONFIG, "vllm_env": {"VLLM_CPU_KVCACHE_SPACE": "1"}, "vllm_extra_args": ["--enforce-eager"]})
    run = launch("qwen32b", config)
    assert run.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert run.argv[-3:] == ["--enforce-eager", "--kv-cache-dtype", "fp8"]
    assert "VLLM_CPU_KVCACHE_SPACE" not in launch("ollama", config).env


def test_flags_the_installed_vllm_does_not_know_are_named_with_its_version(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "vllm").touch()
    config = parse({**CONFIG, "vllm_command": [str(tmp_path / "bin" / "vllm")]})
    assert unknown_vllm_flags(config) == []  # no help recorded (nothing installed yet): nothing to say
    known = ["--served-model-name", "--host", "--port", "--gpu-memory-utilization", "--tensor-parallel-size",
             "--dtype", "--max-model-len", "--max-num-seqs", "--quantization", "--no-enable-prefix-caching",
             "--disable-custom-all-reduce"]  # fmt: skip
    (tmp_path / SERVE_HELP).write_text("# vllm 0.32.0\nusage: vllm serve\n" + "\n".join(f"  {f} X" for f in known))
    assert unknown_vllm_flags(config) == [
        "engines.qwen32b: vLLM 0.32.0 has no flag --kv-cache-dtype; remove it or pin a vLLM that has it"
    ]


def test_both_backends_give_an_engine_the_same_environment():
    """The process backend (the agent's environment) and an engine unit (systemd's, HOME from User=)."""
    from aiinfra.agent.engines import environment

    own = {"CUDA_VISIBLE_DEVICES": "0", "HF_HOME": "/mnt/nvme/hf-cache"}
    agent = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "HOME": "/root", "SECRET_TOKEN": "x", "INVOCATION_ID": "1"}
    unit = {"PATH": "/usr/bin", "LANG": "C.UTF-8", "HOME": "/var/lib/aiinfra", "INVOCATION_ID": "2"}
    as_process = environment(own, agent, home="/var/lib/aiinfra")
    assert as_process == environment(own, unit)
    assert as_process == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "HOME": "/var/lib/aiinfra", **own}
