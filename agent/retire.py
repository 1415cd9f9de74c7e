"""What the box keeps on disk for its engines, and what of it no engine needs any more.

Staged vLLM models (MODELS/<id>, each with its manifest) and vLLM environments (one per version
beside `current`, as the vllm role lays them out). An item is kept while an engine of the
configuration uses it; the vLLM environment before `current` is kept too, as the way back. The rest
may be removed (`aiinfra-agent models prune`). Ollama's own store is Ollama's to prune (`ollama rm`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from aiinfra.agent.config import AgentConfig
from aiinfra.agent.engines import vllm_venv
from aiinfra.agent.identity import History
from aiinfra.agent.schema import VllmEngine
from aiinfra.agent.staging import MANIFEST


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
    vllm_engines = {n: e for n, e in config.engines.items() if isinstance(e, VllmEngine)}
    found: list[Stored] = []
    root = Path(str(config.models_dir))
    for manifest in sorted(root.rglob(MANIFEST)) if root.is_dir() else []:
        folder = manifest.parent
        model = folder.relative_to(root).as_posix()
        if model.startswith(".staging/"):
            continue
        users = sorted(n for n, e in vllm_engines.items() if e.model == model)
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        found.append(Stored("model", model, str(folder), _size(folder), f"engine {', '.join(users)}" if users else "",
                            _last_used(history, model=digest)))  # fmt: skip
    prefix = vllm_venv(config).parent
    current = prefix / "current"
    if current.is_symlink():
        serving = current.resolve().name
        envs = sorted(p for p in prefix.iterdir() if not p.is_symlink() and (p / "bin" / "vllm").exists())
        others = sorted((p for p in envs if p.name != serving), key=lambda p: p.stat().st_mtime)
        previous = others[-1].name if others else None
        for env in envs:
            kept = "current" if env.name == serving else "the way back" if env.name == previous else ""
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
