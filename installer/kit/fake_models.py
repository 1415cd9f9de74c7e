#!/usr/bin/env python3
"""TEST DOUBLE for a model mirror (hardware kit): the layout of a NAS copy of the models, with tiny
real models in place of tens of gigabytes of weights. Real weights cannot be fetched here.

    fake_models.py MIRROR --vllm Qwen/Qwen2.5-7B-Instruct ... --ollama llama3.2:3b ...

writes MIRROR/<model id>/ for each vLLM model: a tiny Qwen2-shaped model with random weights, made
deterministically from the model id (config.json, model.safetensors, a byte-level BPE tokenizer with
a ChatML chat template, SHA256SUMS), which a real vLLM loads and serves; its config.json says which
model it stands in for (`aiinfra_test_double`), so capacity planning sizes the real one. For each
Ollama model it writes Ollama's store layout (MIRROR/ollama/manifests, blobs/sha256-<hex>) with
placeholder blobs: no Ollama binary can be had here to load real ones.

Pure Python (no torch or numpy): the lab runs it with the installer's own interpreter.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import struct
from pathlib import Path

OLLAMA_REGISTRY = "registry.ollama.ai"

# Qwen2 in miniature. CPU attention needs head_dim >= 32 (16 passes /health, then kills the server
# on the first request), hence 128 hidden over 4 heads.
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 128, 256, 2, 4, 2
HEAD_DIM = HIDDEN // HEADS
MAX_POSITIONS = 32768  # the lab spec asks for 32k contexts; the KV cache of this model is tiny
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, as byte-level BPE uses them."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tokenizer_json() -> dict:
    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    added = [
        {"id": 256 + i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, tok in enumerate(SPECIAL)
    ]  # fmt: skip
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }  # fmt: skip


VOCAB = 256 + len(SPECIAL) + 29  # padded to a multiple of 32, as real checkpoints are


def _tensors() -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {"model.embed_tokens.weight": [VOCAB, HIDDEN], "model.norm.weight": [HIDDEN]}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": [HIDDEN],
            p + "post_attention_layernorm.weight": [HIDDEN],
            p + "self_attn.q_proj.weight": [HIDDEN, HIDDEN],
            p + "self_attn.q_proj.bias": [HIDDEN],
            p + "self_attn.k_proj.weight": [KV_HEADS * HEAD_DIM, HIDDEN],
            p + "self_attn.k_proj.bias": [KV_HEADS * HEAD_DIM],
            p + "self_attn.v_proj.weight": [KV_HEADS * HEAD_DIM, HIDDEN],
            p + "self_attn.v_proj.bias": [KV_HEADS * HEAD_DIM],
            p + "self_attn.o_proj.weight": [HIDDEN, HIDDEN],
            p + "mlp.gate_proj.weight": [INTERMEDIATE, HIDDEN],
            p + "mlp.up_proj.weight": [INTERMEDIATE, HIDDEN],
            p + "mlp.down_proj.weight": [HIDDEN, INTERMEDIATE],
        }
    return shapes


def safetensors(seed: str) -> bytes:
    """Random float32 weights (norms at 1), in the safetensors format: a JSON header, then the data."""
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    header: dict[str, object] = {"__metadata__": {"format": "pt", "aiinfra_test_double": "random weights"}}
    blobs, offset = [], 0
    for name, shape in sorted(_tensors().items()):
        count = 1
        for dim in shape:
            count *= dim
        norm = name.endswith("norm.weight")
        values = [1.0] * count if norm else [rng.gauss(0.0, 0.02) for _ in range(count)]
        data = struct.pack(f"<{count}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def vllm_model(mirror: Path, model: str) -> Path:
    folder = mirror / model
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "vocab_size": VOCAB,
        "bos_token_id": 256,
        "eos_token_id": 258,
        # Capacity planning reads a staged config.json: this says it is not the model it stands for.
        "aiinfra_test_double": {"stands_in_for": model},
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": MAX_POSITIONS,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
    }
    files = {
        "config.json": json.dumps(config, indent=1).encode(),
        "generation_config.json": json.dumps({"eos_token_id": [258, 256], "do_sample": False}).encode(),
        "tokenizer.json": json.dumps(tokenizer_json(), ensure_ascii=False).encode(),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=1).encode(),
        "model.safetensors": safetensors(model),
        "README.md": f"TEST DOUBLE (aiinfra hardware kit): a tiny random model standing in for {model}.\n".encode(),
    }
    lines = []
    for name, data in sorted(files.items()):
        (folder / name).write_bytes(data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    (folder / "SHA256SUMS").write_text("".join(lines))
    return folder


def ollama_model(mirror: Path, name: str, store: Path | None = None) -> Path:
    store = store or mirror / "ollama"
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    layers = []
    for kind, data in (("model", name.encode() * 100), ("params", b'{"temperature": 0.7}')):
        digest = hashlib.sha256(data).hexdigest()
        (store / "blobs" / f"sha256-{digest}").write_bytes(data)
        layers.append(
            {"mediaType": f"application/vnd.ollama.image.{kind}", "digest": f"sha256:{digest}", "size": len(data)}
        )
    config = json.dumps({"model_format": "gguf", "test_double": True}).encode()
    config_digest = hashlib.sha256(config).hexdigest()
    (store / "blobs" / f"sha256-{config_digest}").write_bytes(config)
    base, _, tag = name.partition(":")
    parts = base.split("/")
    manifest = store / "manifests" / OLLAMA_REGISTRY / ("library" if len(parts) == 1 else "") / base / (tag or "latest")
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"digest": f"sha256:{config_digest}", "size": len(config)},
                "layers": layers,
            }
        )
    )
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("mirror", type=Path)
    parser.add_argument("--vllm", nargs="*", default=[])
    parser.add_argument("--ollama", nargs="*", default=[])
    args = parser.parse_args()
    for model in args.vllm:
        vllm_model(args.mirror, model)
    for name in args.ollama:
        ollama_model(args.mirror, name)


if __name__ == "__main__":
    main()
