"""Thin NVML backend over pynvml (nvidia-ml-py). Lifecycle errors are states, never exceptions:
a failed read shuts NVML down and the next read initialises it again."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KERNEL_VERSION_FILES = ("/sys/module/nvidia/version", "/proc/driver/nvidia/version")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str = ""
    name: str = ""
    bus_id: str = ""
    memory_total: int = 0
    memory_used: int = 0
    utilization: int = 0  # percent
    temperature: int = 0  # °C
    power_draw_w: float = 0.0
    power_limit_w: float = 0.0
    power_min_w: float = 0.0
    power_max_w: float = 0.0
    power_default_w: float = 0.0
    persistence: bool = False
    sm_clock_mhz: int = 0
    throttle_reasons: int = 0
    lost: bool = False
    processes: tuple[int, ...] = ()  # the pids holding memory on it (compute processes)
    energy_mj: int | None = None  # energy since the driver loaded; None: the card has no counter


@dataclass(frozen=True)
class Snapshot:
    state: str  # ok, no_gpu, mismatch, gpu_lost, error
    message: str = ""
    driver: str | None = None  # the loaded driver, as NVML reports it
    library: str | None = None  # the user-space NVML library's version
    kernel_module: str | None = None  # /sys/module/nvidia/version
    gpus: tuple[GpuInfo, ...] = ()
    xids: tuple[tuple[int, int], ...] = field(default=())  # (gpu index, XID) since the last read


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def kernel_module_version(files: tuple[str, ...] = KERNEL_VERSION_FILES) -> str | None:
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError:
            continue
        found = re.search(r"\d{3}\.\d{2,3}(\.\d{2,3})?", text)
        if found:
            return found.group(0)
    return None


class Nvml:
    def __init__(self) -> None:
        self.initialized = False
        self.events: Any = None
        self.lib: Any = None  # pynvml, where installed; its functions are untyped
        try:
            import pynvml
        except ImportError:
            pass
        else:
            self.lib = pynvml

    def _lifecycle(self, exc: Exception) -> Snapshot:
        nv = self.lib
        code = getattr(exc, "value", None)
        self.shutdown()
        if code in (nv.NVML_ERROR_DRIVER_NOT_LOADED, nv.NVML_ERROR_LIBRARY_NOT_FOUND):
            return Snapshot("no_gpu", f"no NVIDIA driver: {exc}")
        if code == nv.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
            kernel = kernel_module_version()
            return Snapshot(
                "mismatch",
                f"driver library and kernel module differ ({exc}); kernel module "
                f"{kernel or 'unknown'}: reboot to load the installed driver",
                kernel_module=kernel,
            )
        if code == nv.NVML_ERROR_GPU_IS_LOST:
            return Snapshot("gpu_lost", f"a GPU fell off the bus ({exc}); reboot or reset it")
        return Snapshot("error", f"NVML: {exc}")

    def read(self) -> Snapshot:
        if self.lib is None:
            return Snapshot("no_gpu", "nvidia-ml-py (pynvml) is not installed")
        nv = self.lib
        try:
            if not self.initialized:
                nv.nvmlInit()
                self.initialized = True
                self._register_xid_events()
            driver = _text(nv.nvmlSystemGetDriverVersion())
            library = _text(nv.nvmlSystemGetNVMLVersion()).split(".", 1)[-1]  # "12.580.105.08" → driver part
            gpus = tuple(self._gpu(i) for i in range(nv.nvmlDeviceGetCount()))
            xids = self._drain_xids()
        except nv.NVMLError as exc:
            return self._lifecycle(exc)
        return Snapshot("ok", "", driver, library, kernel_module_version(), gpus, xids)

    def _gpu(self, index: int) -> GpuInfo:
        nv = self.lib
        h = nv.nvmlDeviceGetHandleByIndex(index)
        memory = nv.nvmlDeviceGetMemoryInfo(h)
        low, high = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
        return GpuInfo(
            index=index,
            uuid=_text(nv.nvmlDeviceGetUUID(h)),
            name=_text(nv.nvmlDeviceGetName(h)),
            bus_id=_text(nv.nvmlDeviceGetPciInfo(h).busId),
            memory_total=memory.total,
            memory_used=memory.used,
            utilization=nv.nvmlDeviceGetUtilizationRates(h).gpu,
            temperature=nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU),
            power_draw_w=nv.nvmlDeviceGetPowerUsage(h) / 1000,
            power_limit_w=nv.nvmlDeviceGetPowerManagementLimit(h) / 1000,
            power_min_w=low / 1000,
            power_max_w=high / 1000,
            power_default_w=nv.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000,
            persistence=nv.nvmlDeviceGetPersistenceMode(h) == nv.NVML_FEATURE_ENABLED,
            sm_clock_mhz=nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
            throttle_reasons=nv.nvmlDeviceGetCurrentClocksThrottleReasons(h),
            processes=self._processes(h),
            energy_mj=self._energy(h),
        )

    def _energy(self, handle: Any) -> int | None:
        nv = self.lib
        try:
            return int(nv.nvmlDeviceGetTotalEnergyConsumption(handle))
        except nv.NVMLError as exc:
            if getattr(exc, "value", None) == nv.NVML_ERROR_NOT_SUPPORTED:
                return None  # before Volta: power draw, integrated, stands in
            raise

    def _processes(self, handle: Any) -> tuple[int, ...]:
        nv = self.lib
        try:
            return tuple(p.pid for p in nv.nvmlDeviceGetComputeRunningProcesses(handle))
        except nv.NVMLError as exc:
            if getattr(exc, "value", None) == nv.NVML_ERROR_NOT_SUPPORTED:
                return ()
            raise

    def links(self, a: int, b: int) -> tuple[int, int]:
        """P2P between GPUs A and B: NVML's status for reads over PCIe and for NVLink (0: OK)."""
        nv = self.lib
        ha, hb = nv.nvmlDeviceGetHandleByIndex(a), nv.nvmlDeviceGetHandleByIndex(b)
        read = 0  # NVML_P2P_CAPS_INDEX_READ: pynvml defines it as the tuple (0,)
        return nv.nvmlDeviceGetP2PStatus(ha, hb, read), nv.nvmlDeviceGetP2PStatus(ha, hb, nv.NVML_P2P_CAPS_INDEX_NVLINK)

    def _register_xid_events(self) -> None:
        nv = self.lib
        try:
            self.events = nv.nvmlEventSetCreate()
            for i in range(nv.nvmlDeviceGetCount()):
                nv.nvmlDeviceRegisterEvents(
                    nv.nvmlDeviceGetHandleByIndex(i), nv.nvmlEventTypeXidCriticalError, self.events
                )
        except nv.NVMLError as exc:
            if getattr(exc, "value", None) != nv.NVML_ERROR_NOT_SUPPORTED:  # XID events where supported
                raise
            self.events = None

    def _drain_xids(self) -> tuple[tuple[int, int], ...]:
        nv = self.lib
        found: list[tuple[int, int]] = []
        while self.events is not None and len(found) < 100:
            try:
                event = nv.nvmlEventSetWait_v2(self.events, 0)
            except nv.NVMLError as exc:
                if getattr(exc, "value", None) == nv.NVML_ERROR_TIMEOUT:
                    break
                raise
            device = event.device
            found.append((device if isinstance(device, int) else -1, int(event.eventData)))
        return tuple(found)

    def set_power_limit(self, index: int, watts: int) -> None:
        nv = self.lib
        nv.nvmlDeviceSetPowerManagementLimit(nv.nvmlDeviceGetHandleByIndex(index), int(watts * 1000))

    def set_persistence(self, index: int, enabled: bool) -> None:
        nv = self.lib
        mode = nv.NVML_FEATURE_ENABLED if enabled else nv.NVML_FEATURE_DISABLED
        nv.nvmlDeviceSetPersistenceMode(nv.nvmlDeviceGetHandleByIndex(index), mode)

    def shutdown(self) -> None:
        if self.initialized and self.lib is not None:
            with contextlib.suppress(self.lib.NVMLError):
                self.lib.nvmlShutdown()
        self.initialized = False
        self.events = None
