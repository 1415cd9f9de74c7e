"""The endpoint under hostile and careless clients: a running agent, real sockets, stub engines made
to misbehave on cue. Each test causes the fault and asserts what the operator and the client see."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import openai
import psutil
import pytest

from tests.agent.conftest import Senders, audit_lines, free_port, vllm
from tests.agent.test_queue import MSG, in_thread, samples
from tests.agent.test_router import add_key, client
from tests.harness import PeakMemory

MiB = 2**20


def address(agent) -> tuple[str, int]:
    host, port = agent.config["router_listen"].rsplit(":", 1)
    return host, int(port)


def connect(agent, source: str = "127.0.0.1", rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # before connecting: the window the router may fill
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.connect(address(agent))
    return sock


def head(path: str, length: int, key: str | None = None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
            f"{auth}{extra}\r\n").encode()  # fmt: skip


def answer_of(sock: socket.socket, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    got = b""
    try:
        while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + _length(got):
            more = sock.recv(65536)
            if not more:
                break
            got += more
    except (TimeoutError, ConnectionResetError):
        pass
    return got


def _length(got: bytes) -> int:
    found = re.search(rb"Content-Length: (\d+)", got)
    return int(found.group(1)) if found else 0


def post(agent, body: dict | list, key: str | None) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        f"http://{agent.config['router_listen']}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def one_engine(make_agent, *flags: str, **config):
    """One ready stub vLLM engine `e` (misbehaving as FLAGS say) behind the router, keys on, with the
    agent settings CONFIG."""
    agent = make_agent({"e": vllm(free_port(), *flags)}, {"p": ["e"]}, "p", policy={"liveness_interval_s": 60})
    agent.config |= config
    agent.start().wait_phase("e", "ready")
    return agent


@pytest.fixture
def one(make_agent):
    return one_engine(make_agent)


def model_of(agent, engine: str = "e") -> str:
    return agent.engine(engine)["served"][0]


# -- 1. no work, and no memory, for a client without a valid key --------------------------------------


def test_a_keyless_upload_is_refused_on_its_head_before_any_body_is_sent(one):
    for key in (None, "aiinfra-wrong"):
        with connect(one) as sock:
            sock.sendall(head("/v1/chat/completions", 15 * MiB, key))  # the head only: no body follows
            answer = answer_of(sock, timeout=3)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:100]
        assert b"Connection: close" in answer and b'"code": "invalid_api_key"' in answer


def test_24_keyless_15_mib_uploads_do_not_grow_the_agent_and_a_keyed_request_is_answered(one):
    key = add_key(one, "good")
    model = model_of(one)
    body = b"x" * (15 * MiB)
    memory = PeakMemory(one.proc.pid)

    def upload() -> None:
        try:
            with connect(one) as sock:
                sock.sendall(head("/v1/chat/completions", len(body)) + body)
                answer_of(sock, timeout=5)
        except OSError:  # cut once refused: what the test measures is the agent
            pass

    uploads = [threading.Thread(target=upload) for _ in range(24)]
    for thread in uploads:
        thread.start()
    started = time.monotonic()
    reply = client(one, key, timeout=20.0).chat.completions.create(model=model, messages=MSG)
    answered_in = time.monotonic() - started
    for thread in uploads:
        thread.join(30)
    growth = memory.growth_mib()
    print(f"agent memory growth under 24 keyless 15 MiB uploads: {growth:.1f} MiB; keyed answer in {answered_in:.2f}s")
    assert reply.choices[0].message.content
    assert growth < 64


def test_connections_are_capped_per_client_address_and_others_are_still_served(make_agent):
    agent = one_engine(make_agent, router_max_connections_per_client=4)
    key = add_key(agent, "k")
    idle = [connect(agent, "127.0.0.2") for _ in range(4)]  # held open by one address, sending nothing
    try:
        time.sleep(0.3)
        with connect(agent, "127.0.0.2") as fifth:
            fifth.sendall(head("/v1/chat/completions", 2, key) + b"{}")
            refused = answer_of(fifth)
        assert refused.startswith(b"HTTP/1.1 503 ") and b"too_many_connections_client" in refused, refused[:200]
        body = json.dumps({"model": model_of(agent), "messages": MSG}).encode()
        with connect(agent, "127.0.0.3") as other:  # another address: served
            other.sendall(head("/v1/chat/completions", len(body), key) + body)
            assert answer_of(other).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in idle:
            sock.close()


# -- 2. a client that stops reading cannot hold anything forever ----------------------------------------


def stalled_stream(agent, key: str, model: str) -> socket.socket:
    """A streamed request whose client never reads a byte of the answer."""
    sock = connect(agent, rcvbuf=4096)
    body = json.dumps({"model": model, "messages": MSG, "stream": True}).encode()
    sock.sendall(head("/v1/chat/completions", len(body), key) + body)
    return sock


def test_a_stream_left_unread_is_cut_at_the_write_deadline_and_its_engine_freed(make_agent):
    agent = one_engine(make_agent, "--chunks", "200000", "--chunk-delay", "0", router_write_timeout_s=2)
    key = add_key(agent, "lid")
    started = time.monotonic()
    with stalled_stream(agent, key, model_of(agent)):
        line = next(iter(audit_lines(agent)), None)
        deadline = time.monotonic() + 20
        while line is None and time.monotonic() < deadline:
            time.sleep(0.1)
            line = next(iter(audit_lines(agent)), None)
        assert line is not None, agent.agent_log()
        assert line["aborted"] == "client: stopped reading for 2s" and line["status"] == 200
        assert 2 <= time.monotonic() - started < 15
        assert agent.status()["router"]["in_hand"] == 0


def test_a_switch_goes_on_past_the_drain_deadline_while_a_client_has_stopped_reading(make_agent):
    engines = {"a": vllm(free_port(), "--chunks", "200000", "--chunk-delay", "0.001"), "b": vllm(free_port())}
    agent = make_agent(engines, {"fast": ["a"], "deep": ["b"]}, "fast",
                       policy={"liveness_interval_s": 60, "drain_timeout_s": 2})  # fmt: skip
    # the drain deadline, not the write deadline nor the engine's, frees it
    agent.config |= {"router_write_timeout_s": 120, "router_timeout_s": 120}
    agent.start().wait_phase("a", "ready")
    key = add_key(agent, "ops")
    model = model_of(agent, "a")
    reader = in_thread(lambda: [c.choices[0].delta.content
                                for c in client(agent, key, timeout=60.0).chat.completions.create(
                                    model=model, messages=MSG, stream=True)])  # fmt: skip
    with stalled_stream(agent, key, model):
        time.sleep(1)
        started = time.monotonic()
        done = agent.cli("profile", "deep", "--socket", agent.socket, "--no-wait")
        assert done.returncode == 0, done.stderr
        agent.wait(lambda s: s["engines"]["b"]["phase"] == "ready", 30, "deep's engine")
        took = time.monotonic() - started
        print(f"switch with a client that stopped reading: {took:.1f}s (drain deadline 2s)")
        assert took < 15
        reader[0].join(30)
        assert isinstance(reader[1].get("error"), openai.APIError), reader[1]
        assert "drain deadline passed" in str(reader[1]["error"])
    events = agent.status()["events"]
    stopping = next(e for e in events if e["engine"] == "a" and e["event"] == "stopping")
    assert "drain deadline (2s)" in stopping["message"], (events, audit_lines(agent))


# -- 3. limits where they count -------------------------------------------------------------------------


def test_concurrent_streams_cannot_all_pass_a_nearly_spent_token_limit(make_agent):
    agent = one_engine(make_agent, "--chunks", "50", "--chunk-delay", "0.02")
    api = client(agent, add_key(agent, "small", "--tpm", "100"), timeout=30.0)
    model = model_of(agent)

    def one_stream() -> int:
        return len(list(api.chat.completions.create(model=model, messages=MSG, stream=True)))

    results = [in_thread(one_stream) for _ in range(20)]
    for thread, _ in results:
        thread.join(60)
    served = [line for line in audit_lines(agent, 20) if line["status"] == 200]
    tokens = sum(line["prompt_tokens"] + line["completion_tokens"] for line in served)
    refused = [r for _, r in results if isinstance(r.get("error"), openai.RateLimitError)]
    print(f"20 concurrent ~50-token streams, tpm 100: {len(served)} served, {tokens} tokens")
    assert len(served) + len(refused) == 20 and 1 <= len(served) <= 2 and tokens <= 150


def test_limits_are_checked_before_a_request_may_switch_profiles(make_agent):
    engines = {"a": vllm(free_port()), "b": vllm(free_port())}
    agent = make_agent(engines, {"fast": ["a"], "deep": ["b"]}, "fast", policy={"liveness_interval_s": 60})
    agent.config["profile_switching"] = {"deep": {"min_dwell_s": 0}}
    agent.start().wait_phase("a", "ready")
    api = client(agent, add_key(agent, "ops", "--may-switch", "--rpm", "1"), timeout=30.0)
    api.chat.completions.create(model=model_of(agent, "a"), messages=MSG)
    with pytest.raises(openai.RateLimitError):
        api.chat.completions.create(model=model_of(agent, "b"), messages=MSG)
    assert agent.status()["profile"] == "fast"  # the refused request switched nothing


def test_a_key_may_hold_at_most_its_max_inflight_requests(make_agent):
    agent = one_engine(make_agent, "--chunks", "10", "--chunk-delay", "0.2")
    api = client(agent, add_key(agent, "one", "--max-inflight", "1"), timeout=30.0)
    model = model_of(agent)
    first = in_thread(lambda: list(api.chat.completions.create(model=model, messages=MSG, stream=True)))
    time.sleep(0.5)
    with pytest.raises(openai.RateLimitError, match="max_inflight"):
        api.chat.completions.create(model=model, messages=MSG)
    first[0].join(30)
    assert len(first[1]["value"]) == 10
    api.chat.completions.create(model=model, messages=MSG)  # free again


def test_the_tokens_of_a_stream_whose_client_left_are_charged(make_agent):
    agent = one_engine(make_agent, "--chunks", "50", "--chunk-delay", "0.05")
    api = client(agent, add_key(agent, "leaver", "--tpm", "100000"), timeout=30.0)
    stream = api.chat.completions.create(model=model_of(agent), messages=MSG, stream=True)
    for n, _ in enumerate(stream):
        if n == 9:
            break
    stream.close()
    line = audit_lines(agent)[0]
    assert line["aborted"] == "client: left" and line["completion_tokens"] >= 10, line
    energy = agent.status()["energy"]["tokens"]
    assert energy.get("e", 0) >= 10  # the cost per token counts them too


# -- 4. token accounting reads the answer, not a text search ------------------------------------------


@pytest.mark.parametrize("flags", [("--decoys",), ("--answer-mb", "3")], ids=["small", "passed-through"])
def test_usage_is_the_answers_own_top_level_object_not_a_decoy(make_agent, flags):
    agent = one_engine(make_agent, *flags)
    api = client(agent, add_key(agent, "k"), timeout=30.0)
    reply = api.chat.completions.create(model=model_of(agent), messages=MSG)
    assert reply.usage.completion_tokens == 6 and reply.model_extra["prompt_logprobs"][2]["usage"]["prompt_tokens"] == 0
    line = audit_lines(agent)[0]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (1, 6), line


# -- 5. answers the router must not hold whole ----------------------------------------------------------


def test_a_very_large_answer_passes_through_without_the_agent_holding_it(make_agent):
    agent = one_engine(make_agent, "--answer-mb", "96", router_timeout_s=120)
    key = add_key(agent, "big")
    memory = PeakMemory(agent.proc.pid)
    body = json.dumps({"model": model_of(agent), "messages": MSG}).encode()
    with connect(agent) as sock:
        sock.sendall(head("/v1/chat/completions", len(body), key) + body)
        sock.settimeout(60)
        got, tail = 0, b""
        while True:
            part = sock.recv(1 << 20)
            if not part:
                break
            got += len(part)
            tail = (tail + part)[-4096:]
            if got > 96 * MiB and tail.endswith(b"}"):
                break
    growth = memory.growth_mib()
    print(f"a 96 MiB answer through the router: agent memory growth {growth:.1f} MiB")
    assert got >= 96 * MiB - 4096 and b'"prompt_logprobs"' in tail
    assert growth < 64
    line = audit_lines(agent)[0]
    assert (line["status"], line["completion_tokens"]) == (200, 6)


# -- 6. well-formed JSON of the wrong shape ------------------------------------------------------------


def test_json_of_the_wrong_shape_is_a_400_naming_the_field_and_spends_no_limit(one):
    key = add_key(one, "careless", "--rpm", "1")
    model = model_of(one)
    for body, field in (({"model": model, "messages": MSG, "stream": True, "stream_options": [1]}, "'stream_options'"),
                        ({"model": model, "messages": MSG, "stream_options": "yes"}, "'stream_options'"),
                        ({"model": 5, "messages": MSG}, "'model'"),
                        ([1, 2], "JSON object"),
                        ({"model": model, "messages": MSG, "stream": "yes"}, "'stream'"),
                        ({"model": model, "messages": MSG, "max_tokens": "ten"}, "'max_tokens'")):  # fmt: skip
        status, _, answer = post(one, body, key)
        assert status == 400 and answer["error"]["type"] == "invalid_request_error", (body, answer)
        assert field in answer["error"]["message"], (body, answer)
    status, _, _ = post(one, {"model": model, "messages": MSG}, key)
    assert status == 200  # the key's one request a minute was not spent on them
    assert "Traceback" not in one.agent_log()


# -- 7. an audit trail that an attacker cannot wipe and an operator can use -----------------------------


def test_each_answer_names_its_request_id_and_the_audit_line_its_client(one):
    key = add_key(one, "k")
    status, headers, _ = post(one, {"model": model_of(one), "messages": MSG}, key)
    line = audit_lines(one)[0]
    assert status == 200 and re.fullmatch(r"[0-9a-f]{16}", headers["X-Request-Id"])
    assert line["id"] == headers["X-Request-Id"] and line["client"] == "127.0.0.1"
    status, headers, _ = post(one, {"model": "nope", "messages": MSG}, key)
    assert status == 404 and audit_lines(one, 2)[1]["id"] == headers["X-Request-Id"]


def test_a_keyless_flood_is_tallied_per_address_and_cannot_rotate_the_history_out(one):
    model = model_of(one)
    for _ in range(300):
        assert post(one, {"model": model, "messages": MSG}, None)[0] == 401
    with connect(one, "127.0.0.4") as sock:  # a body over the limit: refused at the HTTP layer
        sock.sendall(head("/v1/chat/completions", 64 * MiB, add_key(one, "k")))
        assert answer_of(sock).startswith(b"HTTP/1.1 413 ")
    with connect(one, "127.0.0.4") as sock:
        sock.sendall(b"NOT HTTP\r\n\r\n")
        answer_of(sock)
    time.sleep(0.3)
    early = [line for line in audit_lines(one) if line.get("event") == "refused"]
    assert [(r["client"], r["status"], r["count"]) for r in early] == [("127.0.0.1", 401, 1), ("127.0.0.4", 413, 1),
                                                                       ("127.0.0.4", 400, 1)], early  # fmt: skip
    one.stop()  # the rest of the tally is told at the latest as the agent stops
    lines = audit_lines(one)
    assert len(lines) == 4, lines
    assert (lines[3]["client"], lines[3]["status"], lines[3]["count"]) == ("127.0.0.1", 401, 299)


def test_a_failed_audit_write_is_counted_and_shown(make_agent):
    agent = one_engine(make_agent, audit_log="/dev/full")  # every write fails as on a full disk
    api = client(agent, add_key(agent, "k"))
    api.chat.completions.create(model=model_of(agent), messages=MSG)  # the request is still served
    audit = agent.wait(lambda s: s["router"]["audit"]["write_errors"] >= 1, 5, "the failed write")["router"]["audit"]
    assert audit["lines_lost"] >= 1 and "No space left on device" in audit["last_error"]
    assert samples(agent, "aiinfra_audit_write_errors")[("aiinfra_audit_write_errors_total", ())] >= 1


# -- 8. a key sees its own world ------------------------------------------------------------------------


def test_a_key_sees_only_its_own_models_in_lists_and_hints(make_agent):
    engines = {"a": vllm(free_port()), "b": vllm(free_port(), gpus=[1]), "c": vllm(free_port())}
    agent = make_agent(engines, {"p": ["a", "b"], "q": ["c"]}, "p", policy={"liveness_interval_s": 60})
    agent.start().wait_phase("b", "ready")
    a, c = model_of(agent, "a"), model_of(agent, "c")
    narrow = client(agent, add_key(agent, "narrow", "--models", a))
    assert [m.id for m in narrow.models.list().data] == [a]
    for model in (c, "nope"):  # c: another profile's, not the key's; no hint of it
        with pytest.raises(openai.NotFoundError) as refused:
            narrow.chat.completions.create(model=model, messages=MSG)
        assert refused.value.body["message"] == f"model {model!r} does not exist here; models: {a}"
    wide = client(agent, add_key(agent, "wide"))
    assert len(wide.models.list().data) == 2
    with pytest.raises(openai.NotFoundError, match="served by profile q"):
        wide.chat.completions.create(model=c, messages=MSG)


# -- 9. an agent restart loses nothing in flight --------------------------------------------------------


def test_three_agent_restarts_cut_no_request_of_two_clients_sending(make_agent):
    engine = vllm(free_port(), "--chunks", "10", "--chunk-delay", "0.05")
    agent = make_agent({"e": engine}, {"p": ["e"]}, "p", policy={"liveness_interval_s": 60})
    agent.hold_router_socket()  # as systemd's aiinfra-router.socket
    agent.start().wait_phase("e", "ready")
    api = client(agent, add_key(agent, "busy"), timeout=60.0)
    model = model_of(agent)

    def ask(stream: bool) -> bool:
        if stream:
            return len(list(api.chat.completions.create(model=model, messages=MSG, stream=True))) == 10
        return bool(api.chat.completions.create(model=model, messages=MSG).choices)

    senders = Senders(ask)
    try:
        for _ in range(3):
            time.sleep(1.5)
            agent.stop()
            agent.start().wait_phase("e", "ready")
        time.sleep(1)
    finally:
        senders.stop()
    outcomes = {"answered": senders.answered, "cut": senders.cut}
    print(f"three restarts, two clients: {outcomes['answered']} answered, {len(outcomes['cut'])} cut")
    assert outcomes["cut"] == [] and outcomes["answered"] > 10


def test_an_engine_answers_only_the_router_not_a_local_process_calling_its_port(one):
    engine = f"http://127.0.0.1:{one.config['engines']['e']['port']}"
    body = json.dumps({"model": model_of(one), "messages": MSG}).encode()
    for headers in ({}, {"Authorization": "Bearer aiinfra-guess"}):  # around the router: no key of the engine's
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{engine}/v1/chat/completions", body, headers), timeout=5)
        assert refused.value.code == 401
    assert urllib.request.urlopen(f"{engine}/health", timeout=5).status == 200  # as vLLM: health needs no key
    assert post(one, {"model": model_of(one), "messages": MSG}, add_key(one, "k"))[0] == 200  # the router has it
    secret = Path(one.config["state_dir"]) / "engine-keys.secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert one.engine_key("e") not in " ".join(psutil.Process(one.engine("e")["pid"]).cmdline())


# -- the agents' word to each other, for engines across boxes --------------------------------------------


def peer_get(address: str, source: str) -> int:
    """GET /ranks from SOURCE (a loopback address of this machine's own): the HTTP status."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0)) as conn:
        conn.sendall(f"GET /ranks HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
        return int(conn.recv(64).split()[1])


def test_only_the_nodes_of_an_engine_across_boxes_hear_how_its_ranks_stand(make_agent):
    engine = vllm(free_port()) | {"span": {"nodes": ["thor", "odin"], "parallel": "pipeline", "port": free_port()}}
    agent = make_agent({"big": engine}, {"p": ["big"]}, "p")
    peer = f"127.0.0.1:{free_port()}"
    agent.config |= {"node": "thor", "nodes": {"thor": peer, "odin": f"127.0.0.1:{free_port()}"}}
    agent.start().wait_phase("big", "ready")
    assert peer_get(peer, "127.0.0.1") == 200  # a node's address (both nodes are this machine here)
    assert peer_get(peer, "127.0.0.2") == 403  # any other address on the network
    document = json.loads(urllib.request.urlopen(f"http://{peer}/ranks", timeout=5).read())
    assert document["engines"]["big"]["phase"] == "ready" and document["node"] == "thor"
