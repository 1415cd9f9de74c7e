"""`aiinfra-agent`: the daemon (`run`, and what its units and roles call); the box commands that talk to
it are in commands/."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import signal
import sys
from pathlib import Path

import click
import uvloop

from aiinfra.agent import audit, box, logs
from aiinfra.agent.commands import CONFIG, control, cost, gpu, keys, load_config, models, trace
from aiinfra.agent.config import DEFAULT_PATH, AgentConfig, ConfigError, load
from aiinfra.agent.effects import Backend
from aiinfra.agent.effects.process import ProcessBackend
from aiinfra.agent.effects.systemd import SystemdBackend, available, launch_file
from aiinfra.agent.engines import HELP_HEADER, INSTALL_RECORD, SERVE_HELP, environment, unknown_vllm_flags, vllm_venv
from aiinfra.agent.exits import EXIT_BAD_INPUT
from aiinfra.agent.gpu.monitor import GpuMonitor
from aiinfra.agent.http.keys import KeyRing
from aiinfra.agent.http.listen import BindError, inherited_sockets, listen, listen_router, listen_unix
from aiinfra.agent.http.router import Router
from aiinfra.agent.http.serve import Clients, Limits
from aiinfra.agent.metrics import Metrics
from aiinfra.agent.reconcile import Phase
from aiinfra.agent.sdnotify import notify, watchdog_enabled
from aiinfra.agent.status import report, router_report
from aiinfra.agent.supervisor import Supervisor


def choose_backend(config: AgentConfig) -> Backend:
    state = Path(config.state_dir)
    if config.backend == "systemd" or (config.backend == "auto" and available()):
        return SystemdBackend(state, config.engine_user)
    return ProcessBackend(state, config.engine_user)


def status_line(supervisor: Supervisor) -> str:
    desired = supervisor.desired()
    ready = sum(1 for n in desired if supervisor.states[n].phase == Phase.READY)
    failed = [n for n in desired if supervisor.states[n].phase == Phase.FAILED]
    text = f"profile {supervisor.profile}: {ready}/{len(desired)} engines ready"
    if supervisor.gpu is not None and supervisor.gpu.hold:
        text += f"; engines held: {supervisor.gpu.monitor.verdict.state}"
    return text + (f"; failed: {', '.join(failed)}" if failed else "")


def check_records(folder: Path) -> None:
    """Say once, at start, when the records cannot be kept (the model disk missing): the agent serves anyway."""
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        logging.getLogger("aiinfra.agent").error(
            "records folder %s cannot be written (is the model disk mounted?): the cost ledger, the audit log "
            "and the engines' restart counts are not kept",
            folder,
            extra={"EVENT": "records_unwritable"},
        )


async def serve(config: AgentConfig) -> None:
    from aiohttp import web

    from aiinfra.agent.http.api import control_app, peer_app, status_app

    check_records(Path(config.data_dir))
    backend = choose_backend(config)
    gpu = GpuMonitor(config.gpu, Path(config.state_dir)) if config.gpu is not None else None
    supervisor = Supervisor(config, backend, gpu=gpu)
    await supervisor.adopt()
    metrics = Metrics()
    metrics.watch_engines(lambda: report(supervisor))
    keyring = KeyRing(Path(config.keys_file)) if config.router_listen is not None and config.router_auth else None

    router = None
    if config.router_listen is not None:
        router = Router(
            supervisor,
            keyring,
            metrics,
            config.router_timeout_s,
            config.audit_include_text,
            config.router_reserve_tokens,
        )
    clients: Clients | None = None

    def router_status() -> dict:
        return router_report(config, supervisor.traffic, clients if router is not None else None, keyring)

    runners = [
        web.AppRunner(status_app(supervisor, metrics, router_status), access_log=None),
        web.AppRunner(control_app(supervisor, metrics, router_status), access_log=None),
        web.AppRunner(peer_app(supervisor), access_log=None),
    ]
    for runner in runners:
        await runner.setup()
    inherited = inherited_sockets()
    await listen(runners[0], inherited, "status", config.status_listen)
    if (peer := config.peer_listen()) is not None:
        await listen(runners[2], inherited, "peer", peer)
    router_server = None
    if router is not None and config.router_listen is not None:
        router_server, clients = await listen_router(router, inherited, config.router_listen, router_limits(config))
    sock = Path(config.control_socket)
    await listen_unix(runners[1], sock)
    _restrict_socket(sock, config.control_group)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await supervisor.tick()
    notify("READY=1", f"STATUS={status_line(supervisor)}")
    watchdog = watchdog_enabled()

    def on_tick() -> None:
        notify(f"STATUS={status_line(supervisor)}", *(["WATCHDOG=1"] if watchdog else []))

    loop_stopped = asyncio.Event()  # the loop runs on while the router drains: waiting requests need it
    supervising = asyncio.create_task(supervisor.run(loop_stopped, on_tick))
    try:
        await asyncio.wait([supervising, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        # systemd waits out the drain deadline too, not only its TimeoutStopSec
        notify("STOPPING=1", f"EXTEND_TIMEOUT_USEC={int((config.policy.drain_timeout_s + 15) * 1e6)}")
        if router_server is not None and clients is not None:
            # No new connection is taken (systemd's socket keeps them queued for the next agent); the
            # requests in hand are answered, within the drain deadline.
            router_server.close()
            cut = await clients.drain(config.policy.drain_timeout_s)
            if cut:
                deadline = config.policy.drain_timeout_s
                logging.getLogger("aiinfra.agent").warning("router: %d requests cut at stop, past the drain "
                                                           "deadline (%gs)", cut, deadline)  # fmt: skip
    finally:
        loop_stopped.set()
        await supervising
        # systemd units outlive the agent (adopted on its return); plain processes die with it
        await supervisor.close(stop_engines=backend.name == "process")
        if router is not None:
            router.close()
        audit.flush_audit()
        for runner in runners:
            await runner.cleanup()
        sock.unlink(missing_ok=True)


def router_limits(config: AgentConfig) -> Limits:
    return Limits(
        max_body=int(config.router_max_body_mb * 2**20),
        head_timeout_s=config.router_head_timeout_s,
        read_timeout_s=config.router_read_timeout_s,
        write_timeout_s=config.router_write_timeout_s,
        max_connections=config.router_max_connections,
        max_per_client=config.router_max_connections_per_client,
    )


def _restrict_socket(sock: Path, group: str) -> None:
    gid = -1
    with contextlib.suppress(KeyError):
        gid = grp.getgrnam(group).gr_gid
    if gid != -1 and os.geteuid() == 0:
        os.chown(sock, 0, gid)
    os.chmod(sock, 0o660)


def _version(ctx: click.Context, _: click.Parameter, wanted: bool) -> None:
    """The package's version and, where the vllm role installed one, the vLLM pinned for the engines."""
    if not wanted or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        lines = [f"aiinfra-agent {version('aiinfra')}"]
    except PackageNotFoundError:
        lines = ["aiinfra-agent (not installed as a package)"]
    with contextlib.suppress(ConfigError, OSError, ValueError, KeyError, TypeError):
        venv = vllm_venv(load(DEFAULT_PATH))
        record = json.loads((venv / INSTALL_RECORD).read_text())
        lines.append(f"vLLM {', '.join(record['packages'])} ({record['build']} build) in {venv}")
    click.echo("\n".join(lines))
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Print aiinfra's version and the pinned vLLM, then exit.")  # fmt: skip
def main() -> None:
    """aiinfra's host agent: supervises the inference engines on this box."""


@main.command()
@CONFIG
def run(config_path: Path) -> None:
    """Run the agent (what the systemd unit starts)."""
    config = load_config(config_path)
    logs.setup()
    audit.open_file(config.audit_path())
    try:
        uvloop.run(serve(config))  # the router's event loop (docs/decisions.md)
    except BindError as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


@main.command("check-config")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON.")
def check_config(config_path: Path, as_json: bool) -> None:
    """Validate the configuration; exit 2 with one line per problem."""
    try:
        config = load(config_path)
        problems = unknown_vllm_flags(config)
    except ConfigError as exc:
        config, problems = None, str(exc).splitlines()
    if as_json:
        verdict = {"config": str(config_path), "valid": not problems, "problems": problems}
        if config is not None:
            verdict |= {"engines": sorted(config.engines), "default_profile": config.default_profile}
        click.echo(json.dumps(verdict, indent=2))
    elif problems:
        click.echo("\n".join(line if config is None else f"{config_path}: {line}" for line in problems), err=True)
    elif config is not None:
        click.echo(f"{config_path}: ok ({len(config.engines)} engines, default profile {config.default_profile})")
    if problems:
        sys.exit(EXIT_BAD_INPUT)


@main.command("record-vllm-help")
@click.argument("vllm", type=click.Path(path_type=Path, exists=True))
@click.option("--version", required=True, help="The vLLM version of that environment.")
def record_vllm_help(vllm: Path, version: str) -> None:
    """Record `VLLM serve --help=all` beside its environment, once per version (role vllm), so that
    check-config can name a flag this vLLM does not know. Prints {"changed": ..., "recorded": ...}."""
    path = vllm.resolve().parent.parent / SERVE_HELP
    header = f"{HELP_HEADER}{version}\n"
    if path.exists() and path.read_text().startswith(header):
        click.echo(json.dumps({"changed": False, "recorded": True}))
        return
    import subprocess

    done = subprocess.run([str(vllm), "serve", "--help=all"], capture_output=True, text=True, check=False)
    if done.returncode != 0 or "--port" not in done.stdout:
        # A GPU build cannot even parse its arguments while no NVIDIA driver is loaded (before the
        # first reboot): the check waits for the next run.
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        click.echo(json.dumps({"changed": False, "recorded": False, "reason": last}))
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + done.stdout)
    tmp.replace(path)
    click.echo(json.dumps({"changed": True, "recorded": True}))


@main.command("exec-engine", hidden=True)
@click.argument("name")
@click.option("--state-dir", type=click.Path(path_type=Path), default=Path(box.STATE_DIR), show_default=True,
              help="Where the agent left the engine's launch file.")  # fmt: skip
def exec_engine(name: str, state_dir: Path) -> None:
    """Replace this process with engine NAME, as the agent wrote it down (the engine unit's ExecStart)."""
    path = launch_file(state_dir, name)
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        click.echo(f"aiinfra-agent: {path}: {exc}; the agent writes it before starting the unit", err=True)
        sys.exit(EXIT_BAD_INPUT)
    os.execvpe(spec["argv"][0], spec["argv"], environment(spec["env"], os.environ))  # HOME: the unit's User=


for command in control.COMMANDS:
    main.add_command(command)
main.add_command(keys.keys)
main.add_command(models.models)
main.add_command(gpu.gpu)
main.add_command(cost.cost)
main.add_command(trace.trace)
