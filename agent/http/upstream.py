"""The router's client to its engines: HTTP/1.1 POSTs over kept-alive connections, parsed by httptools.

aiohttp's client was half the router's CPU a request (bench/router.py). The engines are uvicorn
servers on this host speaking plain HTTP/1.1, so the router needs only this: send one POST, get the
status and content type, and read the body whole or as it arrives, with memory bounded by how fast
the router's own client reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import lru_cache
from urllib.parse import urlsplit

import httptools

READ_AHEAD = 256 * 1024  # bytes of an answer held unread before reading from the engine pauses
IDLE_PER_ENGINE = 64  # kept-alive connections held open to one engine between requests


class UpstreamError(Exception):
    """The engine's connection failed or broke before its answer was whole."""


class ConnectFailed(UpstreamError):
    """Nothing accepted a connection at the engine's address."""


@lru_cache(maxsize=256)
def address_of(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class Answer(asyncio.Protocol):
    """One connection to an engine and the answer arriving on it; reused for the next request when
    the answer was read whole and the engine keeps the connection alive."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()  # once: each lookup costs a getpid() on Python 3.11
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.address: tuple[str, int] = ("", 0)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.content_type = ""
        self.sized = False  # the answer says where it ends (Content-Length or chunked)
        self.length: int | None = None  # its Content-Length
        self.body: list[bytes] = []
        self.held = 0
        self.complete = False
        self.keep_alive = False
        self.failed: Exception | None = None
        self.heard = False  # any byte of this answer arrived

    # -- what the caller uses --------------------------------------------------------------------

    async def _headers(self) -> None:
        while not self.status:
            self._raise_if_failed()
            await self._more()

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            self._raise_if_failed()
            self._resume()
            await self._more()
        return self._take()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        while True:
            if self.body:
                yield self._take()
            elif self.complete:
                return
            else:
                self._raise_if_failed()
                await self._more()

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # uvloop's transports are not asyncio.Transport
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.heard = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"the engine's answer is not HTTP: {exc}"))
            return
        if self.held > READ_AHEAD and self.transport is not None:
            self.transport.pause_reading()  # resumed as the body is taken
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.status and not self.sized and not self.complete and self.failed is None:
            self.complete = True  # an answer that ends where its connection does
        if not self.complete and self.failed is None:
            self.failed = UpstreamError(f"the engine closed the connection{f' ({exc})' if exc else ''}")
        self._wake()

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self.content_type = value.decode("latin-1").partition(";")[0].strip()
        elif name in (b"content-length", b"transfer-encoding"):
            self.sized = True
            if name == b"content-length" and value.strip().isdigit():
                self.length = int(value)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.held += len(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()

    # -- inside ----------------------------------------------------------------------------------

    def _take(self) -> bytes:
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body, self.held = [], 0
        self._resume()
        return data

    def _resume(self) -> None:
        if self.transport is not None and not self.complete:
            self.transport.resume_reading()

    def _raise_if_failed(self) -> None:
        if self.failed is not None:
            raise self.failed

    async def _more(self) -> None:
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self.failed is None and not self.complete:
            self.failed = exc
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()


class Upstream:
    """Connections to the engines, kept alive between requests (at most IDLE_PER_ENGINE idle each)."""

    def __init__(self, connect_timeout_s: float = 5) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.idle: dict[tuple[str, int], list[Answer]] = {}

    async def post(self, base_url: str, path: str, body: bytes, timeout_s: float, key: str | None = None) -> Answer:
        """POST BODY (JSON) to the engine at BASE_URL; the answer once its status and headers are in.
        The whole exchange, body included, fails with TimeoutError after TIMEOUT_S. The caller must
        `release` the answer: whole, its connection serves the next request; unfinished, it is closed
        (and the engine aborts the request)."""
        address = address_of(base_url)
        host, port = address
        head = b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
        named = f"[{host}]" if ":" in host else host  # an IPv6 literal, bracketed as in a URL
        auth = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""
        request = head % (path.encode(), named.encode(), port, len(body), auth) + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            answer = self._idle_one(address)
            reused = answer is not None
            if answer is None:
                answer = await self._connect(address, deadline)
            assert answer.transport is not None
            answer.timer = loop.call_at(deadline, answer._fail, TimeoutError(f"no whole answer in {timeout_s:g}s"))
            answer.transport.write(request)
            try:
                await answer._headers()
            except UpstreamError:
                self.release(answer)
                if reused and not answer.heard:
                    # A kept-alive connection the engine closed as it was reused: nothing of this
                    # request was read there, so it goes on a fresh connection.
                    continue
                raise
            except BaseException:  # the deadline, or the router's client left
                self.release(answer)
                raise
            return answer

    def release(self, answer: Answer) -> None:
        if answer.timer is not None:
            answer.timer.cancel()
            answer.timer = None
        if answer.complete and not answer.body and answer.keep_alive and answer.usable():
            assert answer.transport is not None
            idle = self.idle.setdefault(answer.address, [])
            if len(idle) < IDLE_PER_ENGINE:
                answer._reset()
                idle.append(answer)
                return
        if answer.transport is not None:
            answer.transport.close()

    def close(self) -> None:
        for idle in self.idle.values():
            for answer in idle:
                if answer.transport is not None:
                    answer.transport.close()
        self.idle.clear()

    def _idle_one(self, address: tuple[str, int]) -> Answer | None:
        idle = self.idle.get(address)
        while idle:
            answer = idle.pop()
            if answer.usable():
                return answer
        return None

    async def _connect(self, address: tuple[str, int], deadline: float) -> Answer:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(min(self.connect_timeout_s, max(0.0, deadline - loop.time()))):
                _, answer = await loop.create_connection(Answer, *address)
        except TimeoutError:
            raise ConnectFailed(f"no connection to {address[0]}:{address[1]} in {self.connect_timeout_s:g}s") from None
        except OSError as exc:
            raise ConnectFailed(f"no connection to {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        answer.address = address
        return answer
