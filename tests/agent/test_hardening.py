"""The agent and its endpoint under bad files, taken ports and abusive clients: real agent processes,
real sockets, the real `openai` client. Each test causes the fault and asserts what an operator or a
client sees."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.agent.conftest import AGENT, free_port, vllm
from tests.agent.test_router import add_key, client

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def one(make_agent):
    """One ready engine behind the router, keys on; small limits so that a test can reach them."""
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p")
    agent.config |= {"router_max_body_mb": 0.25, "router_head_timeout_s": 1, "router_read_timeout_s": 1}
    agent.start().wait_phase("e", "ready")
    return agent


def post(agent, body: bytes, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://{agent.config['router_listen']}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_body_over_the_limit_gets_413_in_openais_shape(one):
    key = add_key(one, "big")
    with pytest.raises(openai.APIStatusError) as refused:
        client(one, key).chat.completions.create(model="e", messages=[{"role": "user", "content": "x" * 300_000}])
    assert refused.value.status_code == 413
    assert refused.value.body["code"] == "request_too_large" and "262144 bytes" in refused.value.body["message"]


def test_deeply_nested_json_is_a_400_and_the_agent_stays_up(one):
    key = add_key(one, "deep")
    status, answer = post(one, b"[" * 100_000 + b"]" * 100_000, key)
    assert status == 400 and answer["error"]["code"] == "invalid_request"
    status, answer = post(one, json.dumps({"model": {"nested": 1}, "messages": HI}).encode(), key)
    assert status == 400 and "'model' must be a string" in answer["error"]["message"]
    assert json.loads(urllib.request.urlopen(f"http://{one.listen}/healthz", timeout=5).read())["status"] == "ok"


def test_made_up_model_names_add_no_metric_series(one):
    api = client(one, add_key(one, "noisy"))
    for n in range(200):
        with pytest.raises(openai.NotFoundError):
            api.chat.completions.create(model=f"made-up-{n}", messages=HI)
    api.chat.completions.create(model=one.engine("e")["served"][0], messages=HI)
    body = urllib.request.urlopen(f"http://{one.listen}/metrics", timeout=5).read().decode()
    models = {
        s.labels["model"]
        for family in text_string_to_metric_families(body)
        if family.name.startswith("aiinfra_router")
        for s in family.samples
        if "model" in s.labels
    }
    assert models == {one.engine("e")["served"][0], "(unknown)"}


def test_half_sent_headers_and_bodies_are_cut_off(one):
    key = add_key(one, "slow")
    host, port = one.config["router_listen"].split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port))) as header_only:
        header_only.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        header_only.settimeout(10)
        assert header_only.recv(1024) == b""  # closed by the router
    assert time.monotonic() - started < 5
    with socket.create_connection((host, int(port))) as body_short:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        body_short.sendall(head.encode() + b"Content-Length: 1000\r\n\r\n{")
        body_short.settimeout(10)
        answer = body_short.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b'"code": "request_timeout"' in answer


def test_a_broken_keys_file_keeps_the_last_good_keys_and_says_so(one):
    good = add_key(one, "alice")
    api = client(one, good)
    model = one.engine("e")["served"][0]
    api.chat.completions.create(model=model, messages=HI)
    keys_file = Path(one.config["keys_file"])
    keys_file.write_text('{"keys": [{"name": "alice", "sha')  # truncated, as by a full disk
    api.chat.completions.create(model=model, messages=HI)  # still served: the last good keys
    with pytest.raises(openai.AuthenticationError):
        client(one, "aiinfra-not-a-key").chat.completions.create(model=model, messages=HI)
    keys = one.status()["router"]["keys"]
    assert keys["keys"] == 1 and keys["problem"].startswith(f"{keys_file}: not a keys file")
    logged = [line for line in one.agent_log().splitlines() if "keys file:" in line]
    assert len(logged) == 1 and str(keys_file) in logged[0]


def test_a_keys_file_never_good_refuses_everyone(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p")
    Path(agent.config["keys_file"]).write_text("garbage\n")
    agent.start().wait_phase("e", "ready")
    for token in ("aiinfra-anything", ""):
        status, answer = post(agent, json.dumps({"model": "e", "messages": HI}).encode(), token)
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    assert agent.status()["router"]["keys"]["keys"] == 0


def test_a_taken_port_is_one_line_naming_its_holder_and_no_engine_starts(make_agent, tmp_path):
    engine_port = free_port()
    agent = make_agent({"e": vllm(engine_port)}, {"p": ["e"]}, "p")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    agent.config["router_listen"] = f"127.0.0.1:{holder.getsockname()[1]}"
    agent.write_config()
    with holder:
        done = subprocess.run([AGENT, "run", "--config", str(agent.config_path)], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        assert done.returncode == 2, done.stderr
        said = [line for line in done.stderr.splitlines() if line.startswith("aiinfra-agent:")]
        assert said == [
            f"aiinfra-agent: router cannot listen on {agent.config['router_listen']}: held by pid {os.getpid()} "
            f"({Path('/proc/self/comm').read_text().strip()}); stop that or change router_listen"
        ], done.stderr
        assert "Traceback" not in done.stderr
    with socket.socket() as probe:  # no engine was started on its port
        assert probe.connect_ex(("127.0.0.1", engine_port)) != 0


def test_staging_refuses_a_model_id_outside_the_store(tmp_path):
    precious = tmp_path / "important"
    precious.mkdir()
    (precious / "data").write_text("keep me")
    for model in (str(precious), "Qwen/../../important"):
        done = subprocess.run(
            [AGENT, "models", "stage", model, "--root", str(tmp_path / "models"), "--download-command", "/bin/false"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2 and "is not a model id" in done.stderr, done.stderr
    assert (precious / "data").read_text() == "keep me"


def test_connections_past_the_cap_get_a_503_and_the_cap_frees_up(make_agent):
    agent = make_agent({"e": vllm(free_port())}, {"p": ["e"]}, "p")
    agent.config["router_max_connections"] = 5
    agent.start().wait_phase("e", "ready")
    key = add_key(agent, "many")
    host, port = agent.config["router_listen"].split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(5)]  # held open, sending nothing
    time.sleep(0.3)
    status, answer = post(agent, json.dumps({"model": "e", "messages": HI}).encode(), key)
    assert status == 503 and answer["error"]["code"] == "too_many_connections"
    for sock in idle:
        sock.close()
    time.sleep(0.3)
    assert client(agent, key).chat.completions.create(model=agent.engine("e")["served"][0], messages=HI).choices


def test_unknown_routes_and_wrong_methods_are_refused_in_openais_shape(one):
    base = f"http://{one.config['router_listen']}"
    for method, path, status, code in (("GET", "/v1/nope", 404, "not_found"),
                                       ("GET", "/v1/chat/completions", 405, "method_not_allowed")):  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(base + path, method=method), timeout=5)
        assert refused.value.code == status
        assert json.loads(refused.value.read())["error"]["code"] == code
