"""Read an Ansible inventory the way Ansible does, through `ansible-inventory --list`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_INVENTORIES = (Path("inventory"), Path("/etc/aiinfra/inventory"))


class InventoryError(Exception):
    """The inventory cannot be read, or names no such host. Bad input: exit code 2."""


@dataclass(frozen=True)
class Inventory:
    path: Path
    hostvars: dict[str, dict[str, Any]]  # merged variables per host
    groups: dict[str, list[str]]  # group -> hosts, children expanded

    def select(self, pattern: str) -> list[str]:
        """Hosts for 'a,b' or a group name, in order; unknown names are an InventoryError."""
        selected: list[str] = []
        for word in filter(None, (w.strip() for w in pattern.split(","))):
            if word in self.hostvars:
                hosts = [word]
            elif word in self.groups:
                hosts = self.groups[word]
            else:
                known = ", ".join(sorted(self.hostvars)) or "none"
                raise InventoryError(f"{word}: no such host or group in {self.path} (hosts: {known})")
            selected.extend(h for h in hosts if h not in selected)
        if not selected:
            raise InventoryError(f"{pattern!r} selects no host in {self.path}")
        return selected


def resolve_path(given: str | None) -> Path:
    if given is not None:
        if not given.strip():
            raise InventoryError("inventory path is empty")
        path = Path(given)
        if not path.exists():
            raise InventoryError(f"inventory {given} does not exist")
        return path.resolve()
    for candidate in DEFAULT_INVENTORIES:
        if candidate.exists():
            return candidate.resolve()
    raise InventoryError("no inventory: pass -i PATH, or create ./inventory or /etc/aiinfra/inventory")


def ansible_tool(name: str) -> str:
    """An Ansible command from the same environment as this Python, else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise InventoryError(
            f"{name} not found: install aiinfra with its installer extra (pip install 'aiinfra[installer]')"
        )
    return found


def load(path: Path) -> Inventory:
    env = {**os.environ, "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true", "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [ansible_tool("ansible-inventory"), "-i", str(path), "--list"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        detail = _first_error(proc.stderr)
        raise InventoryError(f"inventory {path} cannot be read: {detail}")
    data = json.loads(proc.stdout)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    hosts = set(hostvars)
    for group, body in data.items():
        if group != "_meta":
            hosts.update(body.get("hosts", []))
    groups = {name: _members(data, name) for name in data if name != "_meta"}
    return Inventory(path, {h: hostvars.get(h, {}) for h in sorted(hosts)}, groups)


def _members(data: dict[str, Any], group: str, seen: frozenset[str] = frozenset()) -> list[str]:
    body = data.get(group, {})
    members = list(body.get("hosts", []))
    for child in body.get("children", []):
        if child not in seen:
            members += [h for h in _members(data, child, seen | {group}) if h not in members]
    return members


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if "ERROR" in line or "error" in line:
            return line.strip().removeprefix("[ERROR]: ").removeprefix("ERROR! ")
    return stderr.strip().splitlines()[-1] if stderr.strip() else "ansible-inventory failed"
