"""The agent against a real vLLM: the CPU build (`aiinfra lab vllm`, the release the vllm role pins)
serving the hardware kit's tiny real model, under the process backend, over real HTTP, with the real
`openai` client. One server for the module (each start costs about 30 s on two cores); the tests
that kill it run last and wait for it to come back. The systemd backend's side (cgroup, adoption
after an agent restart) is tested on the lab host, which runs the same vLLM (tests/lab)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import openai
import psutil
import pytest

from aiinfra.installer import lab
from aiinfra.installer.lab import kit_files as kit
from tests.agent.conftest import Agent, audit_lines, free_port, pid_alive

pytestmark = pytest.mark.vllm
KIT = kit.FAKE_MODELS
MODEL = "Qwen/Qwen2.5-7B-Instruct"  # the tiny stand-in, under the id it stands in for
# Its golden set: random weights say nothing a check could hold them to, so the prompts ask for no text;
# the regression check holds a change of program or arguments to their greedy answers all the same.
GATE = {"golden": [{"prompt": "Hello", "max_latency_s": 60}, {"prompt": "The box", "max_latency_s": 60}],
        "max_tokens": 12, "agreement": 0.9}  # fmt: skip
POLICY = {
    "tick_s": 0.2,
    "startup_timeout_s": 300,
    "readiness_interval_s": 1,
    "probe_timeout_s": 5,
    "liveness_interval_s": 2,
    "liveness_timeout_s": 30,
    "traffic_grace_s": 1,
    "backoff_initial_s": 1,
    "backoff_max_s": 2,
    "crash_loop_failures": 10,
    "stop_grace_s": 20,
}


def host_vllm() -> Path:
    vllm = lab.host_vllm_dir()
    if not (vllm / lab.HOST_VLLM_READY).exists():
        missing = f"no CPU vLLM on this machine (aiinfra lab vllm makes it in {vllm})"
        if os.environ.get("AIINFRA_REQUIRE_VLLM") == "1":
            pytest.fail(f"{missing}; AIINFRA_REQUIRE_VLLM=1 demands the real-vLLM tests")
        pytest.skip(missing)
    return vllm / "bin" / "vllm"


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    vllm = host_vllm()
    tmp = tmp_path_factory.mktemp("real-vllm")
    subprocess.run([sys.executable, str(KIT), str(tmp / "models" / "models"), "--vllm", MODEL], check=True)
    engine = {"runtime": "vllm", "model": MODEL, "served_name": "tiny", "gpus": [0], "port": free_port(),
              "max_model_len": 1024, "max_num_seqs": 4, "gate": GATE}  # fmt: skip
    running = Agent(tmp, {"e": engine}, {"on": ["e"], "off": []}, "on", POLICY)
    running.config |= {
        "vllm_command": [str(vllm)],
        "vllm_env": lab.LAB_VLLM_ENV,
        "vllm_extra_args": lab.LAB_VLLM_ARGS,
        "router_auth": False,
        "router_timeout_s": 60,
        # A request for the model while "off" is active switches back to "on" (the last test).
        "profile_switching": {"on": {"back_after_idle_s": 600, "min_dwell_s": 0}},
    }
    running.start()
    yield running
    running.stop()


def ready(agent: Agent, timeout: float = 240) -> dict:
    return agent.wait_phase("e", "ready", timeout=timeout)["engines"]["e"]


def api(agent: Agent) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{agent.config['router_listen']}/v1", api_key="-", max_retries=0, timeout=60)


def engine_metric(agent: Agent, name: str) -> float:
    port = agent.config["engines"]["e"]["port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def tree(pid: int) -> list[psutil.Process]:
    return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]


def test_a_real_vllm_starts_becomes_ready_and_answers_through_the_router(agent):
    engine = ready(agent)
    names = [p.cmdline()[0] for p in tree(engine["pid"])]
    assert any(n.startswith("VLLM::EngineCore") for n in names), names  # vLLM's own process tree
    reply = api(agent).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=4,
        temperature=0,
        extra_body={"ignore_eos": True},  # random weights may pick the end token: count exactly max_tokens
    )
    assert reply.usage.completion_tokens == 4 and reply.usage.prompt_tokens > 4  # the chat template's tokens too
    assert reply.model == "tiny"


def test_the_liveness_probe_sends_a_real_one_token_request(agent):
    ready(agent)
    before = engine_metric(agent, "vllm:request_success_total")
    time.sleep(5)  # no client traffic: only the probe asks (every 2 s here)
    assert engine_metric(agent, "vllm:request_success_total") >= before + 1
    assert agent.engine("e")["phase"] == "ready"


def test_a_stream_passes_through_with_the_engines_usage(agent):
    ready(agent)
    client = api(agent)
    msg = [{"role": "user", "content": "Hello"}]
    logged = len(audit_lines(agent, at_least=0))
    asked = list(client.chat.completions.create(model="tiny", messages=msg, max_tokens=5, stream=True,
                                                stream_options={"include_usage": True}, temperature=0,
                                                extra_body={"ignore_eos": True}))  # fmt: skip
    assert asked[-1].choices == [] and asked[-1].usage.completion_tokens == 5
    prompt_tokens = asked[-1].usage.prompt_tokens
    plain = list(client.chat.completions.create(model="tiny", messages=msg, max_tokens=5, stream=True,
                                                temperature=0, extra_body={"ignore_eos": True}))  # fmt: skip
    assert all(chunk.choices for chunk in plain)  # the usage chunk the router asked for stayed with it
    line = audit_lines(agent, at_least=logged + 2)[-1]
    assert (line["status"], line["prompt_tokens"], line["completion_tokens"]) == (200, prompt_tokens, 5)


def test_the_agent_serves_vllms_own_metrics_per_engine(agent):
    ready(agent)
    api(agent).completions.create(model="tiny", prompt="Hi", max_tokens=2)
    text = urllib.request.urlopen(f"http://{agent.listen}/metrics", timeout=10).read().decode()
    lines = [line for line in text.splitlines() if line.startswith("vllm:generation_tokens_total{")]
    assert lines and all('engine="e"' in line for line in lines), lines
    assert float(lines[0].split()[-1]) >= 2


def test_every_vllm_series_the_dashboard_graphs_is_served_by_the_agent(agent):
    import re

    ready(agent)
    dashboard = (Path(__file__).resolve().parents[2] / "dashboards" / "aiinfra-grafana.json").read_text()
    wanted = set(re.findall(r"vllm:[a-z_:]+", dashboard))
    assert len(wanted) >= 6
    text = urllib.request.urlopen(f"http://{agent.listen}/metrics", timeout=10).read().decode()
    served = {line.split("{")[0].split()[0] for line in text.splitlines() if line.startswith("vllm:")}
    assert wanted <= served, wanted - served


def test_a_killed_leader_leaves_no_engine_core_or_worker_and_comes_back_and_a_request_waits_for_it(agent):
    engine = ready(agent)
    procs = tree(engine["pid"])
    assert len(procs) >= 3
    os.kill(engine["pid"], signal.SIGKILL)
    agent.wait(lambda s: s["engines"]["e"]["phase"] != "ready", 10, "the death to be seen")
    # Sent while vLLM is down: it waits in the router's queue and is answered once vLLM is back.
    answered: dict = {}
    patient = openai.OpenAI(base_url=f"http://{agent.config['router_listen']}/v1", api_key="-", max_retries=0,
                            timeout=300)  # fmt: skip
    waiting = threading.Thread(target=lambda: answered.update(reply=patient.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=2)))  # fmt: skip
    waiting.start()
    deadline = time.monotonic() + 10
    while any(pid_alive(p.pid) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p.pid for p in procs if pid_alive(p.pid)], "EngineCore/Worker outlived their leader"
    back = ready(agent)
    assert back["restarts"] == engine["restarts"] + 1 and back["pid"] != engine["pid"]
    waiting.join(60)
    assert answered["reply"].usage.completion_tokens >= 1


def test_an_engine_core_death_is_a_failure_although_vllm_exits_0(agent):
    engine = ready(agent)
    (core,) = [p for p in tree(engine["pid"]) if p.cmdline()[0].startswith("VLLM::EngineCore")]
    core.kill()
    status = agent.wait(lambda s: s["engines"]["e"]["phase"] in ("backoff", "failed"), 60, "the failure")
    assert "exited with code 0" in status["engines"]["e"]["last_error"]
    assert ready(agent)["restarts"] == engine["restarts"] + 1


def test_a_stop_takes_the_whole_tree(agent):
    engine = ready(agent)
    procs = tree(engine["pid"])
    switched = agent.cli("profile", "off", "--socket", agent.socket, "--listen", agent.listen)
    assert switched.returncode == 0, switched.stderr
    agent.wait_phase("e", "stopped", timeout=60)
    assert not [p.pid for p in procs if pid_alive(p.pid)]


def test_a_request_switches_the_box_back_to_the_profile_that_serves_it(agent):
    """After the previous test the box runs profile off: the request starts vLLM again and is answered."""
    assert agent.status()["profile"] == "off"
    patient = openai.OpenAI(base_url=f"http://{agent.config['router_listen']}/v1", api_key="-", max_retries=0,
                            timeout=300)  # fmt: skip
    reply = patient.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=2)
    assert reply.usage.completion_tokens >= 1
    status = agent.status()
    assert status["profile"] == "on" and status["switching"]["last"]["reason"] == "request"
    assert status["engines"]["e"]["phase"] == "ready"


# -- a change of what the engine serves goes through its gate (the install restarts the agent) ------


def restarted(agent: Agent, **engine) -> dict:
    """The agent restarted on a configuration that changes engine e (the process backend stops its engines
    with it); once e serves again, or its gate failed and the identity before is back: its status."""
    agent.stop()
    agent.config["engines"]["e"] |= engine
    agent.start()
    return agent.wait(lambda s: s["engines"]["e"]["phase"] == "ready" and (s["engines"]["e"]["gate"] or {}).get(
        "state") in ("passed", "failed"), 400, "the gate's outcome and e serving")["engines"]["e"]  # fmt: skip


def greedy(agent: Agent) -> tuple[str, dict[str, str]]:
    raw = api(agent).completions.with_raw_response.create(model="tiny", prompt="The box", max_tokens=12, temperature=0)
    return raw.parse().choices[0].text, {k: v for k, v in raw.headers.items() if k.startswith("x-aiinfra-")}


def test_other_vllm_arguments_with_the_same_greedy_answers_pass_the_regression_check(agent):
    before = ready(agent)["identity"]
    answer = greedy(agent)[0]
    engine = restarted(agent, extra_args=["--seed", "7"])  # sampling's seed: greedy answers stay the same
    gate = engine["gate"]
    assert (gate["state"], gate["agreement"]) == ("passed", 1.0), gate
    assert engine["identity"]["args"] != before["args"] and engine["identity"]["model"] == before["model"]
    assert greedy(agent)[0] == answer
    print(f"gated change (arguments), seconds per step: {gate['took']}")


def test_a_new_model_version_passes_its_gate_and_its_identity_names_each_answer(agent, tmp_path):
    v2 = "Qwen/Qwen2.5-7B-Instruct-v2"  # other weights: a second version of the tiny model
    subprocess.run([sys.executable, str(KIT), str(Path(agent.config["model_storage_mount"]) / "models"), "--vllm", v2],
                   check=True)  # fmt: skip
    before = ready(agent)["identity"]
    engine = restarted(agent, model=v2)
    assert engine["gate"]["state"] == "passed" and engine["gate"]["agreement"] is None  # a new model: golden set only
    assert engine["identity"]["model"] != before["model"]
    headers = greedy(agent)[1]
    assert headers["x-aiinfra-model-digest"] == engine["identity"]["model"]
    gates = [line for line in audit_lines(agent) if line.get("event") == "gate"]
    assert gates[-1]["result"] == "passed" and gates[-1]["identity"] == engine["identity"]
    print(f"gated change (model version), seconds per step: {engine['gate']['took']}")


def test_a_broken_model_version_fails_its_gate_and_the_version_before_answers_as_it_did(agent):
    broken = "Qwen/Qwen2.5-7B-Instruct-broken"
    folder = Path(agent.config["model_storage_mount"]) / "models" / broken
    subprocess.run([sys.executable, str(KIT), str(folder.parent.parent), "--vllm", broken], check=True)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["NoSuchForCausalLM"]  # vLLM refuses it
    (folder / "config.json").write_text(json.dumps(config))
    before = ready(agent)["identity"]
    answer = greedy(agent)[0]
    engine = restarted(agent, model=broken)
    gate = engine["gate"]
    assert gate["state"] == "failed" and gate["check"].startswith("did not start: exited with"), gate
    assert gate["serving"] == before and engine["identity"] == before
    text, headers = greedy(agent)
    assert text == answer and headers["x-aiinfra-model-digest"] == before["model"]
    assert agent.cli("status", "--listen", agent.listen, "--json").returncode == 0
    print(f"gated change (broken model, rolled back), seconds per step: {gate['took']}")
