"""Talk to the running agent: its status, a profile switch, an engine's restart."""

from __future__ import annotations

import json
import sys

import click

from aiinfra.agent import client
from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE

STATUS_OPT = click.option("--listen", help="Read status from this HTTP address (default: through the control socket).")
SOCKET_OPT = click.option(
    "--socket",
    "socket_path",
    default=client.DEFAULT_CONTROL_SOCKET,
    show_default=True,
    help="The agent's control socket.",
)


@click.command()
@STATUS_OPT
@SOCKET_OPT
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def status(listen: str | None, socket_path: str, as_json: bool) -> None:
    """Show the engines and their states."""
    try:
        report = client.status(listen, socket_path=socket_path)
    except client.AgentUnavailable as exc:
        click.echo(f"aiinfra-agent: no agent at {listen or socket_path}: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    click.echo(json.dumps(report, indent=2) if as_json else client.format_status(report))


@click.command()
@click.argument("name")
@SOCKET_OPT
@STATUS_OPT
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds to wait for ready.")
@click.option("--no-wait", is_flag=True, help="Return once the switch is under way.")
def profile(name: str, socket_path: str, listen: str | None, timeout: float, no_wait: bool) -> None:
    """Switch to profile NAME: stop the engines that leave, start the new ones, wait for ready."""
    try:
        ok, message = client.switch_profile(name, socket_path, listen, timeout, wait=not no_wait)
    except client.AgentUnavailable as exc:
        click.echo(f"aiinfra-agent: no agent on {socket_path}: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    except client.ControlRefused as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(message, err=not ok)
    sys.exit(EXIT_OK if ok else EXIT_FAILED)


@click.command()
@click.argument("engine")
@SOCKET_OPT
def restart(engine: str, socket_path: str) -> None:
    """Restart ENGINE (also clears a failed state)."""
    code, body = _control("POST", f"/engines/{engine}/restart", None, socket_path)
    if code != 202:
        click.echo(f"aiinfra-agent: {body.get('error', code)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    click.echo(f"{engine}: restarting")


def _control(method: str, path: str, body: object, socket_path: str) -> tuple[int, dict]:
    try:
        return client.control(method, path, body, socket_path)
    except client.AgentUnavailable as exc:
        click.echo(f"aiinfra-agent: no agent on {socket_path}: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)


COMMANDS = [status, profile, restart]
