"""What the agent keeps for itself across its restarts: the engines' key secret (in its state folder)
and the engines' restart counts (with the records on the model disk, so a rebuild keeps them)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from aiinfra.agent.files import write_private


def engine_secret(state_dir: Path) -> bytes:
    """The agent's secret for the engines' keys (engines.engine_key), kept so that engines it adopts
    after a restart keep theirs; readable by root alone."""
    path = state_dir / "engine-keys.secret"
    try:
        secret = path.read_bytes()
        if len(secret) == 32:
            return secret
    except OSError:
        pass
    secret = os.urandom(32)
    write_private(path, secret)
    return secret


class RestartCounts:
    """Engine → restarts, in a file written when the counts change; a damaged file counts from zero."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.counts = self._read()

    def _read(self) -> dict[str, int]:
        try:
            counts = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(counts, dict):
            return {}
        return {k: v for k, v in counts.items() if isinstance(k, str) and isinstance(v, int) and v >= 0}

    def save(self, counts: dict[str, int]) -> None:
        counts = {name: n for name, n in counts.items() if n}
        if counts != self.counts:
            self.counts = counts
            with contextlib.suppress(OSError):  # a count is worth less than a running agent
                write_private(self.path, json.dumps(counts).encode())
