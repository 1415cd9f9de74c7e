"""systemd integration: sd_notify (READY, STATUS, WATCHDOG) and structured journald logging."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

try:
    from systemd import daemon as sd_daemon
    from systemd import journal as sd_journal
except ImportError:  # not on the box (a developer's machine): plain stderr logging, no notify
    sd_daemon = None
    sd_journal = None


def notify(*fields: str) -> None:
    if sd_daemon is not None and os.environ.get("NOTIFY_SOCKET"):
        sd_daemon.notify("\n".join(fields))


def watchdog_enabled() -> bool:
    return bool(os.environ.get("WATCHDOG_USEC")) and sd_daemon is not None


class _Fields(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k.lower()}={getattr(record, k)}" for k in ("ENGINE", "EVENT") if getattr(record, k, ""))
        return f"{record.levelname.lower()} {record.getMessage()}" + (f" [{extra}]" if extra else "")


def setup_logging(level: int = logging.INFO, audit_log: str | None = None) -> None:
    """Journald with ENGINE= and EVENT= fields when run by systemd, else one line per event on stderr.
    The router's audit lines go to their own rotated file."""
    audit = logging.getLogger("aiinfra.audit")
    audit.handlers.clear()
    audit.propagate = False
    if audit_log:
        Path(audit_log).parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(audit_log, maxBytes=50 * 2**20, backupCount=5)
        rotating.setFormatter(logging.Formatter("%(message)s"))
        audit.addHandler(rotating)
        audit.setLevel(logging.INFO)
    logger = logging.getLogger("aiinfra.agent")
    logger.setLevel(level)
    logger.handlers.clear()
    if sd_journal is not None and os.environ.get("JOURNAL_STREAM"):
        handler: logging.Handler = sd_journal.JournalHandler(SYSLOG_IDENTIFIER="aiinfra-agent")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Fields())
    logger.addHandler(handler)
    logger.propagate = False
