"""Filters of the gpu_tuning role: nvidia-smi's CSV lines against the wanted settings.

Lines come from `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`. Power limits are one
number for every GPU or a mapping of GPU index to watts (keys may arrive as strings).
"""

from __future__ import annotations


def _wanted(power, index: int):
    if isinstance(power, dict):
        return {int(k): v for k, v in power.items()}.get(index)
    return power


def _rows(lines):
    return [[field.strip() for field in line.split(",")] for line in lines if line.strip()]


def power_limit_problems(lines, power) -> list[str]:
    """Limits outside what a card allows, and limits for GPUs that are not there.
    Lines: index, power.min_limit, power.max_limit."""
    rows = _rows(lines)
    problems = []
    if isinstance(power, dict):
        present = {int(row[0]) for row in rows}
        problems += [
            f"gpu_power_limit_watts: GPU {gpu} does not exist; nvidia-smi sees {len(rows)} GPU(s)"
            for gpu in sorted(int(k) for k in power)
            if gpu not in present
        ]
    for index, low, high in rows:
        watts = _wanted(power, int(index))
        if watts is not None and not float(low) <= float(watts) <= float(high):
            problems.append(
                f"gpu_power_limit_watts: GPU {index} allows {float(low):.0f}-{float(high):.0f} W, not {watts} W"
            )
    return problems


def settings_problems(lines, power, persistence: bool) -> list[str]:
    """Settings in force that differ from the wanted ones. Lines: index, power.limit, persistence_mode."""
    problems = []
    for index, limit, mode in _rows(lines):
        watts = _wanted(power, int(index))
        if watts is not None and abs(float(limit) - float(watts)) >= 1:
            problems.append(f"GPU {index}: power limit is {float(limit):.0f} W, wanted {watts} W")
        if (mode == "Enabled") != persistence:
            problems.append(f"GPU {index}: persistence mode is {mode}, wanted {'on' if persistence else 'off'}")
    return problems


class FilterModule:
    def filters(self):
        return {"power_limit_problems": power_limit_problems, "settings_problems": settings_problems}
