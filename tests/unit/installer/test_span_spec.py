"""An engine across boxes in the spec: checked over the hosts of one run (the real ansible-inventory), with
one line a problem and nothing run; the nodes' peer addresses come from their trusted network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from aiinfra.installer.inventory import load
from aiinfra.installer.spec import span_nodes
from tests.conftest import thor_spec

BIG = {"runtime": "vllm", "model": "Qwen/Qwen2.5-32B-Instruct-AWQ", "gpus": [0, 1], "port": 8005,
       "span": {"nodes": ["thor", "odin"], "parallel": "pipeline"}}  # fmt: skip


def fleet(tmp: Path, engine: dict[str, Any] | None = None, **odin: Any) -> Path:
    """thor and odin in group rack of inference; the engine in the group's variables, odin's own on top."""
    spec = thor_spec()
    spec["engines"]["big"] = engine or BIG
    spec["profiles"]["big"] = ["big"]
    spec["trusted_network"] = "trusted"
    (tmp / "group_vars").mkdir(parents=True)
    (tmp / "host_vars").mkdir()
    (tmp / "hosts.yml").write_text(yaml.safe_dump({"inference": {"children": {"rack": {"hosts": {
        "thor": None, "odin": None, "loki": None}}}}}))  # fmt: skip
    (tmp / "group_vars" / "rack.yml").write_text(yaml.safe_dump(spec))
    vlan = {"id": 110, "link": "enp65s0", "name": "trusted", "addresses": ["10.0.110.21/24"]}
    (tmp / "host_vars" / "odin.yml").write_text(yaml.safe_dump({"vlans": [vlan], **odin}))
    (tmp / "host_vars" / "loki.yml").write_text(yaml.safe_dump({"engines": thor_spec()["engines"]}))
    return tmp


def test_a_valid_span_validates_and_gives_each_node_its_address_on_the_trusted_vlan(tmp_path, cli):
    inventory = fleet(tmp_path)
    result = cli("validate", "--host", "thor,odin", "-i", str(inventory))
    assert result.exit_code == 0, result.output
    errors, nodes = span_nodes(load(inventory), ["thor", "odin"])
    assert errors == [] and nodes == {"thor": "10.0.110.20:8078", "odin": "10.0.110.21:8078"}


def test_a_node_left_out_of_the_run_declared_otherwise_or_unknown_is_refused(tmp_path, cli):
    inventory = fleet(tmp_path)
    alone = cli("validate", "--host", "thor", "-i", str(inventory))
    assert alone.exit_code == 2
    assert ("thor: engines.big.span.nodes: odin is not installed in this run; install the engine's nodes together "
            "(--host GROUP)") in alone.stderr  # fmt: skip
    other = fleet(tmp_path / "b", engines={"big": {**BIG, "port": 8006}}, profiles={"big": ["big"]})
    result = cli("validate", "--host", "thor,odin", "-i", str(other))
    assert result.exit_code == 2 and "thor: engines.big: declared otherwise on odin" in result.stderr
    ghost = fleet(tmp_path / "c", {**BIG, "span": {"nodes": ["thor", "odin", "freya"]}})
    result = cli("validate", "--host", "thor,odin", "-i", str(ghost))
    assert "engines.big.span.nodes: 'freya' is not in the inventory" in result.stderr


def test_a_public_or_missing_trusted_address_is_refused(tmp_path, cli):
    public = {"id": 110, "link": "enp65s0", "name": "trusted", "addresses": ["8.8.8.8/24"]}
    result = cli("validate", "--host", "rack", "-i", str(fleet(tmp_path, vlans=[public])))
    assert result.exit_code == 2
    assert "odin: trusted_network: 8.8.8.8 is not a private address" in result.stderr
    unset = fleet(tmp_path / "b", trusted_network="10.88.0.0/16")
    result = cli("validate", "--host", "thor,odin", "-i", str(unset))
    assert "odin: trusted_network: the host has no address in 10.88.0.0/16" in result.stderr
    lab = fleet(tmp_path / "c", trusted_network="10.88.0.0/16", ansible_host="10.88.0.7")
    assert span_nodes(load(lab), ["thor", "odin"])[1]["odin"] == "10.88.0.7:8078"


def test_sizes_must_divide_across_the_nodes(tmp_path, cli):
    tensor = {**BIG, "gpus": [0, 1], "span": {"nodes": ["thor", "odin", "loki"], "parallel": "tensor"}}
    spec = thor_spec() | {"engines": {"big": tensor}, "profiles": {"big": ["big"]}, "default_profile": "big"}
    inventory = tmp_path / "inv"
    (inventory / "host_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"inference": {"hosts": {"thor": None}}}))
    (inventory / "host_vars" / "thor.yml").write_text(yaml.safe_dump(spec))
    result = cli("validate", "--host", "thor", "-i", str(inventory))
    assert ("thor: engines.big.gpus: tensor parallel size 6 (2 GPUs × 3 nodes) does not divide the model's 40 "
            "attention heads") in result.stderr  # fmt: skip


def test_a_profile_switch_reaches_every_node_its_engines_span(tmp_path):
    from aiinfra.installer.commands.box import profile_nodes

    hostvars = load(fleet(tmp_path)).hostvars
    assert profile_nodes(hostvars, ["thor"], "big") == ["thor", "odin"]
    assert profile_nodes(hostvars, ["thor"], "fast") == []  # its engines are thor's alone


def test_the_distributed_port_collides_with_no_other(tmp_path, cli):
    for port, taken in ((8005, "already used by engine 'big'"), (8000, "the router's port"), (8078, "peer port")):
        engine = {**BIG, "span": {**BIG["span"], "port": port}}
        result = cli("validate", "--host", "thor,odin", "-i", str(fleet(tmp_path / str(port), engine)))
        assert result.exit_code == 2 and f"engines.big.span.port: {port}" in result.stderr and taken in result.stderr


def test_a_switch_on_request_may_not_take_an_engine_across_boxes_up_or_down_on_one_box(tmp_path, cli):
    """An agent switches its own box: switching to the profile that holds the span would start the head's rank
    alone, which would wait for its follower until its startup timeout."""
    inventory = fleet(tmp_path, profile_switching={"big": {"back_after_idle_s": 600}})
    result = cli("validate", "--host", "thor,odin", "-i", str(inventory))
    assert result.exit_code == 2
    line = ("odin: profile_switching.big: switching to it or back would start or stop big on this box alone, and it "
            "spans boxes; switch its nodes together with `aiinfra profile big --host GROUP`")  # fmt: skip
    assert line in result.stderr
