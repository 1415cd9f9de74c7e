"""Energy and cost per token: the fake NVML's energy counters (and a card without one), the real agent
and router, real HTTP; `aiinfra-agent cost` against what the agent measured."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest

from aiinfra.installer.workstation import project_dir
from tests.agent.conftest import free_port, vllm
from tests.agent.test_gpu import FAKE, FakeGpus
from tests.agent.test_router import add_key, client

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def metered(make_agent, tmp_path):
    fake = FakeGpus(tmp_path / "nvml.json")

    def meters(state):
        state["gpus"][0]["energy_mj"] = 1_000_000  # GPU 0 counts its energy
        state["gpus"][1].update(energy_counter=False, power_usage_mw=100_000)  # GPU 1 has no counter: 100 W

    fake.change(meters)
    agent = make_agent({"e": vllm(free_port(), "--chunk-delay", "0.1")}, {"p": ["e"]}, "p",
                       policy={"liveness_interval_s": 60})  # fmt: skip
    agent.config["gpu"] = {"persistence_mode": None, "interval_s": 0.2}
    agent.config["cost"] = {"card_cost": 1500, "lifetime_years": 4, "cards": 2}
    agent.env = {"PYTHONPATH": FAKE, "AIINFRA_FAKE_NVML": str(fake.path)}
    agent.start().wait_phase("e", "ready")
    return agent, fake


def energy(agent) -> dict:
    return agent.status()["energy"]


def test_energy_is_attributed_to_the_engine_on_each_gpu_and_a_million_tokens_get_a_price(metered):
    agent, fake = metered
    api = client(agent, add_key(agent, "ann"))
    model = agent.engine("e")["served"][0]
    tokens = sum(api.chat.completions.create(model=model, messages=MSG).usage.total_tokens for _ in range(3))
    for _ in api.chat.completions.create(model=model, messages=MSG, stream=True):
        pass  # a stream keeps the engine busy ~0.6 s
    fake.change(lambda s: s["gpus"][0].update(energy_mj=1_000_000 + 3_600_000))  # GPU 0 used 3600 J
    # The stream's tokens are counted as its handler ends, just after the client has read the last chunk.
    totals = agent.wait(lambda s: s["energy"]["joules"].get("e", 0) >= 3600 and s["energy"]["tokens"].get("e", 0)
                        >= tokens + 6, 5, "the energy read and the stream counted")["energy"]  # fmt: skip
    assert totals["joules"]["e"] == pytest.approx(3600)  # the counter's difference, all the engine's
    assert totals["tokens"]["e"] >= tokens + 6  # the three answers and the stream's
    assert totals["busy_s"]["e"] > 0.3
    # GPU 1 ran nothing: its integrated draw (100 W) is idle energy, about 100 J per second read.
    assert totals["joules"]["(idle)"] == pytest.approx(100 * totals["seconds"], rel=0.3)

    done = agent.cli("cost", "--listen", agent.listen, "--json", "--price-per-kwh", "0.5",
                     "--cloud-price-per-mtok", "0.5")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    joules = report["engines"]["e"]["joules"] + report["idle_joules"]
    assert report["energy_kwh"] == pytest.approx(joules / 3.6e6, rel=1e-3)
    assert report["energy_cost"] == pytest.approx(report["energy_kwh"] * 0.5, abs=1e-4)
    share = report["seconds"] / (4 * 365.25 * 86400)  # this window's part of the cards' four years
    assert report["hardware_cost"] == pytest.approx(2 * 1500 * share, abs=1e-4)
    per_mtok = (report["energy_cost"] + report["hardware_cost"]) / report["tokens"] * 1e6
    assert report["cost_per_mtok"] == pytest.approx(per_mtok, rel=1e-2)
    assert report["beats_cloud"] is (per_mtok < 0.5)
    assert report["joules_per_token"] == pytest.approx(joules / report["tokens"], rel=1e-2), report
    assert 0 < report["duty_cycle"] <= 1
    table = agent.cli("cost", "--listen", agent.listen, "--price-per-kwh", "0.5").stdout
    assert "cost per million tokens" in table and "J/token" in table

    metrics = urllib.request.urlopen(f"http://{agent.listen}/metrics", timeout=5).read().decode()
    assert 'aiinfra_engine_energy_joules_total{engine="e"} 3600.0' in metrics
    assert 'aiinfra_engine_tokens_total{engine="e"}' in metrics
    # Every aiinfra series the dashboard graphs (its joules-per-token and duty-cycle panels too) is served.
    dashboard = (project_dir() / "dashboards" / "aiinfra-grafana.json").read_text()
    served = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if line and line[0] != "#"}
    later = {"aiinfra_router_rate_limited_total"}  # one series per key, from that key's first refusal on
    assert set(re.findall(r"aiinfra_[a-z_]+", dashboard)) - served - later == set()


def test_the_counters_outlive_the_agents_restart(metered):
    agent, fake = metered
    fake.change(lambda s: s["gpus"][0].update(energy_mj=1_000_000 + 1_800_000))
    before = agent.wait(lambda s: s["energy"]["joules"].get("e", 0) >= 1800, 5, "the energy read")["energy"]
    agent.stop()
    agent.start().wait_phase("e", "ready")
    after = energy(agent)
    assert after["joules"]["e"] >= before["joules"]["e"] == pytest.approx(1800)
    bad = agent.cli("cost", "--listen", agent.listen, "--since", "7 days")
    assert bad.returncode == 2 and "a number and a unit, e.g. 7d" in bad.stderr


def test_a_damaged_ledger_does_not_keep_the_agent_from_starting(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p", policy={"liveness_interval_s": 60})
    ledger = agent.tmp / "data" / "energy.json"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"hours": []}')  # valid JSON, wrong types: the agent once crashed on it at start
    agent.start().wait_phase("e", "ready")
    assert agent.status()["energy"]["tokens"] == {}
    assert "energy ledger" in agent.agent_log() and "set aside" in agent.agent_log()
    assert [p.read_text() for p in ledger.parent.glob("energy.json.damaged-*")] == ['{"hours": []}']


def test_records_that_cannot_be_kept_are_said_once_and_the_agent_serves(make_agent):
    """The model disk (the records' home) missing at boot: the agent still starts and answers, says what
    it cannot keep, and counts the audit lines it loses."""
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p", policy={"liveness_interval_s": 60})
    agent.config |= {"data_dir": "/proc/aiinfra-no-disk", "audit_log": "audit.log"}  # nothing can be made there
    agent.start().wait_phase("e", "ready")
    answer = client(agent, add_key(agent, "k")).chat.completions.create(model=agent.engine("e")["served"][0],
                                                                        messages=MSG)  # fmt: skip
    assert answer.choices[0].message.content
    log = agent.agent_log()
    assert log.count("records folder /proc/aiinfra-no-disk cannot be written") == 1, log
    audit = agent.wait(lambda s: s["router"]["audit"]["write_errors"] >= 1, 5, "the lost line")["router"]["audit"]
    assert audit["file"] == "/proc/aiinfra-no-disk/audit.log"
