"""TEST DOUBLE for NVIDIA's `pynvml` (nvidia-ml-py), from the hardware kit: no GPU, no driver.

Put this folder first on PYTHONPATH and `import pynvml` finds it. Same function names, constants and
NVMLError classes (one subclass per error code, as the real module makes) as the real one, for the
calls aiinfra uses. GPU state lives in a JSON file named by AIINFRA_FAKE_NVML, read on every call, so
a test changes the "hardware" by rewriting the file:

  {"driver": "580.105.08", "library": "580.105.08", "init_error": null,
   "gpus": [{"name": "NVIDIA GeForce RTX 3090", "memory_total": 25769803776, "memory_used": 0,
             "power_limit_mw": 350000, "power_min_mw": 100000, "power_max_mw": 390000,
             "power_default_mw": 350000, "power_usage_mw": 30000, "persistence": 1,
             "temperature": 40, "utilization": 0, "sm_clock": 210, "throttle": 0, "lost": false,
             "xid": []}]}

`init_error` (an NVML_ERROR_* code) makes nvmlInit fail (9: driver not loaded, 18: library/kernel
version mismatch); a GPU with "lost": true answers NVML_ERROR_GPU_IS_LOST; "xid" lists XID errors
that the event set hands out once each; one with "hang": true makes every call about it hang until the
flag is cleared. Set calls write back and are counted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_UNKNOWN = 999
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
nvmlEventTypeXidCriticalError = 0x0000000000000008

_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_TIMEOUT: "Timeout",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_LIB_RM_VERSION_MISMATCH: "RM has detected an NVML/RM version mismatch.",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    _valClassMapping: dict[int, type] = {}

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self):
        return _STRINGS.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other):
        return self.value == other.value

    __hash__ = Exception.__hash__


def _make_error_classes() -> None:
    module = sys.modules[__name__]
    for name in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        value = getattr(module, name)
        class_name = "NVMLError_" + "".join(part.title() for part in name.removeprefix("NVML_ERROR_").split("_"))
        cls = type(class_name, (NVMLError,), {"__new__": lambda c, v=value: Exception.__new__(c)})

        def _new(c, v=value):
            obj = Exception.__new__(c)
            obj.value = v
            return obj

        cls.__new__ = _new
        setattr(module, class_name, cls)
        NVMLError._valClassMapping[value] = cls


_make_error_classes()
_initialized = False


def _path() -> str:
    path = os.environ.get("AIINFRA_FAKE_NVML")
    if not path:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND)
    return path


def _state() -> dict:
    try:
        with open(_path()) as f:
            return json.load(f)
    except FileNotFoundError:
        raise NVMLError(NVML_ERROR_LIBRARY_NOT_FOUND) from None


def _save(state: dict) -> None:
    tmp = _path() + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, _path())


def _check() -> dict:
    if not _initialized:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    state = _state()
    if state.get("init_error"):  # the library was replaced under a running process: every call fails
        raise NVMLError(state["init_error"])
    return state


def _gpu(handle: int, state: dict | None = None) -> dict:
    state = state or _check()
    if handle >= len(state["gpus"]):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    gpu = state["gpus"][handle]
    while gpu.get("hang"):  # a GPU off the bus can leave a call hanging: until the file says otherwise
        time.sleep(0.1)
        gpu = _state()["gpus"][handle]
    if gpu.get("lost"):
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)
    return gpu


def nvmlInit() -> None:
    global _initialized
    state = _state()
    if state.get("init_error"):
        raise NVMLError(state["init_error"])
    _initialized = True


def nvmlShutdown() -> None:
    global _initialized
    _check()
    _initialized = False


def nvmlSystemGetDriverVersion() -> str:
    return _check()["driver"]


def nvmlSystemGetNVMLVersion() -> str:
    return "12." + _check()["library"]


def nvmlDeviceGetCount() -> int:
    return len(_check()["gpus"])


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    _gpu(index)
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return _gpu(handle)["name"]


def nvmlDeviceGetUUID(handle: int) -> str:
    return _gpu(handle).get("uuid", f"GPU-fake-{handle:04d}")


def nvmlDeviceGetPciInfo(handle: int) -> SimpleNamespace:
    return SimpleNamespace(busId=_gpu(handle).get("bus_id", f"00000000:{handle + 1:02X}:00.0"))


def nvmlDeviceGetMemoryInfo(handle: int) -> SimpleNamespace:
    gpu = _gpu(handle)
    return SimpleNamespace(
        total=gpu["memory_total"], used=gpu["memory_used"], free=gpu["memory_total"] - gpu["memory_used"]
    )


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=_gpu(handle)["utilization"], memory=0)


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
    return _gpu(handle)["temperature"]


NVML_P2P_CAPS_INDEX_READ = 0
NVML_P2P_CAPS_INDEX_NVLINK = 2
NVML_P2P_STATUS_OK = 0
NVML_P2P_STATUS_CHIPSET_NOT_SUPPORTED = 1
NVML_P2P_STATUS_NOT_SUPPORTED = 5
NVML_NVLINK_MAX_LINKS = 18


def nvmlDeviceGetP2PStatus(handle1: int, handle2: int, index: int) -> int:
    """The state's `p2p` {"0-1": {"read": status, "nvlink": status}}; unset: P2P over PCIe, no NVLink."""
    state = _check()
    _gpu(handle1, state), _gpu(handle2, state)
    pair = state.get("p2p", {}).get(f"{min(handle1, handle2)}-{max(handle1, handle2)}", {})
    kind = "nvlink" if index == NVML_P2P_CAPS_INDEX_NVLINK else "read"
    return pair.get(kind, NVML_P2P_STATUS_OK if kind == "read" else NVML_P2P_STATUS_NOT_SUPPORTED)


def nvmlDeviceGetNvLinkState(handle: int, link: int) -> int:
    """The GPU's `nvlinks` (how many are up); past them, or a card without NVLink, NOT_SUPPORTED."""
    gpu = _gpu(handle)
    if link >= gpu.get("nvlinks", 0):
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return NVML_FEATURE_ENABLED


def nvmlDeviceGetTotalEnergyConsumption(handle: int) -> int:
    """mJ since the driver loaded: the state's `energy_mj`; a card with `energy_counter: false` has none."""
    gpu = _gpu(handle)
    if gpu.get("energy_counter") is False:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return int(gpu.get("energy_mj", 0))


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[SimpleNamespace]:
    """The processes holding memory on the GPU: the state's `processes`, [{pid, used}] (bytes)."""
    return [SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("used")) for p in _gpu(handle).get("processes", [])]


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    return _gpu(handle)["power_usage_mw"]


def nvmlDeviceGetPowerManagementLimit(handle: int) -> int:
    return _gpu(handle)["power_limit_mw"]


def nvmlDeviceGetEnforcedPowerLimit(handle: int) -> int:
    return _gpu(handle)["power_limit_mw"]


def nvmlDeviceGetPowerManagementLimitConstraints(handle: int) -> list[int]:
    gpu = _gpu(handle)
    return [gpu["power_min_mw"], gpu["power_max_mw"]]


def nvmlDeviceGetPowerManagementDefaultLimit(handle: int) -> int:
    return _gpu(handle)["power_default_mw"]


def nvmlDeviceGetPersistenceMode(handle: int) -> int:
    return _gpu(handle)["persistence"]


def nvmlDeviceGetClockInfo(handle: int, clock: int) -> int:
    return _gpu(handle)["sm_clock"]


def nvmlDeviceGetCurrentClocksEventReasons(handle: int) -> int:
    return _gpu(handle)["throttle"]


nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons


def nvmlDeviceSetPowerManagementLimit(handle: int, limit_mw: int) -> None:
    state = _check()
    gpu = _gpu(handle, state)
    if not gpu["power_min_mw"] <= limit_mw <= gpu["power_max_mw"]:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    gpu["power_limit_mw"] = limit_mw
    gpu["set_power_calls"] = gpu.get("set_power_calls", 0) + 1
    _save(state)


def nvmlDeviceSetPersistenceMode(handle: int, mode: int) -> None:
    state = _check()
    gpu = _gpu(handle, state)
    gpu["persistence"] = mode
    gpu["set_persistence_calls"] = gpu.get("set_persistence_calls", 0) + 1
    _save(state)


def nvmlEventSetCreate() -> list[int]:
    _check()
    return []


def nvmlDeviceRegisterEvents(handle: int, event_types: int, event_set: list[int]) -> None:
    _gpu(handle)
    event_set.append(handle)


def nvmlEventSetWait_v2(event_set: list[int], timeout_ms: int) -> SimpleNamespace:
    """One pending XID of a registered GPU ("xid": [79, ...] in the state file), else a timeout."""
    state = _check()
    for handle in event_set:
        pending = state["gpus"][handle].get("xid", [])
        if pending:
            xid = pending.pop(0)
            _save(state)
            return SimpleNamespace(device=handle, eventType=nvmlEventTypeXidCriticalError, eventData=xid)
    raise NVMLError(NVML_ERROR_TIMEOUT)


def nvmlEventSetFree(event_set: list[int]) -> None:
    event_set.clear()
