"""The GPUs: read them through NVML, apply their settings (the boot unit's job)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from aiinfra.agent.config import GPU_SETTINGS_PATH, ConfigError, load_gpu_settings
from aiinfra.agent.exits import EXIT_BAD_INPUT
from aiinfra.agent.gpu.nvml import Nvml
from aiinfra.agent.gpu.policy import Refused, SetPersistence, SetPowerLimit, settings_actions


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
@click.option("--json", "as_json", is_flag=True, help="Print the GPUs' settings and the verdict as JSON.")
def gpu_apply(settings_path: Path, as_json: bool) -> None:
    """Apply power limits and persistence mode now and read them back (the boot unit's job).

    Exit 1 if a setting did not stick, 2 if a wanted limit is outside what a card allows: then
    nothing is changed on any GPU."""

    def verdict(code: int, gpus: list | None = None, refused: list[str] = (), left: list = (), error: str = ""):
        if as_json:
            found = {"applied": code == 0, "gpus": gpus or [], "refused": list(refused),
                     "did_not_stick": [str(a) for a in left], "error": error or None}  # fmt: skip
            click.echo(json.dumps(found, indent=2))
        else:
            for g in gpus or []:
                click.echo(f"GPU {g['index']} {g['name']}: power limit {g['power_limit_w']:.0f} W, "
                           f"persistence {'on' if g['persistence'] else 'off'}")  # fmt: skip
            for line in [error] if error else []:
                click.echo(f"aiinfra-agent: {line}", err=True)
            for reason in refused:
                click.echo(f"aiinfra-agent: {reason}", err=True)
            if refused:
                click.echo(f"aiinfra-agent: nothing changed; fix {settings_path}", err=True)
            if left:
                click.echo(f"aiinfra-agent: did not stick: {list(left)}", err=True)
        if code:
            sys.exit(code)

    try:
        settings = load_gpu_settings(settings_path)
    except ConfigError as exc:
        if as_json:
            verdict(EXIT_BAD_INPUT, error=str(exc))
        click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_INPUT)
    nvml = Nvml()
    snapshot = nvml.read()
    if snapshot.state != "ok":
        verdict(1, error=f"{snapshot.state}: {snapshot.message}")
    actions = settings_actions(snapshot, settings.power_limit_watts, settings.persistence_mode, {}, 0, 0)
    refused = [a.reason for a in actions if isinstance(a, Refused)]
    if refused:
        nvml.shutdown()
        verdict(EXIT_BAD_INPUT, refused=refused)
    for action in actions:
        if isinstance(action, SetPowerLimit):
            nvml.set_power_limit(action.gpu, action.watts)
        elif isinstance(action, SetPersistence):
            nvml.set_persistence(action.gpu, action.enabled)
    after = nvml.read()
    left = settings_actions(after, settings.power_limit_watts, settings.persistence_mode, {}, 0, 0)
    nvml.shutdown()
    gpus = [{"index": g.index, "name": g.name, "power_limit_w": g.power_limit_w, "persistence": g.persistence}
            for g in after.gpus]  # fmt: skip
    verdict(1 if left else 0, gpus=gpus, left=left)


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
