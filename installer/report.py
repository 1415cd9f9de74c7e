"""What `aiinfra install` tells the operator at the end: a row per host, then what needs them."""

from __future__ import annotations

from pathlib import Path

import click

from aiinfra.installer.run import RunSummary


def print_summary(summary: RunSummary) -> None:
    width = max((len(h) for h in summary.hosts), default=4)
    click.echo(f"{'HOST':<{width}}  {'OK':>4} {'CHANGED':>7} {'FAILED':>6} {'UNREACHABLE':>11} {'SKIPPED':>7}")
    for host, t in summary.hosts.items():
        click.echo(f"{host:<{width}}  {t.ok:>4} {t.changed:>7} {t.failed:>6} {t.unreachable:>11} {t.skipped:>7}")
    totals = summary.as_dict()
    mode = " (check mode)" if summary.check else ""
    click.echo(
        f"changed {totals['changed']}, failed {sum(t.failed for t in summary.hosts.values())}, "
        f"unreachable {sum(t.unreachable for t in summary.hosts.values())} "
        f"in {summary.duration_s:.0f}s{mode}"
    )
    for line in summary.failures:
        click.echo(f"  failed: {line}")
    if totals["reboot_required"]:
        click.echo(
            f"reboot required: {', '.join(totals['reboot_required'])} "
            "(reboot when convenient, or re-run with --allow-reboot)"
        )
    if totals["network_change_staged"]:
        click.echo(
            f"network change staged, not applied: {', '.join(totals['network_change_staged'])} "
            "(re-run with --allow-network-change)"
        )
    sources = {
        "mirror": "from the mirror",
        "download": "downloaded",
        "present": "already in place",
        "kept": "back to a version kept on the box",
    }
    for host, t in summary.hosts.items():
        if t.secure_boot:
            click.echo(f"secure boot: {host} {t.secure_boot}")
        if t.model_storage:
            click.echo(f"model storage: {host} {t.model_storage}")
        if t.models:
            counts = ", ".join(f"{n} {sources.get(source, source)}" for source, n in sorted(t.models.items()))
            click.echo(f"models: {host} {counts}")
        if t.agent:
            click.echo(f"agent: {host} {t.agent}")
    if summary.slowest:
        click.echo("slowest: " + ", ".join(f"{task} {s:.0f}s" for task, s in summary.slowest[:3]))
    click.echo(f"log: {Path(summary.run_dir) / 'artifacts' / 'ansible' / 'stdout'}")
