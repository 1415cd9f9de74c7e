"""The agent's log lines (its loop, the router, the keys file): journald with ENGINE= and EVENT= fields
when systemd runs it, else one line per event on stderr."""

from __future__ import annotations

import logging
import os
import sys

try:
    from systemd import journal as sd_journal
except ImportError:  # not on the box (a developer's machine): plain stderr logging
    sd_journal = None


class _Fields(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k.lower()}={getattr(record, k)}" for k in ("ENGINE", "EVENT") if getattr(record, k, ""))
        return f"{record.levelname.lower()} {record.getMessage()}" + (f" [{extra}]" if extra else "")


def setup(level: int = logging.INFO) -> None:
    """Every aiinfra.* logger (aiinfra.agent, aiinfra.router, aiinfra.keys) to one handler."""
    logger = logging.getLogger("aiinfra")
    logger.setLevel(level)
    logger.handlers.clear()
    if sd_journal is not None and os.environ.get("JOURNAL_STREAM"):
        handler: logging.Handler = sd_journal.JournalHandler(SYSLOG_IDENTIFIER="aiinfra-agent")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Fields())
    logger.addHandler(handler)
    logger.propagate = False
