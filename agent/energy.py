"""Energy and tokens per engine, and what a million tokens costs: the accounting behind `aiinfra cost`.

Per GPU, NVML's energy counter (where a card lacks it, its power draw integrated over time) is
attributed to the engines running on that GPU, in equal shares, or to `idle` when none runs. Tokens
per engine come from the router; busy time from its in-flight requests. Totals and hourly buckets
(for `--since`) are kept in a file, so they survive the agent's restarts and the box's reboots.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiinfra.agent.files import write_private
from aiinfra.agent.gpu.nvml import Snapshot

log = logging.getLogger("aiinfra.agent")
IDLE = "(idle)"  # the share of GPUs no engine ran on
HOUR = 3600
KEEP_HOURS = 24 * 92  # a quarter of hourly buckets: bounded, whatever the uptime


@dataclass
class Bucket:
    """One hour's sums."""

    joules: dict[str, float] = field(default_factory=dict)  # engine (or IDLE) → J
    tokens: dict[str, int] = field(default_factory=dict)  # engine → prompt + completion tokens
    busy_s: dict[str, float] = field(default_factory=dict)  # engine → seconds with a request in flight
    seconds: float = 0.0  # how much of the hour the agent accounted for

    def add(self, other: Bucket) -> None:
        for mine, theirs in ((self.joules, other.joules), (self.tokens, other.tokens), (self.busy_s, other.busy_s)):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value  # type: ignore[assignment]
        self.seconds += other.seconds


class Ledger:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.hours: dict[int, Bucket] = {}
        self.last_counter: dict[int, float] = {}  # GPU → mJ at the last read
        self.last_read: float | None = None  # on the monotonic clock: a jump of the wall clock makes no energy
        self._load()

    # -- inputs ----------------------------------------------------------------------------------

    def _bucket(self, now: float) -> Bucket:
        hour = int(now // HOUR) * HOUR
        if hour not in self.hours:
            self.hours[hour] = Bucket()
            for old in sorted(self.hours)[:-KEEP_HOURS]:
                del self.hours[old]
        return self.hours[hour]

    def observe(self, snapshot: Snapshot, running: Mapping[int, list[str]], now: float, mono: float) -> None:
        """A GPU read at wall time NOW (its hour's bucket) and MONO (a monotonic clock, for the time
        between reads: a jump of the wall clock is no time); RUNNING: GPU index → the engines on it."""
        if snapshot.state != "ok":
            self.last_read = None  # no reading to count from: the gap is not guessed at
            return
        bucket = self._bucket(now)
        elapsed = None if self.last_read is None else max(mono - self.last_read, 0.0)
        for gpu in snapshot.gpus:
            joules = None
            if gpu.energy_mj is not None:
                before = self.last_counter.get(gpu.index)
                if before is not None and gpu.energy_mj >= before:  # a reset counter counts from anew
                    joules = (gpu.energy_mj - before) / 1000
                self.last_counter[gpu.index] = gpu.energy_mj
            elif elapsed is not None:
                joules = gpu.power_draw_w * elapsed  # no counter on this card: integrate the draw
            if joules is None:
                continue
            owners = running.get(gpu.index) or [IDLE]
            for owner in owners:
                bucket.joules[owner] = bucket.joules.get(owner, 0.0) + joules / len(owners)
        if elapsed is not None:
            bucket.seconds += elapsed
        self.last_read = mono

    def tokens(self, engine: str, count: int, now: float) -> None:
        bucket = self._bucket(now)
        bucket.tokens[engine] = bucket.tokens.get(engine, 0) + count

    def busy(self, engine: str, seconds: float, now: float) -> None:
        bucket = self._bucket(now)
        bucket.busy_s[engine] = bucket.busy_s.get(engine, 0.0) + seconds

    # -- outputs ---------------------------------------------------------------------------------

    def window(self, since_s: float | None, now: float) -> Bucket:
        """Sums over the hours that overlap the last SINCE_S seconds (None: everything kept)."""
        start = -math.inf if since_s is None else now - since_s
        total = Bucket()
        for hour, bucket in self.hours.items():
            if hour + HOUR > start:
                total.add(bucket)
        return total

    def totals(self) -> Bucket:
        return self.window(None, 0)

    # -- the file --------------------------------------------------------------------------------

    def save(self) -> None:
        if self.path is None:
            return
        data = {"hours": {str(h): vars(b) for h, b in self.hours.items()}}
        with contextlib.suppress(OSError):  # a lost hour of accounting is worth less than a running agent
            write_private(self.path, json.dumps(data).encode())

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            text = self.path.read_text()
        except OSError:
            return  # none yet (or unreadable, which the next save says): counted afresh
        try:
            self.hours = {int(h): _bucket_of(b) for h, b in json.loads(text)["hours"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A damaged ledger must not keep the agent (and the endpoint) from starting: set aside, counted afresh.
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            with contextlib.suppress(OSError):
                self.path.replace(aside)
            log.warning("energy ledger %s is damaged (%s: %s); set aside as %s, counting afresh", self.path,
                        type(exc).__name__, exc, aside.name, extra={"EVENT": "ledger_damaged"})  # fmt: skip
            self.hours = {}


def _bucket_of(data: Any) -> Bucket:
    """A bucket as saved, its types checked: a wrong one is a TypeError, not a crash later."""
    if not isinstance(data, dict):
        raise TypeError(f"a bucket is {type(data).__name__}, not an object")
    bucket = Bucket(**data)
    for sums in (bucket.joules, bucket.tokens, bucket.busy_s):
        if not isinstance(sums, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) for k, v in sums.items()
        ):
            raise TypeError("a bucket's sums are not engine → number")
    if not isinstance(bucket.seconds, int | float) or isinstance(bucket.seconds, bool):
        raise TypeError("a bucket's seconds are not a number")
    return bucket


def cost(window: Bucket, price_per_kwh: float | None, card_cost: float | None, cards: int, lifetime_years: float,
         cloud_per_mtok: float | None) -> dict[str, Any]:  # fmt: skip
    """What the window's tokens cost: energy at the tariff, plus the cards' price spread over their
    lifetime (the window's share of it), over the tokens made; against a cloud price where given."""
    joules = sum(window.joules.values())
    tokens = sum(window.tokens.values())
    kwh = joules / 3.6e6
    energy = None if price_per_kwh is None else kwh * price_per_kwh
    hardware = None
    if card_cost is not None and lifetime_years > 0:
        hardware = card_cost * cards * window.seconds / (lifetime_years * 365.25 * 86400)
    total = None if energy is None and hardware is None else (energy or 0) + (hardware or 0)
    per_mtok = None if total is None or not tokens else total / tokens * 1e6
    engines = sorted(set(window.tokens) | {e for e in window.joules if e != IDLE})
    busy = sum(window.busy_s.get(e, 0.0) for e in engines)
    return {
        "seconds": window.seconds,
        "energy_kwh": kwh,
        "tokens": tokens,
        "joules_per_token": None if not tokens else joules / tokens,
        "idle_share_of_energy": None if not joules else window.joules.get(IDLE, 0.0) / joules,
        "duty_cycle": None if not window.seconds or not engines else busy / (window.seconds * len(engines)),
        "energy_cost": energy,
        "hardware_cost": hardware,
        "cost_per_mtok": per_mtok,
        "cloud_per_mtok": cloud_per_mtok,
        "beats_cloud": None if per_mtok is None or cloud_per_mtok is None else per_mtok < cloud_per_mtok,
        "engines": {e: _engine(window, e) for e in engines},
        "idle_joules": window.joules.get(IDLE, 0.0),
    }


def _engine(window: Bucket, name: str) -> dict[str, Any]:
    joules, tokens = window.joules.get(name, 0.0), window.tokens.get(name, 0)
    return {"joules": joules, "tokens": tokens, "busy_s": window.busy_s.get(name, 0.0),
            "joules_per_token": joules / tokens if tokens else None}  # fmt: skip
