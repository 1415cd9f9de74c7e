"""Files that may hold secrets, written whole or not at all, never readable by others on the way."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes, mode: int = 0o600, group: int = -1) -> None:
    """PATH holds DATA, with MODE (and GROUP, -1: the writer's) from its first byte: written beside it,
    then moved over it, so a reader sees the old file or the new one, never part of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        if group != -1:
            os.fchown(out.fileno(), -1, group)
        os.fchmod(out.fileno(), mode)
        out.write(data)
    tmp.replace(path)
