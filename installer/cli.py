"""The `aiinfra` command: validate, plan and install hosts; ask their agents; run the lab host.
Each command lives in commands/: host.py (the spec and the install), box.py (the agent), lab.py."""

from __future__ import annotations

import click

from aiinfra.installer.commands import box, host, lab


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aiinfra", prog_name="aiinfra", help="Print aiinfra's version, then exit.")
def main() -> None:
    """Turn a GPU box into an LLM inference appliance, and keep it that way."""


for command in (host.validate_cmd, host.plan_cmd, host.install, box.status, box.cost, box.profile, box.keys,
                box.models, lab.lab_group):  # fmt: skip
    main.add_command(command)
