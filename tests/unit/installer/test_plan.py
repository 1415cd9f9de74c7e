"""Capacity planning: hand-computed sizes, the thor profiles, and the errors."""

from __future__ import annotations

import json

import pytest

from aiinfra.agent.schema import VllmEngine
from aiinfra.installer import plan
from aiinfra.installer.lab import kit_files as hardware_kit
from tests.conftest import thor_spec, write_inventory


def engine(**fields) -> VllmEngine:
    return VllmEngine.model_validate({"runtime": "vllm", "gpus": [0], "port": 8001, **fields})


def test_llama2_7b_kv_cache_at_4k_context_fp16_is_about_2_1_gb():
    facts = plan.KNOWN_MODELS["llama-2-7b"]
    # 2 (K, V) × 32 layers × 32 KV heads × 128 head dim × 2 bytes × 4096 tokens
    assert plan.kv_bytes_per_token(facts, 1, 2) * 4096 == 2 * 32 * 32 * 128 * 2 * 4096 == 2_147_483_648


def test_gqa_makes_qwen_7b_kv_cache_eight_times_smaller():
    qwen = plan.kv_bytes_per_token(plan.KNOWN_MODELS["qwen2.5-7b"], 1, 2) * 4096
    assert qwen == 2 * 28 * 4 * 128 * 2 * 4096 == 234_881_024  # 4 KV heads, 28 layers: ~0.23 GB


def test_tensor_parallelism_splits_the_kv_heads_and_the_weights():
    one = plan.fit(
        "a", engine(model="Qwen/Qwen2.5-32B-Instruct-AWQ", quantization="awq"), plan.KNOWN_MODELS["qwen2.5-32b"], 24
    )[0]
    two = plan.fit(
        "a",
        engine(model="Qwen/Qwen2.5-32B-Instruct-AWQ", quantization="awq", gpus=[0, 1]),
        plan.KNOWN_MODELS["qwen2.5-32b"],
        24,
    )[0]
    assert two.weights_gib == pytest.approx(one.weights_gib / 2, abs=0.01)
    assert two.kv_per_token_kib == one.kv_per_token_kib / 2 == 128


def test_an_fp8_kv_cache_halves_it():
    facts = plan.KNOWN_MODELS["llama-3.1-8b"]
    fp16 = plan.fit("a", engine(model="meta-llama/Llama-3.1-8B-Instruct"), facts, 24)[0]
    fp8 = plan.fit(
        "a", engine(model="meta-llama/Llama-3.1-8B-Instruct", extra_args=["--kv-cache-dtype", "fp8"]), facts, 24
    )[0]
    assert fp8.kv_per_token_kib == fp16.kv_per_token_kib / 2


@pytest.mark.parametrize(
    ("model", "key"),
    [
        ("Qwen/Qwen2.5-14B-Instruct-AWQ", "qwen2.5-14b"),
        ("meta-llama/Meta-Llama-3.1-70B-Instruct", "llama-3.1-70b"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b"),
        ("meta-llama/Llama-2-7b-hf", "llama-2-7b"),
        ("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "qwen2.5-7b"),
    ],
)
def test_model_names_find_their_architecture(model, key):
    assert plan.model_key(model) == key


def test_the_thor_profiles_plan(tmp_path, cli):
    inventory = write_inventory(tmp_path / "inv", thor_spec())
    result = cli("plan", "--host", "thor", "-i", str(inventory), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["thor"]
    fast = {row["engine"]: row for row in report["fast"]}
    assert fast["qwen7b"]["weights_gib"] == pytest.approx(14.19, abs=0.01)  # 7.62 B × 2 bytes
    assert fast["qwen7b"]["starts"] and fast["qwen14b"]["starts"]
    assert fast["qwen7b"]["max_concurrency_at_context"] == 3  # 32k-token sequences at once, not 32
    deep = report["deep"]
    assert [row["gpu"] for row in deep] == [0, 1] and all(row["starts"] for row in deep)
    assert report["household"] == [{"engine": "ollama", "gpu": 0, "sized": False}]
    table = cli("plan", "--host", "thor", "-i", str(inventory), "--profile", "fast").stdout
    assert table.splitlines()[0] == "thor profile fast"
    assert table.splitlines()[2].split()[:3] == ["0", "qwen7b", "21.1"]


def test_an_fp16_32b_does_not_fit_two_3090s(tmp_path, cli):
    spec = thor_spec()
    spec["engines"]["qwen32b"] = {"runtime": "vllm", "model": "Qwen/Qwen2.5-32B-Instruct", "gpus": [0, 1], "port": 8003}
    result = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "inv", spec)))
    assert result.exit_code == 2
    assert (
        "thor: engines.qwen32b: does not fit on GPU 0: needs 36.0 GiB (weights 30.5, overhead 1.5, KV cache "
        "for one 32768-token sequence 4.0) of 21.6 GiB (24 GiB × 0.9), short by 14.4 GiB"
    ) in result.stderr

    spec["engines"]["qwen32b"]["skip_fit_check"] = True
    assert cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "skip", spec))).exit_code == 0


def test_a_tensor_parallel_size_must_divide_the_heads(tmp_path, cli):
    spec = thor_spec() | {"gpu_expected_count": 4}
    spec["engines"]["qwen32b"]["gpus"] = [0, 1, 2]
    result = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "inv", spec)))
    assert result.exit_code == 2
    assert "thor: engines.qwen32b.gpus: tensor parallel size 3 does not divide the model's 40 attention heads" in (
        result.stderr
    )


def test_an_unknown_model_needs_its_facts(tmp_path, cli):
    spec = thor_spec()
    spec["engines"]["qwen7b"]["model"] = "acme/Secret-9B"
    result = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "a", spec)))
    assert result.exit_code == 2
    assert "thor: engines.qwen7b.model: unknown model 'acme/Secret-9B': give its parameters and architecture" in (
        result.stderr
    )
    spec["engines"]["qwen7b"]["model_facts"] = {
        "params_b": 9,
        "layers": 40,
        "attention_heads": 32,
        "kv_heads": 8,
        "head_dim": 128,
        "max_context": 8192,
    }
    spec["engines"]["qwen7b"]["max_model_len"] = 8192
    assert cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "b", spec))).exit_code == 0


def test_a_staged_models_config_json_is_read(tmp_path):
    staged = tmp_path / "mirror" / "acme" / "Secret-9B"
    staged.mkdir(parents=True)
    (staged / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 40,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
                "hidden_size": 4096,
                "max_position_embeddings": 16384,
            }
        )
    )
    (staged / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 18_000_000_000}}))
    facts = plan.model_facts(engine(model="acme/Secret-9B"), str(tmp_path / "mirror"))
    assert facts == plan.ModelFacts(
        params_b=9.0, layers=40, attention_heads=32, kv_heads=8, head_dim=128, max_context=16384
    )


def test_a_misspelt_card_and_a_missing_memory_size(tmp_path, cli):
    spec = thor_spec() | {"gpu_model": "rtx3900"}
    result = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "a", spec)))
    assert result.exit_code == 2 and "thor: gpu_model: unknown card 'rtx3900'; did you mean 'rtx3090'?" in result.stderr
    spec.pop("gpu_model")
    inventory = str(write_inventory(tmp_path / "b", spec))
    assert cli("validate", "--host", "thor", "-i", inventory).exit_code == 0  # nothing to size against
    result = cli("plan", "--host", "thor", "-i", inventory)
    assert (
        result.exit_code == 2 and "GPU memory unknown: set gpu_model (e.g. rtx3090) or gpu_memory_gb" in result.stderr
    )
    spec["gpu_memory_gb"] = 48
    assert cli("plan", "--host", "thor", "-i", str(write_inventory(tmp_path / "c", spec))).exit_code == 0


def test_the_kits_tiny_stand_in_is_sized_as_the_model_it_stands_in_for(tmp_path):
    """The lab's mirror holds a real but tiny model under the real id: planning must not believe it."""
    import subprocess
    import sys

    kit = hardware_kit.FAKE_MODELS
    subprocess.run([sys.executable, str(kit), str(tmp_path), "--vllm", "Qwen/Qwen2.5-7B-Instruct"], check=True)
    facts = plan.model_facts(engine(model="Qwen/Qwen2.5-7B-Instruct"), str(tmp_path))
    assert facts == plan.KNOWN_MODELS[plan.model_key("Qwen/Qwen2.5-7B-Instruct")]
    assert facts.layers == 28  # the real 7B's, not the stand-in's 2


def test_run_on_the_box_the_plan_says_how_each_tensor_parallel_engines_gpus_are_linked(tmp_path):
    """With NVML answering (the kit's fake, two 3090s on a chipset without P2P), before deep first starts."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    state = tmp_path / "nvml.json"
    gpu = {
        "name": "NVIDIA GeForce RTX 3090",
        "memory_total": 25769803776,
        "memory_used": 0,
        "utilization": 0,
        "temperature": 35,
        "power_usage_mw": 30000,
        "power_limit_mw": 350000,
        "power_min_mw": 100000,
        "power_max_mw": 390000,
        "power_default_mw": 350000,
        "persistence": 1,
        "sm_clock": 210,
        "throttle": 0,
    }
    state.write_text(json.dumps({"driver": "580.105.08", "library": "580.105.08", "gpus": [gpu, dict(gpu)],
                                 "p2p": {"0-1": {"read": 1}}}))  # fmt: skip
    inventory = write_inventory(tmp_path / "inv", thor_spec())
    env = {**os.environ, "PYTHONPATH": str(hardware_kit.FAKE_NVML), "AIINFRA_FAKE_NVML": str(state)}
    aiinfra = str(Path(sys.executable).with_name("aiinfra"))
    done = subprocess.run([aiinfra, "plan", "--host", "thor", "-i", str(inventory)], capture_output=True, text=True,
                          env=env, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert ("GPU links here (NVML): engine qwen32b on GPUs 0, 1: no P2P between GPU 0 and GPU 1 (chipset not "
            "supported): NCCL goes through host memory") in done.stdout  # fmt: skip
