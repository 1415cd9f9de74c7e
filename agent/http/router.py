"""One OpenAI-compatible endpoint in front of the engines: route by `model`, pass streams through.

Errors use OpenAI's shape ({"error": {"message", "type", "code"}}) so that clients raise their own
typed errors: 400 a body of the wrong shape, 401 no or bad key (decided on the request's head: its body
is never kept), 403 a switch the key may not make, 404 a model not here or not the key's (a key sees
only its own models, in /v1/models and in every message), 413 body too large, 429 a key's
limits, 503 model known but not ready (Retry-After), 502 engine error, 504 timeout.

A key's limits are checked right after the body's shape, before any waiting or switching; a request
reserves its estimated tokens then and settles them with the real count however its answer ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import ijson

from aiinfra.agent.audit import audit
from aiinfra.agent.engines import Launch
from aiinfra.agent.http.keys import Key, KeyRing, RateLimiter
from aiinfra.agent.http.refusals import Refusals
from aiinfra.agent.http.serve import ClientGone, Connection, Reply, Request, error_reply
from aiinfra.agent.http.upstream import Answer, ConnectFailed, Upstream, UpstreamError
from aiinfra.agent.identity import Identity
from aiinfra.agent.metrics import Metrics
from aiinfra.agent.reconcile import Phase, expected_ready_in
from aiinfra.agent.view import Engines, View

MAX_MODEL_NAME = 256  # what of a client's model name reaches the audit log
UNKNOWN_MODEL = "(unknown)"  # the metrics' label for any name not configured here
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
METHODS = {"/v1/models": b"GET"} | dict.fromkeys(ROUTES, b"POST")
WHOLE_MAX = 1 << 20  # bytes of an engine's answer held whole; a larger one is streamed through as it arrives
BYTES_PER_TOKEN = 4  # a request's prompt tokens, guessed from its body's size until the engine counts them


class Refusal(Exception):
    def __init__(self, status: int, message: str, code: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after

    def reply(self) -> Reply:
        return error_reply(self.status, str(self), self.code, self.retry_after)


def _invalid(message: str) -> Refusal:
    return Refusal(400, message, "invalid_request")


@dataclass
class Exchange:
    """What the audit line and the metrics need of one request."""

    started: float
    id: str = "-"
    client: str = "-"
    key: str = "-"
    model: str = "-"
    engine: str = "-"
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    aborted: str | None = None  # an answer that ended early, and by what
    usage_seen: bool = False  # the engine's own counts arrived
    reached: bool = False  # the request went to its engine
    prompt_estimate: int = 0
    identity: Identity | None = None  # what the engine that answered started with

    def tokens_used(self) -> int:
        """What the request cost, however it ended: the engine's counts, else the estimate of what it read."""
        prompt = self.prompt_tokens or (self.prompt_estimate if self.reached else 0)
        return prompt + self.completion_tokens


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


class UsageScan:
    """The top-level "usage" of a JSON answer too large to hold, read from its parts as they pass: a
    streaming parser, so the word "usage" anywhere else (a token, prompt_logprobs after it) is no match."""

    def __init__(self) -> None:
        self.found: list[Any] = ijson.utils.sendable_list()
        self.parser: Any = ijson.items_coro(self.found, "usage", use_float=True)

    def feed(self, data: bytes) -> None:
        if self.parser is None:
            return
        try:
            self.parser.send(data)
        except ijson.JSONError:
            self.parser = None
            return
        if self.found:  # found: the rest need not be parsed
            self.parser = None

    def parsed(self) -> dict[str, Any] | None:
        return {"usage": self.found[0]} if self.found else None


def _shape(raw: bytes) -> dict[str, Any]:
    """The request's body, refused in one line naming the field where its shape is wrong."""
    body = _json_or_none(raw)
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object with a 'model'")
    if "model" not in body:
        raise _invalid("'model' is required")
    if not isinstance(body["model"], str):
        raise _invalid("'model' must be a string")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise _invalid("'stream' must be true or false")
    if body.get("stream_options") is not None and not isinstance(body["stream_options"], dict):
        raise _invalid("'stream_options' must be an object")
    for field in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise _invalid(f"'{field}' must be a whole number of 0 or more")
    return body


def _asks_for_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


class Router:
    def __init__(
        self,
        engines: Engines,
        keys: KeyRing | None,
        metrics: Metrics,
        timeout_s: float,
        include_text: bool = False,
        reserve_tokens: int = 256,
    ) -> None:
        self.engines = engines
        self.traffic = engines.traffic
        self.served = engines.view().served  # every name any engine serves: fixed with the configuration
        self.keys = keys  # None: authentication turned off by configuration
        self.limiter = RateLimiter()
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.include_text = include_text
        self.reserve_tokens = reserve_tokens  # completion tokens reserved for a request that names no max_tokens
        self.upstream = Upstream()
        self.key_inflight: Counter[str] = Counter()  # requests in hand per key (max_inflight)
        self.refusals = Refusals(audit, lambda status, code: metrics.refused.labels(str(status), code).inc())

    # -- serve.App ---------------------------------------------------------------------------------

    def admit(self, request: Request) -> Reply | None:
        """On the request's head alone: its route and method, then its key. A refusal here is tallied by
        client address (refusals.py), not a line each."""
        method = METHODS.get(request.path)
        if method is None:
            refusal = error_reply(404, f"no route {request.path}; routes: {', '.join(METHODS)}", "not_found")
        elif request.method != method:
            refusal = error_reply(405, f"{request.path} takes {method.decode()}", "method_not_allowed")
        elif self.keys is None:
            return None
        else:
            header = request.header(b"authorization")
            token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            request.key = self.keys.lookup(token) if token else None
            if request.key is not None:
                return None
            refusal = error_reply(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>' (aiinfra keys add NAME makes one)",
                "invalid_api_key",
            )
        self.refused(request.client, refusal.status, refusal.code or "-")
        return refusal

    def refused(self, client: str, status: int, code: str) -> None:
        self.refusals.add(client, status, code)

    async def handle(self, request: Request, conn: Connection) -> Reply | None:
        return self.models(request) if request.path == "/v1/models" else await self.proxy(request, conn)

    def close(self) -> None:
        self.refusals.flush()
        self.upstream.close()

    # -- who, what, where ---------------------------------------------------------------------------

    def _admit_key(self, key: Key, tokens: int) -> None:
        """The key's own limits, before anything waits or switches: requests in hand, then its rates,
        which take one request and reserve TOKENS."""
        if key.max_inflight is not None and self.key_inflight[key.name] >= key.max_inflight:
            self.metrics.rate_limited.labels(key=key.name).inc()
            raise Refusal(429, f"key {key.name!r} has {key.max_inflight} requests in hand already (its "
                          "max_inflight); retry when one is answered", "too_many_inflight", retry_after=1)  # fmt: skip
        wait = self.limiter.admit(key, tokens)
        if wait is not None:
            self.metrics.rate_limited.labels(key=key.name).inc()
            raise Refusal(429, f"rate limit of key {key.name!r} reached (rpm {key.rpm or '-'}, tpm {key.tpm or '-'}; "
                          f"this request reserves {tokens} tokens)", "rate_limited", retry_after=wait)  # fmt: skip
        self.key_inflight[key.name] += 1

    def _release_key(self, key: Key, reserved: int, used: int) -> None:
        self.key_inflight[key.name] -= 1
        if not self.key_inflight[key.name]:
            del self.key_inflight[key.name]
        self.limiter.settle(key, reserved, used)

    def _estimate(self, request: Request, body: dict[str, Any]) -> tuple[int, int]:
        """Tokens a request may cost, before the engine counts them: its prompt, from its size, and its
        answer, from its own max_tokens (times n), else what the operator set (router_reserve_tokens)."""
        prompt = len(request.body) // BYTES_PER_TOKEN
        if request.path == "/v1/embeddings":
            return prompt, 0
        most = body.get("max_completion_tokens", body.get("max_tokens"))
        return prompt, (self.reserve_tokens if most is None else most) * (body.get("n") or 1)

    def _serving(self, view: View) -> dict[str, tuple[Launch, bool]]:
        """Model name → (engine, ready) for the active profile's engines."""
        served: dict[str, tuple[Launch, bool]] = {}
        for name in view.desired:
            launch = view.launches[name]
            ready = view.ready(name)
            for model in launch.served:
                if ready or model not in served:
                    served[model] = (launch, ready)
        return served

    def _find(self, model: str, key: Key | None = None, may_switch: bool = False) -> tuple[Launch, bool, str | None]:
        """The engine serving MODEL in the active profile and whether it is ready; with may_switch, for a
        model of a profile that a request may switch to, that profile (the third value). The models a
        404 names are those KEY may use."""
        view = self.engines.view()
        served = self._serving(view)
        if model not in served:
            elsewhere = [p for p, names in view.profiles.items()
                         if any(model in view.launches[n].served for n in names)]  # fmt: skip
            switchable = [p for p in elsewhere if p in view.switching and view.switching[p].on_request]
            if may_switch and switchable:
                name = next(n for n in view.profiles[switchable[0]] if model in view.launches[n].served)
                return view.launches[name], False, switchable[0]
            if elsewhere:
                raise Refusal(404, f"model {model!r} is served by profile {' or '.join(elsewhere)}, not by the "
                              f"active profile {view.profile}; switch with `aiinfra profile {elsewhere[0]}`",
                              "model_not_in_profile")  # fmt: skip
            raise self._unknown(model, key)
        return (*served[model], None)

    def _unknown(self, model: str, key: Key | None) -> Refusal:
        """404 for a model not here, or not the key's: the models named are the key's own."""
        served = self._serving(self.engines.view())
        known = ", ".join(sorted(m for m in served if key is None or key.allows(m))) or "none"
        return Refusal(404, f"model {model!r} does not exist here; models: {known}", "model_not_found")

    def _switch_for(self, model: str, profile: str, key: Key | None) -> Launch:
        """A request for a model of PROFILE, which requests may switch to: switch if the key may."""
        if key is not None and not key.may_switch:
            raise Refusal(403, f"model {model!r} is served by profile {profile}, and key {key.name!r} may not switch "
                          f"profiles; `aiinfra profile {profile}` switches, or a key made with --may-switch",
                          "switch_not_allowed")  # fmt: skip
        wait = self.engines.request_switch(profile, key.name if key else None, model)
        if wait > 0:
            active = self.engines.view().profile
            raise Refusal(503, f"profile {active} stays another {wait:.0f}s (its min_dwell_s) before a request may "
                          f"switch to {profile}", "switch_later", retry_after=wait)  # fmt: skip
        return self._find(model)[0]

    def _not_ready(self, model: str, launch: Launch) -> Refusal:
        phase = self.engines.view().states[launch.name].phase.value
        return Refusal(
            503,
            f"model {model!r} is not ready (engine {launch.name} is {phase}); retry shortly",
            "model_not_ready",
            retry_after=self._retry_after(launch),
        )

    def _retry_after(self, launch: Launch) -> float:
        expected = expected_ready_in(self.engines.view().states[launch.name], self.traffic.clock())
        return 10 if expected is None else expected

    async def _wait_ready(self, model: str, launch: Launch) -> Launch:
        """Hold a request for an engine that is starting, restarting or being switched in until it is
        ready, within its queue's bounds; a failed engine, or one past them, is refused at once. A
        client that leaves cancels this wait, and so leaves the queue."""
        if self.engines.view().states[launch.name].phase == Phase.FAILED or not launch.queue_max:
            raise self._not_ready(model, launch)
        if self.traffic.waiting[launch.name] >= launch.queue_max:
            raise Refusal(503, f"model {model!r} is not ready (engine {launch.name} is starting) and "
                          f"{launch.queue_max} requests already wait for it; retry later", "model_not_ready",
                          retry_after=self._retry_after(launch))  # fmt: skip
        name, started = launch.name, time.monotonic()
        self.traffic.waiting[name] += 1
        self.metrics.queue_waiting.labels(engine=name).inc()
        try:
            while True:
                launch, ready, _ = self._find(model)  # a switch may have taken the model away meanwhile
                if ready:
                    return launch
                if self.engines.view().states[launch.name].phase == Phase.FAILED:
                    raise self._not_ready(model, launch)
                left = launch.queue_wait_s - (time.monotonic() - started)
                if left <= 0:
                    raise Refusal(503, f"model {model!r} was not ready within {launch.queue_wait_s:g}s "
                                  f"(engine {launch.name}); retry later", "model_not_ready",
                                  retry_after=self._retry_after(launch))  # fmt: skip
                await self.engines.changed(launch.name, left)
        finally:
            self.traffic.waiting[name] -= 1
            self.metrics.queue_waiting.labels(engine=name).dec()
            self.metrics.queue_wait.labels(engine=name).observe(time.monotonic() - started)

    # -- handlers ----------------------------------------------------------------------------------

    def models(self, request: Request) -> Reply:
        """The active profile's models that the request's key may use."""
        key: Key | None = request.key
        data = [
            {"id": model, "object": "model", "owned_by": launch.name, "ready": ready}
            for model, (launch, ready) in sorted(self._serving(self.engines.view()).items())
            if key is None or key.allows(model)
        ]
        return Reply(200, json.dumps({"object": "list", "data": data}).encode())

    async def proxy(self, request: Request, conn: Connection) -> Reply | None:
        key: Key | None = request.key
        exchange = Exchange(started=time.monotonic(), id=request.id, client=request.client)
        exchange.key = key.name if key else "-"
        body_text: str | None = None
        arrived: str | None = None  # the engine this request counts against, once routed
        reserved: int | None = None  # the key's tokens this request holds, once admitted
        try:
            body = _shape(request.body)
            exchange.model = body["model"][:MAX_MODEL_NAME]
            body_text = request.body.decode(errors="replace") if self.include_text else None
            exchange.prompt_estimate, completion = self._estimate(request, body)
            if key is not None:
                if not key.allows(exchange.model):  # the key's world: the model is not in it, nor any hint of it
                    raise self._unknown(exchange.model, key)
                estimate = exchange.prompt_estimate + completion
                self._admit_key(key, estimate)
                reserved = estimate  # held from here: released however the request ends
            launch, ready, switch_to = self._find(exchange.model, key, may_switch=True)
            exchange.engine = launch.name
            if switch_to is not None:
                launch = self._switch_for(exchange.model, switch_to, key)
            self.traffic.arrived(launch.name)
            arrived = launch.name
            if not ready:
                launch = await self._wait_ready(exchange.model, launch)
            stream = body.get("stream") is True
            injected = stream and request.path != "/v1/embeddings" and not _asks_for_usage(body)
            raw = request.body
            if injected:  # exact token counts: the engine's own, in a usage chunk the client never sees
                raw = json.dumps({**body, "stream_options": {**(body.get("stream_options") or {}),
                                                             "include_usage": True}}).encode()  # fmt: skip
            self.traffic.started(launch.name)
            exchange.identity = self.engines.serving.get(launch.name)
            try:
                return await self._forward(request, conn, launch, raw, stream, exchange, injected)
            finally:
                self.traffic.done(launch.name)
        except Refusal as refusal:
            exchange.status = refusal.status
            return refusal.reply()
        except asyncio.CancelledError:
            exchange.aborted = exchange.aborted or "client: left"
            raise
        finally:
            if arrived is not None:
                self.traffic.left(arrived)
            if key is not None and reserved is not None:
                self._release_key(key, reserved, exchange.tokens_used())
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
            answer = await self.upstream.post(launch.base_url, request.path, raw, self.timeout_s, launch.api_key)
            exchange.reached = True
            if answer.status >= 500:
                detail = (await answer.read())[:500].decode(errors="replace")
                raise Refusal(502, f"engine {launch.name} failed (HTTP {answer.status}): {detail}", "engine_error")
            traced = exchange.identity.headers(launch.name) if exchange.identity else {"X-Aiinfra-Engine": launch.name}
            if stream and answer.status == 200:
                await self._stream(conn, answer, exchange, launch, injected, traced)
                return None
            return await self._whole(conn, answer, exchange, launch, traced)
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

    async def _whole(
        self, conn: Connection, answer: Answer, exchange: Exchange, launch: Launch, traced: dict[str, str]
    ) -> Reply | None:
        """A non-streamed answer: held whole up to WHOLE_MAX, else passed through as it arrives (its
        length, where the engine gave one, kept), so the router's memory never follows an answer's size."""
        held: list[bytes] = []
        size = 0
        scan: UsageScan | None = None  # once passing through
        content_type = answer.content_type or "application/json"
        try:
            async for data in answer.chunks():
                if exchange.ttft_s is None:
                    exchange.ttft_s = time.monotonic() - exchange.started
                if scan is None:
                    held.append(data)
                    size += len(data)
                    if size <= WHOLE_MAX:
                        continue
                    exchange.status = answer.status
                    conn.start(answer.status, content_type, traced, length=answer.length)
                    scan, data, held = UsageScan(), b"".join(held), []
                scan.feed(data)
                await conn.send(data)
        except (UpstreamError, TimeoutError) as exc:
            if scan is None:
                raise
            exchange.aborted = f"engine: {type(exc).__name__}"  # its head has gone out: only a cut can tell
            conn.abort()
            raise ClientGone("the engine's answer broke off") from None
        except ClientGone as gone:
            exchange.aborted = f"client: {gone.why}"
            raise
        exchange.status = answer.status
        if scan is not None:
            conn.end()
            parsed = scan.parsed()
        else:
            data = b"".join(held)
            parsed = _json_or_none(data) if answer.status == 200 else None
        if answer.status == 200:
            exchange.usage_seen = self._count_usage(exchange, parsed)
            self.traffic.ok(launch.name)
        return None if scan is not None else Reply(answer.status, data, content_type, traced)

    async def _stream(
        self,
        conn: Connection,
        answer: Answer,
        exchange: Exchange,
        launch: Launch,
        injected: bool,
        traced: dict[str, str],
    ) -> None:
        """Pass server-sent events through as they arrive, whole events at a time (a usage event split
        across reads is still read). With `injected`, the usage event the router asked for is kept
        from the client. Once the 200 has gone out, an engine failure cannot become an HTTP error:
        the stream ends with an error event in OpenAI's shape instead."""
        conn.start(200, "text/event-stream", {"Cache-Control": "no-cache", **traced})
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
            if pending:
                await conn.send(pending)
        except (UpstreamError, TimeoutError) as exc:
            exchange.aborted = f"engine: {type(exc).__name__}"
            error = {"error": {"message": self._broke_off(launch, exc), "type": "api_error",
                               "code": "engine_error"}}  # fmt: skip
            await conn.send(b"data: " + json.dumps(error).encode() + b"\n\n")
            conn.end()
            return
        except ClientGone as gone:
            exchange.aborted = f"client: {gone.why}"
            raise
        finally:
            if not exchange.usage_seen:
                exchange.completion_tokens = chunks  # one token a chunk, when the engine sent no usage
        conn.end()
        self.traffic.ok(launch.name)

    def _broke_off(self, launch: Launch, exc: Exception) -> str:
        view = self.engines.view()
        if launch.name not in view.desired:
            return (f"engine {launch.name} was stopped mid-answer: it left the active profile ({view.profile}) "
                    "and its drain deadline passed; retry")  # fmt: skip
        return f"engine {launch.name} failed mid-stream: {exc or type(exc).__name__}"

    @staticmethod
    def _take_usage(exchange: Exchange, events: bytes, strip: bool) -> bytes:
        """Count the usage event among EVENTS; with strip, leave out a usage-only event (no choices)."""
        kept = []
        for event in events.split(b"\n\n"):
            if b'"usage"' in event and event.startswith(b"data: {"):
                parsed = _json_or_none(event[6:])
                if Router._count_usage(exchange, parsed):
                    exchange.usage_seen = True
                    if strip and not parsed.get("choices"):
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
        configured = exchange.model in self.served
        if exchange.reached:  # what the engine did is counted, answered or not
            self.traffic.tokens(exchange.engine, exchange.tokens_used())
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
            "id": exchange.id,
            "client": exchange.client,
            "key": exchange.key,
            "model": exchange.model,
            "engine": exchange.engine,
            "status": exchange.status,
            "prompt_tokens": exchange.prompt_tokens,
            "completion_tokens": exchange.completion_tokens,
            "ttft_ms": None if exchange.ttft_s is None else round(exchange.ttft_s * 1000, 1),
            "latency_ms": round(latency * 1000, 1),
        }
        if exchange.identity is not None:
            line["identity"] = asdict(exchange.identity)
        if exchange.aborted is not None:
            line["aborted"] = exchange.aborted
        if body_text is not None:
            line["request"] = body_text
        audit(json.dumps(line))
