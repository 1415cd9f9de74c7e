"""The router's audit file: one JSON line per request and per profile switch, in their own rotated file
(never the journal), batched per turn of the event loop; its failed writes are counted, never silent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
from pathlib import Path

MAX_BYTES = 50 * 2**20
BACKUPS = 5


class BatchedAuditFile(logging.handlers.RotatingFileHandler):
    """The audit file, written once per turn of the event loop: the lines of every request that
    finished in that turn go out in one write, after one size check (per line, the rotating handler's
    checks and flushes were most of the router's logging cost, bench/router.py). Outside a running
    loop, each line at once."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        # Opened at the first write: a folder that cannot be written is that write's counted error.
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, delay=True)
        self.pending: list[str] = []
        self.write_errors = 0  # writes that failed (a full disk): counted in the metrics, shown in /status
        self.lines_lost = 0
        self.last_error: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.add(self.format(record))

    def add(self, line: str) -> None:
        self.pending.append(line)
        if len(self.pending) > 1:
            return  # a flush is on its way
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()

    def _write_pending(self) -> None:
        lines, self.pending = self.pending, []
        if not lines:
            return super().flush()
        text = "\n".join(lines) + "\n"
        try:
            if self.stream is None:
                self.stream = self._open()
            self.stream.seek(0, 2)  # another writer (logrotate's copytruncate) may have moved the end
            if self.maxBytes and self.stream.tell() + len(text) >= self.maxBytes:
                self.doRollover()
                self.stream = self.stream or self._open()  # a delayed handler's rollover leaves none open
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: a stream a failed rollover left closed
            self.write_errors += 1
            self.lines_lost += len(lines)
            self.last_error = f"{self.baseFilename}: {exc}"
            if self.write_errors == 1 or self.write_errors % 1000 == 0:
                logging.getLogger("aiinfra.agent").error("audit log not written (%d failed writes): %s",
                                                         self.write_errors, self.last_error)  # fmt: skip
            stream, self.stream = self.stream, None  # opened afresh at the next write: there may be room again
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


_audit_file: BatchedAuditFile | None = None


def open_file(path: str | None) -> None:
    """Audit lines go to PATH from now on (None: nowhere)."""
    global _audit_file
    if _audit_file is not None:
        _audit_file.close()
    _audit_file = None
    if path:
        with contextlib.suppress(OSError):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        _audit_file = BatchedAuditFile(path, max_bytes=MAX_BYTES, backups=BACKUPS)


def audit(line: str) -> None:
    """One line (JSON) of the audit file, where one is open (open_file). Straight to the
    file's batch, not through a logging record: per request, the record cost as much as the line."""
    if _audit_file is not None:
        _audit_file.add(line)


def flush_audit() -> None:
    """Write out the lines still batched (the agent stops: its loop takes no more turns)."""
    if _audit_file is not None:
        _audit_file.flush()


def audit_health() -> dict | None:
    """The audit file's failed writes, for /status and the metrics; None where no audit file is kept."""
    if _audit_file is None:
        return None
    return {"file": _audit_file.baseFilename, "write_errors": _audit_file.write_errors,
            "lines_lost": _audit_file.lines_lost, "last_error": _audit_file.last_error}  # fmt: skip
