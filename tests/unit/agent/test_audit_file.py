"""The audit file handler: a loop turn's lines in one write, rotated by size, nothing lost."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiinfra.agent.audit import BatchedAuditFile


def audit_logger(path: Path, max_bytes: int) -> tuple[logging.Logger, BatchedAuditFile]:
    handler = BatchedAuditFile(str(path), max_bytes=max_bytes, backups=2)
    logger = logging.getLogger(f"test.audit.{path.name}")
    logger.handlers[:] = [handler]
    logger.propagate, logger.level = False, logging.INFO
    return logger, handler


def test_a_turns_lines_go_out_together_once_the_turn_ends(tmp_path):
    logger, handler = audit_logger(tmp_path / "audit.log", max_bytes=0)

    async def requests_finishing_together() -> tuple[str, str]:
        for n in range(50):
            logger.info('{"request": %d}', n)
        during = (tmp_path / "audit.log").exists()  # opened at the first write
        await asyncio.sleep(0)  # the next turn of the loop
        return during, (tmp_path / "audit.log").read_text()

    during, after = asyncio.run(requests_finishing_together())
    assert during is False
    assert after.splitlines() == [f'{{"request": {n}}}' for n in range(50)]
    logger.info("outside a loop: at once")
    assert (tmp_path / "audit.log").read_text().endswith("outside a loop: at once\n")
    handler.close()


def test_it_rotates_by_size_and_keeps_every_line(tmp_path):
    logger, handler = audit_logger(tmp_path / "audit.log", max_bytes=300)

    async def many_turns() -> None:
        for n in range(40):
            logger.info("line %02d of the audit", n)  # 19 bytes a line
            if n % 5 == 4:
                await asyncio.sleep(0)

    asyncio.run(many_turns())
    handler.close()
    files = [tmp_path / "audit.log.2", tmp_path / "audit.log.1", tmp_path / "audit.log"]
    assert all(f.stat().st_size <= 300 for f in files)
    kept = [line for f in files for line in f.read_text().splitlines()]
    assert kept == [f"line {n:02d} of the audit" for n in range(40 - len(kept), 40)] and len(kept) > 20
