"""Run `aiinfra-agent` on inventory hosts through Ansible, over whatever connection the inventory
names (SSH for a box, podman for a lab host), and read back what it printed."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aiinfra.agent import box
from aiinfra.installer.inventory import ansible_tool
from aiinfra.installer.workstation import ansible_environment

# Templated per host by Ansible: a host whose aiinfra_package_prefix moved has its agent there.
AGENT_BIN = "{{ aiinfra_package_prefix | default('" + box.PREFIX + "') }}/bin/aiinfra-agent"


@dataclass(frozen=True)
class AgentReply:
    host: str
    rc: int | None  # None: the host could not be reached
    stdout: str
    error: str


def agent_command(inventory: Path, hosts: list[str], args: list[str]) -> dict[str, AgentReply]:
    env = {
        **os.environ,
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        **ansible_environment(),
    }
    argv = [
        ansible_tool("ansible"),
        ",".join(hosts),
        "-i",
        str(inventory),
        "-m",
        "ansible.builtin.command",
        "-a",
        json.dumps({"argv": [AGENT_BIN, *args]}),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=300)
    try:
        results = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]
    except (ValueError, KeyError, IndexError):
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        return {h: AgentReply(h, None, "", detail[-1] if detail else "ansible failed") for h in hosts}
    answers = {}
    for host in hosts:
        res = results.get(host, {})
        if res.get("unreachable"):
            answers[host] = AgentReply(host, None, "", res.get("msg", "unreachable"))
        else:
            answers[host] = AgentReply(
                host, res.get("rc"), res.get("stdout", ""), res.get("stderr") or res.get("msg", "")
            )
    return answers
