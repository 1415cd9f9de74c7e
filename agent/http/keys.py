"""API keys for the router: a file of hashes (never the keys), per-key model allowlists and limits.

Keys are 256-bit random tokens, so a SHA-256 of the key is enough to store: nothing can be guessed
from it. The file is written atomically with mode 0600; the router reloads it when it changes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiinfra.agent.files import write_private

PREFIX = "aiinfra-"
# A key's name: the inventory's aiinfra_agent_api_keys and `keys add` both hold to it.
KEY_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
log = logging.getLogger("aiinfra.keys")


@dataclass(frozen=True)
class Key:
    name: str
    sha256: str
    hint: str  # the first characters, to tell keys apart in listings
    models: list[str] = field(default_factory=list)  # empty: every model
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens (prompt + completion) per minute
    created: float = 0.0
    may_switch: bool = False  # a request by this key may switch to a profile that allows it (profile_switching)
    max_inflight: int | None = None  # requests answered or waiting at once

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models


class KeysFileError(Exception):
    """A keys-file operation the operator asked for cannot be done (duplicate name, unknown key)."""


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load(path: Path) -> dict[str, Key]:
    """The keys in PATH ({} when there is none); KeysFileError naming what is wrong with it."""
    try:
        if path.stat().st_mode & 0o022:
            raise KeysFileError(f"{path}: writable by others (mode {path.stat().st_mode & 0o777:o}); chmod 600 it")
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise KeysFileError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        entries = (json.loads(text or "{}") or {}).get("keys", [])
        keys = [_key(entry) for entry in entries]
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise KeysFileError(
            f"{path}: not a keys file ({type(exc).__name__}: {exc}); `aiinfra-agent keys add` writes one"
        ) from None
    names = [key.name for key in keys]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise KeysFileError(f"{path}: names key {twice!r} twice; revoke one (aiinfra-agent keys revoke)")
    return {key.name: key for key in keys}


def _key(entry: dict) -> Key:
    key = Key(**entry)
    limits = all(v is None or (isinstance(v, int) and v > 0) for v in (key.rpm, key.tpm, key.max_inflight))
    limits = limits and isinstance(key.may_switch, bool)
    models = isinstance(key.models, list) and all(isinstance(m, str) for m in key.models)
    named = isinstance(key.name, str) and KEY_NAME.fullmatch(key.name) is not None
    if not (named and isinstance(key.sha256, str) and len(key.sha256) == 64 and models and limits):
        raise TypeError(f"key {entry.get('name')!r} has a field of the wrong type")
    return key


def save(path: Path, keys: dict[str, Key]) -> None:
    write_private(path, json.dumps({"keys": [asdict(k) for k in keys.values()]}, indent=2).encode())


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def add(
    path: Path, name: str, models: list[str], rpm: int | None, tpm: int | None, may_switch: bool = False,
    max_inflight: int | None = None,
) -> str:  # fmt: skip
    """Create a key; return it. It is shown this once: only its hash is kept."""
    keys = load(path)
    if name in keys:
        raise KeysFileError(f"a key named {name!r} exists; revoke it first or pick another name")
    token = new_token()
    keys[name] = Key(name, digest(token), token[: len(PREFIX) + 4], models, rpm, tpm, time.time(), may_switch,
                     max_inflight)  # fmt: skip
    save(path, keys)
    return token


def revoke(path: Path, name: str) -> None:
    keys = load(path)
    if keys.pop(name, None) is None:
        raise KeysFileError(f"no key named {name!r}")
    save(path, keys)


class KeyRing:
    """The router's view of the keys file, reloaded when the file changes. A file that cannot be used
    leaves the last good keys in place (none ever loaded: every request is refused), says why once
    in the log, and in `problem` for /status."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stamp: tuple[float, int, int] | None = None
        self.by_digest: dict[str, Key] = {}
        self.problem: str | None = None

    def health(self) -> dict:
        self._refresh()
        return {"file": str(self.path), "keys": len(self.by_digest), "problem": self.problem}

    def lookup(self, token: str) -> Key | None:
        self._refresh()
        wanted = digest(token)
        for known, key in self.by_digest.items():
            if hmac.compare_digest(known, wanted):
                return key
        return None

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_mode)
        except OSError:
            stamp = None
        if stamp == self.stamp:
            return
        self.stamp = stamp
        try:
            self.by_digest = {k.sha256: k for k in load(self.path).values()}
            self.problem = None
        except KeysFileError as exc:
            self.problem = f"{exc}; keeping the last good keys ({len(self.by_digest)})"
            log.error("keys file: %s", self.problem)


class RateLimiter:
    """Per-key token buckets, refilled continuously: requests per minute, and tokens per minute. A
    request reserves its estimated tokens when admitted, so that requests at once cannot all pass a
    nearly spent limit, and settles them with the real count when its answer ends."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[tuple[str, str], tuple[float, float]] = {}  # (key, kind) -> (level, at)

    def _level(self, key: str, kind: str, per_minute: int) -> float:
        level, at = self.buckets.get((key, kind), (float(per_minute), self.clock()))
        return min(per_minute, level + (self.clock() - at) * per_minute / 60)

    def admit(self, key: Key, tokens: int) -> float | None:
        """Take one request and reserve TOKENS: None, or the seconds until the key may (Retry-After). A
        reservation above the whole limit waits for a full bucket rather than forever."""
        now = self.clock()
        need = {"rpm": 1.0, "tpm": float(min(tokens, key.tpm or 0))}
        levels = {}
        for kind, per_minute in (("rpm", key.rpm), ("tpm", key.tpm)):
            if per_minute is None:
                continue
            levels[kind] = level = self._level(key.name, kind, per_minute)
            if level < need[kind]:
                return (need[kind] - level) * 60 / per_minute
        for kind, level in levels.items():
            self.buckets[(key.name, kind)] = (level - (1 if kind == "rpm" else tokens), now)
        return None

    def settle(self, key: Key, reserved: int, used: int) -> None:
        """The answer ended having used USED tokens of the RESERVED: the difference goes back (or is taken)."""
        if key.tpm is not None and reserved != used:
            level = self._level(key.name, "tpm", key.tpm) + reserved - used
            self.buckets[(key.name, "tpm")] = (min(level, key.tpm), self.clock())
