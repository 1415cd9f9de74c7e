"""Writes what Ansible and the docs need from installer/variables.py, or checks that it is up to date.

From the one declaration of each variable: every role's `meta/argument_specs.yml` (types, choices,
defaults, descriptions), its `defaults/main.yml` (each default under its description) and the tables in docs/
of the role variables. `python -m aiinfra.installer.rolevars` writes them; `--check` (CI) exits 1 naming each
file that differs, so a change made in one of them alone cannot pass.
"""

from __future__ import annotations

import contextlib
import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from aiinfra.installer.variables import ROLES, RunFlags, Variables, _Path
from aiinfra.installer.workstation import project_dir

HEADER = "# Written by `python -m aiinfra.installer.rolevars` from installer/variables.py: change it there.\n"
VARIABLE_TABLE = re.compile(r"(<!-- variables: (\w+) -->\n).*?(<!-- /variables -->)", re.S)


def declared() -> dict[str, FieldInfo]:
    return dict(Variables.model_fields) | dict(RunFlags.model_fields)


def meta(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    assert isinstance(extra, dict), "every variable is declared with var()"
    return extra


def of_role(role: str) -> dict[str, FieldInfo]:
    return {name: field for name, field in declared().items() if role in meta(field)["roles"]}


def _type(annotation: Any, metadata: list[Any] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """The argument_specs type of a Python annotation."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type(args[0], list(args[1:]))
    if any(isinstance(m, _Path) for m in metadata):
        return {"type": "path"}
    if origin in (Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return _type(kinds[0]) if len(kinds) == 1 else {"type": "raw"}
    if origin is Literal:
        return {"type": "str", "choices": list(args)}
    if origin is list:
        elements = _type(args[0])
        spec = {"type": "list", "elements": elements["type"]}
        return spec | ({"options": elements["options"]} if "options" in elements else {})
    if origin is dict or annotation is dict:
        return {"type": "dict"}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"type": "dict", "options": {n: _option(f) for n, f in annotation.model_fields.items()}}
    return {"type": {bool: "bool", int: "int", float: "float", str: "str"}[annotation]}


def _option(field: FieldInfo) -> dict[str, Any]:
    spec = _type(field.annotation, field.metadata)
    if field.is_required():
        spec["required"] = True
    elif field.default is not None:
        spec["default"] = field.default
    if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("secret"):
        spec["no_log"] = True
    spec["description"] = field.description
    return spec


def argument_specs(role: str) -> str:
    main = {"short_description": ROLES[role], "options": {n: _option(f) for n, f in of_role(role).items()}}
    return "---\n" + HEADER + _dump({"argument_specs": {"main": main}})


def defaults(role: str) -> str:
    parts = ["---\n" + HEADER]
    for name, field in of_role(role).items():
        ansible = meta(field)["ansible"]
        value = field.default if ansible is None else ansible
        comment = "".join(f"# {line}\n" for line in textwrap.wrap(field.description or "", 98))
        parts.append(comment + _dump({name: value}))
    return "\n".join(parts)


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # Lists indented under their key, as the hand-written YAML and yamllint (ansible-lint) want.
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Jinja reads best unescaped: folded when long, double-quoted when it holds quotes.
    style = (">" if len(value) > 90 else '"') if "{{" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100, allow_unicode=True)


def _shown(field: FieldInfo) -> str:
    shown = meta(field)["shown"]
    if shown is not None:
        return shown
    value = field.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "" or value == [] or value == {}:
        return f"`{value!r}`".replace("''", '""')
    if isinstance(value, list):
        return ", ".join(f"`{v}`" for v in value)
    if isinstance(value, dict):
        return ", ".join(f"`{k}` {v}" for k, v in value.items())
    return f"`{value}`"


def table(role: str) -> str:
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in Variables.model_fields.items():
        if meta(field)["roles"][:1] == [role]:
            doc = (field.description or "").replace("|", r"\|")
            rows.append(f"| `{name}` | {_shown(field)} | {doc} |")
    return "\n".join(rows) + "\n"


def tables(text: str) -> str:
    return VARIABLE_TABLE.sub(lambda m: m.group(1) + table(m.group(2)) + m.group(3), text)


def expected(root: Path) -> dict[Path, str]:
    files = {}
    for role in ROLES:
        files[root / "roles" / role / "meta" / "argument_specs.yml"] = argument_specs(role)
        files[root / "roles" / role / "defaults" / "main.yml"] = defaults(role)
    for doc in sorted((root / "docs").glob("*.md")):  # the pages that hold a role's table
        if VARIABLE_TABLE.search(doc.read_text()):
            files[doc] = tables(doc.read_text())
    return files


def stale_files(root: Path) -> list[Path]:
    return [path for path, text in expected(root).items() if not path.exists() or path.read_text() != text]


def problems() -> list[str]:
    """What a derived default or type would get wrong: checked before anything is written."""
    found = []
    for name, field in declared().items():
        m = meta(field)
        unknown = [r for r in m["roles"] if r not in ROLES]
        if unknown:
            found.append(f"{name}: unknown role {unknown}")
        if m["ansible"] is not None and (field.default is not None or "{{" not in str(m["ansible"])):
            found.append(f"{name}: an Ansible default is for what Jinja derives; its Python default is then None")
        if m["ansible"] is not None and m["shown"] is None and m["roles"]:
            found.append(f"{name}: say in shown= what the derived default is, for the docs")
    return found


def role_values(role: str, host: dict[str, Any] | None = None) -> dict[str, Any]:
    """A role's defaults under a HOST's variables, as Ansible resolves them where they derive from one
    another (not from facts)."""
    import jinja2

    values = (yaml.safe_load(defaults(role)) or {}) | (host or {})
    for _ in range(len(values)):
        pending = {k: v for k, v in values.items() if isinstance(v, str) and "{{" in v}
        for name, text in pending.items():
            with contextlib.suppress(jinja2.TemplateError):
                values[name] = jinja2.Template(text, undefined=jinja2.StrictUndefined).render(values)
    return values


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if found := problems():
        print("\n".join(f"variables.py: {p}" for p in found), file=sys.stderr)
        return 1
    root = project_dir()
    stale = stale_files(root)
    if argv == ["--check"]:
        for path in stale:
            print(f"{path.relative_to(root)}: differs from installer/variables.py; "
                  "run python -m aiinfra.installer.rolevars", file=sys.stderr)  # fmt: skip
        return 1 if stale else 0
    for path, text in expected(root).items():
        if path in stale:
            path.write_text(text)
            print(f"wrote {path.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
