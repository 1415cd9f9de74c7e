"""Read-only status (`/healthz`, `/status`, `/metrics`, `/cost`) and the control surface (profile switch,
restart).

Control is served only on a unix socket (root and the operators' group): changing what runs on the box
is a local, privileged act. The socket also answers `/status` and `/cost`, so the box's own tools need
no status token.
"""

from __future__ import annotations

import grp
import hashlib
import hmac
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from aiinfra.agent.audit import audit
from aiinfra.agent.engines import node_address
from aiinfra.agent.metrics import Metrics, engine_families, exposition_of
from aiinfra.agent.ranks import PATH as RANKS_PATH
from aiinfra.agent.status import Report, report
from aiinfra.agent.supervisor import Supervisor

log = logging.getLogger("aiinfra.agent")
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
    document: Report = {"agent": agent_info(request.app), "router": request.app[ROUTER]()}
    return web.json_response(document | report(request.app[SUPERVISOR]))


async def metrics(request: web.Request) -> web.Response:
    """The agent's and the router's series, then each ready vLLM engine's own (engine label)."""
    view = request.app[SUPERVISOR].view()
    ready = {
        name: launch.base_url for name, launch in view.launches.items() if launch.runtime == "vllm" and view.ready(name)
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


def bearer_required(token_sha256: str) -> Callable:
    """Every path but /healthz (ok or stalled, nothing more) wants `Authorization: Bearer <token>`, the
    token whose SHA-256 the config holds (Prometheus: its scrape config's `authorization`)."""

    @web.middleware
    async def check(request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path != "/healthz":
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            digest = hashlib.sha256(token.strip().encode()).hexdigest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(digest, token_sha256):
                return web.json_response({"error": "a bearer token is required (status_token_sha256)"}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="aiinfra status"'})  # fmt: skip
        return await handler(request)

    return check


def _readable(app: web.Application, supervisor: Supervisor, metrics_of: Metrics, router: Callable[[], dict]) -> None:
    app[SUPERVISOR] = supervisor
    app[METRICS] = metrics_of
    app[ROUTER] = router
    app[STARTED] = time.time()
    app.router.add_get("/status", status)
    app.router.add_get("/cost", cost)


def status_app(supervisor: Supervisor, metrics_of: Metrics, router: Callable[[], dict]) -> web.Application:
    token = supervisor.config.status_token_sha256
    app = web.Application(middlewares=[bearer_required(token)] if token else [])
    _readable(app, supervisor, metrics_of, router)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def peer_app(supervisor: Supervisor) -> web.Application:
    """What the other nodes' agents ask, on the trusted network: how this node's ranks stand (ranks.py).
    Only the nodes' own addresses are answered."""
    app = web.Application()
    app[SUPERVISOR] = supervisor
    nodes = {node_address(peer) for peer in supervisor.config.nodes.values()}

    async def ranks(request: web.Request) -> web.Response:
        assert supervisor.ranks is not None
        if request.remote not in nodes:
            return web.json_response({"error": "only the nodes of this box's engines may ask"}, status=403)
        return web.json_response(supervisor.ranks.document(supervisor.states))

    app.router.add_get(RANKS_PATH, ranks)
    return app


async def switch_profile(request: web.Request) -> web.Response:
    supervisor = request.app[SUPERVISOR]
    try:
        body = await request.json()
        profile = body["profile"]
        engines = supervisor.switch(profile)
    except (ValueError, KeyError, TypeError):
        known = ", ".join(supervisor.view().profiles) or "none"
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


def caller_of(request: web.Request) -> tuple[int, int, int] | None:
    """The (pid, uid, gid) of the process at the other end of the control socket, as the kernel says."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is None:
        return None
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid, gid


def may_control(uid: int, group: str, engine_user: str | None) -> bool:
    """Root, or a member of the operators' group; never the engines' user, whatever its groups."""
    if uid == 0:
        return True
    try:
        user = pwd.getpwuid(uid)
        operators = grp.getgrnam(group).gr_gid
    except KeyError:
        return False
    return user.pw_name != engine_user and operators in os.getgrouplist(user.pw_name, user.pw_gid)


def operators_only(group: str, engine_user: str | None) -> Callable:
    """Every request on the control socket: the caller checked by its peer credentials, refused (403)
    unless it may control the box; each control action (not a read) named in the audit log and the journal."""

    @web.middleware
    async def check(request: web.Request, handler: Callable) -> web.StreamResponse:
        caller = caller_of(request)
        pid, uid, _ = caller or (0, -1, -1)
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        allowed = caller is not None and may_control(uid, group, engine_user)
        if allowed:
            response = await handler(request)
        else:
            response = web.json_response({"error": f"user {user} may not control this box: root or a member of "
                                                   f"{group} may"}, status=403)  # fmt: skip
        if request.method == "GET" and allowed:
            return response
        action = f"{request.method} {request.path}"
        line = {"time": round(time.time(), 3), "event": "control", "action": action, "status": response.status,
                "user": user, "uid": uid, "pid": pid}  # fmt: skip
        audit(json.dumps(line))
        log.log(logging.INFO if allowed else logging.WARNING, "control: %s by %s (uid %s, pid %s): %s", action, user,
                uid, pid, response.status, extra={"EVENT": "control"})  # fmt: skip
        return response

    return check


def control_app(supervisor: Supervisor, metrics_of: Metrics, router: Callable[[], dict]) -> web.Application:
    config = supervisor.config
    app = web.Application(middlewares=[operators_only(config.control_group, config.engine_user)])
    _readable(app, supervisor, metrics_of, router)
    app.router.add_post("/profile", switch_profile)
    app.router.add_post("/engines/{name}/restart", restart_engine)
    return app
