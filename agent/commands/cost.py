"""What a million tokens cost on this box: energy at the tariff plus the cards spread over their life."""

from __future__ import annotations

import json
import re
import sys

import click

from aiinfra.agent import client
from aiinfra.agent.commands.control import SOCKET_OPT, STATUS_OPT
from aiinfra.agent.energy import Bucket
from aiinfra.agent.energy import cost as cost_of
from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_UNREACHABLE

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def seconds(text: str) -> float:
    found = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not found:
        raise click.BadParameter(f"{text!r}: a number and a unit, e.g. 7d, 12h, 30m")
    return float(found.group(1)) * UNITS[found.group(2)]


@click.command()
@click.option("--since", help="The last this long, e.g. 7d, 12h (default: all the agent keeps, 92 days).")
@click.option("--price-per-kwh", type=click.FloatRange(min=0), help="The electricity tariff, per kWh.")
@click.option("--cloud-price-per-mtok", type=click.FloatRange(min=0), help="A cloud's price per million tokens.")
@STATUS_OPT
@SOCKET_OPT
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def cost(since: str | None, price_per_kwh: float | None, cloud_price_per_mtok: float | None, listen: str | None,
         socket_path: str, as_json: bool) -> None:  # fmt: skip
    """Energy, tokens, joules per token, duty cycle and the cost per million tokens of this box."""
    try:
        window_s = None if since is None else seconds(since)
    except click.BadParameter as exc:
        click.echo(f"aiinfra-agent: --since {exc.message}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    try:
        found = client.get_json(listen, "/cost" + ("" if window_s is None else f"?since={window_s:g}"),
                                socket_path=socket_path)  # fmt: skip
    except client.AgentUnavailable as exc:
        click.echo(f"aiinfra-agent: no agent at {listen or socket_path}: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    cards = found["cost"]
    report = cost_of(Bucket(**found["window"]), price_per_kwh, cards["card_cost"], cards["cards"],
                     cards["lifetime_years"], cloud_price_per_mtok) | {"since": since, "price_per_kwh": price_per_kwh,
                     "card_cost": cards["card_cost"], "cards": cards["cards"]}  # fmt: skip
    click.echo(json.dumps(report, indent=2) if as_json else table(report))


def table(r: dict) -> str:
    def num(value: float | None, fmt: str = ".2f") -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"{'last ' + r['since'] if r['since'] else 'all kept'} ({r['seconds'] / 3600:.1f} h accounted): "
        f"{r['energy_kwh']:.3f} kWh, {r['tokens']} tokens, {num(r['joules_per_token'], '.3f')} J/token, "
        f"duty cycle {num(None if r['duty_cycle'] is None else 100 * r['duty_cycle'], '.0f')}%, "
        f"idle {num(None if r['idle_share_of_energy'] is None else 100 * r['idle_share_of_energy'], '.0f')}% "
        "of the energy",
        f"cost per million tokens {num(r['cost_per_mtok'], '.4f')}: energy {num(r['energy_cost'], '.4f')}"
        f" (at {num(r['price_per_kwh'])}/kWh), cards {num(r['hardware_cost'], '.4f')}"
        f" ({r['cards']} × {num(r['card_cost'])})",
    ]
    if r["beats_cloud"] is not None:
        lines.append(f"against the cloud's {r['cloud_per_mtok']}: "
                     + ("this box is cheaper" if r["beats_cloud"] else "the cloud is cheaper"))  # fmt: skip
    lines.append(f"{'ENGINE':<16} {'JOULES':>12} {'TOKENS':>10} {'J/TOKEN':>9} {'BUSY S':>9}")
    for name, e in r["engines"].items():
        lines.append(f"{name:<16} {e['joules']:>12.1f} {e['tokens']:>10} {num(e['joules_per_token'], '.3f'):>9} "
                     f"{e['busy_s']:>9.1f}")  # fmt: skip
    lines.append(f"{'(idle)':<16} {r['idle_joules']:>12.1f}")
    return "\n".join(lines)
