"""Putting GPU settings in place: the one applier of the boot unit (`gpu apply`), the running agent
(gpu/monitor.py) and the gpu_tuning role's checks (`gpu apply --check`). What to change is decided
by policy.settings_actions; this module only carries it out through NVML and reads the result back."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiinfra.agent.gpu.nvml import Nvml, Snapshot
from aiinfra.agent.gpu.policy import CannotApply, SetPersistence, SetPowerLimit, settings_actions


def apply_action(nvml: Nvml, action: SetPowerLimit | SetPersistence) -> str:
    """Carry one action out (NVML's errors pass through); returns what was set, in words."""
    if isinstance(action, SetPowerLimit):
        nvml.set_power_limit(action.gpu, action.watts)
        return f"power limit {action.watts} W"
    nvml.set_persistence(action.gpu, action.enabled)
    return f"persistence mode {'on' if action.enabled else 'off'}"


def describe(snapshot: Snapshot, action: SetPowerLimit | SetPersistence) -> str:
    """A drifted setting as an operator reads it: what is in force, and what is wanted."""
    gpu = next(g for g in snapshot.gpus if g.index == action.gpu)
    if isinstance(action, SetPowerLimit):
        return f"GPU {gpu.index}: power limit is {gpu.power_limit_w:.0f} W, wanted {action.watts} W"
    now, wanted = ("on" if gpu.persistence else "off"), ("on" if action.enabled else "off")
    return f"GPU {gpu.index}: persistence mode is {now}, wanted {wanted}"


@dataclass
class Outcome:
    snapshot: Snapshot  # the GPUs as read at the end
    refused: list[str] = field(default_factory=list)  # nothing was changed on any GPU
    differ: list[str] = field(default_factory=list)  # settings not as wanted (after applying, or --check)
    error: str = ""  # NVML could not be read


def put_in_place(nvml: Nvml, power: int | dict[int, int] | None, persistence: bool | None, check: bool) -> Outcome:
    """Apply the wanted settings to every GPU and read them back; check: only say what differs."""
    before = nvml.read()
    if before.state != "ok":
        return Outcome(before, error=f"{before.state}: {before.message}")
    actions = settings_actions(before, power, persistence, {}, 0, 0)
    refused = [a.reason for a in actions if isinstance(a, CannotApply)]
    if refused or check:
        changes = [a for a in actions if not isinstance(a, CannotApply)]
        return Outcome(before, refused, [describe(before, a) for a in changes])
    for action in actions:
        assert not isinstance(action, CannotApply)
        apply_action(nvml, action)
    after = nvml.read()
    left = [a for a in settings_actions(after, power, persistence, {}, 0, 0) if not isinstance(a, CannotApply)]
    return Outcome(after, differ=[describe(after, a) for a in left])
