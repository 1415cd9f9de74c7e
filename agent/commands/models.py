"""Model weights on this box, staged by the vllm and ollama roles."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click

from aiinfra.agent import staging
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
