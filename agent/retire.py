"""What the box keeps on disk for its engines, and what of it no engine needs any more.

Staged vLLM models (each version in MODELS/.versions/<id>/<digest>, MODELS/<id> linking the current
one; a folder staged before versions at MODELS/<id> itself) and vLLM environments (one per version
beside `current`, as the vllm role lays them out). An item is kept while an engine of the
configuration uses it, or while the gate's records keep it for an engine (the launch that passed, and
the one before it: the way back); the vLLM environment before `current` is kept too. The rest may be
removed (`aiinfra-agent models prune`). Ollama's own store is Ollama's to prune (`ollama rm`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from aiinfra.agent.config import AgentConfig
from aiinfra.agent.engines import vllm_venv
from aiinfra.agent.gate import Records
from aiinfra.agent.identity import History
from aiinfra.agent.schema import VllmEngine
from aiinfra.agent.staging import MANIFEST, VERSIONS


@dataclass(frozen=True)
class Stored:
    kind: str  # "model" or "vllm"
    name: str  # the model id, or the vLLM version
    path: str
    bytes: int
    kept_for: str  # why it stays ("": nothing needs it)
    last_used: float | None  # when an engine last began to serve it (the identities' history)


def _size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def _last_used(history: History, **match: str) -> float | None:
    return max((e["since"] for e in history.entries if all(e.get(k) == v for k, v in match.items())), default=None)


def inventory(config: AgentConfig) -> list[Stored]:
    history = History(Path(config.data_dir) / "identities.json")
    gates = Records(Path(config.data_dir) / "gates.json").kept()
    vllm_engines = {n: e for n, e in config.engines.items() if isinstance(e, VllmEngine)}
    found: list[Stored] = []
    root = Path(str(config.models_dir))
    # os.walk follows no link (MODELS/<id> links its current version), whatever the Python's rglob does
    folders = sorted(Path(d) for d, _, files in os.walk(root) if MANIFEST in files)
    for folder in folders:
        manifest = folder / MANIFEST
        parts = folder.relative_to(root).parts
        if parts[0] == ".staging":
            continue
        model = "/".join(parts[1:-1] if parts[0] == VERSIONS else parts)
        real = os.path.realpath(folder)
        is_current = os.path.realpath(root / model) == real
        users = sorted(n for n, e in vllm_engines.items() if e.model == model) if is_current else []
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        kept = f"engine {', '.join(users)}" if users else gates.get(real, "")
        name = model if parts[0] != VERSIONS else f"{model}@{parts[-1]}"
        found.append(Stored("model", name, str(folder), _size(folder), kept, _last_used(history, model=digest)))
    prefix = vllm_venv(config).parent
    current = prefix / "current"
    if current.is_symlink():
        serving = current.resolve().name
        envs = sorted(p for p in prefix.iterdir() if not p.is_symlink() and (p / "bin" / "vllm").exists())
        others = sorted((p for p in envs if p.name != serving), key=lambda p: p.stat().st_mtime)
        previous = others[-1].name if others else None
        for env in envs:
            kept = "current" if env.name == serving else "the way back" if env.name == previous else ""
            kept = kept or gates.get(str(env.resolve()), "")
            found.append(Stored("vllm", env.name, str(env), _size(env), kept,
                                _last_used(history, program=f"vllm {env.name}")))  # fmt: skip
    return found


def prune(stored: list[Stored]) -> list[Stored]:
    """Remove what nothing keeps; return what was removed."""
    removed = []
    for item in stored:
        if not item.kept_for:
            shutil.rmtree(item.path)
            removed.append(item)
    return removed
