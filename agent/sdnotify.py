"""sd_notify: READY, STATUS, STOPPING and the watchdog's pings to systemd (nothing off the box)."""

from __future__ import annotations

import os

try:
    from systemd import daemon as sd_daemon
except ImportError:  # not on the box (a developer's machine): no notify
    sd_daemon = None


def notify(*fields: str) -> None:
    if sd_daemon is not None and os.environ.get("NOTIFY_SOCKET"):
        sd_daemon.notify("\n".join(fields))


def watchdog_enabled() -> bool:
    return bool(os.environ.get("WATCHDOG_USEC")) and sd_daemon is not None
