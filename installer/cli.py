"""The `aiinfra` command: validate a host spec, install a host, run the lab host."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click
import yaml

from aiinfra.agent import client
from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_UNREACHABLE
from aiinfra.installer import lab, plan, remote, secure_boot
from aiinfra.installer.inventory import Inventory, InventoryError, load, resolve_path
from aiinfra.installer.run import (
    EnvironmentProblem,
    Progress,
    RunSummary,
    run_playbook,
)
from aiinfra.installer.spec import HostSpec, SpecError, advice, validate

INVENTORY_HELP = "Ansible inventory (default: ./inventory, then /etc/aiinfra/inventory)."


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"aiinfra: {message}", err=True)
    sys.exit(code)


def load_hosts(inventory: str | None, pattern: str) -> tuple[Inventory, list[str]]:
    try:
        inv = load(resolve_path(inventory))
        return inv, inv.select(pattern)
    except InventoryError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)


INSTALLED_GROUPS = ("inference", "proxmox_hosts")  # the groups playbooks/site.yml installs


def check_specs(inv: Inventory, hosts: list[str]) -> tuple[list[SpecError], list[SpecError]]:
    """The errors (nothing may run) and the warnings (it may) of each host's spec."""
    errors, warnings = [], []
    for host in hosts:
        if not any(host in inv.groups.get(group, []) for group in INSTALLED_GROUPS):
            errors.append(
                SpecError(
                    host,
                    "groups",
                    f"not in group {' or '.join(map(repr, INSTALLED_GROUPS))}, the hosts "
                    "site.yml installs: add it to that group in the inventory",
                )
            )
        spec, found = validate(host, inv.hostvars[host])
        errors.extend(found)
        warnings.extend(advice(host, spec) if spec else [])
    return errors, warnings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aiinfra", prog_name="aiinfra", help="Print aiinfra's version, then exit.")
def main() -> None:
    """Turn a GPU box into an LLM inference appliance, and keep it that way."""


@main.command("validate")
@click.option("--host", "pattern", required=True, help="Host, group, or comma-separated hosts.")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate_cmd(pattern: str, inventory: str | None, as_json: bool) -> None:
    """Check the host spec; change nothing. Exit 2 on any error."""
    inv, hosts = load_hosts(inventory, pattern)
    errors, warnings = check_specs(inv, hosts)
    if as_json:
        report = {host: [{"field": e.field, "message": e.message} for e in errors if e.host == host] for host in hosts}
        warned = {h: [{"field": w.field, "message": w.message} for w in warnings if w.host == h] for h in hosts}
        click.echo(
            json.dumps({"valid": not errors, "inventory": str(inv.path), "hosts": report, "warnings": warned}, indent=2)
        )
    else:
        for error in errors:
            click.echo(str(error), err=True)
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        for host in hosts:
            if not any(e.host == host for e in errors):
                click.echo(f"{host}: spec ok")
        for line in secure_boot_here(inv, hosts):
            click.echo(line)
    if errors:
        sys.exit(EXIT_BAD_INPUT)


def secure_boot_here(inv: Inventory, hosts: list[str]) -> list[str]:
    """Run on the box: what its Secure Boot state means for the driver install."""
    lines = []
    for host in hosts:
        if secure_boot.is_here(host, inv.hostvars[host]):
            spec, _ = validate(host, inv.hostvars[host])
            if spec is not None and (said := secure_boot.note(host, spec)):
                lines.append(said)
    return lines


@main.command()
@click.option("--host", "pattern", required=True, help="Host, group, or comma-separated hosts.")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.option("--check", is_flag=True, help="Dry run: report what would change, change nothing.")
@click.option("--diff", is_flag=True, help="Show the changes made to files.")
@click.option("--tags", help="Only run roles/tasks with these tags (comma-separated).")
@click.option("--allow-reboot", is_flag=True, help="Let the run reboot hosts that need it.")
@click.option(
    "--allow-network-change",
    is_flag=True,
    help="Apply changed VLANs (with an automatic rollback if the connection is lost); else they are staged.",
)
@click.option("--json", "as_json", is_flag=True, help="No live progress; print the summary as JSON.")
def install(
    pattern: str,
    inventory: str | None,
    check: bool,
    diff: bool,
    tags: str | None,
    allow_reboot: bool,
    allow_network_change: bool,
    as_json: bool,
) -> None:
    """Validate the spec, then converge the host(s) with playbooks/site.yml.

    Exit codes: 0 done, 1 a task failed, 2 bad spec or unknown host (nothing ran),
    3 a host was unreachable, 4 this machine lacks what the run needs.
    """
    inv, hosts = load_hosts(inventory, pattern)
    errors, warnings = check_specs(inv, hosts)
    if errors:
        for error in errors:
            click.echo(str(error), err=True)
        fail(f"spec invalid ({len(errors)} error{'s' * (len(errors) > 1)}); nothing was changed", EXIT_BAD_INPUT)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    out = None if as_json else sys.stderr
    progress = Progress(out=out, live=lambda: out is not None and out.isatty())
    if out is not None:
        mode = " (check mode: nothing will change)" if check else ""
        click.echo(f"installing {', '.join(hosts)} from {inv.path}{mode}", err=True)
    try:
        summary = run_playbook(
            inv.path,
            ",".join(hosts),
            check=check,
            diff=diff,
            tags=tags,
            allow_reboot=allow_reboot,
            allow_network_change=allow_network_change,
            progress=progress,
        )
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        print_summary(summary)
    sys.exit(summary.exit_code)


def print_summary(summary: RunSummary) -> None:
    width = max((len(h) for h in summary.hosts), default=4)
    click.echo(f"{'HOST':<{width}}  {'OK':>4} {'CHANGED':>7} {'FAILED':>6} {'UNREACHABLE':>11} {'SKIPPED':>7}")
    for host, t in summary.hosts.items():
        click.echo(f"{host:<{width}}  {t.ok:>4} {t.changed:>7} {t.failed:>6} {t.unreachable:>11} {t.skipped:>7}")
    totals = summary.as_dict()
    mode = " (check mode)" if summary.check else ""
    click.echo(
        f"changed {totals['changed']}, failed {sum(t.failed for t in summary.hosts.values())}, "
        f"unreachable {sum(t.unreachable for t in summary.hosts.values())} "
        f"in {summary.duration_s:.0f}s{mode}"
    )
    for line in summary.failures:
        click.echo(f"  failed: {line}")
    if totals["reboot_required"]:
        click.echo(
            f"reboot required: {', '.join(totals['reboot_required'])} "
            "(reboot when convenient, or re-run with --allow-reboot)"
        )
    if totals["network_change_staged"]:
        click.echo(
            f"network change staged, not applied: {', '.join(totals['network_change_staged'])} "
            "(re-run with --allow-network-change)"
        )
    sources = {"mirror": "from the mirror", "download": "downloaded", "present": "already in place"}
    for host, t in summary.hosts.items():
        if t.secure_boot:
            click.echo(f"secure boot: {host} {t.secure_boot}")
        if t.model_storage:
            click.echo(f"model storage: {host} {t.model_storage}")
        if t.models:
            counts = ", ".join(f"{n} {sources.get(source, source)}" for source, n in sorted(t.models.items()))
            click.echo(f"models: {host} {counts}")
        if t.agent:
            click.echo(f"agent: {host} {t.agent}")
    if summary.slowest:
        click.echo("slowest: " + ", ".join(f"{task} {s:.0f}s" for task, s in summary.slowest[:3]))
    click.echo(f"log: {Path(summary.run_dir) / 'artifacts' / 'ansible' / 'stdout'}")


@main.command("plan")
@click.option("--host", "pattern", required=True, help="Host, group, or comma-separated hosts.")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.option("--profile", "only", help="Plan this profile only (default: every profile).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(pattern: str, inventory: str | None, only: str | None, as_json: bool) -> None:
    """Size each profile's engines against their GPUs: weights, KV cache, overhead, what fits.

    Exit codes: 0 planned, 2 bad spec, unknown profile, model or GPU memory.
    """
    inv, hosts = load_hosts(inventory, pattern)
    report: dict[str, dict[str, list[dict]]] = {}
    engine_gpus: dict[str, list[int]] = {}
    for host in hosts:
        spec, errors = validate(host, inv.hostvars[host])
        if spec is None:
            for error in errors:
                click.echo(str(error), err=True)
            fail(f"{host}: spec invalid; fix it before planning", EXIT_BAD_INPUT)
        if only is not None and only not in spec.profiles:
            fail(f"{host}: profile {only!r} not in profiles ({', '.join(spec.profiles) or 'none'})", EXIT_BAD_INPUT)
        engine_gpus |= {name: engine.gpus for name, engine in spec.engines.items()}
        try:
            report[host] = {p: profile_fits(spec, p) for p in spec.profiles if only in (None, p)}
        except plan.PlanError as exc:
            fail(f"{host}: {exc}", EXIT_BAD_INPUT)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for host, profiles in report.items():
        for name, rows in profiles.items():
            click.echo(f"{host} profile {name}")
            click.echo(plan_table(rows))
    for line in gpu_links_here(engine_gpus) + secure_boot_here(inv, hosts):
        click.echo(line)


def gpu_links_here(engines: dict[str, list[int]]) -> list[str]:
    """Run on the box (NVML answers here): how each tensor-parallel engine's GPUs are linked, as the
    agent will find it, so that a pair without P2P is known before the profile first starts."""
    from aiinfra.agent.gpu.nvml import Nvml
    from aiinfra.agent.gpu.policy import tensor_path

    spanning = {name: sorted(gpus) for name, gpus in engines.items() if len(gpus) > 1}
    nvml = Nvml()
    if not spanning or nvml.read().state != "ok":
        return []
    lines = []
    try:
        for name, gpus in spanning.items():
            pairs = [(a, b) for i, a in enumerate(gpus) for b in gpus[i + 1 :]]
            path = tensor_path(gpus, {p: nvml.links(*p) for p in pairs})
            said = {"nvlink": "NVLink", "pcie": "P2P over PCIe"}.get(path.path, path.reason)
            lines.append(f"GPU links here (NVML): engine {name} on GPUs {', '.join(map(str, gpus))}: {said}")
    finally:
        nvml.shutdown()
    return lines


def profile_fits(spec: HostSpec, profile: str) -> list[dict]:
    from aiinfra.agent.schema import VllmEngine

    gpu_gib = plan.gpu_memory_gib(spec.gpu_model, spec.gpu_memory_gb)
    rows: list[dict] = []
    for name in spec.profiles[profile]:
        engine = spec.engines[name]
        if isinstance(engine, VllmEngine):
            rows += [f.as_dict() for f in plan.fit(name, engine, plan.model_facts(engine, spec.model_mirror), gpu_gib)]
        else:
            rows += [{"engine": name, "gpu": gpu, "sized": False} for gpu in engine.gpus]
    return rows


def plan_table(rows: list[dict]) -> str:
    header = (
        "GPU",
        "ENGINE",
        "BUDGET",
        "WEIGHTS",
        "OVERHEAD",
        "KV CACHE",
        "FREE",
        "CONFIGURED",
        "MAX CONTEXT",
        "SEQS@CTX",
        "CTX@SEQS",
    )
    table: list[tuple[str, ...]] = [header]
    for r in rows:
        if not r.get("sized", True):
            table.append((str(r["gpu"]), r["engine"], "ollama: sized by the model it loads, not planned"))
            continue
        table.append(
            (
                str(r["gpu"]),
                r["engine"],
                *(
                    f"{r[k]:.1f}"
                    for k in ("budget_gib", "weights_gib", "overhead_gib", "kv_configured_gib", "free_gib")
                ),
                f"{r['context']} x {r['concurrency']}",
                str(r["max_context"]),
                str(r["max_concurrency_at_context"]),
                str(r["max_context_at_concurrency"]),
            )
        )
    widths = [max(len(row[i]) for row in table if len(row) == len(header)) for i in range(len(header))]
    lines = [
        "  "
        + "  ".join(
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) if len(row) > 3 else cell
            for i, cell in enumerate(row)
        ).rstrip()
        for row in table
    ]
    return "\n".join(
        [
            *lines,
            "  GiB. KV CACHE and FREE at the CONFIGURED context x sequences; a negative FREE means vLLM queues and",
            "  preempts beyond SEQS@CTX full-length sequences. MAX CONTEXT: one sequence alone. CTX@SEQS: context",
            "  each configured sequence can have when all run at once.",
        ]
    )


@main.command()
@click.option("--host", "pattern", help="Ask the agent on these inventory hosts (default: this machine's).")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.option("--listen", default=client.DEFAULT_STATUS_URL, show_default=True, help="Local agent's status address.")
@click.option("--json", "as_json", is_flag=True, help="Print the agents' status as JSON.")
def status(pattern: str | None, inventory: str | None, listen: str, as_json: bool) -> None:
    """Show the engines the agent supervises: phase, pid, restarts, last error.

    Exit codes: 0 every agent answered, 3 an agent or host did not answer.
    """
    if pattern is None:
        try:
            reports = {"localhost": client.status(listen)}
        except client.AgentUnavailable as exc:
            fail(f"no agent answers at {listen}: {exc}", EXIT_UNREACHABLE)
    else:
        inv, hosts = load_hosts(inventory, pattern)
        reports, missing = {}, []
        for host, answer in remote.agent_command(inv.path, hosts, ["status", "--json"]).items():
            if answer.rc == 0:
                reports[host] = json.loads(answer.stdout)
            else:
                missing.append(f"{host}: {'unreachable' if answer.rc is None else 'no agent'}: {answer.error}")
        for line in missing:
            click.echo(f"aiinfra: {line}", err=True)
        if missing and not reports:
            sys.exit(EXIT_UNREACHABLE)
    if as_json:
        click.echo(json.dumps(reports, indent=2))
    else:
        for host, report in reports.items():
            click.echo(f"== {host}: {client.format_status(report)}")
    if pattern is not None and missing:
        sys.exit(EXIT_UNREACHABLE)


def on_hosts(
    inventory: str | None, pattern: str, argv: list[str], show: Callable[[str, str], str] | None = None
) -> NoReturn:
    """Run `aiinfra-agent ARGV` on the hosts PATTERN names, print each answer, exit with the worst code."""
    inv, hosts = load_hosts(inventory, pattern)
    worst = 0
    for host, answer in remote.agent_command(inv.path, hosts, argv).items():
        out = answer.stdout or answer.error
        click.echo(show(host, out) if show else f"{host}: {out.strip()}")
        worst = max(worst, EXIT_UNREACHABLE if answer.rc is None else answer.rc)
    sys.exit(worst)


@main.command("cost", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--host", "pattern", help="Ask the agent on these inventory hosts (default: this machine's).")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cost(pattern: str | None, inventory: str | None, args: tuple[str, ...]) -> None:
    """Energy, tokens, joules per token, duty cycle and cost per million tokens: the agent's own command,

    \b
      aiinfra cost [--host H] [--since 7d] [--price-per-kwh X] [--cloud-price-per-mtok Y] [--json]
    """
    if pattern is not None:
        on_hosts(inventory, pattern, ["cost", *args], lambda host, out: f"== {host}:\n{out.rstrip()}")
    from aiinfra.agent.commands.cost import cost as agent_cost

    agent_cost.main(args=list(args), prog_name="aiinfra cost")


@main.command()
@click.argument("name")
@click.option("--host", "pattern", help="Switch the agent on these inventory hosts (default: this machine's).")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.option("--timeout", type=float, default=900, show_default=True, help="Seconds to wait for ready.")
@click.option(
    "--socket",
    "socket_path",
    default=client.DEFAULT_CONTROL_SOCKET,
    show_default=True,
    help="Local agent's control socket.",
)
@click.option("--listen", default=client.DEFAULT_STATUS_URL, show_default=True, help="Local agent's status address.")
def profile(
    name: str, pattern: str | None, inventory: str | None, timeout: float, socket_path: str, listen: str
) -> None:
    """Switch to profile NAME: stop the engines that leave, start the new ones, wait until ready.

    Exit codes: 0 ready, 1 an engine failed or the wait timed out, 2 unknown profile, 3 no agent.
    """
    if pattern is None:  # this machine's agent: its own command
        from aiinfra.agent.commands import control

        click.get_current_context().invoke(
            control.profile, name=name, socket_path=socket_path, listen=listen, timeout=timeout, no_wait=False
        )
        return
    on_hosts(inventory, pattern, ["profile", name, "--timeout", str(timeout)])


@main.command("keys", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--host", "pattern", help="Manage the keys on these inventory hosts, through Ansible.")
@click.option("-i", "--inventory", help=INVENTORY_HELP)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def keys(pattern: str | None, inventory: str | None, args: tuple[str, ...]) -> None:
    """The router's API keys, on this machine or on inventory hosts: the agent's own commands,

    \b
      aiinfra keys add NAME [--models m1,m2] [--rpm N] [--tpm N] [--max-inflight N] [--file PATH]
      aiinfra keys list [--json]
      aiinfra keys revoke NAME
    """
    if pattern is not None:
        on_hosts(inventory, pattern, ["keys", *args])
    from aiinfra.agent.commands.keys import keys as agent_keys

    agent_keys.main(args=list(args), prog_name="aiinfra keys")  # the agent's own commands, named as called


@main.group("lab")
def lab_group() -> None:
    """A local systemd container standing in for the inference box."""


def say(message: str) -> None:
    click.echo(message, err=True)


@lab_group.command("up")
@click.argument("name", default="thor")
@click.option(
    "--release",
    type=click.Choice(lab.RELEASES),
    default="bookworm",
    show_default=True,
    help="The container's Debian release.",
)
@click.option(
    "--spec",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Host variables for the lab host (default: the example thor spec).",
)
def lab_up(name: str, release: str, spec: Path | None) -> None:
    """Start the lab host NAME and write the lab inventory."""
    try:
        inventory = lab.up(name, release, spec, say)
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    except (ValueError, OSError) as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    say(f"lab host {name} is up; inventory: {inventory}")
    say(f"next: aiinfra install --host {name} -i {inventory}")
    click.echo(str(inventory))


@lab_group.command("down")
@click.argument("name", default="thor")
def lab_down(name: str) -> None:
    """Remove the lab host NAME (its container and inventory entry)."""
    try:
        existed = lab.down(name)
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    say(f"lab host {name} removed" if existed else f"lab host {name} was not running")


@lab_group.command("endpoint")
@click.argument("name", default="thor")
@click.option("--json", "as_json", is_flag=True, help="Print the endpoint and the answer as JSON.")
def lab_endpoint(name: str, as_json: bool) -> None:
    """Ask the lab host's router one question with the lab's key; print how to do it yourself."""
    try:
        found = lab.endpoint(name)
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    key = f"$(cat {found['key_file']})"
    click.echo(f"endpoint {found['url']}, key in {found['key_file']}")
    click.echo(
        f"{found['model']} (engine {found['engine']}, {found['served_by']}) answered in "
        f"{found['completion_tokens']} tokens: {found['answer']!r}"
    )
    if found["served_by"].startswith("vLLM"):
        click.echo("  (the lab's models are the kit's tiny stand-ins with random weights: the words are noise)")
    click.echo("try it:")
    click.echo(
        f'  curl -s {found["url"]}/chat/completions -H "Authorization: Bearer {key}" '
        f"-H 'Content-Type: application/json' -d '{json.dumps(found['request'])}'"
    )
    click.echo(
        f'  {sys.executable} -c \'import openai; c = openai.OpenAI(base_url="{found["url"]}", '
        f'api_key=open("{found["key_file"]}").read().strip()); '
        f'print(c.chat.completions.create(model="{found["model"]}", '
        f'messages=[{{"role": "user", "content": "Hello"}}]).choices[0].message.content)\''
    )


@lab_group.command("kit", hidden=True)
@click.argument("container")
@click.option("--release", type=click.Choice(lab.RELEASES), required=True, help="The container's Debian release.")
@click.option("--spec", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The host spec the kit is made for.")  # fmt: skip
@click.option("--vars-out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the variables that point the roles at the kit.")  # fmt: skip
def lab_kit(container: str, release: str, spec: Path, vars_out: Path) -> None:
    """Put the hardware kit's test doubles into CONTAINER (Molecule's) and write the variables that
    point the roles at them."""
    try:
        host_vars = lab.kit(container, release, yaml.safe_load(spec.read_text()) or {}, say)
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)
    vars_out.write_text(yaml.safe_dump(host_vars, sort_keys=False))


@lab_group.command("hardware", hidden=True)
@click.argument("container")
@click.option("--driver-version", "versions", multiple=True, required=True,
              help="A version of the fake driver packages (several: the repository holds each).")  # fmt: skip
@click.option("--layout", type=click.Choice(["ubuntu", "cuda"]), default="ubuntu", show_default=True,
              help="Whose package names and revisions the fake repository copies.")  # fmt: skip
@click.option("--flavour", type=click.Choice(["server", "desktop"]), default="server", show_default=True,
              help="The driver packages' flavour.")  # fmt: skip
def lab_hardware(container: str, versions: tuple[str, ...], layout: str, flavour: str) -> None:
    """Put only the hardware kit's test doubles (driver packages, NVML) into CONTAINER (Molecule's role
    scenarios), as `lab up` and `lab kit` do."""
    try:
        lab.install_hardware_kit(container, say, list(versions), layout, flavour)
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)


@lab_group.command("vllm")
def lab_vllm() -> None:
    """Install the lab's vLLM (the CPU build) on this machine once; print its `vllm` command."""
    try:
        click.echo(str(lab.host_vllm(say)))
    except EnvironmentProblem as exc:
        fail(str(exc), EXIT_ENVIRONMENT)


@lab_group.command("image")
@click.option(
    "--release",
    "releases",
    type=click.Choice(lab.RELEASES),
    multiple=True,
    help="Debian release(s) to build (default: all).",
)
@click.option("--rebuild", is_flag=True, help="Build again even if the image exists.")
def lab_image(releases: tuple[str, ...], rebuild: bool) -> None:
    """Build the lab/Molecule base images (cached in podman)."""
    for release in releases or lab.RELEASES:
        try:
            click.echo(lab.build_image(release, say, rebuild=rebuild))
        except EnvironmentProblem as exc:
            fail(str(exc), EXIT_ENVIRONMENT)
