"""`aiinfra-agent`: the daemon (`run`) and the box-local commands that talk to it."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click

from aiinfra.agent import box, client
from aiinfra.agent import models as model_store
from aiinfra.agent.config import DEFAULT_PATH, GPU_SETTINGS_PATH, AgentConfig, ConfigError, load, load_gpu_settings
from aiinfra.agent.effects import Backend
from aiinfra.agent.effects.process import ProcessBackend
from aiinfra.agent.effects.systemd import SystemdBackend, available, launch_file
from aiinfra.agent.engines import INSTALL_RECORD, SERVE_HELP, unknown_vllm_flags, vllm_venv
from aiinfra.agent.gpu.monitor import GpuMonitor
from aiinfra.agent.gpu.nvml import Nvml
from aiinfra.agent.gpu.policy import Refused, SetPersistence, SetPowerLimit, settings_actions
from aiinfra.agent.http import keys as keyfile
from aiinfra.agent.http.keys import KeyRing
from aiinfra.agent.http.listen import BindError, inherited_sockets, listen, listen_unix
from aiinfra.agent.http.router import Router
from aiinfra.agent.metrics import Metrics
from aiinfra.agent.notify import notify, setup_logging, watchdog_enabled
from aiinfra.agent.supervisor import Supervisor

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 3


def choose_backend(config: AgentConfig) -> Backend:
    state = Path(config.state_dir)
    if config.backend == "systemd" or (config.backend == "auto" and available()):
        return SystemdBackend(state)
    return ProcessBackend(state, config.engine_user)


def status_line(supervisor: Supervisor) -> str:
    desired = supervisor.desired()
    ready = sum(1 for n in desired if supervisor.states[n].phase.value == "ready")
    failed = [n for n in desired if supervisor.states[n].phase.value == "failed"]
    text = f"profile {supervisor.profile}: {ready}/{len(desired)} engines ready"
    if supervisor.gpu is not None and supervisor.gpu.verdict.hold:
        text += f"; engines held: {supervisor.gpu.verdict.state}"
    return text + (f"; failed: {', '.join(failed)}" if failed else "")


async def serve(config: AgentConfig) -> None:
    from aiohttp import web

    from aiinfra.agent.http.api import control_app, status_app

    backend = choose_backend(config)
    gpu = GpuMonitor(config.gpu, Path(config.state_dir)) if config.gpu is not None else None
    supervisor = Supervisor(config, backend, gpu=gpu)
    await supervisor.adopt()
    metrics = Metrics()
    metrics.watch_engines(supervisor.status)
    keyring = KeyRing(Path(config.keys_file)) if config.router_listen is not None and config.router_auth else None

    def router_status() -> dict:
        return router_info(config) | ({"keys": keyring.health()} if keyring is not None else {})

    runners = [
        web.AppRunner(status_app(supervisor, metrics, router_status), access_log=None),
        web.AppRunner(control_app(supervisor), access_log=None),
    ]
    for runner in runners:
        await runner.setup()
    inherited = inherited_sockets()
    await listen(runners[0], inherited, "status", config.status_listen)
    if config.router_listen is not None:
        router = Router(
            supervisor,
            keyring,
            metrics,
            config.router_timeout_s,
            config.audit_include_text,
            config.router_read_timeout_s,
        )
        # handler_cancellation: a client that goes away cancels its upstream request too.
        # keepalive_timeout: also bounds how long a connection may take to send a whole header.
        runners.append(
            web.AppRunner(
                router.app(int(config.router_max_body_mb * 2**20)),
                access_log=None,
                handler_cancellation=True,
                keepalive_timeout=config.router_read_timeout_s,
            )
        )
        await runners[-1].setup()
        await listen(runners[-1], inherited, "router", config.router_listen, config.router_max_connections)
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

    try:
        await supervisor.run(stop, on_tick)
    finally:
        notify("STOPPING=1")
        # systemd units outlive the agent (adopted on its return); plain processes die with it
        await supervisor.close(stop_engines=backend.name == "process")
        for runner in runners:
            await runner.cleanup()
        sock.unlink(missing_ok=True)


def router_info(config: AgentConfig) -> dict:
    return {
        "listen": config.router_listen,
        "auth": config.router_auth,
        "audit_log": config.audit_log,
        "audit_include_text": config.audit_include_text,
    }


def _restrict_socket(sock: Path, group: str) -> None:
    gid = -1
    with contextlib.suppress(KeyError):
        gid = grp.getgrnam(group).gr_gid
    if gid != -1 and os.geteuid() == 0:
        os.chown(sock, 0, gid)
    os.chmod(sock, 0o660)


def _load(path: Path) -> AgentConfig:
    try:
        return load(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)


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


CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_PATH,
    show_default=True,
    help="Agent configuration.",
)


@main.command()
@CONFIG
def run(config_path: Path) -> None:
    """Run the agent (what the systemd unit starts)."""
    config = _load(config_path)
    setup_logging(audit_log=config.audit_log)
    try:
        import uvloop  # about twice the proxy throughput of the default loop (bench/router.py)
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(config))
    except BindError as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


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
    else:
        click.echo(f"{config_path}: ok ({len(config.engines)} engines, default profile {config.default_profile})")
    if problems:
        sys.exit(EXIT_CONFIG)


@main.command("record-vllm-help")
@click.argument("vllm", type=click.Path(path_type=Path, exists=True))
@click.option("--version", required=True, help="The vLLM version of that environment.")
def record_vllm_help(vllm: Path, version: str) -> None:
    """Record `VLLM serve --help=all` beside its environment, once per version (role vllm), so that
    check-config can name a flag this vLLM does not know. Prints {"changed": ..., "recorded": ...}."""
    path = vllm.resolve().parent.parent / SERVE_HELP
    header = f"# vllm {version}\n"
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
        sys.exit(EXIT_CONFIG)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ", "HOME")} | spec["env"]
    os.execvpe(spec["argv"][0], spec["argv"], env)


STATUS_OPT = click.option(
    "--listen", default=client.DEFAULT_STATUS_URL, show_default=True, help="The agent's status address."
)
SOCKET_OPT = click.option(
    "--socket",
    "socket_path",
    default=client.DEFAULT_CONTROL_SOCKET,
    show_default=True,
    help="The agent's control socket.",
)


@main.command()
@STATUS_OPT
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def status(listen: str, as_json: bool) -> None:
    """Show the engines and their states."""
    try:
        report = client.status(listen)
    except client.AgentUnavailable as exc:
        click.echo(f"aiinfra-agent: no agent at {listen}: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    click.echo(json.dumps(report, indent=2) if as_json else client.format_status(report))


@main.command()
@click.argument("name")
@SOCKET_OPT
@STATUS_OPT
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds to wait for ready.")
@click.option("--no-wait", is_flag=True, help="Return once the switch is under way.")
def profile(name: str, socket_path: str, listen: str, timeout: float, no_wait: bool) -> None:
    """Switch to profile NAME: stop the engines that leave, start the new ones, wait for ready."""
    try:
        ok, message = client.switch_profile(name, socket_path, listen, timeout, wait=not no_wait)
    except client.AgentUnavailable as exc:
        click.echo(f"aiinfra-agent: no agent on {socket_path}: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)
    except client.Refused as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(message, err=not ok)
    sys.exit(0 if ok else 1)


@main.command()
@click.argument("engine")
@SOCKET_OPT
def restart(engine: str, socket_path: str) -> None:
    """Restart ENGINE (also clears a failed state)."""
    code, body = _control("POST", f"/engines/{engine}/restart", None, socket_path)
    if code != 202:
        click.echo(f"aiinfra-agent: {body.get('error', code)}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(f"{engine}: restarting")


def _control(method: str, path: str, body: object, socket_path: str) -> tuple[int, dict]:
    try:
        return client.control(method, path, body, socket_path)
    except client.AgentUnavailable as exc:
        click.echo(f"aiinfra-agent: no agent on {socket_path}: {exc}", err=True)
        sys.exit(EXIT_UNAVAILABLE)


@main.group()
def keys() -> None:
    """API keys of the router (the file keeps only their hashes)."""


KEYS_FILE = click.option(
    "--file",
    "keys_path",
    type=click.Path(path_type=Path),
    default=Path(box.KEYS_FILE),
    show_default=True,
    help="The keys file the agent reads.",
)


def _keys_here(keys_path: Path) -> None:
    """Keys belong to an agent: where its configuration directory is missing, none runs here."""
    if not keys_path.parent.is_dir():
        click.echo(
            f"aiinfra-agent: no agent on this machine ({keys_path.parent} does not exist); run this on the box, "
            "or `aiinfra keys --host HOST ...` from the workstation",
            err=True,
        )
        sys.exit(EXIT_UNAVAILABLE)


@keys.command("add")
@click.argument("name")
@click.option("--models", default="", help="Comma-separated models the key may use (default: all).")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute.")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute.")
@KEYS_FILE
def keys_add(name: str, models: str, rpm: int | None, tpm: int | None, keys_path: Path) -> None:
    """Create key NAME and print it, this once."""
    _keys_here(keys_path)
    if not keyfile.KEY_NAME.fullmatch(name):
        click.echo("aiinfra-agent: key names are letters, digits and . _ @ - (64 at most)", err=True)
        sys.exit(EXIT_CONFIG)
    try:
        token = keyfile.add(keys_path, name, [m for m in models.split(",") if m], rpm, tpm)
    except keyfile.KeysFileError as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(token)
    click.echo(f"key {name!r} created; it is shown only now, store it safely", err=True)


@keys.command("new")
@click.argument("name")
def keys_new(name: str) -> None:
    """Make a key for the inventory (aiinfra_agent_api_keys) without touching any keys file: the key
    on stdout, once; the line for the inventory, which holds only its hash, on stderr."""
    token = keyfile.new_token()
    click.echo(token)
    click.echo(f"aiinfra_agent_api_keys:\n  - {{name: {name}, sha256: {keyfile.digest(token)}}}", err=True)


@keys.command("list")
@KEYS_FILE
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def keys_list(keys_path: Path, as_json: bool) -> None:
    """List the keys (names, limits, hints; never the keys)."""
    _keys_here(keys_path)
    try:
        found = keyfile.load(keys_path)
    except keyfile.KeysFileError as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    if as_json:
        click.echo(
            json.dumps([{k: v for k, v in vars(key).items() if k != "sha256"} for key in found.values()], indent=2)
        )
        return
    click.echo(f"{'NAME':<16} {'HINT':<14} {'RPM':>6} {'TPM':>8}  MODELS")
    for key in found.values():
        click.echo(
            f"{key.name:<16} {key.hint + '…':<14} {key.rpm or '-':>6} {key.tpm or '-':>8}  "
            f"{', '.join(key.models) or 'all'}"
        )


@keys.command("revoke")
@click.argument("name")
@KEYS_FILE
def keys_revoke(name: str, keys_path: Path) -> None:
    """Remove key NAME; the router refuses it from its next request on."""
    _keys_here(keys_path)
    try:
        keyfile.revoke(keys_path, name)
    except keyfile.KeysFileError as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(f"key {name!r} revoked")


@main.group()
def models() -> None:
    """Model weights on this box (the installer stages them; the agent never downloads)."""


@models.command("stage")
@click.argument("model")
@click.option("--root", type=click.Path(path_type=Path), required=True, help="Where models live (MOUNT/models).")
@click.option("--mirror", help="A directory or rsync source laid out as MIRROR/<model id>/ with SHA256SUMS.")
@click.option("--download-command", default="", help="Command that downloads: MODEL --local-dir DIR is appended.")
def models_stage(model: str, root: Path, mirror: str | None, download_command: str) -> None:
    """Put MODEL under ROOT from the mirror, else download it; check it; print what was done as JSON."""
    _print_staged(lambda: model_store.stage(model, root, mirror or None, download_command.split()))


@models.command("stage-ollama")
@click.argument("name")
@click.option("--store", type=click.Path(path_type=Path), required=True, help="Ollama's store (OLLAMA_MODELS).")
@click.option("--mirror", help="A directory holding MIRROR/ollama/{manifests,blobs}.")
def models_stage_ollama(name: str, store: Path, mirror: str | None) -> None:
    """Copy Ollama model NAME from the mirror, blobs checked; print JSON (source "missing": pull it)."""
    _print_staged(lambda: model_store.stage_ollama(name, store, mirror or None))


def _print_staged(stage: Callable[[], model_store.Staged]) -> None:
    try:
        staged = stage()
    except model_store.StagingError as exc:
        click.echo(f"aiinfra-agent: {exc}", err=True)
        sys.exit(EXIT_CONFIG if isinstance(exc, model_store.BadModelId) else 1)
    click.echo(json.dumps(vars(staged)))


@main.group()
def gpu() -> None:
    """The GPUs: read them, and apply the power limit and persistence mode (the boot unit's job)."""


@gpu.command("apply")
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(path_type=Path),
    default=GPU_SETTINGS_PATH,
    show_default=True,
    help="GPU settings (the gpu_tuning role writes them).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the GPUs' settings and the verdict as JSON.")
def gpu_apply(settings_path: Path, as_json: bool) -> None:
    """Apply power limits and persistence mode now and read them back (the boot unit's job).

    Exit 1 if a setting did not stick, 2 if a wanted limit is outside what a card allows: then
    nothing is changed on any GPU."""

    def verdict(code: int, gpus: list | None = None, refused: list[str] = (), left: list = (), error: str = ""):
        if as_json:
            found = {"applied": code == 0, "gpus": gpus or [], "refused": list(refused),
                     "did_not_stick": [str(a) for a in left], "error": error or None}  # fmt: skip
            click.echo(json.dumps(found, indent=2))
        else:
            for g in gpus or []:
                click.echo(f"GPU {g['index']} {g['name']}: power limit {g['power_limit_w']:.0f} W, "
                           f"persistence {'on' if g['persistence'] else 'off'}")  # fmt: skip
            for line in [error] if error else []:
                click.echo(f"aiinfra-agent: {line}", err=True)
            for reason in refused:
                click.echo(f"aiinfra-agent: {reason}", err=True)
            if refused:
                click.echo(f"aiinfra-agent: nothing changed; fix {settings_path}", err=True)
            if left:
                click.echo(f"aiinfra-agent: did not stick: {list(left)}", err=True)
        if code:
            sys.exit(code)

    try:
        settings = load_gpu_settings(settings_path)
    except ConfigError as exc:
        if as_json:
            verdict(EXIT_CONFIG, error=str(exc))
        click.echo(str(exc), err=True)
        sys.exit(EXIT_CONFIG)
    nvml = Nvml()
    snapshot = nvml.read()
    if snapshot.state != "ok":
        verdict(1, error=f"{snapshot.state}: {snapshot.message}")
    actions = settings_actions(snapshot, settings.power_limit_watts, settings.persistence_mode, {}, 0, 0)
    refused = [a.reason for a in actions if isinstance(a, Refused)]
    if refused:
        nvml.shutdown()
        verdict(EXIT_CONFIG, refused=refused)
    for action in actions:
        if isinstance(action, SetPowerLimit):
            nvml.set_power_limit(action.gpu, action.watts)
        elif isinstance(action, SetPersistence):
            nvml.set_persistence(action.gpu, action.enabled)
    after = nvml.read()
    left = settings_actions(after, settings.power_limit_watts, settings.persistence_mode, {}, 0, 0)
    nvml.shutdown()
    gpus = [{"index": g.index, "name": g.name, "power_limit_w": g.power_limit_w, "persistence": g.persistence}
            for g in after.gpus]  # fmt: skip
    verdict(1 if left else 0, gpus=gpus, left=left)


@gpu.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
def gpu_status(as_json: bool) -> None:
    """Read the GPUs and the driver through NVML, once."""
    nvml = Nvml()
    snapshot = nvml.read()
    nvml.shutdown()
    if as_json:
        click.echo(
            json.dumps(
                {
                    "state": snapshot.state,
                    "message": snapshot.message,
                    "driver": snapshot.driver,
                    "library": snapshot.library,
                    "kernel_module": snapshot.kernel_module,
                    "gpus": [vars(g) for g in snapshot.gpus],
                },
                indent=2,
            )
        )
    else:
        click.echo(
            f"{snapshot.state}: driver {snapshot.driver}, library {snapshot.library}, kernel module "
            f"{snapshot.kernel_module} {snapshot.message}".rstrip()
        )
        for g in snapshot.gpus:
            click.echo(
                f"GPU {g.index} {g.name} {g.bus_id}: {g.memory_used / 2**30:.1f}/{g.memory_total / 2**30:.1f} GiB, "
                f"{g.utilization}% busy, {g.temperature} °C, {g.power_draw_w:.0f}/{g.power_limit_w:.0f} W, "
                f"persistence {'on' if g.persistence else 'off'}"
            )
    sys.exit(0 if snapshot.state == "ok" else 1)
