"""Requests wait through an engine's load instead of failing: the real agent, stub engines, the real
`openai` client and real HTTP."""

from __future__ import annotations

import threading
import time
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.conftest import free_port, vllm
from tests.agent.test_router import add_key, client

MSG = [{"role": "user", "content": "hi"}]


def restart(agent) -> None:
    done = agent.cli("restart", "e", "--socket", agent.socket)
    assert done.returncode == 0, done.stderr
    agent.wait(lambda s: s["engines"]["e"]["phase"] != "ready", 5, "the restart to begin")


def samples(agent, name: str) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://{agent.listen}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples if s.name.startswith(name)}  # fmt: skip


def in_thread(call):
    result: dict = {}

    def run() -> None:
        started = time.monotonic()
        try:
            result["value"] = call()
        except Exception as exc:  # what the client raised is the outcome
            result["error"] = exc
        result["took"], result["ended"] = time.monotonic() - started, time.time()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


@pytest.fixture
def loading(make_agent):
    """One engine that takes 2 s to load, ready."""
    agent = make_agent({"e": vllm(free_port(), "--startup-delay", "2")}, {"p": ["e"]}, "p",
                       policy={"liveness_interval_s": 60}).start()  # fmt: skip
    agent.wait_phase("e", "ready")
    return agent


def test_requests_wait_through_a_restart_and_streams_get_headers_once_ready(loading):
    api = client(loading, add_key(loading, "ann"), timeout=30.0)
    model = loading.engine("e")["served"][0]
    restart(loading)
    plain = in_thread(lambda: api.chat.completions.create(model=model, messages=MSG))
    first_chunk = in_thread(lambda: next(iter(api.chat.completions.create(model=model, messages=MSG, stream=True))))
    for thread, _ in (plain, first_chunk):
        thread.join(30)
    assert plain[1]["value"].choices[0].message.content == "Hello from the stub engine.", plain[1]
    assert first_chunk[1]["value"].choices[0].delta.content, first_chunk[1]
    assert plain[1]["took"] >= 1.5 and first_chunk[1]["took"] >= 1.5  # they waited for the 2 s load
    assert loading.engine("e")["phase"] == "ready"
    found = samples(loading, "aiinfra_router_queue")
    assert found[("aiinfra_router_queue_wait_seconds_count", (("engine", "e"),))] == 2
    assert found[("aiinfra_router_queue_waiting", (("engine", "e"),))] == 0


def test_past_its_bounds_a_request_gets_a_503_with_the_expected_ready_time(make_agent):
    engine = vllm(free_port(), "--startup-delay", "4") | {"queue": {"max_waiting": 1, "max_wait_s": 1}}
    agent = make_agent({"e": engine}, {"p": ["e"]}, "p", policy={"liveness_interval_s": 60}).start()
    agent.wait_phase("e", "ready", timeout=20)
    api = client(agent, add_key(agent, "bo"), timeout=30.0)
    model = agent.engine("e")["served"][0]
    restart(agent)
    waiter = in_thread(lambda: api.chat.completions.create(model=model, messages=MSG))
    time.sleep(0.3)
    with pytest.raises(openai.InternalServerError) as full:  # the one place in the queue is taken
        api.chat.completions.create(model=model, messages=MSG)
    assert "1 requests already wait" in str(full.value)
    waiter[0].join(10)
    late = waiter[1]["error"]
    assert isinstance(late, openai.InternalServerError) and "not ready within 1s" in str(late)
    assert 0.9 <= waiter[1]["took"] < 2.5
    # Its last start took about 4 s: that is the guess, less what has passed of this one.
    for refused in (full.value, late):
        assert 1 <= int(refused.response.headers["Retry-After"]) <= 5
    assert agent.wait_phase("e", "ready", timeout=20)


def test_a_failed_engine_answers_at_once(make_agent):
    engine = vllm(free_port(), "--crash-after", "0")
    agent = make_agent({"e": engine}, {"p": ["e"]}, "p", policy={"crash_loop_failures": 1}).start()
    agent.wait_phase("e", "failed")
    api = client(agent, add_key(agent, "cy"), timeout=30.0)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError, match="engine e is failed"):
        api.chat.completions.create(model=agent.engine("e")["served"][0], messages=MSG)
    assert time.monotonic() - started < 1


def test_a_client_that_leaves_while_waiting_leaves_the_queue(loading):
    impatient = client(loading, add_key(loading, "di"), timeout=0.5)
    restart(loading)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model=loading.engine("e")["served"][0], messages=MSG)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and samples(loading, "aiinfra_router_queue_waiting"):
        if samples(loading, "aiinfra_router_queue_waiting")[("aiinfra_router_queue_waiting", (("engine", "e"),))] == 0:
            break
        time.sleep(0.05)
    assert samples(loading, "aiinfra_router_queue_waiting")[("aiinfra_router_queue_waiting", (("engine", "e"),))] == 0
    assert loading.status()["router"].get("waiting") == {}


def test_a_model_of_another_profile_is_answered_with_the_profile_and_how_to_switch(make_agent):
    engines = {"a": vllm(free_port()), "b": vllm(free_port(), "--startup-delay", "1", gpus=[1])}
    agent = make_agent(engines, {"fast": ["a"], "deep": ["b"]}, "fast").start()
    agent.wait_phase("a", "ready")
    api = client(agent, add_key(agent, "ed"), timeout=30.0)
    model_a, model_b = agent.engine("a")["served"][0], agent.engine("b")["served"][0]
    with pytest.raises(openai.NotFoundError) as other:
        api.chat.completions.create(model=model_b, messages=MSG)
    assert (f"model {model_b!r} is served by profile deep, not by the active profile fast; "
            "switch with `aiinfra profile deep`") in str(other.value)  # fmt: skip
    # During a switch: the leaving model says where it went; the arriving one waits for its engine.
    switched = agent.cli("profile", "deep", "--no-wait", "--socket", agent.socket, "--listen", agent.listen)
    assert switched.returncode == 0, switched.stderr
    with pytest.raises(openai.NotFoundError, match="is served by profile fast, not by the active profile deep"):
        api.chat.completions.create(model=model_a, messages=MSG)
    assert api.chat.completions.create(model=model_b, messages=MSG).choices[0].message.content
