"""What an engine serves, as one identity: its model's manifest (weights, tokenizer and chat template,
each file by its checksum), its program and version, and its launch (argv and environment, secrets
left out). Read from the box when the engine starts; kept, with its times, in the agent's records so
that what answered at any moment can be told afterwards."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiinfra.agent.engines import SERVE_HELP, Launch, help_version, venv_of
from aiinfra.agent.files import write_private
from aiinfra.agent.staging import MANIFEST, ollama_manifest

SECRETS = frozenset({"VLLM_API_KEY"})  # in an engine's environment, never in its identity
KEEP = 1000  # identities kept in the history: one per change of what an engine serves


@dataclass(frozen=True)
class Identity:
    model: str  # sha256 of the model's manifest ("" where none was found)
    program: str  # e.g. "vllm 0.32.0", "ollama 0.30.0"
    args: str  # sha256 of the launch's argv and environment, secrets left out

    def headers(self, engine: str) -> dict[str, str]:
        """What each answer carries, so that it can be traced to exactly what made it."""
        return {"X-Aiinfra-Engine": engine, "X-Aiinfra-Model-Digest": self.model or "unknown",
                "X-Aiinfra-Program": self.program, "X-Aiinfra-Args-Digest": self.args}  # fmt: skip


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_digest(launch: Launch) -> str:
    """vLLM: the SHA256SUMS of the model folder its launch names. Ollama: its models' manifests (each
    names its blobs by digest) in the store its launch names."""
    with contextlib.suppress(OSError, KeyError):
        if launch.runtime == "vllm":
            return _sha256((Path(launch.model_dir) / MANIFEST).read_bytes())
        store = Path(launch.env["OLLAMA_MODELS"])
        manifests = [f"{model}\0{_sha256((store / ollama_manifest(model)).read_bytes())}" for model in launch.served]
        return _sha256("\n".join(manifests).encode())
    return ""


def program(launch: Launch) -> str:
    """The engine's program and version, as the roles installed it: vLLM's version is the first line of
    the `serve --help` its role recorded; Ollama's is the folder its release was unpacked into."""
    if launch.runtime == "vllm":  # the environment its launch names (a rollback's may be the one before)
        with contextlib.suppress(OSError):
            return f"vllm {help_version((venv_of(launch.argv[0]) / SERVE_HELP).read_text()) or 'unknown'}"
        return "vllm unknown"
    binary = Path(launch.argv[0]).resolve()
    return f"ollama {binary.parent.parent.name}" if binary.name == "ollama" else "ollama unknown"


def of(launch: Launch) -> Identity:
    """What LAUNCH serves, read from the box now: a launch names its model folder, program and arguments."""
    env = {k: v for k, v in launch.env.items() if k not in SECRETS}
    args = _sha256(json.dumps({"argv": launch.argv, "env": env}, sort_keys=True).encode())
    return Identity(model_digest(launch), program(launch), args)


class History:
    """Each engine's identities with the time each began to serve, in the agent's records (on the model
    disk, as the ledger): written when an engine starts with an identity other than its last."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []
        with contextlib.suppress(OSError, ValueError):
            entries = json.loads(path.read_text())
            if isinstance(entries, list):
                self.entries = [e for e in entries if isinstance(e, dict) and {"engine", "since"} <= e.keys()]

    def last(self, engine: str) -> Identity | None:
        for entry in reversed(self.entries):
            if entry["engine"] == engine:
                with contextlib.suppress(TypeError):
                    return Identity(entry["model"], entry["program"], entry["args"])
        return None

    def started(self, engine: str, identity: Identity) -> None:
        if self.last(engine) == identity:
            return
        self.entries = [*self.entries, {"engine": engine, "since": round(time.time(), 3), **asdict(identity)}][-KEEP:]
        with contextlib.suppress(OSError):  # an entry is worth less than a running agent
            write_private(self.path, json.dumps(self.entries).encode())

    def at(self, when: float) -> dict[str, dict[str, Any]]:
        """Engine → the identity that was its latest at wall time WHEN (and since when)."""
        found: dict[str, dict[str, Any]] = {}
        for entry in self.entries:
            if entry["since"] <= when:
                found[entry["engine"]] = entry
        return found
