"""Refusals no valid key stands behind (no or a wrong key, a malformed or oversized request, a
connection past a cap), told in the audit log by client address: the first from an address at once,
the rest as one line per address and kind a minute, with their count. A flood cannot rotate the
audit history out, and the table it keeps is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

FLUSH_S = 60.0  # a summary line per address and kind at most this often
MAX_ROWS = 1024  # addresses and kinds tallied at once; past it, one row for all others
OTHERS = "(others)"


class Refusals:
    def __init__(self, write: Callable[[str], None], count: Callable[[int, str], None]) -> None:
        self.write, self.count = write, count  # an audit line; the metrics' counter
        self.rows: dict[tuple[str, int, str], list[float]] = {}  # → [unreported count, first, last]
        self.timer: asyncio.TimerHandle | None = None

    def add(self, client: str, status: int, code: str) -> None:
        self.count(status, code)
        now = time.time()
        row = self.rows.get((client, status, code))
        if row is None:
            if len(self.rows) >= MAX_ROWS:
                client = OTHERS
                row = self.rows.get((client, status, code))
            if row is None:
                self.rows[(client, status, code)] = [0, now, now]
                self._line(client, status, code, 1, now, now)  # the first from here: at once
                self._schedule()
                return
        row[0] += 1
        row[2] = now

    def flush(self) -> None:
        """A line for each row with refusals not yet told; the table starts afresh."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        rows, self.rows = self.rows, {}
        for (client, status, code), (count, first, last) in rows.items():
            if count:
                self._line(client, status, code, int(count), first, last)

    def _line(self, client: str, status: int, code: str, count: int, first: float, last: float) -> None:
        self.write(json.dumps({"time": round(last, 3), "event": "refused", "client": client, "status": status,
                               "code": code, "count": count, "first": round(first, 3)}))  # fmt: skip

    def _schedule(self) -> None:
        if self.timer is None:
            with contextlib.suppress(RuntimeError):  # no loop (a test): told at the next flush
                self.timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
