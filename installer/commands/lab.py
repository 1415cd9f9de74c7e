"""`aiinfra lab`: the local lab host, its image, its hardware kit and its vLLM."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import yaml

from aiinfra.agent.exits import EXIT_BAD_INPUT, EXIT_ENVIRONMENT
from aiinfra.installer import lab
from aiinfra.installer.commands.common import fail, say
from aiinfra.installer.workstation import EnvironmentProblem


@click.group("lab")
def lab_group() -> None:
    """A local systemd container standing in for the inference box."""


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
