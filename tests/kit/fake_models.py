#!/usr/bin/env python3
"""TEST DOUBLE for a model mirror (hardware kit): the layout of a NAS copy of the models, with tiny
files in place of tens of gigabytes of weights. Real weights cannot be fetched here.

    fake_models.py MIRROR --vllm Qwen/Qwen2.5-7B-Instruct ... --ollama llama3.2:3b ...

writes MIRROR/<model id>/ (config.json, tokenizer.json, model.safetensors, SHA256SUMS) for each vLLM
model and Ollama's store layout (MIRROR/ollama/manifests, blobs/sha256-<hex>) for each Ollama model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

OLLAMA_REGISTRY = "registry.ollama.ai"


def vllm_model(mirror: Path, model: str) -> Path:
    folder = mirror / model
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "config.json": json.dumps({"_name_or_path": model, "test_double": True}).encode(),
        "tokenizer.json": b"{}",
        "model.safetensors": hashlib.sha256(model.encode()).digest() * 64,  # 2 KiB standing in for the weights
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
