"""One declaration per variable (installer/variables.py): the roles' files and the README are written from
it, so a default or type changed in one place alone is caught."""

import shutil

import yaml

from aiinfra.installer import rolevars
from aiinfra.installer.spec import HostSpec
from aiinfra.installer.variables import ROLES
from aiinfra.installer.workstation import project_dir


def test_the_roles_files_and_the_readme_are_what_the_declarations_write():
    assert rolevars.problems() == []
    assert rolevars.stale_files(project_dir()) == []


def test_an_edit_to_a_derived_file_alone_is_drift(tmp_path):
    root = project_dir()
    for path in rolevars.expected(root):
        copy = tmp_path / path.relative_to(root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, copy)
    assert rolevars.stale_files(tmp_path) == []
    defaults = tmp_path / "roles" / "host_base" / "defaults" / "main.yml"
    defaults.write_text(defaults.read_text().replace("journald_max_use: 2G", "journald_max_use: 4G"))
    roles = tmp_path / "docs" / "roles.md"
    roles.write_text(roles.read_text().replace("| `vllm_version` | `0.32.0`", "| `vllm_version` | `0.31.0`"))
    assert sorted(rolevars.stale_files(tmp_path)) == [roles, defaults]


def test_the_validators_defaults_are_the_roles_defaults():
    """What `aiinfra validate` assumes for an unset variable is what the role will use."""
    spec = HostSpec()
    for role in ROLES:
        values = yaml.safe_load((project_dir() / "roles" / role / "defaults" / "main.yml").read_text()) or {}
        for name, value in values.items():
            if name in HostSpec.model_fields and "{{" not in str(value):
                assert getattr(spec, name) == value, f"{role}: {name}"


def test_every_agent_setting_is_reachable_from_the_spec_or_says_why_not():
    """Each field of agent.yml: a variable of the same name that the role passes on, or an entry saying
    which variable reaches it, or why none does."""
    import re

    from aiinfra.agent.config import AgentConfig
    from aiinfra.installer.variables import AGENT_NOT_BY_NAME

    template = (project_dir() / "roles" / "aiinfra_agent" / "templates" / "agent.yml.j2").read_text()
    passed = dict(re.findall(r"^\s*'(\w+)': (\w+)", template, re.M))
    for name in AgentConfig.model_fields:
        if name in AGENT_NOT_BY_NAME:
            assert AGENT_NOT_BY_NAME[name].strip(), name
        else:
            assert name in HostSpec.model_fields and passed.get(name) == name, f"{name}: not reachable from the spec"
    assert not set(AGENT_NOT_BY_NAME) - set(AgentConfig.model_fields)


def test_an_agent_setting_in_the_spec_is_validated_with_the_agents_own_limits():
    import pydantic
    import pytest

    from aiinfra.agent.config import AgentConfig

    assert HostSpec(router_timeout_s=120).router_timeout_s == 120
    assert HostSpec().router_write_timeout_s == AgentConfig().router_write_timeout_s
    with pytest.raises(pydantic.ValidationError, match="router_max_connections_per_client"):
        HostSpec(router_max_connections_per_client=0)
