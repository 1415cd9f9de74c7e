"""GPU decisions without NVML: drifted settings, bounded retries, and the driver's verdict."""

from __future__ import annotations

from aiinfra.agent.gpu.nvml import GpuInfo, Snapshot
from aiinfra.agent.gpu.policy import CannotApply, SetPersistence, SetPowerLimit, driver_verdict, settings_actions

GPU = GpuInfo(index=0, power_limit_w=390, power_min_w=100, power_max_w=390, persistence=False)


def snap(*gpus: GpuInfo, driver: str = "580.105.08", **kw) -> Snapshot:
    return Snapshot("ok", "", driver, kw.pop("library", driver), kw.pop("kernel", None), gpus, **kw)


def test_drifted_settings_are_set_at_most_once_per_interval():
    tried: dict = {}
    actions = settings_actions(snap(GPU), 350, True, tried, now=100, min_interval_s=60)
    assert actions == [SetPowerLimit(0, 350), SetPersistence(0, True)]
    tried.update({(0, "power"): 100, (0, "persistence"): 100})
    assert settings_actions(snap(GPU), 350, True, tried, now=159, min_interval_s=60) == []
    assert len(settings_actions(snap(GPU), 350, True, tried, now=160, min_interval_s=60)) == 2


def test_per_gpu_limits_lost_gpus_and_limits_the_card_refuses():
    other = GpuInfo(index=1, power_limit_w=300, power_min_w=100, power_max_w=390, persistence=True, lost=True)
    assert settings_actions(snap(GPU, other), {0: 390, 1: 250}, None, {}, 0, 60) == []
    refused = settings_actions(snap(GPU), 450, None, {}, 0, 60)
    assert refused == [CannotApply(0, "power limit 450 W is outside what GPU 0 allows (100-390 W)")]


def test_driver_verdicts():
    assert driver_verdict(snap(GPU), None, "580.105.08", 1, False).hold is False
    changed = driver_verdict(snap(GPU, driver="580.126.09"), "580.105.08", "580.105.08", 1, False)
    assert changed.restart_engines and not changed.hold
    assert changed.warnings == ("driver drift: 580.126.09 is loaded, 580.105.08 is pinned",)
    mismatch = driver_verdict(Snapshot("mismatch", "differ"), "580.105.08", None, None, False)
    assert mismatch.state == "reboot_required" and mismatch.hold and not mismatch.restart_engines
    split = driver_verdict(snap(GPU, library="580.126.09", kernel="580.105.08"), None, None, None, True)
    assert split.state == "reboot_required" and split.hold
    assert split.warnings == ("the host asks for a reboot (/run/reboot-required)",)
    assert driver_verdict(Snapshot("no_gpu", "no driver"), None, None, None, False).hold
    assert driver_verdict(snap(GPU), None, None, 2, False).warnings == ("1 GPUs found, 2 expected",)
