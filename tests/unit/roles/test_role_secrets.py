"""A role variable its argument_specs mark no_log (a token, a password) appears only in tasks that are
themselves no_log: never in an `environment`, an argv or a message that Ansible prints or keeps in
its artifacts."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT


def secrets() -> set[str]:
    found = set()
    for spec in ROOT.glob("roles/*/meta/argument_specs.yml"):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            found |= {name for name, option in (entry.get("options") or {}).items() if option.get("no_log")}
    return found


def tasks(node):
    """Every task mapping in a tasks file, blocks included."""
    for task in node or []:
        yield task
        for part in ("block", "rescue", "always"):
            yield from tasks(task.get(part))


def test_secret_variables_are_used_only_in_no_log_tasks():
    names = secrets()
    assert "vllm_hf_token" in names
    leaks = []
    for path in [*ROOT.glob("roles/*/tasks/*.yml"), *ROOT.glob("roles/*/handlers/*.yml")]:
        for task in tasks(yaml.safe_load(path.read_text())):
            if "block" in task or task.get("no_log") is True:
                continue
            text = yaml.safe_dump({k: v for k, v in task.items() if k not in ("when", "name")})
            leaks += [f"{path.relative_to(ROOT)}: {task.get('name')}: {n}" for n in names if n in text]
    assert leaks == []
