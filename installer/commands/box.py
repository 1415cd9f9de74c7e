"""The commands that talk to a box's agent, on this machine or on inventory hosts: status, cost, profile, keys."""

from __future__ import annotations

import json
import sys

import click

from aiinfra.agent import client
from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_UNREACHABLE
from aiinfra.installer import remote
from aiinfra.installer.commands.common import INVENTORY_HELP, fail, load_hosts, on_hosts


@click.command()
@click.option("--host", "pattern", help="Ask the agent on these inventory hosts (default: this machine's).")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.option("--listen", default=client.DEFAULT_STATUS_URL, show_default=True, help="Local agent's status address.")
@click.option("--json", "as_json", is_flag=True, help="Print the agents' status as JSON.")
def status(pattern: str | None, inventory: str | None, listen: str, as_json: bool) -> None:
    """Show the engines the agent supervises: phase, pid, restarts, last error.

    Exit codes: 0 every agent answered, 3 an agent or host did not answer.
    """
    if pattern is None:
        try:
            reports = {"localhost": client.status(listen)}
        except client.AgentUnavailable as exc:
            fail(f"no agent answers at {listen}: {exc}", EXIT_UNREACHABLE)
    else:
        inv, hosts = load_hosts(inventory, pattern)
        reports, missing = {}, []
        for host, answer in remote.agent_command(inv.path, hosts, ["status", "--json"]).items():
            if answer.rc == 0:
                reports[host] = json.loads(answer.stdout)
            else:
                missing.append(f"{host}: {'unreachable' if answer.rc is None else 'no agent'}: {answer.error}")
        for line in missing:
            click.echo(f"aiinfra: {line}", err=True)
        if missing and not reports:
            sys.exit(EXIT_UNREACHABLE)
    if as_json:
        click.echo(json.dumps(reports, indent=2))
    else:
        for host, report in reports.items():
            click.echo(f"== {host}: {client.format_status(report)}")
        if spans := client.format_spans(reports):
            click.echo("== engines across boxes:\n" + "\n".join(spans))
    if pattern is not None and missing:
        sys.exit(EXIT_UNREACHABLE)


@click.command("cost", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--host", "pattern", help="Ask the agent on these inventory hosts (default: this machine's).")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cost(pattern: str | None, inventory: str | None, args: tuple[str, ...]) -> None:
    """Energy, tokens, joules per token, duty cycle and cost per million tokens: the agent's own command,

    \b
      aiinfra cost [--host H] [--since 7d] [--price-per-kwh X] [--cloud-price-per-mtok Y] [--json]
    """
    if pattern is not None:
        on_hosts(inventory, pattern, ["cost", *args], lambda host, out: f"== {host}:\n{out.rstrip()}")
    from aiinfra.agent.commands.cost import cost as agent_cost

    agent_cost.main(args=list(args), prog_name="aiinfra cost")


@click.command()
@click.argument("name")
@click.option("--host", "pattern", help="Switch the agent on these inventory hosts (default: this machine's).")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds to wait for ready.")
@click.option(
    "--socket",
    "socket_path",
    default=client.DEFAULT_CONTROL_SOCKET,
    show_default=True,
    help="Local agent's control socket.",
)
@click.option("--listen", default=client.DEFAULT_STATUS_URL, show_default=True, help="Local agent's status address.")
def profile(
    name: str, pattern: str | None, inventory: str | None, timeout: float, socket_path: str, listen: str
) -> None:
    """Switch to profile NAME: stop the engines that leave, start the new ones, wait until ready.

    Exit codes: 0 ready, 1 an engine failed or the wait timed out, 2 unknown profile, 3 no agent.
    """
    if pattern is None:  # this machine's agent: its own command
        from aiinfra.agent.commands import control

        click.get_current_context().invoke(
            control.profile, name=name, socket_path=socket_path, listen=listen, timeout=timeout, no_wait=False
        )
        return
    inv, hosts = load_hosts(inventory, pattern)
    spanned = [node for node in profile_nodes(inv.hostvars, hosts, name) if node not in hosts]
    if spanned:  # a rank alone waits for the others: every node an engine of the profile spans switches
        click.echo(f"switching {', '.join(spanned)} too: the profile's engines span them", err=True)
    on_hosts(inventory, ",".join([*hosts, *spanned]), ["profile", name, "--timeout", str(timeout)])


def profile_nodes(hostvars: dict[str, dict], hosts: list[str], profile: str) -> list[str]:
    """The nodes that the engines of PROFILE on HOSTS span, in the inventory's order of the spans."""
    nodes: list[str] = []
    for host in hosts:
        engines = hostvars[host].get("engines") or {}
        for member in (hostvars[host].get("profiles") or {}).get(profile) or []:
            span = (engines.get(member) or {}).get("span") or {}
            nodes += [n for n in span.get("nodes") or [] if n in hostvars and n not in nodes]
    return nodes


@click.command("keys", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--host", "pattern", help="Manage the keys on these inventory hosts, through Ansible.")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def keys(pattern: str | None, inventory: str | None, args: tuple[str, ...]) -> None:
    """The router's API keys, on this machine or on inventory hosts: the agent's own commands,

    \b
      aiinfra keys add NAME [--models m1,m2] [--rpm N] [--tpm N] [--max-inflight N] [--file PATH]
      aiinfra keys list [--json]
      aiinfra keys revoke NAME
    """
    if pattern is not None:
        on_hosts(inventory, pattern, ["keys", *args])
    from aiinfra.agent.commands.keys import keys as agent_keys

    agent_keys.main(args=list(args), prog_name="aiinfra keys")  # the agent's own commands, named as called


@click.command("models", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--host", "pattern", help="The models on these inventory hosts (default: this machine's).")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def models(pattern: str | None, inventory: str | None, args: tuple[str, ...]) -> None:
    """Staged models and vLLM environments, and what may go: the agent's own commands,

    \b
      aiinfra models [--host H] list [--json]
      aiinfra models [--host H] prune [--yes]
    """
    if args[:1] not in (("list",), ("prune",)):
        fail("models: list or prune (staging is the install's)", EXIT_BAD_INPUT)
    if pattern is not None:
        on_hosts(inventory, pattern, ["models", *args], lambda host, out: f"== {host}:\n{out.rstrip()}")
    from aiinfra.agent.commands.models import models as agent_models

    agent_models.main(args=list(args), prog_name="aiinfra models")
