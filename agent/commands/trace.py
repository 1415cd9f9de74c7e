"""`aiinfra-agent trace ID`: the whole path of one answer, from the audit log and the identities' history."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import click

from aiinfra.agent.audit import BACKUPS
from aiinfra.agent.commands import CONFIG, load_config
from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_FAILED
from aiinfra.agent.identity import History

REQUEST_ID = re.compile(r"[0-9a-f]{16}")  # serve.Request.id


def find(audit_log: Path, request_id: str) -> dict[str, Any] | None:
    """The audit line of REQUEST_ID, in the log or the rotated files behind it (newest first)."""
    needle = f'"id": "{request_id}"'
    for path in [audit_log, *(audit_log.with_name(f"{audit_log.name}.{n}") for n in range(1, BACKUPS + 1))]:
        try:
            with path.open(errors="replace") as lines:
                for line in lines:
                    if needle in line:
                        return json.loads(line)
        except (OSError, ValueError):
            continue
    return None


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def describe(line: dict[str, Any], since: dict[str, Any] | None) -> list[str]:
    first = f" (first token {line['ttft_ms']} ms)" if line.get("ttft_ms") else ""
    said = [f"request {line['id']} at {_when(line['time'])}",
            f"  client {line['client']}, key {line['key']}, model {line['model']} → engine {line['engine']}: "
            f"HTTP {line['status']}, {line['prompt_tokens']} + {line['completion_tokens']} tokens, "
            f"{line['latency_ms']} ms{first}"]  # fmt: skip
    if line.get("aborted"):
        said.append(f"  cut short: {line['aborted']}")
    made_by = line.get("identity")
    if made_by is None:
        return [*said, "  no engine answered it (refused before one did)"]
    said += [f"  model manifest sha256 {made_by['model'] or 'unknown'}", f"  program {made_by['program']}",
             f"  launch sha256 {made_by['args']}"]  # fmt: skip
    if since is not None:
        said.append(f"  engine {line['engine']} has served that identity since {_when(since['since'])}")
    return said


@click.command()
@click.argument("request_id")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Print the audit line and the identity's history entry.")
def trace(request_id: str, config_path: Path, as_json: bool) -> None:
    """What made the answer to REQUEST_ID (its X-Request-Id): the engine, its model's manifest, its
    program and its launch, from the audit log. Exit 1: not in the log (kept 6 files of 50 MiB)."""
    if not REQUEST_ID.fullmatch(request_id):
        click.echo(f"aiinfra-agent: {request_id[:40]!r} is not a request id (16 hex digits, X-Request-Id)", err=True)
        sys.exit(EXIT_BAD_INPUT)
    config = load_config(config_path)
    if config.audit_path() is None:
        click.echo("aiinfra-agent: no audit log is kept (audit_log is off in the configuration)", err=True)
        sys.exit(EXIT_FAILED)
    line = find(Path(str(config.audit_path())), request_id)
    if line is None:
        click.echo(f"aiinfra-agent: request {request_id} is not in the audit log {config.audit_path()}", err=True)
        sys.exit(EXIT_FAILED)
    entry = None
    if line.get("identity"):
        history = History(Path(config.data_dir) / "identities.json")
        served = history.at(line["time"]).get(line["engine"])
        entry = served if served and {k: served.get(k) for k in line["identity"]} == line["identity"] else None
    if as_json:
        click.echo(json.dumps({"audit": line, "identity_since": entry}, indent=2))
    else:
        click.echo("\n".join(describe(line, entry)))
