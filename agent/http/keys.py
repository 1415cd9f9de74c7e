"""API keys for the router: a file of hashes (never the keys), per-key model allowlists and limits.

Keys are 256-bit random tokens, so a SHA-256 of the key is enough to store: nothing can be guessed
from it. The file is written atomically with mode 0600; the router reloads it when it changes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PREFIX = "aiinfra-"


@dataclass(frozen=True)
class Key:
    name: str
    sha256: str
    hint: str  # the first characters, to tell keys apart in listings
    models: list[str] = field(default_factory=list)  # empty: every model
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens (prompt + completion) per minute
    created: float = 0.0

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models


class KeysFileError(Exception):
    """A keys-file operation the operator asked for cannot be done (duplicate name, unknown key)."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load(path: Path) -> dict[str, Key]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text() or "{}")
    return {k["name"]: Key(**k) for k in data.get("keys", [])}


def save(path: Path, keys: dict[str, Key]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"keys": [asdict(k) for k in keys.values()]}, out, indent=2)
    tmp.replace(path)


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def add(path: Path, name: str, models: list[str], rpm: int | None, tpm: int | None) -> str:
    """Create a key; return it. It is shown this once: only its hash is kept."""
    keys = load(path)
    if name in keys:
        raise KeysFileError(f"a key named {name!r} exists; revoke it first or pick another name")
    token = new_token()
    keys[name] = Key(name, digest(token), token[: len(PREFIX) + 4], models, rpm, tpm, time.time())
    save(path, keys)
    return token


def revoke(path: Path, name: str) -> None:
    keys = load(path)
    if keys.pop(name, None) is None:
        raise KeysFileError(f"no key named {name!r}")
    save(path, keys)


class KeyRing:
    """The router's view of the keys file, reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: tuple[float, int] | None = None
        self.by_digest: dict[str, Key] = {}

    def lookup(self, token: str) -> Key | None:
        self._refresh()
        wanted = digest(token)
        for known, key in self.by_digest.items():
            if hmac.compare_digest(known, wanted):
                return key
        return None

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self.stamp:
            self.stamp = stamp
            self.by_digest = {k.sha256: k for k in load(self.path).values()} if stamp else {}


class RateLimiter:
    """Per-key token buckets: requests per minute, and tokens per minute (charged after the answer)."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (key, kind) -> (level, at)

    def _level(self, key: str, kind: str, per_minute: int) -> float:
        level, at = self.buckets.get((key, kind), (float(per_minute), self.clock()))
        now = self.clock()
        return min(per_minute, level + (now - at) * per_minute / 60)

    def admit(self, key: Key) -> float | None:
        """None when the request may go; otherwise seconds until it may (Retry-After)."""
        now = self.clock()
        if key.tpm is not None:
            tokens = self._level(key.name, "tpm", key.tpm)
            if tokens < 1:
                return (1 - tokens) * 60 / key.tpm
        if key.rpm is not None:
            level = self._level(key.name, "rpm", key.rpm)
            if level < 1:
                return (1 - level) * 60 / key.rpm
            self.buckets[(key.name, "rpm")] = (level - 1, now)
        return None

    def charge_tokens(self, key: Key, tokens: int) -> None:
        if key.tpm is not None and tokens:
            self.buckets[(key.name, "tpm")] = (self._level(key.name, "tpm", key.tpm) - tokens, self.clock())
