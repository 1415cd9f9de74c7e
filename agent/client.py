"""Talk to a running agent: status over its read-only HTTP port, changes over the control socket.

Standard library only, so the installer and the box's shell tools can use it without aiohttp.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

DEFAULT_STATUS_URL = "127.0.0.1:8079"
DEFAULT_CONTROL_SOCKET = "/run/aiinfra/control.sock"


class AgentUnavailable(Exception):
    """No agent answers where it was looked for."""


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


def status(listen: str = DEFAULT_STATUS_URL, timeout: float = 5) -> dict[str, Any]:
    host, _, port = listen.rpartition(":")
    code, body = _request(http.client.HTTPConnection(host, int(port), timeout=timeout), "GET", "/status")
    if code != 200:
        raise AgentUnavailable(f"status answered HTTP {code}")
    return body


def control(
    method: str, path: str, body: Any = None, socket_path: str = DEFAULT_CONTROL_SOCKET, timeout: float = 10
) -> tuple[int, Any]:
    return _request(_UnixConnection(socket_path, timeout), method, path, body)
