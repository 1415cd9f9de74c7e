"""The router's API keys in the keys file on this box."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from aiinfra.agent import box
from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_UNREACHABLE
from aiinfra.agent.http import keys as keyfile


@click.group()
def keys() -> None:
    """API keys of the router (the file keeps only their hashes)."""


KEYS_FILE = click.option(
    "--file",
    "keys_path",
    type=click.Path(path_type=Path),
    default=Path(box.KEYS_FILE),
    show_default=True,
    help="The keys file the agent reads.",
)


def _keys_here(keys_path: Path) -> None:
    """Keys belong to an agent: where its configuration directory is missing, none runs here."""
    if not keys_path.parent.is_dir():
        click.echo(
            f"aiinfra-agent: no agent on this machine ({keys_path.parent} does not exist); run this on the box, "
            "or `aiinfra keys --host HOST ...` from the workstation",
            err=True,
        )
        sys.exit(EXIT_UNREACHABLE)


@keys.command("add")
@click.argument("name")
@click.option("--models", default="", help="Comma-separated models the key may use (default: all).")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute.")
@click.option("--may-switch", is_flag=True, help="Its requests may switch to a profile that allows it.")
@click.option("--max-inflight", type=click.IntRange(min=1), help="Requests answered or waiting at once.")
@KEYS_FILE
def keys_add(
    name: str, models: str, rpm: int | None, tpm: int | None, may_switch: bool, max_inflight: int | None,
    keys_path: Path,
) -> None:  # fmt: skip
    """Create key NAME and print it, this once."""
    _keys_here(keys_path)
    if not keyfile.KEY_NAME.fullmatch(name):
        click.echo("aiinfra-agent: key names are letters, digits and . _ @ - (64 at most)", err=True)
        sys.exit(EXIT_BAD_INPUT)
    try:
        token = keyfile.add(keys_path, name, [m for m in models.split(",") if m], rpm, tpm, may_switch, max_inflight)
    except keyfile.KeysFileError as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(token)
    click.echo(f"key {name!r} created; it is shown only now, store it safely", err=True)


@keys.command("new")
@click.argument("name")
def keys_new(name: str) -> None:
    """Make a key for the inventory (aiinfra_agent_api_keys) without touching any keys file: the key
    on stdout, once; the line for the inventory, which holds only its hash, on stderr."""
    token = keyfile.new_token()
    click.echo(token)
    click.echo(f"aiinfra_agent_api_keys:\n  - {{name: {name}, sha256: {keyfile.digest(token)}}}", err=True)


@keys.command("list")
@KEYS_FILE
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def keys_list(keys_path: Path, as_json: bool) -> None:
    """List the keys (names, limits, hints; never the keys)."""
    _keys_here(keys_path)
    try:
        found = keyfile.load(keys_path)
    except keyfile.KeysFileError as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if as_json:
        click.echo(
            json.dumps([{k: v for k, v in vars(key).items() if k != "sha256"} for key in found.values()], indent=2)
        )
        return
    click.echo(f"{'NAME':<16} {'HINT':<14} {'RPM':>6} {'TPM':>8} {'INFLIGHT':>8}  MODELS")
    for key in found.values():
        click.echo(
            f"{key.name:<16} {key.hint + '…':<14} {key.rpm or '-':>6} {key.tpm or '-':>8} "
            f"{key.max_inflight or '-':>8}  {', '.join(key.models) or 'all'}"
        )


@keys.command("revoke")
@click.argument("name")
@KEYS_FILE
def keys_revoke(name: str, keys_path: Path) -> None:
    """Remove key NAME; the router refuses it from its next request on."""
    _keys_here(keys_path)
    try:
        keyfile.revoke(keys_path, name)
    except keyfile.KeysFileError as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"key {name!r} revoked")
