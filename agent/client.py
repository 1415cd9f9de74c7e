"""Talk to a running agent: changes, and on the box its status, over the control socket; status also over
its read-only HTTP port (which may require a bearer token).

Standard library only, so the installer and the box's shell tools can use it without aiohttp.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from typing import Any, cast

from aiinfra.agent import box
from aiinfra.agent.reconcile import Phase
from aiinfra.agent.status import Report

DEFAULT_STATUS_URL = box.STATUS_LISTEN
DEFAULT_CONTROL_SOCKET = box.CONTROL_SOCKET


class AgentUnavailable(Exception):
    """No agent answers where it was looked for."""


class ControlRefused(Exception):
    """The agent refused the request (unknown profile or engine)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    try:
        payload = None if body is None else json.dumps(body)
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    except (OSError, http.client.HTTPException) as exc:
        raise AgentUnavailable(str(exc)) from None
    finally:
        conn.close()


def get_json(listen: str | None, path: str, timeout: float = 5, socket_path: str = DEFAULT_CONTROL_SOCKET) -> Any:
    """GET PATH of the agent's status surface at LISTEN; None: through the control socket, as the box's
    tools do (an operator's, so no status token is needed)."""
    if listen is None:
        conn: http.client.HTTPConnection = _UnixConnection(socket_path, timeout)
    else:
        host, _, port = listen.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    code, body = _request(conn, "GET", path)
    if code != 200:
        detail = body.get("error") if isinstance(body, dict) else None
        raise AgentUnavailable(f"{path} answered HTTP {code}" + (f": {detail}" if detail else ""))
    return body


def status(listen: str | None = DEFAULT_STATUS_URL, timeout: float = 5,
           socket_path: str = DEFAULT_CONTROL_SOCKET) -> Report:  # fmt: skip
    return cast(Report, get_json(listen, "/status", timeout, socket_path))


def control(
    method: str, path: str, body: Any = None, socket_path: str = DEFAULT_CONTROL_SOCKET, timeout: float = 10
) -> tuple[int, Any]:
    return _request(_UnixConnection(socket_path, timeout), method, path, body)


def span_phases(reports: dict[str, Report]) -> dict[str, dict[str, Any]]:
    """Each engine across boxes as a whole, from its nodes' reports: its phase (ready only when every rank is
    ready in one start of the head; a rank not heard from: unknown) and its ranks by node."""
    spans: dict[str, dict[str, Any]] = {}
    for host, report in reports.items():
        for name, e in report["engines"].items():
            span = e.get("span")
            if span:
                whole = spans.setdefault(name, {"nodes": span["nodes"], "ranks": {}})
                whole["ranks"][span["node"]] = {"host": host, "rank": span["rank"], "phase": e["phase"],
                                                "start": span["start"]}  # fmt: skip
    for whole in spans.values():
        ranks = whole["ranks"]
        missing = [n for n in whole["nodes"] if n not in ranks]
        head = ranks.get(whole["nodes"][0])
        if missing:
            whole["phase"] = f"unknown (no word from {', '.join(missing)})"
        elif all(r["phase"] == Phase.READY for r in ranks.values()) and len({r["start"] for r in ranks.values()}) == 1:
            whole["phase"] = Phase.READY.value
        else:
            whole["phase"] = head["phase"] if head and head["phase"] != Phase.READY else Phase.STARTING.value
    return spans


def format_spans(reports: dict[str, Report]) -> list[str]:
    lines = []
    for name, whole in sorted(span_phases(reports).items()):
        ranks = ", ".join(f"{node} rank {r['rank']} {r['phase']}" for node, r in whole["ranks"].items())
        lines.append(f"{name} across {', '.join(whole['nodes'])}: {whole['phase']} ({ranks})")
    return lines


def format_status(report: Report) -> str:
    lines = [
        f"profile {report['profile']} (backend {report['backend']})",
        f"{'ENGINE':<12} {'PHASE':<9} {'PID':>7} {'PORT':>5} {'RESTARTS':>8} {'FOR':>7}  LAST ERROR",
    ]
    for name, e in report["engines"].items():
        if not e["desired"] and e["phase"] == Phase.STOPPED:
            continue
        age = f"{time.time() - e['since']:.0f}s" if e["since"] else "-"
        lines.append(
            f"{name:<12} {e['phase']:<9} {e['pid'] or '-':>7} {e['port']:>5} {e['restarts']:>8} {age:>7}  "
            f"{'degraded: ' + e['degraded'] if e['degraded'] else e['last_error'] or ''}"
        )
    for name, e in report["engines"].items():
        gate = e.get("gate")
        if gate and gate["state"] in ("due", "gating"):
            lines.append(
                f"gate: {name}'s change is {'waiting for its start' if gate['state'] == 'due' else 'being checked'}"
            )
        elif gate and gate["state"] == "failed":
            back = "the identity before serves" if gate.get("serving") else "nothing to go back to"
            lines.append(f"gate: {name}'s change failed ({gate['check']}); {back}; restart it to try again")
    for name, e in report["engines"].items():
        span = e.get("span")
        if span:
            role = "the head" if span["rank"] == 0 else f"a follower of {span['nodes'][0]}"
            nodes = ", ".join(span["nodes"])
            lines.append(f"span: {name} rank {span['rank']} on {span['node']} ({role}; nodes {nodes})")
    cloud = sorted(n for n, e in report["engines"].items() if e.get("cloud"))
    lines.append(f"prompts: sent off the box by {', '.join(cloud)} (Ollama cloud models on)" if cloud
                 else "prompts: stay on this box (no engine may use a cloud)")  # fmt: skip
    gpu = report.get("gpu")
    if gpu is not None:
        lines.append(
            f"gpus: {gpu['state']}, driver {gpu['driver']['loaded'] or '-'}"
            + (f": {gpu['message']}" if gpu["message"] else "")
        )
        lines += [f"  warning: {w}" for w in gpu["warnings"]]
    switching: dict[str, Any] = dict(report.get("switching") or {})
    for name, policy in (switching.get("policies") or {}).items():
        lines.append(f"on request: profile {name} (back after {policy['back_after_idle_s']:.0f}s idle, "
                     f"stays at least {policy['min_dwell_s']:.0f}s)")  # fmt: skip
    last = switching.get("last")
    if last:
        by = last["reason"]
        if by == "request":
            by = f"a request for {last['model']} by key {last['key'] or '-'}"
        lines.append(f"last switch: to {last['profile']}, {time.time() - last['time']:.0f}s ago ({by})")
    if switching.get("back_to_default_in_s") is not None:
        lines.append(f"back to the default profile in {switching['back_to_default_in_s']:.0f}s unless asked for")
    router = report.get("router")
    if router and router.get("listen"):
        lines.append(f"endpoint: {router['listen']}, keys {'required' if router['auth'] else 'OFF'}")
    return "\n".join(lines)


def switch_profile(
    name: str,
    socket_path: str = DEFAULT_CONTROL_SOCKET,
    listen: str | None = None,
    timeout: float = 900,
    wait: bool = True,
) -> tuple[bool, str]:
    """Ask for profile NAME, then (with wait) follow status until its engines are ready and no other
    engine runs. Returns (ok, what to tell the operator)."""
    code, body = control("POST", "/profile", {"profile": name}, socket_path)
    if code != 202:
        raise ControlRefused(body.get("error", f"HTTP {code}") if isinstance(body, dict) else f"HTTP {code}")
    if not wait:
        return True, f"switching to {name}: {', '.join(body['engines'])}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = status(listen, socket_path=socket_path)
        desired = {n: e for n, e in report["engines"].items() if e["desired"]}
        others = [n for n, e in report["engines"].items() if not e["desired"] and e["phase"] != Phase.STOPPED]
        if any(e["phase"] == Phase.FAILED for e in desired.values()):
            return False, format_status(report)
        if not others and all(e["phase"] == Phase.READY for e in desired.values()):
            return True, f"profile {name} ready: {', '.join(desired)}"
        time.sleep(0.5)
    return False, f"profile {name} not ready after {timeout:.0f}s"
