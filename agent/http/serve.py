"""The router's HTTP/1.1 server: a connection protocol on httptools, one request at a time per
connection, each request's handler a task that a client leaving cancels.

aiohttp's server was a third of the router's CPU a request (bench/router.py); the router needs little
of it: a POST with a bounded body, a whole answer or a stream of events. What a client may send is
bounded here: the request head (MAX_HEAD), the body (max_body), and the time to send both (read_timeout_s),
which also bounds how long an idle kept-alive connection stays open.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus

import httptools

log = logging.getLogger("aiinfra.router")
MAX_HEAD = 64 * 1024  # bytes of request line and headers
LINGER_S = 1.0  # after a refusal mid-request, what else the client sends is read and dropped this long
MAX_PIPELINED = 16  # requests a client may send ahead of its answers on one connection
KIND = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class Request:
    __slots__ = ("body", "headers", "http11", "keep_alive", "method", "path")

    def __init__(
        self, method: bytes, path: str, headers: dict[bytes, bytes], body: bytes, keep_alive: bool, http11: bool
    ) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.keep_alive, self.http11 = keep_alive, http11

    def header(self, name: bytes) -> str:
        return self.headers.get(name, b"").decode("latin-1")


class Reply:
    """A whole answer."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self, status: int, body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None
    ) -> None:
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers

    def encode(self, close: bool) -> bytes:
        """Head and body, as they go on the wire."""
        return head(self.status, self.headers, self.content_type, len(self.body), close) + self.body


def error_reply(status: int, message: str, code: str, retry_after: float | None = None) -> Reply:
    """An error in OpenAI's shape ({"error": {"message", "type", "code"}}), which clients raise as
    their own typed errors."""
    kind = KIND.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = json.dumps({"error": {"message": message, "type": kind, "code": code}}).encode()
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return Reply(status, body, headers=headers)


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


Handler = Callable[[Request, "Connection"], Awaitable["Reply | None"]]


class Connection(asyncio.Protocol):
    """One client connection. A handler answers with a Reply, or streams: `start`, `send`…, `end`."""

    def __init__(self, handler: Handler, max_body: int, read_timeout_s: float, connections: set) -> None:
        self.handler, self.max_body, self.read_timeout_s = handler, max_body, read_timeout_s
        self.connections = connections
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
        self._new_message()

    def _new_message(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.in_body = False

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport
        self.connections.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
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
        self.connections.discard(self)
        self._stop_timer()
        if self.task is not None:
            self.task.cancel()  # the handler's own cleanup closes its engine request
        if self.drained is not None and not self.drained.done():
            self.drained.set_exception(ConnectionResetError("the client left"))

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
        length = self.headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body:
            self._too_large()
            return
        self.in_body = True
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
        if self.refused:
            return
        method = self.parser.get_method()
        request = Request(method, self.url.partition(b"?")[0].decode("latin-1"), self.headers, b"".join(self.body),
                          self.parser.should_keep_alive(), self.parser.get_http_version() != "1.0")  # fmt: skip
        self._new_message()
        self._disarm()
        if self.task is None:
            self.task = self.loop.create_task(self._answer(request))
        elif len(self.pending) >= MAX_PIPELINED:
            too_many = f"over {MAX_PIPELINED} requests ahead of their answers"
            self._refuse(error_reply(429, too_many, "too_many_pipelined"))
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
                reply = await self.handler(request, self)
            except Exception:
                log.exception("router: a request failed inside the router")
                request.keep_alive = False
                head_sent = self.streaming and self.stream_head is None
                reply = None if head_sent else error_reply(
                    500, "the router failed on this request; its journal says why", "internal_error")  # fmt: skip
            last = not request.keep_alive or (self.refused and not self.pending)  # refused: the queued, then close
            if reply is not None:
                self.write_reply(reply, close=last)
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
            self._arm()

    def write_reply(self, reply: Reply, close: bool = False) -> None:
        if self.transport is not None:
            self.transport.write(reply.encode(close))

    def start(self, status: int, content_type: str, headers: dict[str, str] | None = None) -> None:
        """A streamed answer: its head goes out with its first event (or its end)."""
        self.streaming = True
        current = self.current
        http10 = current is not None and not current.http11
        if current is not None and http10:  # no chunked encoding: the stream ends where the connection does
            current.keep_alive = False
        self.stream_head = head(status, headers, content_type, None, http10)

    async def send(self, data: bytes) -> None:
        """One part of a stream, with backpressure: a slow client slows the engine's reading, never
        grows the router's memory."""
        if self.transport is None:
            raise ConnectionResetError("the client left")
        chunked = self.current is None or self.current.http11
        framed = b"%x\r\n%s\r\n" % (len(data), data) if chunked else data
        if self.stream_head is not None:
            framed, self.stream_head = self.stream_head + framed, None
        self.transport.write(framed)
        if self.drained is not None:
            await self.drained

    def end(self) -> None:
        chunked = self.current is None or self.current.http11
        if self.transport is not None:
            self.transport.write((self.stream_head or b"") + (b"0\r\n\r\n" if chunked else b""))
        self.stream_head = None

    # -- limits ------------------------------------------------------------------------------------

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD:
            self._refuse(error_reply(431, f"request head over {MAX_HEAD} bytes", "request_too_large"))

    def _too_large(self) -> None:
        self._refuse(error_reply(413, f"request body over {self.max_body} bytes", "request_too_large"))

    def _refuse(self, reply: Reply) -> None:
        """Answer a request cut short, then close; what the client still sends is read and dropped for
        LINGER_S (closing on unread data would reset the connection before the answer is read)."""
        if self.refused:
            return
        self.refused = True
        self._disarm()
        if self.transport is None or self.task is not None:  # requests in hand: close after them
            return
        self.write_reply(reply, close=True)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def _arm(self) -> None:
        """Bound the time until the next request is whole: its head, then its body."""
        self.deadline = self.loop.time() + self.read_timeout_s
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
            self._refuse(error_reply(408, f"request body not sent within {self.read_timeout_s:g}s", "request_timeout"))
        elif self.transport is not None:
            self.transport.close()  # idle, or a head never finished: nothing to answer
