"""The status document: what `/status` answers, the metrics read at each scrape, `aiinfra status` prints
and the roles wait on. Its shape is declared here, once, and assembled in one place (report)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypedDict

from aiinfra.agent.audit import audit_health

if TYPE_CHECKING:
    from aiinfra.agent.config import AgentConfig
    from aiinfra.agent.http.keys import KeyRing
    from aiinfra.agent.http.serve import Clients
    from aiinfra.agent.supervisor import Supervisor
    from aiinfra.agent.traffic import Traffic


class EngineReport(TypedDict):
    runtime: str
    cloud: bool  # the engine may send a prompt off the box (Ollama's cloud models)
    phase: str
    desired: bool
    pid: int | None
    port: int
    served: list[str]
    since: float | None  # wall time of its last change of phase
    restarts: int
    last_error: str | None
    degraded: str | None  # ready, but not holding memory on exactly its GPUs: why
    probe_latency_ms: float | None
    next_start_in_s: float | None
    identity: dict[str, str] | None  # model (manifest sha256), program, args (sha256): what it started with
    # The last change's gate: state (due, gating, passed, failed), the identity tried, when, the check that
    # failed, the identity serving instead, agreement (the regression check's score), took (s per step).
    gate: dict[str, Any] | None
    # An engine across boxes: this node, its rank (0: the head), the nodes, the head's start it is in.
    span: dict[str, Any] | None


class SwitchReport(TypedDict):
    profile: str
    reason: str  # operator, request, idle
    count: int


class SwitchingReport(TypedDict):
    policies: dict[str, dict[str, Any]]  # profiles switched to on request: their SwitchPolicy
    last: dict[str, Any] | None  # profile, reason, key, model, time
    back_to_default_in_s: float | None
    switches: list[SwitchReport]


class Report(TypedDict, total=False):
    agent: dict[str, Any]  # version, pid, started_at, uptime_s (the API adds it)
    router: dict[str, Any]  # listen, auth, audit settings, keys file's health, connections (the API adds it)
    profile: str | None
    profiles: dict[str, list[str]]
    backend: str
    engines: dict[str, EngineReport]
    gpu: dict[str, Any] | None  # GpuMonitor.status and the tensor-parallel links; None: no GPU layer
    switching: SwitchingReport
    energy: dict[str, Any]  # the ledger's totals
    events: list[dict[str, Any]]  # the last 50: time, engine, event, message


def report(supervisor: Supervisor) -> Report:
    """The loop's part of the document at this moment."""
    sup, config = supervisor, supervisor.config
    now, wall = sup.clock(), time.time()
    desired = set(sup.desired())
    degraded = sup.gpu.degraded if sup.gpu is not None else {}
    engines: dict[str, EngineReport] = {}
    for name, state in sup.states.items():
        target = sup.launches[name]
        engines[name] = {
            "runtime": target.runtime,
            "cloud": getattr(config.engines[name], "cloud", False),
            "phase": state.phase.value,
            "desired": name in desired,
            "pid": state.pid,
            "port": target.port,
            "served": target.served,
            "since": round(wall - (now - state.since), 3) if state.since else None,
            "restarts": state.restarts,
            "last_error": state.last_error,
            "degraded": degraded.get(name),
            "probe_latency_ms": None if state.probe_latency_ms is None else round(state.probe_latency_ms, 1),
            "next_start_in_s": None if state.next_start_at is None else round(max(state.next_start_at - now, 0), 1),
            "identity": asdict(sup.serving[name]) if name in sup.serving else None,
            "gate": sup.gates.reports.get(name),
            "span": None if sup.ranks is None or name not in sup.ranks.spans else {
                "node": sup.ranks.node, "rank": target.rank, "nodes": sup.ranks.spans[name],
                "start": sup.ranks.starts.get(name)},
        }  # fmt: skip
    back_in = sup.back_to_default_in()
    switching: SwitchingReport = {
        "policies": {name: p.model_dump() for name, p in config.profile_switching.items()},
        "last": sup.switch_cause or None,
        "back_to_default_in_s": None if back_in is None else round(back_in, 1),
        "switches": [{"profile": p, "reason": r, "count": n} for (p, r), n in sorted(sup.switches.items())],
    }
    return {
        "profile": sup.profile,
        "profiles": config.profiles,
        "backend": sup.backend.name,
        "engines": engines,
        "gpu": None if sup.gpu is None else sup.gpu.status(),
        "switching": switching,
        "energy": vars(sup.ledger.totals()),
        "events": sup.events.recent(50),
    }


def router_report(
    config: AgentConfig, traffic: Traffic, clients: Clients | None, keys: KeyRing | None
) -> dict[str, Any]:
    """The router's part: its settings, its keys file's health, what waits, what it holds, the audit file."""
    part: dict[str, Any] = {"listen": config.router_listen, "auth": config.router_auth, "audit_log":
                            config.audit_path(), "audit_include_text": config.audit_include_text}  # fmt: skip
    if keys is not None:
        part["keys"] = keys.health()
    if clients is not None:
        part |= {"waiting": {name: n for name, n in traffic.waiting.items() if n}, "connections": len(clients.open),
                 "in_hand": clients.busy()}  # fmt: skip
    return part | {"audit": audit_health()}
