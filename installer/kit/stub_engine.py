#!/usr/bin/env python3
"""TEST DOUBLE for the vLLM and Ollama servers (hardware kit): no GPU, no model, same HTTP surfaces.

It stands where `vllm serve MODEL --port P ...` or `ollama serve` (OLLAMA_HOST) would run, takes
their command lines, and answers /health, /v1/models, /v1/completions, /v1/chat/completions
(streaming too), /v1/embeddings, and Ollama's /api/version, /api/tags, /api/generate. Its own flags,
anywhere on its command line, make it misbehave on purpose: slow start, crash, hang, ignore SIGTERM.

As Ollama (0.30 and later), the first request for a model starts a `llama-server` child that would
hold the model's GPU memory, with a port of its own, in `ollama serve`'s process group: Ollama starts
its runner with no session or group of its own on Linux (llm/llm_linux.go, LlamaServerSysProcAttr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web


def parse(argv: list[str]) -> tuple[argparse.Namespace, argparse.Namespace]:
    own = argparse.ArgumentParser(prog="stub_engine")
    # Installed as `ollama` (the lab's Ollama archive) it is Ollama; otherwise vLLM.
    default_runtime = "ollama" if Path(sys.argv[0]).name == "ollama" else "vllm"
    own.add_argument("--runtime", choices=["vllm", "ollama", "llama-server"], default=default_runtime)
    own.add_argument("--startup-delay", type=float, default=0.0, help="seconds of 'model loading' before listening")
    own.add_argument("--crash-after", type=float, help="exit this many seconds after listening")
    own.add_argument("--crash-after-requests", type=int, help="exit after answering this many inference requests")
    own.add_argument("--crash-once", type=Path, help="crash only if this file does not exist yet (then create it)")
    own.add_argument("--exit-code", type=int, default=3)
    own.add_argument("--hang-after", type=float, help="after this many seconds inference never answers")
    own.add_argument("--ignore-sigterm", action="store_true")
    own.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between streamed chunks")
    own.add_argument("--chunks", type=int, default=6, help="chunks in a streamed answer")
    own.add_argument("--die-mid-stream", action="store_true", help="exit after the second chunk of a stream")
    own.add_argument(
        "--decoys", action="store_true",
        help="a chat answer carries vLLM's prompt_logprobs after its usage, holding a decoy 'usage' of zeros",
    )  # fmt: skip
    own.add_argument("--answer", help="every completion's text is this (a broken model's answer)")
    own.add_argument("--answer-mb", type=float, default=0,
                     help="a chat answer carries logprobs until it is this many MiB, and the decoy")  # fmt: skip
    own.add_argument(
        "--fork-grandchild", action="store_true",
        help="once listening, fork a child that keeps the listening socket and outlives this process, as "
        "vLLM's EngineCore and Worker do",
    )  # fmt: skip
    # Its own flags may stand anywhere (before `serve`, or among vLLM's as an engine's extra_args).
    opts, rest = own.parse_known_args(argv)
    engine = argparse.ArgumentParser(prog="serve")
    engine.add_argument("command", choices=["serve", "pull", "runner"])
    engine.add_argument("model", nargs="?")
    engine.add_argument("--served-model-name", nargs="+")
    engine.add_argument("--host", default="127.0.0.1")
    engine.add_argument("--port", type=int, default=8000)
    served, _unknown = engine.parse_known_args(rest)
    if opts.runtime == "ollama":
        host, _, port = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").rpartition(":")
        served.host, served.port = host, int(port)
    return opts, served


class Stub:
    def __init__(self, opts: argparse.Namespace, served: argparse.Namespace) -> None:
        self.opts = opts
        self.names = served.served_model_name or ([served.model] if served.model else ["stub-model"])
        self.listening_at: float | None = None
        self.requests = 0
        self.aborted = 0  # streams whose client went away before the end
        self.runners: dict[str, subprocess.Popen[bytes]] = {}  # Ollama: a llama-server per loaded model

    def load(self, model: str) -> None:
        """As Ollama: the first request for MODEL starts its llama-server child, which stays."""
        if self.opts.runtime != "ollama" or model in self.runners:
            return
        self.runners[model] = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--runtime", "llama-server", "runner", model]
        )
        print(f"llama-server pid {self.runners[model].pid} loaded {model}", flush=True)

    def hung(self) -> bool:
        after = self.opts.hang_after
        return after is not None and self.listening_at is not None and time.monotonic() - self.listening_at >= after

    async def _infer_gate(self) -> None:
        self.requests += 1
        limit = self.opts.crash_after_requests
        if limit is not None and self.requests > limit:
            print(f"CUDA error: out of memory (stub crash after {limit} requests)", flush=True)
            os._exit(self.opts.exit_code)
        if self.hung():
            await asyncio.Event().wait()  # never answers, like a wedged CUDA kernel

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="")  # a hung vLLM still answers this with 200

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": n, "object": "model"} for n in self.names]})

    def _usage(self, prompt: str, completion: int) -> dict:
        return {
            "prompt_tokens": len(prompt.split()),
            "completion_tokens": completion,
            "total_tokens": len(prompt.split()) + completion,
        }

    async def completions(self, request: web.Request) -> web.StreamResponse:
        await self._infer_gate()
        body = await request.json()
        words = [self.opts.answer] if self.opts.answer is not None else _reply_words(body.get("max_tokens"))
        if body.get("stream"):
            usage = self._usage(str(body.get("prompt", "")), len(words)) if _wants_usage(body) else None
            return await self._stream(request, [{"text": w, "index": 0} for w in words], "text_completion", usage)
        return web.json_response(
            {
                "id": "cmpl-stub",
                "object": "text_completion",
                "model": body.get("model"),
                "choices": [{"index": 0, "text": "".join(words), "finish_reason": "length"}],
                "usage": self._usage(str(body.get("prompt", "")), len(words)),
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await self._infer_gate()
        body = await request.json()
        self.load(str(body.get("model")))
        words = _reply_words(body.get("max_tokens") or body.get("max_completion_tokens"))
        if body.get("stream"):
            words = (words * self.opts.chunks)[: self.opts.chunks]
            chunks = [{"index": 0, "delta": {"role": "assistant", "content": w}} for w in words]
            usage = self._usage(_prompt(body), len(words)) if _wants_usage(body) else None
            return await self._stream(request, chunks, "chat.completion.chunk", usage)
        prompt = _prompt(body)
        answer = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "".join(words)}}
            ],
            "usage": self._usage(prompt, len(words)),
        }
        if self.opts.answer_mb:
            return await self._large(request, answer)
        if self.opts.decoys:  # as vLLM orders them: prompt_logprobs after usage, where "usage" can be a token
            answer["prompt_logprobs"] = DECOYS
        return web.json_response(answer)

    async def _large(self, request: web.Request, answer: dict) -> web.StreamResponse:
        """ANSWER with logprobs making it --answer-mb MiB (tokens that read "usage"), its usage, then a
        decoy usage in prompt_logprobs; written in parts with its Content-Length, never held whole."""
        choice = json.dumps(answer["choices"][0])[:-1].encode()  # open: logprobs follow
        head = json.dumps({k: v for k, v in answer.items() if k not in ("choices", "usage")})[:-1].encode()
        head += b', "choices": [' + choice + b', "logprobs": {"content": ['
        piece = json.dumps({"token": "usage", "logprob": -0.5,
                            "top_logprobs": [{"token": '"usage": {', "logprob": -1.0}]}).encode()  # fmt: skip
        tail = b']}}], "usage": ' + json.dumps(answer["usage"]).encode()
        tail += b', "prompt_logprobs": ' + json.dumps(DECOYS).encode() + b"}"
        count = max(1, (int(self.opts.answer_mb * 2**20) - len(head) - len(tail)) // (len(piece) + 1))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(head) + count * (len(piece) + 1) - 1 + len(tail)
        await resp.prepare(request)
        await resp.write(head)
        block = b",".join([piece] * 1000)
        for done in range(0, count, 1000):
            n = min(1000, count - done)
            await resp.write((block if n == 1000 else b",".join([piece] * n)) + (b"," if done + n < count else b""))
        await resp.write(tail)
        return resp

    async def _stream(
        self, request: web.Request, chunks: list[dict], kind: str, usage: dict | None = None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i, chunk in enumerate(chunks):
                event = {"id": "stub", "object": kind, "created": int(time.time()), "choices": [chunk]}
                await resp.write(f"data: {json.dumps(event)}\n\n".encode())
                if self.opts.die_mid_stream and i == 1:
                    print("stub engine dies mid-stream", flush=True)
                    os._exit(self.opts.exit_code)
                await asyncio.sleep(self.opts.chunk_delay)
            if usage is not None:  # as vLLM does for stream_options.include_usage: a last chunk, no choices
                event = {"id": "stub", "object": kind, "created": int(time.time()), "choices": [], "usage": usage}
                await resp.write(f"data: {json.dumps(event)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.aborted += 1
            raise
        return resp

    def stop_runners(self, then_exit: bool = False) -> None:
        for child in self.runners.values():
            child.terminate()
        for child in self.runners.values():
            child.wait(5)
        if then_exit:
            os._exit(0)

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "aborted": self.aborted})

    async def embeddings(self, request: web.Request) -> web.Response:
        await self._infer_gate()
        body = await request.json()
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i, _ in enumerate(inputs)]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )

    async def ollama_version(self, _: web.Request) -> web.Response:
        return web.json_response({"version": "0.0.0-stub"})

    async def ollama_tags(self, _: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": n} for n in self.names]})

    async def ollama_generate(self, request: web.Request) -> web.Response:
        await self._infer_gate()
        body = await request.json()
        self.load(str(body.get("model")))
        return web.json_response({"model": body.get("model"), "response": "pong", "done": True})

    async def ollama_pull(self, request: web.Request) -> web.Response:
        """Ollama's pull, minus the registry: a tiny model written into OLLAMA_MODELS in Ollama's layout."""
        name = (await request.json())["model"]
        here = str(Path(__file__).resolve().parent)  # fake_models sits beside this file in the kit
        if here not in sys.path:
            sys.path.insert(0, here)
        try:
            from fake_models import ollama_model  # type: ignore[import-not-found]  # its folder, put on sys.path above
        except ImportError:  # installed alone (the lab's Ollama archive): the kit's writer is not there
            return web.json_response({"error": "pull needs the kit's fake_models.py beside the stub"}, status=500)
        store = Path(os.environ.get("OLLAMA_MODELS", Path.home() / ".ollama" / "models"))
        ollama_model(store.parent, name, store=store)
        return web.json_response({"status": "success"})

    def app(self) -> web.Application:
        key = os.environ.get("VLLM_API_KEY") if self.opts.runtime == "vllm" else None

        @web.middleware
        async def authenticate(request: web.Request, handler):  # as vLLM: /v1 asks for the key, /health not
            if key and request.path.startswith("/v1") and request.headers.get("Authorization") != f"Bearer {key}":
                return web.json_response({"error": "Unauthorized"}, status=401)
            return await handler(request)

        app = web.Application(middlewares=[authenticate])
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/api/version", self.ollama_version)
        app.router.add_get("/api/tags", self.ollama_tags)
        app.router.add_post("/api/generate", self.ollama_generate)
        app.router.add_post("/api/pull", self.ollama_pull)
        app.router.add_get("/stub/stats", self.stats)
        return app


# vLLM's prompt_logprobs as they follow usage in its answer: a prompt token that reads "usage", and an
# object keyed "usage" (a decoy of zeros a text search would take for the answer's own).
DECOYS = [None, {"1": {"logprob": -1.0, "decoded_token": "usage"}},
          {"usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}]  # fmt: skip


def _wants_usage(body: dict) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _prompt(body: dict) -> str:
    return " ".join(str(m.get("content", "")) for m in body.get("messages", []))


def _reply_words(max_tokens: object) -> list[str]:
    words = ["Hello", " from", " the", " stub", " engine", "."]
    return words[:max_tokens] if isinstance(max_tokens, int) and max_tokens > 0 else words


def pull(name: str) -> int:
    """`ollama pull NAME`: ask the server at OLLAMA_HOST to pull."""
    import urllib.request

    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    body = json.dumps({"model": name}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"http://{host}/api/pull", body, method="POST")) as answer:
        print(json.loads(answer.read())["status"], flush=True)
    return 0


async def llama_server(model: str) -> int:
    """llama-server for one model: its own port on loopback, held until it is stopped."""
    import ctypes

    ctypes.CDLL(None).prctl(15, b"llama-server")  # PR_SET_NAME: `ps` and /proc/PID/comm show llama-server
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    print(f"llama-server for {model} on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()
    return 0


async def main(argv: list[str]) -> int:
    opts, served = parse(argv)
    if served.command == "pull":
        return pull(served.model)
    if served.command == "runner":
        return await llama_server(served.model)
    local = opts.runtime == "vllm" and served.model and served.model.startswith("/")
    if local and not (Path(served.model) / "config.json").is_file():  # as vLLM: a local model has config.json
        print(f"ERROR: {served.model}: no config.json; is the model staged?", flush=True)
        return 1
    stub = Stub(opts, served)
    print(
        f"stub engine (test double for {opts.runtime}) serving {stub.names} on {served.host}:{served.port}", flush=True
    )
    if opts.ignore_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM ignored", flush=True))
    elif opts.runtime == "ollama":  # as Ollama: a stop stops the runners first
        signal.signal(signal.SIGTERM, lambda *_: stub.stop_runners(then_exit=True))
    await asyncio.sleep(opts.startup_delay)
    runner = web.AppRunner(stub.app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, served.host, served.port).start()
    except OSError as exc:
        print(f"ERROR: cannot listen on {served.host}:{served.port}: {exc}", flush=True)
        return 1
    stub.listening_at = time.monotonic()
    if opts.fork_grandchild:
        child = os.fork()
        if child == 0:  # holds the inherited listening socket until killed; never serves
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(3600)
        print(f"forked worker pid {child}", flush=True)
    crash = opts.crash_after is not None
    if crash and opts.crash_once is not None:
        crash = not opts.crash_once.exists()
        opts.crash_once.touch()
    if crash:
        await asyncio.sleep(opts.crash_after)
        print(f"CUDA error: an illegal memory access was encountered (stub crash, exit {opts.exit_code})", flush=True)
        os._exit(opts.exit_code)
    await asyncio.Event().wait()
    return 0


def cli() -> None:
    sys.exit(asyncio.run(main(sys.argv[1:])))


if __name__ == "__main__":
    cli()
