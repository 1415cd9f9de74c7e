"""The requests each engine has: fed by the router, read by the loop (drains, the idle rule, the
liveness probe's stand-in) and by the status; busy time and tokens go on to the energy ledger."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable

from aiinfra.agent.energy import Ledger


class Traffic:
    """Per engine, one set of counters: requests held (routed to it and not yet left, whether waiting
    for it or answered by it), of those the ones waiting until it is ready and the ones in flight
    (forwarded to it); when a request last arrived or left; when one last succeeded."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float] = time.monotonic) -> None:
        self.ledger = ledger
        self.clock = clock
        self.held: Counter[str] = Counter()
        self.waiting: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.last: dict[str, float] = {}
        self.succeeded: dict[str, float] = {}
        self._busy_since: dict[str, float] = {}  # engine → when its first request in flight began

    def arrived(self, name: str) -> None:
        self.held[name] += 1
        self.last[name] = self.clock()

    def left(self, name: str) -> None:
        self.held[name] -= 1
        self.last[name] = self.clock()

    def started(self, name: str) -> None:
        self.in_flight[name] += 1
        self.last[name] = self.clock()
        self._busy_since.setdefault(name, self.clock())

    def done(self, name: str) -> None:
        self.in_flight[name] -= 1
        if self.in_flight[name] == 0 and name in self._busy_since:
            self.ledger.busy(name, self.clock() - self._busy_since.pop(name), time.time())

    def ok(self, name: str) -> None:
        """Real traffic succeeded: it stands in for the liveness probe."""
        self.succeeded[name] = self.clock()

    def tokens(self, name: str, tokens: int) -> None:
        """Tokens an engine made or read for a request the router answered (for the cost per token)."""
        self.ledger.tokens(name, tokens, time.time())

    def busy(self) -> set[str]:
        """Engines answering a request now: one that leaves its profile drains them before it stops."""
        return {name for name, count in self.in_flight.items() if count > 0}

    def holding(self, names: Iterable[str]) -> bool:
        """Any of NAMES has a request in hand or waiting: not idle."""
        return any(self.held[n] > 0 for n in names)

    def last_request(self, names: Iterable[str]) -> float | None:
        """When a request last arrived at or left any of NAMES (None: none ever did)."""
        return max((self.last.get(n, 0.0) for n in names), default=0.0) or None
