"""What every command shares: the inventory option, loading hosts, one-line failures."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

import click

from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_UNREACHABLE
from aiinfra.installer import remote
from aiinfra.installer.inventory import Inventory, InventoryError, load, resolve_path
from aiinfra.installer.workstation import EnvironmentProblem

INVENTORY_HELP = "Ansible inventory (default: ./inventory, then /etc/aiinfra/inventory)."


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"aiinfra: {message}", err=True)
    sys.exit(code)


def load_hosts(inventory: str | None, pattern: str) -> tuple[Inventory, list[str]]:
    try:
        inv = load(resolve_path(inventory))
        return inv, inv.select(pattern)
    except InventoryError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)


def on_hosts(
    inventory: str | None, pattern: str, argv: list[str], show: Callable[[str, str], str] | None = None
) -> NoReturn:
    """Run `aiinfra-agent ARGV` on the hosts PATTERN names, print each answer, exit with the worst code."""
    inv, hosts = load_hosts(inventory, pattern)
    worst = 0
    for host, answer in remote.agent_command(inv.path, hosts, argv).items():
        out = answer.stdout or answer.error
        click.echo(show(host, out) if show else f"{host}: {out.strip()}")
        worst = max(worst, EXIT_UNREACHABLE if answer.rc is None else answer.rc)
    sys.exit(worst)


def say(message: str) -> None:
    click.echo(message, err=True)
