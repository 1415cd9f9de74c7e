"""Pure GPU decisions: which settings to re-apply, and what the driver's state means for the engines."""

from __future__ import annotations

from dataclasses import dataclass

from aiinfra.agent.gpu.nvml import Snapshot


@dataclass(frozen=True)
class SetPowerLimit:
    gpu: int
    watts: int


@dataclass(frozen=True)
class SetPersistence:
    gpu: int
    enabled: bool


@dataclass(frozen=True)
class CannotApply:
    gpu: int
    reason: str


GpuAction = SetPowerLimit | SetPersistence | CannotApply


def wanted_power(power: int | dict[int, int] | None, gpu: int) -> int | None:
    return power.get(gpu) if isinstance(power, dict) else power


def settings_actions(
    snapshot: Snapshot,
    power: int | dict[int, int] | None,
    persistence: bool | None,
    last_try: dict[tuple[int, str], float],
    now: float,
    min_interval_s: float,
) -> list[GpuAction]:
    """Settings that drifted from the desired ones, at most once per min_interval_s per GPU and setting;
    CannotApply for a limit a card does not allow or a GPU that is not there (then apply nothing)."""
    actions: list[GpuAction] = []
    present = {gpu.index for gpu in snapshot.gpus}
    for index in sorted(power) if isinstance(power, dict) else ():
        if index not in present:
            actions.append(CannotApply(index, f"GPU {index} does not exist; NVML sees {len(present)} GPU(s)"))
    for gpu in snapshot.gpus:
        if gpu.lost:
            continue
        watts = wanted_power(power, gpu.index)
        if watts is not None and abs(gpu.power_limit_w - watts) >= 1:
            if not gpu.power_min_w <= watts <= gpu.power_max_w:
                actions.append(
                    CannotApply(
                        gpu.index,
                        f"power limit {watts} W is outside what GPU {gpu.index} allows "
                        f"({gpu.power_min_w:.0f}-{gpu.power_max_w:.0f} W)",
                    )
                )
            elif now - last_try.get((gpu.index, "power"), float("-inf")) >= min_interval_s:
                actions.append(SetPowerLimit(gpu.index, watts))
        if (
            persistence is not None
            and gpu.persistence != persistence
            and (now - last_try.get((gpu.index, "persistence"), float("-inf")) >= min_interval_s)
        ):
            actions.append(SetPersistence(gpu.index, persistence))
    return actions


@dataclass(frozen=True)
class Verdict:
    state: str  # ok, no_gpu, reboot_required, gpu_lost, error
    hold: bool  # engines may not start now
    restart_engines: bool  # the loaded driver changed under running engines: restart them once
    message: str = ""
    warnings: tuple[str, ...] = ()


def driver_verdict(
    snapshot: Snapshot, engines_driver: str | None, pinned: str | None, expected_count: int | None, marker: bool
) -> Verdict:
    """What the driver and GPUs mean for the engines.

    A kernel module and user-space library that disagree hold every start: restarting engines cannot
    help until a reboot, and a loop of restarts (the failure seen elsewhere) only hides it.
    """
    warnings = []
    if marker:
        warnings.append("the host asks for a reboot (/run/reboot-required)")
    if snapshot.state == "mismatch":
        return Verdict("reboot_required", True, False, snapshot.message, tuple(warnings))
    if snapshot.state != "ok":
        return Verdict(snapshot.state, True, False, snapshot.message, tuple(warnings))
    if pinned is not None and snapshot.driver != pinned:
        warnings.append(f"driver drift: {snapshot.driver} is loaded, {pinned} is pinned")
    if snapshot.kernel_module and snapshot.library and snapshot.kernel_module != snapshot.library:
        message = (
            f"kernel module {snapshot.kernel_module} and library {snapshot.library} differ: reboot to load "
            "the installed driver"
        )
        return Verdict("reboot_required", True, False, message, tuple(warnings))
    if expected_count is not None and len(snapshot.gpus) != expected_count:
        warnings.append(f"{len(snapshot.gpus)} GPUs found, {expected_count} expected")
    changed = engines_driver is not None and snapshot.driver != engines_driver
    message = f"driver changed {engines_driver} → {snapshot.driver}" if changed else ""
    return Verdict("ok", False, changed, message, tuple(warnings))


def placement_problem(pids: set[int], gpus: list[int], snapshot: Snapshot, expect_memory: bool = True) -> str | None:
    """Whether an engine's processes (PIDS) hold memory on exactly the GPUs it was given. None: they do.
    expect_memory=False (an engine that loads on first use, or a CPU build): only memory on a GPU it was
    not given is a problem."""
    if snapshot.state != "ok":
        return None
    held = sorted({gpu.index for gpu in snapshot.gpus if pids & set(gpu.processes)})
    given = sorted(set(gpus))
    if not held:
        return "holds no GPU memory: running on the CPU?" if expect_memory else None
    if held != given:
        return f"holds memory on GPU {', '.join(map(str, held))}, not on its GPU {', '.join(map(str, given))}"
    return None


# Ollama loads a model at its first request and unloads it after a while idle: it is held to have
# GPU memory only this long after it last answered.
OLLAMA_LOADED_AFTER_TRAFFIC_S = 60.0


def expects_memory(runtime: str, cpu_build: bool, last_answer: float | None, now: float) -> bool:
    """Whether a ready engine must hold memory on its GPUs: vLLM always (a CPU build never), Ollama
    only while it has answered lately."""
    if runtime == "vllm":
        return not cpu_build
    return last_answer is not None and now - last_answer < OLLAMA_LOADED_AFTER_TRAFFIC_S


# NVML's P2P status codes (nvmlGpuP2PStatus_t), as an operator reads them.
P2P_STATUS = {0: "ok", 1: "chipset not supported", 2: "GPU not supported", 3: "IOH topology not supported",
              4: "disabled by regkey", 5: "not supported", 6: "unknown"}  # fmt: skip


@dataclass(frozen=True)
class TensorPath:
    """How the GPUs of a tensor-parallel engine reach each other, and the NCCL setting that fits."""

    gpus: tuple[int, ...]
    path: str  # nvlink, pcie (P2P over PCIe), host (no P2P: through host memory)
    env: tuple[tuple[str, str], ...] = ()
    reason: str = ""


def tensor_path(gpus: list[int], links: dict[tuple[int, int], tuple[int, int]]) -> TensorPath:
    """LINKS: (read, nvlink) P2P status of each pair of GPUS. Without P2P on every pair, NCCL must not
    try it: vLLM's tensor parallelism on such cards hangs at its first all-reduce (vllm #14449, #8087);
    NCCL_P2P_DISABLE=1 sends the traffic through host memory instead, slower but working."""
    pairs = [(a, b) for i, a in enumerate(sorted(gpus)) for b in sorted(gpus)[i + 1 :]]
    if all(links[p][1] == 0 for p in pairs):
        return TensorPath(tuple(sorted(gpus)), "nvlink")
    if all(links[p][0] == 0 for p in pairs):
        return TensorPath(tuple(sorted(gpus)), "pcie")
    a, b = next(p for p in pairs if links[p][0] != 0)
    why = f"no P2P between GPU {a} and GPU {b} ({P2P_STATUS.get(links[(a, b)][0], 'unknown')}): NCCL goes " \
          "through host memory (NCCL_P2P_DISABLE=1), slower; without it tensor parallelism hangs"  # fmt: skip
    return TensorPath(tuple(sorted(gpus)), "host", (("NCCL_P2P_DISABLE", "1"),), why)
