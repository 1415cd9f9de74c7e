"""Where the agent listens: sockets systemd hands over (socket activation), else bound here; a socket
that cannot be had is one line for the operator."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from pathlib import Path

from aiohttp import web

from aiinfra.agent.http.serve import App, Clients, Limits

SETTING = {"status": "status_listen", "router": "router_listen", "control": "control_socket"}


class BindError(Exception):
    """A listening address the agent cannot take: the operator's to fix, before any engine starts."""


def inherited_sockets() -> dict[str, socket.socket]:
    """The listening sockets systemd passed this process (aiinfra-router.socket, aiinfra-status.socket),
    by their FileDescriptorName. Held by systemd across an agent restart, they queue connections
    meanwhile instead of refusing them."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return {}
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    return {names[i] if i < len(names) else f"fd{i}": socket.socket(fileno=3 + i) for i in range(count)}


async def listen(runner: web.AppRunner, inherited: dict[str, socket.socket], name: str, address: str) -> None:
    """Serve RUNNER (aiohttp) on the socket systemd passed as NAME, else on ADDRESS bound here."""
    try:
        await web.SockSite(runner, _socket(inherited, name, address)).start()
    except OSError as exc:
        raise BindError(_why(exc, name, address)) from None


async def listen_router(
    app: App, inherited: dict[str, socket.socket], address: str, limits: Limits
) -> tuple[asyncio.AbstractServer, Clients]:
    """Serve the router APP (serve.Connection) on the socket systemd passed as "router", else on
    ADDRESS bound here, within LIMITS; the server and its connections (Clients.drain at stop)."""
    clients = Clients(app, limits)
    try:
        sock = _socket(inherited, "router", address)
        return await asyncio.get_running_loop().create_server(clients.protocol, sock=sock), clients
    except OSError as exc:
        raise BindError(_why(exc, "router", address)) from None


async def listen_unix(runner: web.AppRunner, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    try:
        await web.UnixSite(runner, str(path)).start()
    except OSError as exc:
        raise BindError(_why(exc, "control", str(path))) from None


def _socket(inherited: dict[str, socket.socket], name: str, address: str) -> socket.socket:
    return inherited.get(name) or _bind(address)


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, int(port)), family=family, backlog=1024)


def _why(exc: OSError, name: str, address: str) -> str:
    holder = listener_of(address) if exc.errno == errno.EADDRINUSE else None
    fix = {
        errno.EADDRINUSE: f"held by {holder}" if holder else "another process listens there",
        errno.EACCES: "not permitted for this user",
        errno.EADDRNOTAVAIL: "no interface of this host has that address",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return f"{name} cannot listen on {address}: {fix}; stop that or change {SETTING[name]}"


def listener_of(address: str) -> str | None:
    """Which process listens on ADDRESS's TCP port ("pid 123 (nginx)"), where /proc lets this user see."""
    port = address.rpartition(":")[2]
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and port.isdigit() and int(fields[1].rsplit(":", 1)[1], 16) == int(port):
                    inodes.add(f"socket:[{fields[9]}]")
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                pid = fd_dir.parent.name
                return f"pid {pid} ({Path(f'/proc/{pid}/comm').read_text().strip()})"
    return None
