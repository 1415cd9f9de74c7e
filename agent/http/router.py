"""One OpenAI-compatible endpoint in front of the engines: route by `model`, pass streams through.

Errors use OpenAI's shape ({"error": {"message", "type", "code"}}) so that clients raise their own
typed errors: 401 no or bad key, 403 model not allowed for the key, 404 unknown model, 413 body too
large, 429 rate limited, 503 model known but not ready (Retry-After), 502 engine error, 504 timeout.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aiinfra.agent.engines import Launch
from aiinfra.agent.http.keys import Key, KeyRing, RateLimiter
from aiinfra.agent.http.serve import Connection, Reply, Request, error_reply
from aiinfra.agent.http.upstream import Answer, ConnectFailed, Upstream, UpstreamError
from aiinfra.agent.metrics import Metrics
from aiinfra.agent.notify import audit
from aiinfra.agent.reconcile import Phase, expected_ready_in
from aiinfra.agent.supervisor import Snapshot, Supervisor

MAX_MODEL_NAME = 256  # what of a client's model name reaches the audit log
UNKNOWN_MODEL = "(unknown)"  # the metrics' label for any name not configured here
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


class Refusal(Exception):
    def __init__(self, status: int, message: str, code: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after

    def reply(self) -> Reply:
        return error_reply(self.status, str(self), self.code, self.retry_after)


@dataclass
class Exchange:
    """What the audit line and the metrics need of one request."""

    started: float
    key: str = "-"
    model: str = "-"
    engine: str = "-"
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    aborted: str | None = None  # a stream that ended early, and by what


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


_DECODER = json.JSONDecoder()


def _usage_of(body: bytes) -> Any:
    """{"usage": …} of a response body, parsing only that object, or None. The last "usage" key is the
    body's own: in the choices' text the word is escaped (\\"usage\\")."""
    at = body.rfind(b'"usage"')
    colon = body.find(b":", at) if at >= 0 else -1
    if colon < 0:
        return None
    try:
        usage, _ = _DECODER.raw_decode(body[colon + 1 :].decode(errors="replace").lstrip())
    except ValueError:
        return None
    return {"usage": usage}


def _asks_for_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


class Router:
    def __init__(
        self,
        supervisor: Supervisor,
        keys: KeyRing | None,
        metrics: Metrics,
        timeout_s: float,
        include_text: bool = False,
    ) -> None:
        self.supervisor = supervisor
        self.keys = keys  # None: authentication turned off by configuration
        self.limiter = RateLimiter()
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.include_text = include_text
        self.upstream = Upstream()
        self.waiting: dict[str, int] = {}  # requests waiting for each engine to be ready

    async def handle(self, request: Request, conn: Connection) -> Reply | None:
        """The routes: GET /v1/models, POST ROUTES; anything else is refused in OpenAI's shape."""
        method = "GET" if request.path == "/v1/models" else "POST" if request.path in ROUTES else None
        if method is None:
            return error_reply(404, f"no route {request.path}; routes: /v1/models, {', '.join(ROUTES)}", "not_found")
        if request.method != method.encode():
            return error_reply(405, f"{request.path} takes {method}", "method_not_allowed")
        return self.models(request) if method == "GET" else await self.proxy(request, conn)

    def close(self) -> None:
        self.upstream.close()

    # -- who, what, where ---------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> Key | None:
        if self.keys is None:
            return None
        header = request.header(b"authorization")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        key = self.keys.lookup(token) if token else None
        if key is None:
            raise Refusal(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>' (aiinfra keys add NAME makes one)",
                "invalid_api_key",
            )
        return key

    def _serving(self, snapshot: Snapshot) -> dict[str, tuple[Launch, bool]]:
        """Model name → (engine, ready) for the active profile's engines."""
        served: dict[str, tuple[Launch, bool]] = {}
        for name in snapshot.desired:
            launch = snapshot.launches[name]
            ready = snapshot.ready(name)
            for model in launch.served:
                if ready or model not in served:
                    served[model] = (launch, ready)
        return served

    def _find(self, model: str, may_switch: bool = False) -> tuple[Launch, bool, str | None]:
        """The engine serving MODEL in the active profile and whether it is ready; with may_switch, for a
        model of a profile that a request may switch to, that profile (the third value)."""
        snapshot = self.supervisor.snapshot()
        served = self._serving(snapshot)
        if model not in served:
            elsewhere = [p for p, names in snapshot.profiles.items()
                         if any(model in snapshot.launches[n].served for n in names)]  # fmt: skip
            switchable = [p for p in elsewhere if p in snapshot.switching and snapshot.switching[p].on_request]
            if may_switch and switchable:
                name = next(n for n in snapshot.profiles[switchable[0]] if model in snapshot.launches[n].served)
                return snapshot.launches[name], False, switchable[0]
            if elsewhere:
                raise Refusal(404, f"model {model!r} is served by profile {' or '.join(elsewhere)}, not by the "
                              f"active profile {snapshot.profile}; switch with `aiinfra profile {elsewhere[0]}`",
                              "model_not_in_profile")  # fmt: skip
            known = ", ".join(sorted(served)) or "none"
            raise Refusal(404, f"model {model!r} does not exist here; models: {known}", "model_not_found")
        return (*served[model], None)

    def _switch_for(self, model: str, profile: str, key: Key | None) -> Launch:
        """A request for a model of PROFILE, which requests may switch to: switch if the key may."""
        if key is not None and not key.may_switch:
            raise Refusal(403, f"model {model!r} is served by profile {profile}, and key {key.name!r} may not switch "
                          f"profiles; `aiinfra profile {profile}` switches, or a key made with --may-switch",
                          "switch_not_allowed")  # fmt: skip
        wait = self.supervisor.request_switch(profile, key.name if key else None, model)
        if wait > 0:
            active = self.supervisor.snapshot().profile
            raise Refusal(503, f"profile {active} stays another {wait:.0f}s (its min_dwell_s) before a request may "
                          f"switch to {profile}", "switch_later", retry_after=wait)  # fmt: skip
        return self._find(model)[0]

    def _not_ready(self, model: str, launch: Launch) -> Refusal:
        phase = self.supervisor.snapshot().states[launch.name].phase.value
        return Refusal(
            503,
            f"model {model!r} is not ready (engine {launch.name} is {phase}); retry shortly",
            "model_not_ready",
            retry_after=self._retry_after(launch),
        )

    def _retry_after(self, launch: Launch) -> float:
        expected = expected_ready_in(self.supervisor.snapshot().states[launch.name], self.supervisor.clock())
        return 10 if expected is None else expected

    async def _wait_ready(self, model: str, launch: Launch) -> Launch:
        """Hold a request for an engine that is starting, restarting or being switched in until it is
        ready, within its queue's bounds; a failed engine, or one past them, is refused at once. A
        client that leaves cancels this wait, and so leaves the queue."""
        if self.supervisor.snapshot().states[launch.name].phase == Phase.FAILED or not launch.queue_max:
            raise self._not_ready(model, launch)
        if self.waiting.get(launch.name, 0) >= launch.queue_max:
            raise Refusal(503, f"model {model!r} is not ready (engine {launch.name} is starting) and "
                          f"{launch.queue_max} requests already wait for it; retry later", "model_not_ready",
                          retry_after=self._retry_after(launch))  # fmt: skip
        name, started = launch.name, time.monotonic()
        self.waiting[name] = self.waiting.get(name, 0) + 1
        self.metrics.queue_waiting.labels(engine=name).inc()
        try:
            while True:
                launch, ready, _ = self._find(model)  # a switch may have taken the model away meanwhile
                if ready:
                    return launch
                if self.supervisor.snapshot().states[launch.name].phase == Phase.FAILED:
                    raise self._not_ready(model, launch)
                left = launch.queue_wait_s - (time.monotonic() - started)
                if left <= 0:
                    raise Refusal(503, f"model {model!r} was not ready within {launch.queue_wait_s:g}s "
                                  f"(engine {launch.name}); retry later", "model_not_ready",
                                  retry_after=self._retry_after(launch))  # fmt: skip
                await self.supervisor.changed(launch.name, left)
        finally:
            self.waiting[name] -= 1
            self.metrics.queue_waiting.labels(engine=name).dec()
            self.metrics.queue_wait.labels(engine=name).observe(time.monotonic() - started)

    # -- handlers ----------------------------------------------------------------------------------

    def models(self, request: Request) -> Reply:
        try:
            self._authenticate(request)
        except Refusal as refusal:
            return refusal.reply()
        data = [
            {"id": model, "object": "model", "owned_by": launch.name, "ready": ready}
            for model, (launch, ready) in sorted(self._serving(self.supervisor.snapshot()).items())
        ]
        return Reply(200, json.dumps({"object": "list", "data": data}).encode())

    async def proxy(self, request: Request, conn: Connection) -> Reply | None:
        exchange = Exchange(started=time.monotonic())
        body_text: str | None = None
        arrived: str | None = None  # the engine this request counts against, once routed
        try:
            key = self._authenticate(request)
            exchange.key = key.name if key else "-"
            raw = request.body
            try:
                body = json.loads(raw)
                model = body["model"]
            # RecursionError: JSON nested deeper than the parser goes
            except (ValueError, KeyError, TypeError, RecursionError):
                raise Refusal(400, "the body must be JSON with a 'model'", "invalid_request") from None
            if not isinstance(model, str):
                raise Refusal(400, "'model' must be a string", "invalid_request")
            exchange.model = model[:MAX_MODEL_NAME]
            body_text = raw.decode(errors="replace") if self.include_text else None
            launch, ready, switch_to = self._find(exchange.model, may_switch=True)
            exchange.engine = launch.name
            if key is not None and not key.allows(exchange.model):
                raise Refusal(403, f"key {key.name!r} may not use model {exchange.model!r}", "model_not_allowed")
            if switch_to is not None:
                launch = self._switch_for(exchange.model, switch_to, key)
            self.supervisor.request_arrived(launch.name)
            arrived = launch.name
            if not ready:
                launch = await self._wait_ready(exchange.model, launch)
            if key is not None:
                wait = self.limiter.admit(key)
                if wait is not None:
                    self.metrics.rate_limited.labels(key=key.name).inc()
                    raise Refusal(429, f"rate limit of key {key.name!r} reached", "rate_limited", retry_after=wait)
            stream = bool(body.get("stream"))
            injected = stream and request.path != "/v1/embeddings" and not _asks_for_usage(body)
            if injected:  # exact token counts: the engine's own, in a usage chunk the client never sees
                raw = json.dumps({**body, "stream_options": {**(body.get("stream_options") or {}),
                                                             "include_usage": True}}).encode()  # fmt: skip
            self.supervisor.request_started(launch.name)
            try:
                response = await self._forward(request, conn, launch, raw, stream, exchange, injected)
            finally:
                self.supervisor.request_done(launch.name)
            if key is not None:
                self.limiter.charge_tokens(key, exchange.prompt_tokens + exchange.completion_tokens)
            return response
        except Refusal as refusal:
            exchange.status = refusal.status
            return refusal.reply()
        finally:
            if arrived is not None:
                self.supervisor.request_left(arrived)
            self._record(exchange, body_text)

    async def _forward(
        self,
        request: Request,
        conn: Connection,
        launch: Launch,
        raw: bytes,
        stream: bool,
        exchange: Exchange,
        injected: bool,
    ) -> Reply | None:
        # A client that disconnects cancels this handler (serve.Connection): releasing an unfinished
        # answer closes its connection, and the engine aborts the request.
        answer: Answer | None = None
        try:
            answer = await self.upstream.post(launch.base_url, request.path, raw, self.timeout_s)
            if answer.status >= 500:
                detail = (await answer.read())[:500].decode(errors="replace")
                raise Refusal(502, f"engine {launch.name} failed (HTTP {answer.status}): {detail}", "engine_error")
            if stream and answer.status == 200:
                await self._stream(conn, answer, exchange, launch, injected)
                return None
            data = await answer.read()
            exchange.ttft_s = time.monotonic() - exchange.started
            exchange.status = answer.status
            if answer.status == 200:
                self._count_usage(exchange, _usage_of(data))
                self.supervisor.traffic_ok(launch.name)
            return Reply(answer.status, data, answer.content_type or "application/json")
        except ConnectFailed:
            raise Refusal(
                503, f"engine {launch.name} is not answering; retry shortly", "model_not_ready", retry_after=5
            ) from None
        except TimeoutError:
            raise Refusal(
                504, f"engine {launch.name} did not answer within {self.timeout_s:.0f}s", "engine_timeout"
            ) from None
        except UpstreamError as exc:
            raise Refusal(502, f"engine {launch.name} failed: {exc}", "engine_error") from None
        finally:
            if answer is not None:
                self.upstream.release(answer)

    async def _stream(
        self, conn: Connection, answer: Answer, exchange: Exchange, launch: Launch, injected: bool
    ) -> None:
        """Pass server-sent events through as they arrive, whole events at a time (a usage event split
        across reads is still read). With `injected`, the usage event the router asked for is kept
        from the client. Once the 200 has gone out, an engine failure cannot become an HTTP error:
        the stream ends with an error event in OpenAI's shape instead."""
        conn.start(200, "text/event-stream", {"Cache-Control": "no-cache"})
        exchange.status = 200
        chunks = 0
        pending = b""
        try:
            async for data in answer.chunks():  # as it arrives: no buffering
                if exchange.ttft_s is None:
                    exchange.ttft_s = time.monotonic() - exchange.started
                pending += data
                whole, sep, pending = pending.rpartition(b"\n\n")
                if not sep:
                    pending = whole
                    continue
                out = whole + sep
                chunks += out.count(b"data: {")
                if b'"usage"' in out:
                    out = self._take_usage(exchange, out, strip=injected)
                if out:
                    await conn.send(out)
        except (UpstreamError, TimeoutError) as exc:
            exchange.aborted = f"engine: {type(exc).__name__}"
            error = {"error": {"message": f"engine {launch.name} failed mid-stream: {exc or type(exc).__name__}",
                               "type": "api_error", "code": "engine_error"}}  # fmt: skip
            await conn.send(b"data: " + json.dumps(error).encode() + b"\n\n")
            conn.end()
            return
        if pending:
            await conn.send(pending)
        if not exchange.completion_tokens:
            exchange.completion_tokens = chunks  # one token a chunk, when the engine sent no usage
        conn.end()
        self.supervisor.traffic_ok(launch.name)

    @staticmethod
    def _take_usage(exchange: Exchange, events: bytes, strip: bool) -> bytes:
        """Count the usage event among EVENTS; with strip, leave out a usage-only event (no choices)."""
        kept = []
        for event in events.split(b"\n\n"):
            if b'"usage"' in event and event.startswith(b"data: {"):
                parsed = _json_or_none(event[6:])
                if Router._count_usage(exchange, parsed) and strip and not parsed.get("choices"):
                    continue
            kept.append(event)
        return b"\n\n".join(kept)

    @staticmethod
    def _count_usage(exchange: Exchange, parsed: Any) -> bool:
        """The engine's token counts from a parsed body or stream event; False where it has none."""
        usage = parsed.get("usage") if isinstance(parsed, dict) else None
        if not isinstance(usage, dict):
            return False
        exchange.prompt_tokens = usage.get("prompt_tokens") or exchange.prompt_tokens
        exchange.completion_tokens = usage.get("completion_tokens") or exchange.completion_tokens
        return True

    def _record(self, exchange: Exchange, body_text: str | None) -> None:
        if exchange.status == 0:  # the client went away before an answer
            exchange.status = 499
        latency = time.monotonic() - exchange.started
        # Labels only from what the spec configures: a client's made-up names must not add series.
        configured = exchange.model in self.supervisor.served  # fixed with the configuration
        if exchange.status == 200 and exchange.engine != "-":
            self.supervisor.count_tokens(exchange.engine, exchange.prompt_tokens + exchange.completion_tokens)
        self.metrics.router.observe(
            exchange.model if configured else UNKNOWN_MODEL,
            exchange.status,
            latency,
            exchange.ttft_s,
            exchange.prompt_tokens,
            exchange.completion_tokens,
        )
        line: dict[str, Any] = {
            "time": round(time.time(), 3),
            "key": exchange.key,
            "model": exchange.model,
            "engine": exchange.engine,
            "status": exchange.status,
            "prompt_tokens": exchange.prompt_tokens,
            "completion_tokens": exchange.completion_tokens,
            "ttft_ms": None if exchange.ttft_s is None else round(exchange.ttft_s * 1000, 1),
            "latency_ms": round(latency * 1000, 1),
        }
        if exchange.aborted is not None:
            line["aborted"] = exchange.aborted
        if body_text is not None:
            line["request"] = body_text
        audit(json.dumps(line))
