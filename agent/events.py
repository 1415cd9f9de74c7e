"""The loop's events: each change of an engine's phase, a profile switch, the GPUs' verdicts; kept
(the last 200, for `/status`) and logged with ENGINE= and EVENT= fields for the journal."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger("aiinfra.agent")
WARNINGS = frozenset({"backoff", "failed", "start_failed"})


class Events:
    def __init__(self, keep: int = 200) -> None:
        self.kept: deque[dict[str, Any]] = deque(maxlen=keep)

    def add(self, engine: str | None, event: str, message: str | None) -> None:
        self.kept.append({"time": time.time(), "engine": engine, "event": event, "message": message or ""})
        level = logging.WARNING if event in WARNINGS else logging.INFO
        log.log(level, "%s%s", f"{engine}: " if engine else "", message or event,
                extra={"ENGINE": engine or "", "EVENT": event})  # fmt: skip

    def recent(self, count: int) -> list[dict[str, Any]]:
        return list(self.kept)[-count:]
