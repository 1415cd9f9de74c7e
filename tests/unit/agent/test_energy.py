"""The energy ledger's arithmetic: counters, shares, resets, windows and bounds."""

from aiinfra.agent.energy import HOUR, IDLE, KEEP_HOURS, Ledger
from aiinfra.agent.gpu.nvml import GpuInfo, Snapshot


def read(*gpus: GpuInfo) -> Snapshot:
    return Snapshot("ok", gpus=gpus)


def test_a_gpus_energy_is_shared_by_its_engines_and_a_reset_counter_counts_anew(tmp_path):
    ledger = Ledger(tmp_path / "energy.json")
    t = 1_000_000.0
    ledger.observe(read(GpuInfo(0, energy_mj=10_000), GpuInfo(1, energy_mj=0)), {0: ["a", "b"]}, t, t)
    ledger.observe(read(GpuInfo(0, energy_mj=30_000), GpuInfo(1, energy_mj=5_000)), {0: ["a", "b"]}, t + 2, t + 2)
    # the driver reloaded: its counter starts again
    ledger.observe(read(GpuInfo(0, energy_mj=1_000), GpuInfo(1, energy_mj=6_000)), {0: ["a", "b"]}, t + 4, t + 4)
    ledger.observe(read(GpuInfo(0, energy_mj=3_000), GpuInfo(1, energy_mj=6_000)), {}, t + 6, t + 6)
    totals = ledger.totals()
    assert totals.joules == {"a": 10.0, "b": 10.0, IDLE: 5.0 + 1.0 + 2.0}
    assert totals.seconds == 6


def test_a_card_without_a_counter_integrates_its_draw_and_a_gap_is_not_guessed(tmp_path):
    ledger = Ledger(None)
    t = 1_000_000.0
    ledger.observe(read(GpuInfo(0, power_draw_w=200)), {0: ["a"]}, t, t)
    ledger.observe(read(GpuInfo(0, power_draw_w=200)), {0: ["a"]}, t + 3, t + 3)
    ledger.observe(Snapshot("no_gpu"), {}, t + 10, t + 10)  # NVML away for a while
    ledger.observe(read(GpuInfo(0, power_draw_w=200)), {0: ["a"]}, t + 100, t + 100)
    assert ledger.totals().joules == {"a": 600.0} and ledger.totals().seconds == 3


def test_windows_keep_their_hours_and_the_ledger_stays_bounded(tmp_path):
    ledger = Ledger(tmp_path / "energy.json")
    start = 1_000_000 * HOUR
    for hour in range(KEEP_HOURS + 10):
        ledger.tokens("a", 1, start + hour * HOUR)
    assert len(ledger.hours) == KEEP_HOURS
    now = start + (KEEP_HOURS + 9) * HOUR
    assert ledger.window(3 * HOUR, now + 10).tokens == {"a": 4}  # the four hours the last three overlap
    ledger.save()
    assert Ledger(tmp_path / "energy.json").totals().tokens == {"a": KEEP_HOURS}
    (tmp_path / "energy.json").write_text("{not json")
    assert Ledger(tmp_path / "energy.json").totals().tokens == {}  # unreadable: afresh, never a crash


def test_a_jump_of_the_wall_clock_makes_no_energy():
    ledger, t, mono = Ledger(None), 1_700_000_000.0, 500.0
    ledger.observe(read(GpuInfo(0, power_draw_w=200)), {0: ["a"]}, t, mono)
    ledger.observe(read(GpuInfo(0, power_draw_w=200)), {0: ["a"]}, t + 86_400, mono + 2)  # NTP steps a day ahead
    assert ledger.totals().joules == {"a": 400.0} and ledger.totals().seconds == 2


def test_a_damaged_ledger_is_set_aside_and_counting_starts_afresh(tmp_path, caplog):
    for damaged in ('{"hours": []}', '{"hours": {"0": {"joules": []}}}', '{"hours": {"0": {"tokens": {"a": "7"}}}}',
                    '{"hours": {"x": {}}}', '[1]', "{broken"):  # fmt: skip
        path = tmp_path / "energy.json"
        path.write_text(damaged)
        with caplog.at_level("WARNING", logger="aiinfra.agent"):
            ledger = Ledger(path)
        assert ledger.hours == {}
        aside = [p for p in tmp_path.iterdir() if p.name.startswith("energy.json.damaged-")]
        assert len(aside) == 1 and aside[0].read_text() == damaged, damaged
        assert "set aside" in caplog.text and not path.exists()
        ledger.tokens("a", 5, 7200.0)
        ledger.save()
        assert Ledger(path).totals().tokens == {"a": 5}
        aside[0].unlink()
        path.unlink()
        caplog.clear()
    path.write_text('{"hours": {"0": {"tokens": {"a": 3}}}}')  # a sound one is read, not set aside
    assert Ledger(path).totals().tokens == {"a": 3} and path.exists()
