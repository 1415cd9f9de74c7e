"""The commands that read a host's spec, and the one that converges the host: validate, plan, install."""

from __future__ import annotations

import json
import sys

import click

from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_ENVIRONMENT
from aiinfra.installer import plan
from aiinfra.installer.commands.common import INVENTORY_HELP, fail, load_hosts
from aiinfra.installer.here import gpu_links_here, secure_boot_here
from aiinfra.installer.plan_table import plan_table, profile_fits
from aiinfra.installer.report import print_summary
from aiinfra.installer.run import Progress, run_playbook
from aiinfra.installer.spec import check_specs, span_nodes, validate
from aiinfra.installer.workstation import EnvironmentProblem


@click.command("validate")
@click.option("--host", "pattern", required=True, help="Host, group, or comma-separated hosts.")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate_cmd(pattern: str, inventory: str | None, as_json: bool) -> None:
    """Check the host spec; change nothing. Exit 2 on any error."""
    inv, hosts = load_hosts(inventory, pattern)
    errors, warnings = check_specs(inv, hosts)
    if as_json:
        report = {host: [{"field": e.field, "message": e.message} for e in errors if e.host == host] for host in hosts}
        warned = {h: [{"field": w.field, "message": w.message} for w in warnings if w.host == h] for h in hosts}
        click.echo(
            json.dumps({"valid": not errors, "inventory": str(inv.path), "hosts": report, "warnings": warned}, indent=2)
        )
    else:
        for error in errors:
            click.echo(str(error), err=True)
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        for host in hosts:
            if not any(e.host == host for e in errors):
                click.echo(f"{host}: spec ok")
        for line in secure_boot_here(inv, hosts):
            click.echo(line)
    if errors:
        sys.exit(EXIT_BAD_INPUT)


@click.command()
@click.option("--host", "pattern", required=True, help="Host, group, or comma-separated hosts.")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.option("--check", is_flag=True, help="Dry run: report what would change, change nothing.")
@click.option("--diff", is_flag=True, help="Show the changes made to files.")
@click.option("--tags", help="Only run roles/tasks with these tags (comma-separated).")
@click.option("--allow-reboot", is_flag=True, help="Let the run reboot hosts that need it.")
@click.option(
    "--allow-network-change",
    is_flag=True,
    help="Apply changed VLANs (with an automatic rollback if the connection is lost); else they are staged.",
)
@click.option("--json", "as_json", is_flag=True, help="No live progress; print the summary as JSON.")
def install(
    pattern: str,
    inventory: str | None,
    check: bool,
    diff: bool,
    tags: str | None,
    allow_reboot: bool,
    allow_network_change: bool,
    as_json: bool,
) -> None:
    """Validate the spec, then converge the host(s) with playbooks/site.yml.

    Exit codes: 0 done, 1 a task failed, 2 bad spec or unknown host (nothing ran),
    3 a host was unreachable, 4 this machine lacks what the run needs.
    """
    inv, hosts = load_hosts(inventory, pattern)
    errors, warnings = check_specs(inv, hosts)
    if errors:
        for error in errors:
            click.echo(str(error), err=True)
        fail(f"spec invalid ({len(errors)} error{'s' * (len(errors) > 1)}); nothing was changed", EXIT_BAD_INPUT)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    out = None if as_json else sys.stderr
    progress = Progress(out=out, live=lambda: out is not None and out.isatty())
    if out is not None:
        mode = " (check mode: nothing will change)" if check else ""
        click.echo(f"installing {', '.join(hosts)} from {inv.path}{mode}", err=True)
    try:
        summary = run_playbook(
            inv.path,
            ",".join(hosts),
            check=check,
            diff=diff,
            tags=tags,
            allow_reboot=allow_reboot,
            allow_network_change=allow_network_change,
            nodes=span_nodes(inv, hosts)[1],
            progress=progress,
        )
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        print_summary(summary)
    sys.exit(summary.exit_code)


@click.command("plan")
@click.option("--host", "pattern", required=True, help="Host, group, or comma-separated hosts.")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.option("--profile", "only", help="Plan this profile only (default: every profile).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(pattern: str, inventory: str | None, only: str | None, as_json: bool) -> None:
    """Size each profile's engines against their GPUs: weights, KV cache, overhead, what fits.

    Exit codes: 0 planned, 2 bad spec, unknown profile, model or GPU memory.
    """
    inv, hosts = load_hosts(inventory, pattern)
    report: dict[str, dict[str, list[dict]]] = {}
    engine_gpus: dict[str, list[int]] = {}
    for host in hosts:
        spec, errors = validate(host, inv.hostvars[host])
        if spec is None:
            for error in errors:
                click.echo(str(error), err=True)
            fail(f"{host}: spec invalid; fix it before planning", EXIT_BAD_INPUT)
        if only is not None and only not in spec.profiles:
            fail(f"{host}: profile {only!r} not in profiles ({', '.join(spec.profiles) or 'none'})", EXIT_BAD_INPUT)
        engine_gpus |= {name: engine.gpus for name, engine in spec.engines.items()}
        try:
            report[host] = {p: profile_fits(spec, p) for p in spec.profiles if only in (None, p)}
        except plan.PlanError as exc:
            fail(f"{host}: {exc}", EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for host, profiles in report.items():
        for name, rows in profiles.items():
            click.echo(f"{host} profile {name}")
            click.echo(plan_table(rows))
    for line in gpu_links_here(engine_gpus) + secure_boot_here(inv, hosts):
        click.echo(line)
