"""Model weights on this box, staged by the vllm and ollama roles."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from aiinfra.agent import retire, staging
from aiinfra.agent.commands import CONFIG, load_config
from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_FAILED


@click.group()
def models() -> None:
    """Model weights on this box (the installer stages them; the agent never downloads)."""


@models.command("stage")
@click.argument("model")
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Where models live (MOUNT/models).")
@click.option("--mirror", help="A directory or rsync source laid out as MIRROR/<model id>/ with SHA256SUMS.")
@click.option("--download-command", default="", help="Command that downloads: MODEL --local-dir DIR is appended.")
@click.option("--manifest-sha256", default="", help="The SHA-256 its SHA256SUMS must have (empty: any).")
def models_stage(model: str, root: Path, mirror: str | None, download_command: str, manifest_sha256: str) -> None:
    """Put MODEL under ROOT from the mirror, else download it; check it; print what was done as JSON."""
    pin = manifest_sha256 or None
    _print_staged(lambda: staging.stage(model, root, mirror or None, download_command.split(), pin))


@models.command("stage-ollama")
@click.argument("name")
@click.option("--store", type=click.Path(path_type=Path), required=True, help="Ollama's store (OLLAMA_MODELS).")
@click.option("--mirror", help="A directory holding MIRROR/ollama/{manifests,blobs}.")
def models_stage_ollama(name: str, store: Path, mirror: str | None) -> None:
    """Copy Ollama model NAME from the mirror, blobs checked; print JSON (source "missing": pull it)."""
    _print_staged(lambda: staging.stage_ollama(name, store, mirror or None))


def _print_staged(stage: Callable[[], staging.Staged]) -> None:
    try:
        staged = stage()
    except staging.StagingError as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT if isinstance(exc, staging.BadModelId) else EXIT_FAILED)
    click.echo(json.dumps(vars(staged)))


def _stored(config_path: Path) -> tuple[Path, list[retire.Stored]]:
    config = load_config(config_path)
    return Path(str(config.models_dir)), retire.inventory(config)


def _table(stored: list[retire.Stored]) -> str:
    lines = [f"{'KIND':<6} {'NAME':<40} {'SIZE':>9}  {'LAST USED':<16}  KEPT FOR"]
    for s in stored:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.last_used)) if s.last_used else "-"
        lines.append(f"{s.kind:<6} {s.name:<40} {s.bytes / 2**30:>7.2f}Gi  {used:<16}  {s.kept_for or '-'}")
    return "\n".join(lines)


@models.command("list")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def models_list(config_path: Path, as_json: bool) -> None:
    """Staged models and vLLM environments on this box: size, when last used, and what keeps each."""
    _, stored = _stored(config_path)
    click.echo(json.dumps([vars(s) for s in stored], indent=2) if as_json else _table(stored))


@models.command("prune")
@CONFIG
@click.option("--yes", is_flag=True, help="Remove them; without it, only say what would go.")
def models_prune(config_path: Path, yes: bool) -> None:
    """Remove the staged models and vLLM environments nothing keeps: never what an engine of the
    configuration uses, nor the vLLM before the current one (the way back)."""
    root, stored = _stored(config_path)
    going = [s for s in stored if not s.kept_for]
    if not going:
        click.echo("nothing to remove: every staged model and vLLM environment is in use or kept")
        return
    if not yes:
        click.echo(_table(going) + "\nwould be removed; run again with --yes to remove them")
        return
    free = shutil.disk_usage(root).free if root.exists() else 0
    for item in retire.prune(stored):
        click.echo(f"removed {item.kind} {item.name} ({item.bytes / 2**30:.2f} GiB)")
    after = shutil.disk_usage(root).free if root.exists() else 0
    click.echo(f"model disk free: {free / 2**30:.1f} GiB before, {after / 2**30:.1f} GiB after")
