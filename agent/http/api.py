"""Read-only status (`/healthz`, `/status`) and the control surface (profile switch, restart).

Control is served only on a unix socket (mode 0660, root and the aiinfra group): changing what runs
on the box is a local, privileged act.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from aiinfra.agent.metrics import Metrics, engine_families, exposition_of
from aiinfra.agent.supervisor import Supervisor

SUPERVISOR = web.AppKey("supervisor", Supervisor)
METRICS = web.AppKey("metrics", Metrics)
# The router's settings and its keys file's health, read at each /status.
ROUTER: web.AppKey[Callable[[], dict]] = web.AppKey("router")
STARTED = web.AppKey("started", float)


def agent_info(app: web.Application) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("aiinfra")
    except PackageNotFoundError:
        release = "unknown"
    return {
        "version": release,
        "pid": os.getpid(),
        "started_at": app[STARTED],
        "uptime_s": round(time.time() - app[STARTED], 1),
    }


async def healthz(request: web.Request) -> web.Response:
    """The agent's own liveness: its loop ticked recently. Engines are in /status."""
    if request.app[SUPERVISOR].fresh():
        return web.json_response({"status": "ok"})
    return web.json_response({"status": "stalled"}, status=503)


async def status(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    return web.json_response({"agent": agent_info(request.app), "router": request.app[ROUTER](), **supervisor.status()})


async def metrics(request: web.Request) -> web.Response:
    """The agent's and the router's series, then each ready vLLM engine's own (engine label)."""
    snapshot = request.app[SUPERVISOR].snapshot()
    ready = {
        name: launch.base_url
        for name, launch in snapshot.launches.items()
        if launch.runtime == "vllm" and snapshot.ready(name)
    }
    body = request.app[METRICS].exposition()
    if ready:
        async with aiohttp.ClientSession() as session:
            body += exposition_of(await engine_families(session, ready))
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def cost(request: web.Request) -> web.Response:
    """The energy ledger over the last `since` seconds (all it keeps without), and the cards' cost."""
    supervisor = request.app[SUPERVISOR]
    try:
        since = float(request.query["since"]) if "since" in request.query else None
    except ValueError:
        return web.json_response({"error": "since is a number of seconds"}, status=400)
    window = supervisor.ledger.window(since, time.time())
    cards = supervisor.config.cost.cards
    if cards is None:
        cards = len({g for e in supervisor.config.engines.values() for g in e.gpus})
    return web.json_response({"window": vars(window), "cost": supervisor.config.cost.model_dump() | {"cards": cards}})


def status_app(supervisor: Supervisor, metrics_of: Metrics, router: Callable[[], dict]) -> web.Application:
    app = web.Application()
    app[SUPERVISOR] = supervisor
    app[METRICS] = metrics_of
    app[ROUTER] = router
    app[STARTED] = time.time()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/cost", cost)
    return app


async def switch_profile(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    try:
        body = await request.json()
        profile = body["profile"]
        engines = supervisor.switch(profile)
    except (ValueError, KeyError, TypeError):
        known = ", ".join(supervisor.snapshot().profiles) or "none"
        return web.json_response({"error": f"unknown profile; profiles: {known}"}, status=400)
    return web.json_response({"profile": profile, "engines": engines}, status=202)


async def restart_engine(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    name = request.match_info["name"]
    try:
        supervisor.restart(name)
    except KeyError:
        return web.json_response({"error": f"unknown engine {name!r}"}, status=404)
    return web.json_response({"engine": name, "restarting": True}, status=202)


def control_app(supervisor: Supervisor) -> web.Application:
    app = web.Application()
    app[SUPERVISOR] = supervisor
    app.router.add_post("/profile", switch_profile)
    app.router.add_post("/engines/{name}/restart", restart_engine)
    return app
