"""The box commands of `aiinfra-agent`, one module per group; agent/main.py adds them to the CLI.
What those that read the configuration share: its option and its loading."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from aiinfra.agent.config import DEFAULT_PATH, AgentConfig, ConfigError, load
from aiinfra.agent.exits import EXIT_BAD_INPUT

CONFIG = click.option("--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_PATH,
                      show_default=True, help="Agent configuration.")  # fmt: skip


def load_config(path: Path) -> AgentConfig:
    """The configuration at PATH, or its problems as lines and exit 2."""
    try:
        return load(path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_BAD_INPUT)
