"""The router's HTTP/1.1 server: a connection protocol on httptools, one request at a time per
connection, each request's handler a task that a client leaving cancels.

aiohttp's server was a third of the router's CPU a request (bench/router.py); the router needs little
of it: a POST with a bounded body, a whole answer or a stream of events. What a client may hold is
bounded here (Limits): connections at once, in all and per client address; the request head (MAX_HEAD)
and the time to send it, which also bounds an idle kept-alive connection; the body and the time to
send it; and the time a client may leave an answer unread. The application decides on a request as
soon as its head is in (App.admit): a request refused there is answered without its body being kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol

import httptools

log = logging.getLogger("aiinfra.router")
MAX_HEAD = 64 * 1024  # bytes of request line and headers
LINGER_S = 1.0  # after a refusal mid-request, what else the client sends is read and dropped this long
MAX_PIPELINED = 16  # requests a client may send ahead of its answers on one connection
RETIRE_IDLE_S = 1.0  # at stop, an idle connection may still bring one request this long
KIND = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


@dataclass(frozen=True)
class Limits:
    """What one client may hold of the router (0: no cap)."""

    max_body: int  # bytes of a request's body
    head_timeout_s: float = 10  # to send a request's head; also how long a kept-alive connection idles
    read_timeout_s: float = 30  # to send its body, once the head is in
    write_timeout_s: float = 30  # an answer left unread this long: the connection is cut
    max_connections: int = 0  # open at once, all clients together
    max_per_client: int = 0  # open at once from one client address (an IPv6 client: its /64)


class ClientGone(ConnectionError):
    """The client left, or stopped reading past the write deadline (`why` says which)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Request:
    __slots__ = ("body", "client", "headers", "http11", "id", "keep_alive", "key", "method", "path")

    def __init__(
        self, method: bytes, path: str, headers: dict[bytes, bytes], body: bytes, keep_alive: bool, http11: bool,
        client: str = "-",
    ) -> None:  # fmt: skip
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.keep_alive, self.http11, self.client = keep_alive, http11, client
        self.id = os.urandom(8).hex()  # in the audit line and the answer's X-Request-Id
        self.key: Any = None  # who the application admitted the request as

    def header(self, name: bytes) -> str:
        return self.headers.get(name, b"").decode("latin-1")


class Reply:
    """A whole answer."""

    __slots__ = ("body", "code", "content_type", "headers", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:  # fmt: skip
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers
        self.code = code  # an error's code (error_reply), for counting refusals

    def encode(self, close: bool, request_id: str | None = None) -> bytes:
        """Head and body, as they go on the wire."""
        headers = self.headers if request_id is None else {**(self.headers or {}), "X-Request-Id": request_id}
        return head(self.status, headers, self.content_type, len(self.body), close) + self.body


def error_reply(status: int, message: str, code: str, retry_after: float | None = None) -> Reply:
    """An error in OpenAI's shape ({"error": {"message", "type", "code"}}), which clients raise as
    their own typed errors."""
    kind = KIND.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return Reply(status, body, headers=headers, code=code)


_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}
_date: tuple[int, bytes] = (0, b"")


def _now() -> bytes:
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, formatdate(second, usegmt=True).encode())
    return _date[1]


def head(status: int, headers: dict[str, str] | None, content_type: str, length: int | None, close: bool) -> bytes:
    """A response head; LENGTH None: a stream, chunked unless CLOSE (an HTTP/1.0 client's ends at the close)."""
    lines = [b"HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\n" % (
        status, _PHRASES.get(status, b"Unknown"), _now(), content_type.encode())]  # fmt: skip
    if length is not None:
        lines.append(b"Content-Length: %d\r\n" % length)
    elif not close:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    if close:
        lines.append(b"Connection: close\r\n")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"\r\n")
    return b"".join(lines)


class App(Protocol):
    """What the server serves: a decision on each request once its head is in, then its answer."""

    def admit(self, request: Request) -> Reply | None:
        """A refusal (then the body is not kept), or None: the request goes on to `handle`."""

    async def handle(self, request: Request, conn: Connection) -> Reply | None:
        """A whole answer, or None after streaming one on CONN (`start`, `send`…, `end`)."""

    def refused(self, client: str, status: int, code: str) -> None:
        """This layer refused a request, or a connection, before the application saw it."""


def client_of(peer: Any) -> str:
    """The client's address as the limits and the audit count it: an IPv6 client by its /64, which one
    host commonly holds whole."""
    host = peer[0] if isinstance(peer, tuple) and peer else "local"
    if ":" in host and not host.startswith("::ffff:"):
        try:
            return str(ipaddress.IPv6Network(f"{host}/64", strict=False))
        except ValueError:
            return host
    return host.removeprefix("::ffff:")


class Clients:
    """The connections open on one listener, the count per client address, and the drain at stop."""

    def __init__(self, app: App, limits: Limits) -> None:
        self.app, self.limits = app, limits
        self.open: set[Connection] = set()
        self.per_client: Counter[str] = Counter()
        self.retiring = False

    def protocol(self) -> Connection:
        return Connection(self.app, self.limits, self)

    def busy(self) -> int:
        """Connections with a request in hand."""
        return sum(1 for conn in self.open if conn.task is not None)

    async def drain(self, timeout_s: float) -> int:
        """Stop serving: each request in hand, or arriving within RETIRE_IDLE_S, is answered and its
        connection closed, for at most TIMEOUT_S; what is left then is cut. Returns how many were cut."""
        self.retiring = True
        for conn in list(self.open):
            conn.retire()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.open and loop.time() < deadline:
            await asyncio.sleep(0.05)
        cut = self.busy()
        for conn in list(self.open):
            conn.abort()
        return cut


class Connection(asyncio.Protocol):
    """One client connection. A handler answers with a Reply, or streams: `start`, `send`…, `end`."""

    def __init__(self, app: App, limits: Limits, clients: Clients) -> None:
        self.app, self.limits, self.clients = app, limits, clients
        self.max_body = limits.max_body
        self.loop = asyncio.get_running_loop()  # once: each lookup costs a getpid() on Python 3.11
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        # The read timeout: a deadline moved per request, and one timer that follows it lazily, instead
        # of a timer made and cancelled for every request of a kept-alive connection.
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.pending: deque[Request] = deque()  # pipelined requests, answered in order
        self.drained: asyncio.Future[None] | None = None
        self.stream_head: bytes | None = None  # a stream's head, sent with its first event
        self.current: Request | None = None  # the request in hand
        self.refused = False  # answered mid-request: what else arrives is dropped
        self.reading_paused = False
        self.streaming = False  # start() was called for the request in hand
        self.chunked = True  # the stream in hand is sent chunked
        self.retiring = False  # the server stops: this connection closes after the request in hand
        self.client = "-"
        self.counted = False  # in the per-client count
        self.over: Reply | None = None  # past a connection cap: this is its only answer
        self._new_message()

    def _new_message(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.in_body = False
        self.request: Request | None = None  # once its head is in

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport
        self.client = client_of(transport.get_extra_info("peername"))
        clients, limits = self.clients, self.limits
        if limits.max_connections and len(clients.open) >= limits.max_connections:
            self._over("too many connections; retry shortly", "too_many_connections")
            return
        if limits.max_per_client and clients.per_client[self.client] >= limits.max_per_client:
            self._over(f"too many connections from {self.client}; retry shortly", "too_many_connections_client")
            return
        clients.open.add(self)
        clients.per_client[self.client] += 1
        self.counted = True
        self._arm(limits.head_timeout_s)
        if clients.retiring:  # accepted as the listener closed: served like the others still open
            self.retire()

    def data_received(self, data: bytes) -> None:
        if self.over is not None:  # past a cap: once the request starts to arrive, its 503
            self._refuse(self.over, counted=True)
            self.over = None
            return
        if self.refused:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(error_reply(400, "protocol upgrades are not served here", "invalid_request"))
        except httptools.HttpParserError as exc:
            self._refuse(error_reply(400, f"not an HTTP/1.1 request: {exc}", "invalid_request"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.counted:
            self.clients.open.discard(self)
            self.clients.per_client[self.client] -= 1
            if not self.clients.per_client[self.client]:
                del self.clients.per_client[self.client]
            self.counted = False
        self._stop_timer()
        if self.task is not None:
            self.task.cancel()  # the handler's own cleanup closes its engine request
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(ClientGone("the client left"))
            self.drained.exception()  # retrieved: nobody may be waiting on it

    def pause_writing(self) -> None:
        self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value
        self._count_head(len(name) + len(value))

    def on_headers_complete(self) -> None:
        if self.refused:
            return
        parser = self.parser
        request = Request(parser.get_method(), self.url.partition(b"?")[0].decode("latin-1"), self.headers, b"",
                          parser.should_keep_alive(), parser.get_http_version() != "1.0", self.client)  # fmt: skip
        refusal = self.app.admit(request)
        if refusal is not None:  # decided on the head alone: the body is not kept
            self._refuse(refusal, request.id, counted=True)
            return
        length = self.headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body:
            self._too_large(request.id)
            return
        self.request = request
        self.in_body = True
        self._arm(self.limits.read_timeout_s)
        if self.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.refused:
            return
        self.body_bytes += len(body)
        if self.body_bytes > self.max_body:
            self._too_large()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.refused or self.request is None:
            return
        request = self.request
        request.body = b"".join(self.body)
        self._new_message()
        self._disarm()
        if self.task is None:
            self.task = self.loop.create_task(self._answer(request))
        elif len(self.pending) >= MAX_PIPELINED:
            too_many = f"over {MAX_PIPELINED} requests ahead of their answers"
            self._refuse(error_reply(429, too_many, "too_many_pipelined"), request.id)
        else:
            self.pending.append(request)
            if self.transport is not None and not self.reading_paused:
                self.transport.pause_reading()
                self.reading_paused = True

    # -- answering ---------------------------------------------------------------------------------

    async def _answer(self, request: Request) -> None:
        while True:
            self.current, self.streaming, self.stream_head = request, False, None
            try:
                reply = await self.app.handle(request, self)
            except ClientGone:
                return  # the connection is gone or cut: nothing more to answer on it
            except Exception:
                log.exception("router: a request failed inside the router")
                request.keep_alive = False
                head_sent = self.streaming and self.stream_head is None
                reply = None if head_sent else error_reply(
                    500, "the router failed on this request; its journal says why", "internal_error")  # fmt: skip
            # refused: the queued ones, then close; retiring: this one, then close
            last = not request.keep_alive or self.retiring or (self.refused and not self.pending)
            if reply is not None:
                self.write_reply(reply, close=last, request_id=request.id)
                try:
                    await self.drain()
                except ClientGone:
                    return
            if last:
                if self.transport is not None:
                    self.transport.close()
                return
            if not self.pending:
                break
            request = self.pending.popleft()
        self.task = None
        if self.transport is not None:
            if self.reading_paused:
                self.transport.resume_reading()
                self.reading_paused = False
            self._arm(self.limits.head_timeout_s)

    def write_reply(self, reply: Reply, close: bool = False, request_id: str | None = None) -> None:
        if self.transport is not None:
            self.transport.write(reply.encode(close, request_id))

    def start(
        self, status: int, content_type: str, headers: dict[str, str] | None = None, length: int | None = None
    ) -> None:
        """A streamed answer (LENGTH: its size, where known): its head goes out with its first part."""
        self.streaming = True
        current = self.current
        http10 = current is not None and not current.http11
        if current is not None and http10 and length is None:  # unchunked: it ends where the connection does
            current.keep_alive = False
        if current is not None:
            headers = {**(headers or {}), "X-Request-Id": current.id}
        self.chunked = length is None and not http10
        self.stream_head = head(status, headers, content_type, length, http10 and length is None)

    async def send(self, data: bytes) -> None:
        """One part of a stream, with backpressure: a slow client slows the engine's reading, never
        grows the router's memory; one that stops reading is cut at the write deadline (ClientGone)."""
        if self.transport is None:
            raise ClientGone("the client left")
        framed = b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data
        if self.stream_head is not None:
            framed, self.stream_head = self.stream_head + framed, None
        self.transport.write(framed)
        await self.drain()

    async def drain(self) -> None:
        """Wait until the client has taken what was written, within the write deadline: past it the
        connection is cut and ClientGone says so."""
        if self.drained is None:
            return
        try:
            async with asyncio.timeout(self.limits.write_timeout_s):
                await self.drained
        except TimeoutError:
            self.abort()
            raise ClientGone(f"stopped reading for {self.limits.write_timeout_s:g}s") from None

    def end(self) -> None:
        if self.transport is not None:
            self.transport.write((self.stream_head or b"") + (b"0\r\n\r\n" if self.chunked else b""))
        self.stream_head = None

    def retire(self) -> None:
        """The server stops: the request in hand, or one that arrives within RETIRE_IDLE_S, is answered,
        then the connection closes. Closing an idle kept-alive connection at once would cut the request
        its client may be sending that moment; one that sends nothing in the grace is closed."""
        self.retiring = True
        if self.task is None and not self.in_body:
            self._arm(min(RETIRE_IDLE_S, self.limits.head_timeout_s))

    def abort(self) -> None:
        """Cut the connection, dropping whatever it still had to send."""
        if self.transport is not None:
            self.transport.abort()

    # -- limits ------------------------------------------------------------------------------------

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD:
            self._refuse(error_reply(431, f"request head over {MAX_HEAD} bytes", "request_too_large"))

    def _too_large(self, request_id: str | None = None) -> None:
        self._refuse(error_reply(413, f"request body over {self.max_body} bytes", "request_too_large"), request_id)

    def _over(self, message: str, code: str) -> None:
        """Past a connection cap: a 503 once the request starts to arrive, and closed within LINGER_S."""
        self.over = error_reply(503, message, code, retry_after=1)
        self.app.refused(self.client, 503, code)  # counted now: it may never send a byte
        assert self.transport is not None
        self.timer = self.loop.call_later(LINGER_S, self._close)

    def _refuse(self, reply: Reply, request_id: str | None = None, counted: bool = False) -> None:
        """Answer a request cut short, then close; what the client still sends is read and dropped, not
        kept, for LINGER_S (closing on unread data would reset the connection before the answer is read).
        Unless the application COUNTED it (its own refusal), the application hears of it."""
        if self.refused:
            return
        self.refused = True
        self._disarm()
        if not counted:
            self.app.refused(self.client, reply.status, reply.code or "-")
        if self.transport is None or self.task is not None:  # requests in hand: close after them
            return
        self.write_reply(reply, close=True, request_id=request_id)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self._close)

    def _close(self) -> None:
        """Close; what a client left unread is dropped (a graceful close would wait on it forever)."""
        if self.transport is None:
            return
        if self.transport.get_write_buffer_size():
            self.transport.abort()
        else:
            self.transport.close()

    def _arm(self, timeout_s: float) -> None:
        """Bound the time until the next part of a request is in: its head, then its body."""
        self.deadline = self.loop.time() + timeout_s
        if self.timer is not None and self.timer.when() > self.deadline:  # a deadline moved earlier
            self.timer.cancel()
            self.timer = None
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._check_deadline)

    def _disarm(self) -> None:
        self.deadline = None  # the timer, if any, finds no deadline and ends

    def _stop_timer(self) -> None:
        self._disarm()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check_deadline(self) -> None:
        self.timer = None
        if self.deadline is None:
            return
        if self.loop.time() < self.deadline:  # moved on by later requests: follow it
            self.timer = self.loop.call_at(self.deadline, self._check_deadline)
            return
        self.deadline = None
        if self.in_body:
            timeout = self.limits.read_timeout_s
            self._refuse(error_reply(408, f"request body not sent within {timeout:g}s", "request_timeout"),
                         None if self.request is None else self.request.id)  # fmt: skip
        else:
            if self.head_bytes:  # a head never finished: nothing to answer, but counted
                self.app.refused(self.client, 408, "request_timeout")
            self._close()  # idle, or a head never finished: nothing to answer
