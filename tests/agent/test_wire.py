"""The router's HTTP/1.1 layer (agent/http/serve.py, upstream.py) against real sockets: what aiohttp
did for it before, each case caused rather than assumed: pipelined requests, a head past its bound,
100-continue, a reader slower than its engine, an engine that closes a kept-alive connection as it
is reused, an engine that does not speak HTTP."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from aiinfra.agent.http import upstream as up
from aiinfra.agent.http.serve import MAX_HEAD, MAX_PIPELINED, Clients, Connection, Limits, Reply, Request


async def echo(request: Request, conn: Connection) -> Reply | None:
    if request.path == "/stream":
        conn.start(200, "text/event-stream")
        for n in range(3):
            await conn.send(b"data: %d\n\n" % n)
        conn.end()
        return None
    return Reply(200, json.dumps({"path": request.path, "body": request.body.decode()}).encode())


class Echo:
    """A serve.App that admits every request and answers with HANDLER; what this layer refused, in `refused`."""

    def __init__(self, handler=echo) -> None:
        self.handle = handler
        self.refusals: list[tuple[str, int, str]] = []

    def admit(self, request: Request) -> Reply | None:
        return None

    def refused(self, client: str, status: int, code: str) -> None:
        self.refusals.append((client, status, code))


async def serving(
    handler=echo, max_body: int = 1000, read_timeout_s: float = 5, **limits
) -> tuple[asyncio.AbstractServer, int]:
    clients = Clients(Echo(handler), Limits(max_body, head_timeout_s=read_timeout_s, read_timeout_s=read_timeout_s,
                                            **limits))  # fmt: skip
    server = await asyncio.get_running_loop().create_server(clients.protocol, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def exchange(port: int, data: bytes, until: bytes, timeout: float = 5) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = b""
    try:
        async with asyncio.timeout(timeout):
            while got.count(until) < 1:
                more = await reader.read(65536)
                if not more:
                    break
                got += more
    finally:
        writer.close()
    return got


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_pipelined_requests_are_answered_in_order_on_one_connection():
    async def go() -> bytes:
        server, port = await serving()
        async with server:
            last = post("/c", b"3", "Connection: close\r\n")
            return await exchange(port, post("/a", b"1") + post("/b", b"2") + last, b'"path": "/c"')

    answers = asyncio.run(go())
    assert [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["path"]
            for part in answers.split(b"HTTP/1.1 200 OK")[1:]] == ["/a", "/b", "/c"]  # fmt: skip


def test_requests_sent_far_ahead_of_their_answers_are_not_all_held():
    async def slow(request: Request, conn: Connection) -> Reply:
        await asyncio.sleep(0.2)  # the first is in hand while the rest arrive
        return Reply(200, b"{}")

    async def go() -> bytes:
        server, port = await serving(slow)
        async with server:
            return await exchange(port, post("/a", b"") * (MAX_PIPELINED + 20), b"never")

    answers = asyncio.run(go())
    assert answers.count(b"HTTP/1.1 200 OK") == 1 + MAX_PIPELINED  # the one in hand and those queued, then closed


def test_a_head_past_its_bound_is_refused_and_not_held():
    async def go() -> bytes:
        server, port = await serving()
        async with server:
            huge = b"POST /a HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n"
            return await exchange(port, huge, b"}")

    answer = asyncio.run(go())
    assert answer.startswith(b"HTTP/1.1 431 ") and b"Connection: close" in answer, answer[:200]
    assert b'"code": "request_too_large"' in answer


def test_expect_100_continue_gets_its_interim_answer_first():
    async def go() -> bytes:
        server, port = await serving()
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"hi")
            final = await asyncio.wait_for(reader.readuntil(b"}"), 5)
            writer.close()
            return interim + final

    answer = asyncio.run(go())
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK") and b'"body": "hi"' in answer


def test_an_idle_kept_alive_connection_closes_a_read_timeout_after_its_last_answer():
    """The read timeout follows each request: a connection answered late in its first window stays
    open past that window's end, and closes one timeout after its answer."""

    async def go() -> tuple[float, float, bytes]:
        server, port = await serving(read_timeout_s=1)
        async with server:
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened = loop.time()
            await asyncio.sleep(0.7)
            writer.write(post("/a", b"1"))
            got = b""
            while b'"body": "1"}' not in got:
                got += await reader.read(65536)
            answered = loop.time()
            async with asyncio.timeout(5):
                rest = await reader.read(65536)  # b"" once the router closes
            writer.close()
            return answered - opened, loop.time() - answered, rest

    asked_at, open_for, rest = asyncio.run(go())
    assert asked_at >= 0.7 and rest == b""
    assert 0.9 <= open_for <= 1.6, open_for  # not at the first window's end (0.3 s after the answer)


def test_a_chunked_body_past_the_limit_is_a_413_read_to_its_end():
    async def go() -> bytes:
        server, port = await serving(max_body=100)
        async with server:
            head = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            return await exchange(port, head + b"c8\r\n" + b"x" * 200 + b"\r\n0\r\n\r\n", b"}")

    answer = asyncio.run(go())
    assert answer.startswith(b"HTTP/1.1 413 ") and b"request body over 100 bytes" in answer


def test_a_stream_is_chunked_with_its_head_sent_with_the_first_event():
    async def go() -> bytes:
        server, port = await serving()
        async with server:
            return await exchange(port, post("/stream", b""), b"0\r\n\r\n")

    answer = asyncio.run(go())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Type: text/event-stream" in head
    assert body == b"9\r\ndata: 0\n\n\r\n9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"


def test_an_http_1_0_client_gets_its_stream_unchunked_ending_at_the_close():
    async def go() -> bytes:
        server, port = await serving()
        async with server:
            return await exchange(port, b"POST /stream HTTP/1.0\r\nContent-Length: 0\r\n\r\n", b"never")

    head, _, body = asyncio.run(go()).partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"  # and the connection closed after it


# -- the client to the engines -------------------------------------------------------------------


class RawEngine:
    """A TEST DOUBLE engine written on raw sockets, so that it can misbehave exactly."""

    def __init__(self, on_request) -> None:
        self.on_request, self.requests, self.connections = on_request, 0, 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n_here = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                self.requests += 1
                n_here += 1
                if not await self.on_request(writer, n_here):
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def engine(on_request) -> tuple[RawEngine, asyncio.AbstractServer, str]:
    raw = RawEngine(on_request)
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    return raw, server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def test_a_kept_alive_connection_the_engine_drops_on_reuse_is_retried_on_a_fresh_one():
    async def first_only(writer, n_here) -> bool:
        if n_here > 1:
            return False  # closes as the second request arrives, unanswered: the keep-alive race
        writer.write(OK)
        return True

    async def go() -> tuple[bytes, bytes, RawEngine]:
        raw, server, url = await engine(first_only)
        async with server:
            client = up.Upstream()
            answers = []
            for _ in range(2):
                answer = await client.post(url, "/v1/x", b"{}", 5)
                answers.append(await answer.read())
                client.release(answer)
            client.close()
            return answers[0], answers[1], raw

    first, second, raw = asyncio.run(go())
    assert first == second == b"{}"
    assert raw.connections == 2 and raw.requests == 3  # the dropped one, then its retry on a fresh connection


def test_an_engine_faster_than_its_reader_is_paused_not_buffered():
    total = 8 * 2**20

    async def flood(writer, _n) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        block = b"x" * 65536
        for _ in range(total // len(block)):
            writer.write(b"%x\r\n%s\r\n" % (len(block), block))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return False

    async def go() -> tuple[int, int]:
        _, server, url = await engine(flood)
        async with server:
            client = up.Upstream()
            answer = await client.post(url, "/v1/x", b"{}", 30)
            await asyncio.sleep(1)  # the reader does not read: the engine must not fill the router
            held = answer.held
            got = 0
            async for data in answer.chunks():
                got += len(data)
            client.release(answer)
            return held, got

    held, got = asyncio.run(go())
    assert held <= up.READ_AHEAD + 256 * 1024, held  # one read past the mark at most
    assert got == total


@pytest.mark.parametrize("reply", [b"SSH-2.0-OpenSSH_9.6\r\n", b""])
def test_an_engine_that_does_not_answer_http_is_an_upstream_error(reply):
    async def wrong(writer, _n) -> bool:
        writer.write(reply)
        await writer.drain()
        return False

    async def go() -> None:
        _, server, url = await engine(wrong)
        async with server:
            await up.Upstream().post(url, "/v1/x", b"{}", 5)

    with pytest.raises(up.UpstreamError):
        asyncio.run(go())


def test_nothing_listening_is_connect_failed():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(up.ConnectFailed, match=r"no connection to 127\.0\.0\.1"):
            asyncio.run(up.Upstream().post(f"http://127.0.0.1:{port}", "/v1/x", b"{}", 5))
