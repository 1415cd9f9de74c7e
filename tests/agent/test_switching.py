"""Deep mode on request (profile_switching): a request switches to a profile that allows it, by a key
that may, after the leaving engines' requests are done; back to the default profile when idle; a
minimum dwell against thrashing. The real agent, stub engines, the real `openai` client."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from tests.agent.conftest import free_port, vllm
from tests.agent.test_queue import MSG, in_thread, samples
from tests.agent.test_router import add_key, client


def two_profiles(make_agent, policies: dict, **engine_flags):
    engines = {"a": vllm(free_port(), *engine_flags.get("a", ())), "b": vllm(free_port(), gpus=[0])}
    agent = make_agent(engines, {"fast": ["a"], "deep": ["b"]}, "fast", policy={"liveness_interval_s": 60})
    agent.config["profile_switching"] = policies
    agent.start()
    agent.wait_phase("a", "ready")
    return agent, agent.engine("a")["served"][0], agent.engine("b")["served"][0]


def test_a_request_by_a_key_that_may_switch_takes_the_box_to_deep_and_idle_brings_it_back(make_agent):
    agent, _, deep = two_profiles(make_agent, {"deep": {"back_after_idle_s": 2, "min_dwell_s": 0}})
    bot = client(agent, add_key(agent, "bot"), timeout=30.0)
    with pytest.raises(openai.PermissionDeniedError, match="key 'bot' may not switch profiles"):
        bot.chat.completions.create(model=deep, messages=MSG)
    assert agent.status()["profile"] == "fast"  # a chat bot cannot take the fast models away

    ops = client(agent, add_key(agent, "ops", "--may-switch"), timeout=30.0)
    reply = ops.chat.completions.create(model=deep, messages=MSG)  # waits for b to start
    assert reply.choices[0].message.content
    status = agent.status()
    assert status["profile"] == "deep" and status["engines"]["a"]["phase"] in ("stopping", "stopped")
    last = status["switching"]["last"]
    assert (last["reason"], last["key"], last["model"]) == ("request", "ops", deep)
    assert 0 < status["switching"]["back_to_default_in_s"] <= 2
    table = agent.cli("status", "--listen", agent.listen).stdout
    assert "on request: profile deep (back after 2s idle, stays at least 0s)" in table
    assert f"(a request for {deep} by key ops)" in table and "back to the default profile in" in table
    # No request for deep's model for 2 s: back to fast, on its own.
    back = agent.wait(lambda s: s["profile"] == "fast", 10, "the switch back")
    assert back["switching"]["last"]["reason"] == "idle"
    events = [e["message"] for e in back["events"] if e["event"] == "profile"]
    assert events[-2:] == [f"switching to profile deep (a request for {deep} by key ops)",
                           "switching to profile fast (idle)"]  # fmt: skip
    audit = [json.loads(line) for line in Path(agent.config["audit_log"]).read_text().splitlines()]
    switches = [(a["to"], a["reason"], a["key"]) for a in audit if a.get("event") == "profile_switch"]
    assert switches == [("deep", "request", "ops"), ("fast", "idle", "-")]
    counts = {(s["profile"], s["reason"]): s["count"] for s in back["switching"]["switches"]}
    assert counts == {("deep", "request"): 1, ("fast", "idle"): 1}
    metrics = samples(agent, "aiinfra_profile_switches_total")
    assert metrics == {("aiinfra_profile_switches_total", (("profile", "deep"), ("reason", "request"))): 1.0,
                       ("aiinfra_profile_switches_total", (("profile", "fast"), ("reason", "idle"))): 1.0}  # fmt: skip


def test_the_leaving_engine_finishes_its_stream_before_it_stops(make_agent):
    agent, fast, deep = two_profiles(make_agent, {"deep": {"min_dwell_s": 0}}, a=("--chunk-delay", "0.5"))
    ops = client(agent, add_key(agent, "ops", "--may-switch"), timeout=30.0)
    streaming = in_thread(lambda: [c.choices[0].delta.content for c in
                                   ops.chat.completions.create(model=fast, messages=MSG, stream=True)])  # fmt: skip
    time.sleep(0.8)  # the stream is under way (a chunk every 0.5 s, 6 chunks)
    switched = in_thread(lambda: ops.chat.completions.create(model=deep, messages=MSG))
    time.sleep(0.5)
    assert agent.engine("a")["phase"] == "ready"  # draining: a still answers its stream
    for thread, _ in (streaming, switched):
        thread.join(30)
    assert len(streaming[1]["value"]) == 6 and "error" not in streaming[1]  # the whole stream arrived
    assert switched[1]["value"].choices[0].message.content
    events = agent.status()["events"]
    stopped_a = next(e["time"] for e in events if e["engine"] == "a" and e["event"] == "stopping")
    started_b = next(e["time"] for e in events if e["engine"] == "b" and e["event"] == "started")
    assert streaming[1]["ended"] - 0.3 <= stopped_a <= started_b  # a stopped once its stream was done, then b


def test_a_profile_stays_its_min_dwell_before_a_request_may_switch_again(make_agent):
    policies = {"deep": {"min_dwell_s": 30}, "fast": {"min_dwell_s": 30}}
    agent, fast, deep = two_profiles(make_agent, policies)
    ops = client(agent, add_key(agent, "ops", "--may-switch"), timeout=30.0)
    ops.chat.completions.create(model=deep, messages=MSG)
    with pytest.raises(openai.InternalServerError) as later:
        ops.chat.completions.create(model=fast, messages=MSG)
    assert "profile deep stays another" in str(later.value)
    assert 25 <= int(later.value.response.headers["Retry-After"]) <= 30
    assert agent.status()["profile"] == "deep"


def test_a_request_waiting_for_the_deep_engine_keeps_the_box_from_switching_back(make_agent):
    """The deep engine takes longer to load than the idle time: its first request must still be answered."""
    engines = {"a": vllm(free_port()), "b": vllm(free_port(), "--startup-delay", "3", gpus=[0])}
    agent = make_agent(engines, {"fast": ["a"], "deep": ["b"]}, "fast", policy={"liveness_interval_s": 60})
    agent.config["profile_switching"] = {"deep": {"back_after_idle_s": 1, "min_dwell_s": 0}}
    agent.start().wait_phase("a", "ready")
    ops = client(agent, add_key(agent, "ops", "--may-switch"), timeout=30.0)
    reply = ops.chat.completions.create(model=agent.engine("b")["served"][0], messages=MSG)
    assert reply.choices[0].message.content
    assert agent.wait(lambda s: s["profile"] == "fast", 10, "the switch back, once idle")["profile"] == "fast"
