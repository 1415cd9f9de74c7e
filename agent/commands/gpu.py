"""The GPUs: read them through NVML, apply their settings (the boot unit's job)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from aiinfra.agent.config import GPU_SETTINGS_PATH, ConfigError, load_gpu_settings
from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from aiinfra.agent.gpu.apply import put_in_place
from aiinfra.agent.gpu.nvml import Nvml


@click.group()
def gpu() -> None:
    """The GPUs: read them, and apply the power limit and persistence mode (the boot unit's job)."""


@gpu.command("apply")
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(path_type=Path),
    default=GPU_SETTINGS_PATH,
    show_default=True,
    help="GPU settings (the gpu_tuning role writes them).",
)
@click.option("--check", is_flag=True, help="Change nothing: say what differs from the settings (exit 1 if any).")
@click.option("--json", "as_json", is_flag=True, help="Print the GPUs' settings and the verdict as JSON.")
def gpu_apply(settings_path: Path, check: bool, as_json: bool) -> None:
    """Apply power limits and persistence mode now and read them back (the boot unit's job).

    Exit 1 if a setting did not stick (with --check: differs), 2 if a wanted limit is outside what a
    card allows or names a GPU that is not there: then nothing is changed on any GPU."""
    try:
        settings = load_gpu_settings(settings_path)
    except ConfigError as exc:
        _verdict(as_json, check, EXIT_BAD_INPUT, error=str(exc))
    nvml = Nvml()
    try:
        outcome = put_in_place(nvml, settings.power_limit_watts, settings.persistence_mode, check)
    finally:
        nvml.shutdown()
    if outcome.error:
        _verdict(as_json, check, EXIT_FAILED, error=outcome.error)
    code = EXIT_BAD_INPUT if outcome.refused else EXIT_FAILED if outcome.differ else EXIT_OK
    gpus = [{"index": g.index, "name": g.name, "power_limit_w": g.power_limit_w, "persistence": g.persistence}
            for g in outcome.snapshot.gpus]  # fmt: skip
    _verdict(as_json, check, code, gpus, outcome.refused, outcome.differ, fix=settings_path)


def _verdict(as_json: bool, check: bool, code: int, gpus: list | None = None, refused: Sequence[str] = (),
             differ: Sequence[str] = (), error: str = "", fix: Path | None = None) -> None:  # fmt: skip
    if as_json:
        found = {"applied": code == EXIT_OK and not check, "check": check, "gpus": gpus or [],
                 "refused": list(refused), "differ": list(differ), "error": error or None}  # fmt: skip
        click.echo(json.dumps(found, indent=2))
    else:
        for g in gpus or []:
            click.echo(f"GPU {g['index']} {g['name']}: power limit {g['power_limit_w']:.0f} W, "
                       f"persistence {'on' if g['persistence'] else 'off'}")  # fmt: skip
        for line in [error, *refused] if error else refused:
            click.echo(f"aiinfra-agent: {line}", err=True)
        if refused:
            click.echo(f"aiinfra-agent: nothing changed; fix {fix}", err=True)
        for line in differ:
            click.echo(f"aiinfra-agent: {line}" + ("" if check else " (did not stick)"), err=True)
    sys.exit(code)


@gpu.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def gpu_status(as_json: bool) -> None:
    """Read the GPUs and the driver through NVML, once."""
    nvml = Nvml()
    snapshot = nvml.read()
    nvml.shutdown()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "state": snapshot.state,
                    "message": snapshot.message,
                    "driver": snapshot.driver,
                    "library": snapshot.library,
                    "kernel_module": snapshot.kernel_module,
                    "gpus": [vars(g) for g in snapshot.gpus],
                },
                indent=2,
            )
        )
    else:
        click.echo(
            f"{snapshot.state}: driver {snapshot.driver}, library {snapshot.library}, kernel module "
            f"{snapshot.kernel_module} {snapshot.message}".rstrip()
        )
        for g in snapshot.gpus:
            click.echo(
                f"GPU {g.index} {g.name} {g.bus_id}: {g.memory_used / 2**30:.1f}/{g.memory_total / 2**30:.1f} GiB, "
                f"{g.utilization}% busy, {g.temperature} °C, {g.power_draw_w:.0f}/{g.power_limit_w:.0f} W, "
                f"persistence {'on' if g.persistence else 'off'}"
            )
    sys.exit(0 if snapshot.state == "ok" else 1)
