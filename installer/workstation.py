"""This workstation: where the installer's checkout, its state and its cache are, and the environment
every Ansible and podman command it runs is given."""

from __future__ import annotations

import os
from pathlib import Path

CONTAINERS_CONF = Path(__file__).with_name("containers.conf")


class EnvironmentProblem(Exception):
    """This machine cannot run the installer (missing tool or file). Exit code 4."""


def project_dir() -> Path:
    """The checkout holding playbooks/ and roles/: the installer runs from it."""
    configured = os.environ.get("AIINFRA_PROJECT_DIR")
    root = Path(configured) if configured else Path(__file__).resolve().parent.parent
    if not (root / "playbooks" / "site.yml").exists():
        raise EnvironmentProblem(
            f"playbooks/site.yml not found under {root}: run aiinfra from its "
            "checkout, or set AIINFRA_PROJECT_DIR to one"
        )
    return root


def ansible_environment() -> dict[str, str]:
    """What every Ansible command aiinfra runs is told: the project's roles and connection plugin
    (the lab's pipelined podman, playbooks/connection_plugins), pipelining, and podman's settings."""
    root = project_dir()
    return {
        "ANSIBLE_ROLES_PATH": str(root / "roles"),
        "ANSIBLE_CONNECTION_PLUGINS": str(root / "playbooks" / "connection_plugins"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        # Lab hosts are podman containers: podman there must use the project's settings too.
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)),
    }


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aiinfra"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aiinfra"


def lab_dir() -> Path:
    """The lab hosts' files: inventory, addresses, keys, model mirrors, engine doubles."""
    return state_dir() / "lab"
