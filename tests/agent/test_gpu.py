"""The GPU layer against the fake pynvml (hardware kit): the agent's real NVML code runs on top of it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from aiinfra.installer.lab import kit_files as kit
from tests.agent.conftest import AGENT, free_port, vllm

FAKE = str(kit.FAKE_NVML)
RTX3090 = {
    "name": "NVIDIA GeForce RTX 3090",
    "memory_total": 25769803776,
    "memory_used": 1073741824,
    "power_limit_mw": 350000,
    "power_min_mw": 100000,
    "power_max_mw": 390000,
    "power_default_mw": 350000,
    "power_usage_mw": 31000,
    "persistence": 1,
    "temperature": 41,
    "utilization": 7,
    "sm_clock": 210,
    "throttle": 0,
    "lost": False,
    "xid": [],
}


class FakeGpus:
    def __init__(self, path: Path, count: int = 2, driver: str = "580.105.08") -> None:
        self.path = path
        self.write(
            {
                "driver": driver,
                "library": driver,
                "init_error": None,
                "gpus": [dict(RTX3090, uuid=f"GPU-{i}") for i in range(count)],
            }
        )

    def read(self) -> dict:
        return json.loads(self.path.read_text())

    def write(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.path)

    def change(self, fn) -> None:
        state = self.read()
        fn(state)
        self.write(state)


@pytest.fixture
def gpu_agent(make_agent, tmp_path):
    """An agent with the GPU layer on, reading the fake NVML; one engine on GPU 0."""
    fake = FakeGpus(tmp_path / "nvml.json")

    def make(start: bool = True, **gpu):
        agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p", policy={"liveness_interval_s": 60})
        agent.config["gpu"] = {
            "power_limit_watts": 350,
            "persistence_mode": True,
            "driver_version": "580.105.08",
            "expected_count": 2,
            "interval_s": 0.2,
            "reapply_min_interval_s": 0.5,
            **gpu,
        }
        agent.env = {"PYTHONPATH": FAKE, "AIINFRA_FAKE_NVML": str(fake.path)}
        return agent.start() if start else agent

    return make, fake


def gpu_status(agent) -> dict:
    return agent.status()["gpu"]


def test_a_power_limit_reset_and_persistence_off_are_reapplied(gpu_agent):
    make, fake = gpu_agent
    agent = make()
    agent.wait_phase("e", "ready")

    def driver_reload(state):  # a reload resets both to the card's defaults
        for g in state["gpus"]:
            g["power_limit_mw"], g["persistence"] = 390000, 0

    fake.change(driver_reload)
    agent.wait(lambda s: s["gpu"]["reapplied"] == {"power": 2, "persistence": 2}, 10, "re-applied settings")
    assert [(g["power_limit_mw"], g["persistence"]) for g in fake.read()["gpus"]] == [(350000, 1), (350000, 1)]
    time.sleep(1)
    assert gpu_status(agent)["reapplied"] == {"power": 2, "persistence": 2}  # nothing more once in place
    assert agent.engine("e")["restarts"] == 0


def test_a_limit_outside_the_card_is_refused_and_not_set(gpu_agent):
    make, fake = gpu_agent
    agent = make(power_limit_watts=500)
    status = agent.wait(lambda s: s["gpu"]["warnings"], 10, "a warning")["gpu"]
    assert "power limit 500 W is outside what GPU 0 allows (100-390 W)" in status["warnings"]
    assert all("set_power_calls" not in g for g in fake.read()["gpus"])


def test_a_library_kernel_mismatch_holds_restarts_until_it_clears(gpu_agent):
    make, fake = gpu_agent
    agent = make()
    pid = agent.wait_phase("e", "ready")["engines"]["e"]["pid"]
    fake.change(lambda s: s.update(init_error=18, library="580.126.09"))
    agent.wait(lambda s: s["gpu"]["state"] == "reboot_required", 10, "reboot required")
    subprocess.run(["kill", "-9", str(pid)], check=True)
    agent.wait_phase("e", "backoff", timeout=10)
    time.sleep(3)  # several backoffs' worth: still no restart
    engine = agent.engine("e")
    assert engine["restarts"] == 0 and engine["pid"] is None
    assert "reboot" in gpu_status(agent)["message"]
    fake.change(lambda s: s.update(init_error=None, library="580.105.08"))  # "after the reboot"
    agent.wait_phase("e", "ready", timeout=15)


def test_a_driver_change_restarts_the_engines_exactly_once(gpu_agent):
    make, fake = gpu_agent
    agent = make()
    pid = agent.wait_phase("e", "ready")["engines"]["e"]["pid"]
    fake.change(lambda s: s.update(driver="580.126.09", library="580.126.09"))
    status = agent.wait(
        lambda s: s["engines"]["e"]["phase"] == "ready" and s["engines"]["e"]["pid"] != pid,
        15,
        "a restart under the new driver",
    )
    time.sleep(1.5)
    status = agent.status()
    assert [e["event"] for e in status["events"]].count("driver_changed") == 1
    assert status["gpu"]["drift_restarts"] == 1
    assert status["gpu"]["driver"]["engines_started_under"] == "580.126.09"
    assert "driver drift: 580.126.09 is loaded, 580.105.08 is pinned" in status["gpu"]["warnings"]
    assert status["engines"]["e"]["restarts"] == 0  # a planned restart, not a failure


def test_without_a_driver_the_agent_runs_and_starts_no_engine(gpu_agent):
    make, fake = gpu_agent
    fake.path.unlink()
    agent = make()
    status = agent.wait(lambda s: s["gpu"]["state"] == "no_gpu", 10, "no GPU")
    time.sleep(1)
    assert agent.engine("e")["phase"] == "stopped" and agent.engine("e")["pid"] is None
    assert urllib.request.urlopen(f"http://{agent.listen}/healthz", timeout=5).status == 200
    assert status["gpu"]["message"].startswith("no NVIDIA driver")


def test_a_lost_gpu_is_reported_and_nvml_comes_back(gpu_agent):
    make, fake = gpu_agent
    agent = make()
    agent.wait_phase("e", "ready")
    fake.change(lambda s: s["gpus"][1].update(lost=True))
    status = agent.wait(lambda s: s["gpu"]["state"] == "gpu_lost", 10, "GPU lost")
    assert "fell off the bus" in status["gpu"]["message"]
    fake.change(lambda s: s["gpus"][1].update(lost=False))
    agent.wait(lambda s: s["gpu"]["state"] == "ok", 10, "NVML back")


def test_metrics_have_the_documented_gpu_series(gpu_agent):
    make, fake = gpu_agent
    fake.change(lambda s: s["gpus"][0].update(xid=[79]))
    agent = make()
    agent.wait(lambda s: s["gpu"]["gpus"] and s["gpu"]["gpus"][0]["xid_errors"] == 1, 10, "an XID")
    body = urllib.request.urlopen(f"http://{agent.listen}/metrics", timeout=5).read().decode()
    samples = {(s.name, s.labels.get("gpu")): s.value for f in text_string_to_metric_families(body) for s in f.samples}
    assert samples[("aiinfra_gpu_power_watts", "0")] == 31.0
    assert samples[("aiinfra_gpu_power_limit_watts", "1")] == 350.0
    assert samples[("aiinfra_gpu_temperature_celsius", "0")] == 41.0
    assert samples[("aiinfra_gpu_memory_total_bytes", "0")] == 25769803776
    assert samples[("aiinfra_gpu_utilization_ratio", "0")] == 0.07
    assert samples[("aiinfra_gpu_persistence_mode", "0")] == 1.0
    assert samples[("aiinfra_gpu_xid_errors_total", "0")] == 1.0
    names = {name for name, _ in samples}
    assert {
        "aiinfra_nvml_up",
        "aiinfra_nvml_last_success_timestamp_seconds",
        "aiinfra_driver_info",
        "aiinfra_gpu_reapplied_total",
        "aiinfra_driver_drift_restarts_total",
    } <= names


def test_gpu_apply_sets_and_reads_back(gpu_agent, tmp_path):
    make, fake = gpu_agent
    agent = make(start=False)
    settings = tmp_path / "gpu.yml"
    env = {**os.environ, **agent.env}

    def apply(*flags, **wanted):
        settings.write_text(yaml.safe_dump({"persistence_mode": True, **wanted}))
        return subprocess.run(
            [AGENT, "gpu", "apply", "--settings", str(settings), *flags],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    fake.change(lambda s: [g.update(power_limit_mw=390000, persistence=0) for g in s["gpus"]])
    done = apply(power_limit_watts=350)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "GPU 0 NVIDIA GeForce RTX 3090: power limit 350 W, persistence on"
    assert [g["power_limit_mw"] for g in fake.read()["gpus"]] == [350000, 350000]

    # GPU 0's wish is fine, GPU 1's is not: nothing changes anywhere, persistence included.
    fake.change(lambda s: [g.update(persistence=0) for g in s["gpus"]])
    refused = apply(power_limit_watts={0: 300, 1: 50})
    assert refused.returncode == 2
    assert "power limit 50 W is outside what GPU 1 allows (100-390 W)" in refused.stderr
    assert f"nothing changed; fix {settings}" in refused.stderr
    assert [(g["power_limit_mw"], g["persistence"]) for g in fake.read()["gpus"]] == [(350000, 0), (350000, 0)]

    # The same verdicts as JSON, with the same exit codes.
    as_json = json.loads(apply("--json", power_limit_watts={0: 300, 1: 50}).stdout)
    assert as_json["applied"] is False and "outside what GPU 1 allows" in as_json["refused"][0]
    done = apply("--json", power_limit_watts=320)
    assert done.returncode == 0
    assert [(g["power_limit_w"], g["persistence"]) for g in json.loads(done.stdout)["gpus"]] == [(320, True)] * 2


def test_gpu_apply_check_says_what_differs_and_changes_nothing(gpu_agent, tmp_path):
    """The gpu_tuning role's preflight and verify: the same rules as the boot unit's apply."""
    make, fake = gpu_agent
    agent = make(start=False)
    settings = tmp_path / "gpu.yml"
    env = {**os.environ, **agent.env}

    def check(**wanted):
        settings.write_text(yaml.safe_dump({"persistence_mode": True, **wanted}))
        done = subprocess.run([AGENT, "gpu", "apply", "--check", "--json", "--settings", str(settings)],
                              capture_output=True, text=True, env=env, check=False)  # fmt: skip
        return done.returncode, json.loads(done.stdout)

    fake.change(lambda s: [g.update(power_limit_mw=300000, persistence=1) for g in s["gpus"]])
    before = fake.read()
    assert check(power_limit_watts=300)[0] == 0  # all in place
    code, found = check(power_limit_watts={0: 300, 1: 320}, persistence_mode=False)
    assert code == 1 and found["applied"] is False
    assert found["differ"] == ["GPU 0: persistence mode is on, wanted off", "GPU 1: power limit is 300 W, wanted 320 W",
                               "GPU 1: persistence mode is on, wanted off"]  # fmt: skip
    code, found = check(power_limit_watts={0: 300, 2: 300})
    assert code == 2 and found["refused"] == ["GPU 2 does not exist; NVML sees 2 GPU(s)"]
    code, found = check(power_limit_watts=99)
    assert code == 2 and len(found["refused"]) == 2
    assert found["refused"][1] == "power limit 99 W is outside what GPU 1 allows (100-390 W)"
    assert fake.read() == before  # a check never changes a GPU


def test_agent_config_can_name_the_gpu_settings_file(gpu_agent, tmp_path):
    make, fake = gpu_agent
    settings = tmp_path / "gpu.yml"
    settings.write_text(yaml.safe_dump({"power_limit_watts": 300, "interval_s": 0.2, "reapply_min_interval_s": 0.5}))
    agent = make(start=False)
    agent.config["gpu"] = str(settings)
    agent.start()
    agent.wait(lambda s: [g["power_limit_mw"] for g in fake.read()["gpus"]] == [300000, 300000], 10, "limit 300 W")

    settings.write_text("power_limit_watt: 300\n")
    checked = subprocess.run(
        [AGENT, "check-config", "--config", str(agent.config_path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 2
    assert f"{settings}: power_limit_watt: unknown key; did you mean 'power_limit_watts'?" in checked.stderr


def test_a_ready_engine_off_its_gpus_is_degraded_with_the_reason(gpu_agent):
    """NVML's process lists against the GPUs each engine was given: the engine's worker holding memory
    on GPU 0 is right; none at all is a fall-back to the CPU; memory on GPU 1 is the wrong GPU."""
    import subprocess as sp

    make, fake = gpu_agent
    agent = make()
    pid = agent.wait_phase("e", "ready")["engines"]["e"]["pid"]
    worker = [int(p) for p in sp.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]

    def on(gpu: int | None, who: int) -> None:
        def place(state):
            for g in state["gpus"]:
                g["processes"] = []
            if gpu is not None:
                state["gpus"][gpu]["processes"] = [{"pid": who, "used": 2**30}]

        fake.change(place)

    on(0, pid)
    time.sleep(0.6)
    assert agent.engine("e")["degraded"] is None
    on(None, pid)  # the engine runs, and holds no GPU memory
    status = agent.wait(lambda s: s["engines"]["e"]["degraded"] is not None, 5, "degraded")
    assert status["engines"]["e"]["degraded"] == "holds no GPU memory: running on the CPU?"
    assert status["engines"]["e"]["phase"] == "ready"  # it still answers; the operator is told
    on(1, worker[0] if worker else pid)  # a process of the engine's tree, on the other GPU
    status = agent.wait(lambda s: (s["engines"]["e"]["degraded"] or "").startswith("holds memory on GPU 1"), 5, "")
    assert status["engines"]["e"]["degraded"] == "holds memory on GPU 1, not on its GPU 0"
    table = agent.cli("status", "--listen", agent.listen).stdout
    assert "degraded: holds memory on GPU 1, not on its GPU 0" in table
    metrics = urllib.request.urlopen(f"http://{agent.listen}/metrics", timeout=5).read().decode()
    assert 'aiinfra_engine_degraded{engine="e"} 1.0' in metrics
    on(0, pid)
    agent.wait(lambda s: s["engines"]["e"]["degraded"] is None, 5, "placement ok again")
    events = [e["event"] for e in agent.status()["events"] if e["engine"] == "e"]
    assert events[-3:] == ["degraded", "degraded", "placement_ok"]


@pytest.mark.parametrize(
    ("links", "path", "nccl"),
    [
        ({"read": 1}, "host", "1"),  # consumer cards on a chipset without P2P: NCCL through host memory
        ({"read": 0}, "pcie", None),
        ({"read": 0, "nvlink": 0}, "nvlink", None),
    ],
)
def test_a_tensor_parallel_engine_gets_the_nccl_setting_its_gpus_links_call_for(make_agent, tmp_path, links, path,
                                                                               nccl):  # fmt: skip
    fake = FakeGpus(tmp_path / "nvml.json")
    fake.change(lambda s: s.update(p2p={"0-1": links}))
    agent = make_agent({"tp": vllm(free_port(), gpus=[0, 1])}, {"p": ["tp"]}, "p", policy={"liveness_interval_s": 60})
    agent.config["gpu"] = {"persistence_mode": None, "interval_s": 0.2}
    agent.env = {"PYTHONPATH": FAKE, "AIINFRA_FAKE_NVML": str(fake.path)}
    status = agent.start().wait_phase("tp", "ready")
    environ = Path(f"/proc/{status['engines']['tp']['pid']}/environ").read_bytes().split(b"\0")
    assert (b"NCCL_P2P_DISABLE=1" in environ) == (nccl == "1")
    (found,) = status["gpu"]["tensor_parallel"]
    assert (found["gpus"], found["path"], found["engines"]) == ([0, 1], path, ["tp"])
    warned = [e["message"] for e in status["events"] if e["event"] == "no_p2p"]
    if path == "host":
        assert found["reason"].startswith("no P2P between GPU 0 and GPU 1 (chipset not supported)")
        assert warned == [f"engines tp: {found['reason']}"]
        # ... said before the engine started
        order = [e["event"] for e in status["events"] if e["event"] in ("no_p2p", "started")]
        assert order[:2] == ["no_p2p", "started"]
    else:
        assert warned == [] and found["nccl"] == {}


def test_a_hung_nvml_call_holds_starts_but_not_the_loop_its_watchdog_or_the_endpoint(gpu_agent):
    make, fake = gpu_agent
    agent = make(read_timeout_s=1)
    agent.wait_phase("e", "ready")
    fake.change(lambda state: state["gpus"][1].update(hang=True))  # every NVML call about GPU 1 hangs
    hung = agent.wait(lambda s: s["gpu"]["state"] == "hung", 10, "the GPU layer to say it hangs")
    assert "has not returned for" in hung["gpu"]["message"]
    ticked = agent.status()["agent"]["uptime_s"]
    for _ in range(3):  # the loop goes on: /healthz says it ticked lately, again and again
        time.sleep(1)
        assert json.loads(urllib.request.urlopen(f"http://{agent.listen}/healthz", timeout=5).read())["status"] == "ok"
    assert agent.status()["agent"]["uptime_s"] > ticked
    done = agent.cli("restart", "e", "--socket", agent.socket)  # a start while hung: held
    assert done.returncode == 0, done.stderr
    time.sleep(1.5)
    assert agent.engine("e")["phase"] != "ready" and agent.engine("e")["pid"] is None
    fake.change(lambda state: state["gpus"][1].update(hang=False))  # the call returns
    agent.wait(lambda s: s["gpu"]["state"] == "ok" and s["engines"]["e"]["phase"] == "ready", 15, "ready again")
