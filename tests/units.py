"""aiinfra's systemd units (systemd/*.j2, templates of the host's variables) rendered as a role would:
for the tests and `systemd-analyze security --offline`, which read unit files, not templates."""

from __future__ import annotations

from typing import Any

import jinja2

from aiinfra.installer.rolevars import role_values
from aiinfra.installer.workstation import project_dir

# Each unit, and the role that installs it.
UNITS = {
    "aiinfra-agent.service": "aiinfra_agent",
    "aiinfra-engine@.service": "aiinfra_agent",
    "aiinfra-router.socket": "aiinfra_agent",
    "aiinfra-status.socket": "aiinfra_agent",
    "aiinfra-gpu-setup.service": "gpu_tuning",
}


def render(unit: str, **values: Any) -> str:
    """The unit with its role's defaults, overridden by VALUES (a host's variables)."""
    template = (project_dir() / "systemd" / f"{unit}.j2").read_text()
    context = role_values(UNITS[unit], values) | {"ansible_managed": "Written by aiinfra"}
    return jinja2.Template(template, undefined=jinja2.StrictUndefined, keep_trailing_newline=True).render(context)
