"""The router with the real `openai` client, against the agent and stub engines."""

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
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.conftest import audit_lines, free_port, vllm

AGENT = str(Path(sys.executable).with_name("aiinfra-agent"))


def add_key(agent, name: str, *flags: str) -> str:
    proc = subprocess.run(
        [AGENT, "keys", "add", name, "--file", agent.config["keys_file"], *flags],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def client(agent, key: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{agent.config['router_listen']}/v1", api_key=key, max_retries=0, **kw)


@pytest.fixture
def served(make_agent):
    """Two engines: 'fast' ready, 'slow' still loading for a long while."""
    engines = {
        "fast": vllm(free_port(), "--chunk-delay", "0.2", "--chunks", "5"),
        "slow": vllm(free_port(), "--startup-delay", "60", gpus=[1]) | {"queue": {"max_waiting": 0}},  # none wait
    }
    agent = make_agent(engines, {"p": ["fast", "slow"]}, "p", policy={"liveness_interval_s": 60}).start()
    agent.wait_phase("fast", "ready")
    return agent


def test_chat_completion_and_models(served):
    key = add_key(served, "alice")
    api = client(served, key)
    reply = api.chat.completions.create(
        model=served.engine("fast")["served"][0], messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "Hello from the stub engine."
    assert reply.usage.completion_tokens == 6
    models = {m.id: m.model_extra for m in api.models.list().data}
    fast, slow = served.engine("fast")["served"][0], served.engine("slow")["served"][0]
    assert models[fast]["ready"] is True and models[slow]["ready"] is False
    text = api.completions.create(model=fast, prompt="ping", max_tokens=1)
    assert text.choices[0].text == "Hello"
    vectors = api.embeddings.create(model=fast, input=["a", "b"])
    assert len(vectors.data) == 2


def test_a_stream_arrives_chunk_by_chunk(served):
    api = client(served, add_key(served, "bob"))
    fast = served.engine("fast")["served"][0]
    arrivals = []
    started = time.monotonic()
    for chunk in api.chat.completions.create(model=fast, messages=[{"role": "user", "content": "hi"}], stream=True):
        arrivals.append(time.monotonic() - started)
        assert chunk.choices[0].delta.content
    assert len(arrivals) == 5
    # the engine sends a chunk every 0.2 s: the client sees them spread out, not all at the end
    assert arrivals[-1] - arrivals[0] >= 0.6 and arrivals[0] < 1.0


def test_errors_surface_as_the_clients_typed_errors(served):
    fast, slow = served.engine("fast")["served"][0], served.engine("slow")["served"][0]
    limited = client(served, add_key(served, "carol", "--models", fast, "--rpm", "2"))
    msg = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        client(served, "aiinfra-not-a-key").chat.completions.create(model=fast, messages=msg)
    with pytest.raises(openai.NotFoundError, match="does not exist here"):
        limited.chat.completions.create(model="gpt-4", messages=msg)
    with pytest.raises(openai.NotFoundError, match=f"does not exist here; models: {fast}$"):
        limited.chat.completions.create(model=slow, messages=msg)  # not the key's: as if not here
    open_key = client(served, add_key(served, "dave"))
    with pytest.raises(openai.InternalServerError) as not_ready:
        open_key.chat.completions.create(model=slow, messages=msg)
    # Retry-After: when it should be ready (no start of it seen yet: the first start's guess, 30 s)
    assert not_ready.value.status_code == 503 and 1 <= int(not_ready.value.response.headers["Retry-After"]) <= 30
    limited.chat.completions.create(model=fast, messages=msg)
    limited.chat.completions.create(model=fast, messages=msg)
    with pytest.raises(openai.RateLimitError) as limited_out:
        limited.chat.completions.create(model=fast, messages=msg)
    assert int(limited_out.value.response.headers["Retry-After"]) >= 1


def test_the_keys_file_holds_no_key_and_revoking_works(served):
    key = add_key(served, "erin")
    stored = Path(served.config["keys_file"]).read_text()
    assert key not in stored and "sha256" in stored
    assert oct(os.stat(served.config["keys_file"]).st_mode & 0o777) == "0o600"
    fast = served.engine("fast")["served"][0]
    api = client(served, key)
    api.models.list()
    subprocess.run(
        [AGENT, "keys", "revoke", "erin", "--file", served.config["keys_file"]], check=True, capture_output=True
    )
    with pytest.raises(openai.AuthenticationError):
        api.chat.completions.create(model=fast, messages=[{"role": "user", "content": "hi"}])


def test_every_request_gets_an_audit_line_without_the_prompt(served):
    api = client(served, add_key(served, "frank"))
    fast = served.engine("fast")["served"][0]
    api.chat.completions.create(model=fast, messages=[{"role": "user", "content": "my secret prompt"}])
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    lines = audit_lines(served, at_least=2)
    text = Path(served.config["audit_log"]).read_text()
    assert [(entry["key"], entry["model"], entry["status"]) for entry in lines] == [
        ("frank", fast, 200),
        ("frank", "nope", 404),
    ]
    assert lines[0]["engine"] == "fast" and lines[0]["completion_tokens"] == 6 and lines[0]["latency_ms"] > 0
    assert "secret" not in text


def test_metrics_count_requests_and_tokens(served):
    api = client(served, add_key(served, "gina"))
    fast = served.engine("fast")["served"][0]
    api.chat.completions.create(model=fast, messages=[{"role": "user", "content": "hi"}])
    body = urllib.request.urlopen(f"http://{served.listen}/metrics", timeout=5).read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    assert samples[("aiinfra_router_requests_total", (("model", fast), ("status", "200")))] == 1
    assert samples[("aiinfra_router_tokens_total", (("direction", "completion"), ("model", fast)))] == 6
    assert samples[("aiinfra_engine_phase", (("engine", "fast"), ("phase", "ready")))] == 1
    assert ("aiinfra_router_time_to_first_token_seconds_count", (("model", fast),)) in samples


def test_auth_off_is_explicit_and_shown(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p")
    agent.config["router_auth"] = False
    agent.start()
    agent.wait_phase("e", "ready")
    assert agent.status()["router"]["auth"] is False
    reply = client(agent, "anything").chat.completions.create(
        model=agent.engine("e")["served"][0], messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content


def test_a_client_that_leaves_cancels_the_upstream_stream(make_agent):
    port = free_port()
    agent = make_agent(
        {"e": vllm(port, "--chunk-delay", "0.5", "--chunks", "20")},
        {"p": ["e"]},
        "p",
        policy={"liveness_interval_s": 60},
    ).start()
    agent.wait_phase("e", "ready")
    api = client(agent, add_key(agent, "hank"))
    stream = api.chat.completions.create(
        model=agent.engine("e")["served"][0], messages=[{"role": "user", "content": "hi"}], stream=True
    )
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 5
    stats = {}
    while time.monotonic() < deadline:
        stats = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stub/stats", timeout=2).read())
        if stats["aborted"]:
            break
        time.sleep(0.1)
    assert stats["aborted"] == 1


def test_an_engine_restarted_under_load_fails_fast_and_the_router_stays_up(make_agent):
    engine = vllm(free_port()) | {"queue": {"max_waiting": 0}}  # requests do not wait: they are refused
    agent = make_agent({"e": engine}, {"p": ["e"]}, "p", policy={"backoff_initial_s": 2, "liveness_interval_s": 60})
    agent.start()
    pid = agent.wait_phase("e", "ready")["engines"]["e"]["pid"]
    api = client(agent, add_key(agent, "ivy"), timeout=10.0)
    model = agent.engine("e")["served"][0]
    outcomes: list[tuple[str, float]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                api.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
                outcomes.append(("ok", time.monotonic() - started))
            except openai.APIStatusError as exc:
                outcomes.append((str(exc.status_code), time.monotonic() - started))
            except openai.APIConnectionError:
                outcomes.append(("connection", time.monotonic() - started))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    agent.wait(lambda s: s["engines"]["e"]["restarts"] == 1 and s["engines"]["e"]["phase"] == "ready", 20, "back")
    time.sleep(0.5)
    stop.set()
    for w in workers:
        w.join(15)
    kinds = {kind for kind, _ in outcomes}
    assert "ok" in kinds and "503" in kinds and "connection" not in kinds
    assert kinds <= {"ok", "503", "502"}
    assert max(took for kind, took in outcomes if kind != "ok") < 1.0  # refused fast, nothing hangs
    assert outcomes[-1][0] == "ok"


def test_a_stream_is_counted_with_the_engines_own_usage_which_the_client_did_not_ask_for(served):
    api = client(served, add_key(served, "judy"))
    fast = served.engine("fast")["served"][0]
    msg = [{"role": "user", "content": "count these four words"}]
    chunks = list(api.chat.completions.create(model=fast, messages=msg, stream=True))
    assert chunks and all(c.choices and c.usage is None for c in chunks)  # no extra usage chunk reached it
    line = audit_lines(served)[-1]
    assert (line["key"], line["status"], line["prompt_tokens"], line["completion_tokens"]) == ("judy", 200, 4, 5)

    asked = list(
        api.chat.completions.create(model=fast, messages=msg, stream=True, stream_options={"include_usage": True})
    )
    assert asked[-1].choices == [] and asked[-1].usage.completion_tokens == 5  # asked for: passed through


def test_an_engine_that_dies_mid_stream_ends_the_stream_with_an_error_event(make_agent):
    agent = make_agent(
        {"e": vllm(free_port(), "--die-mid-stream", "--chunk-delay", "0.1")},
        {"p": ["e"]},
        "p",
        policy={"liveness_interval_s": 60},
    ).start()
    agent.wait_phase("e", "ready")
    api = client(agent, add_key(agent, "kim"))
    seen = []
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for chunk in api.chat.completions.create(
            model=agent.engine("e")["served"][0], messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            seen.append(chunk.choices[0].delta.content)
    assert seen == ["Hello", " from"]  # what the engine sent before it died, then the error, no garbage
    line = audit_lines(agent)[-1]
    assert line["status"] == 200 and line["aborted"].startswith("engine: ")
