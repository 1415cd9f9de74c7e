"""The gpu_tuning role's filters: nvidia-smi's CSV against the wanted power limits and persistence."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("gpu_tuning", ROOT / "roles/gpu_tuning/filter_plugins/gpu_tuning.py")
gpu_tuning = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_tuning)

CARDS = ["0, 100.00, 390.00", "1, 100.00, 390.00"]


def test_limits_within_the_cards_pass():
    assert gpu_tuning.power_limit_problems(CARDS, 350) == []
    assert gpu_tuning.power_limit_problems(CARDS, {"0": 100, "1": 390}) == []
    assert gpu_tuning.power_limit_problems(CARDS, {1: 300}) == []  # GPU 0 left alone


def test_a_limit_outside_a_card_is_named():
    assert gpu_tuning.power_limit_problems(CARDS, {0: 300, 1: 500}) == [
        "gpu_power_limit_watts: GPU 1 allows 100-390 W, not 500 W"
    ]
    assert gpu_tuning.power_limit_problems(CARDS, 99) == [
        "gpu_power_limit_watts: GPU 0 allows 100-390 W, not 99 W",
        "gpu_power_limit_watts: GPU 1 allows 100-390 W, not 99 W",
    ]


def test_a_limit_for_a_missing_gpu_is_named():
    assert gpu_tuning.power_limit_problems(CARDS, {"2": 300}) == [
        "gpu_power_limit_watts: GPU 2 does not exist; nvidia-smi sees 2 GPU(s)"
    ]


def test_settings_in_force_are_compared():
    now = ["0, 300.00, Enabled", "1, 350.00, Disabled"]
    assert gpu_tuning.settings_problems(now, {0: 300, 1: 320}, True) == [
        "GPU 1: power limit is 350 W, wanted 320 W",
        "GPU 1: persistence mode is Disabled, wanted on",
    ]
    assert gpu_tuning.settings_problems(now, None, False) == ["GPU 0: persistence mode is Enabled, wanted off"]
    assert gpu_tuning.settings_problems(["0, 300.40, Enabled"], 300, True) == []
