"""`aiinfra validate`: a good spec passes, --json parses, host patterns select like Ansible."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import yaml

from aiinfra.installer.spec import HostSpec, validate
from tests.conftest import ROOT, thor_spec, write_inventory


def test_the_example_thor_spec_is_valid(tmp_path, cli):
    inventory = write_inventory(tmp_path / "inv", thor_spec())
    result = cli("validate", "--host", "thor", "-i", str(inventory))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "thor: spec ok"


def test_forcing_the_slow_awq_kernel_on_an_ampere_card_is_a_warning(tmp_path, cli):
    spec = thor_spec()
    spec["engines"]["qwen14b"]["quantization"] = "awq"
    inventory = write_inventory(tmp_path / "inv", spec)
    result = cli("validate", "--host", "thor", "-i", str(inventory))
    assert result.exit_code == 0, result.output
    assert (
        "warning: thor: engines.qwen14b.quantization: 'awq' forces vLLM's slow kernel on a rtx3090 (compute "
        "capability 8.6); leave quantization out (vLLM picks awq_marlin for this checkpoint) or set awq_marlin"
    ) in result.stderr.splitlines()
    report = json.loads(cli("validate", "--host", "thor", "-i", str(inventory), "--json").stdout)
    assert "engines.qwen14b.quantization" in [w["field"] for w in report["warnings"]["thor"]]
    spec["engines"]["qwen14b"]["quantization"] = "awq_marlin"
    again = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "inv2", spec)))
    assert again.exit_code == 0 and "quantization" not in again.stderr


def test_listening_on_every_interface_beside_vlans_is_a_warning_naming_their_addresses(tmp_path, cli):
    spec = thor_spec()
    result = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "all", spec)))
    assert result.exit_code == 0, result.output
    assert "warning: thor: router_listen: '0.0.0.0:8000' listens on every interface" in result.stderr
    assert "listen on 10.0.110.20:8000" in result.stderr
    spec["router_listen"] = "10.0.110.20:8000"
    quiet = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "one", spec)))
    assert quiet.exit_code == 0 and "router_listen" not in quiet.stderr


def test_json_output_parses_for_good_and_bad_specs(tmp_path, cli):
    good = write_inventory(tmp_path / "good", thor_spec())
    report = json.loads(cli("validate", "--host", "thor", "-i", str(good), "--json").stdout)
    assert report["valid"] is True and report["hosts"] == {"thor": []}

    spec = thor_spec()
    spec["gpu_expected_count"] = "two"
    bad = write_inventory(tmp_path / "bad", spec)
    result = cli("validate", "--host", "thor", "-i", str(bad), "--json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert [e["field"] for e in report["hosts"]["thor"]] == ["gpu_expected_count"]


def test_group_and_comma_patterns_select_hosts(tmp_path, cli):
    inventory = tmp_path / "inv"
    inventory.mkdir()
    (inventory / "hosts.yml").write_text(
        yaml.safe_dump(
            {
                "inference": {"children": {"rack": {"hosts": {"thor": None, "odin": None}}}},
            }
        )
    )
    (inventory / "group_vars").mkdir()
    (inventory / "group_vars" / "inference.yml").write_text(yaml.safe_dump(thor_spec()))
    (inventory / "host_vars").mkdir()
    (inventory / "host_vars" / "odin.yml").write_text(yaml.safe_dump({"gpu_expected_count": 1}))

    result = cli("validate", "--host", "rack", "-i", str(inventory))
    # odin's own variable overrides the group's, as in Ansible: its engines now name a GPU it lacks
    assert result.exit_code == 2
    assert "odin: engines.qwen14b.gpus: GPU 1 does not exist" in result.stderr
    assert "thor: spec ok" in result.stdout
    assert cli("validate", "--host", "thor", "-i", str(inventory)).exit_code == 0


def test_the_operators_other_variables_pass(tmp_path, cli):
    spec = thor_spec() | {"ntp_servers": ["pool.ntp.org"], "ansible_user": "ops", "docker_users": ["me"]}
    inventory = write_inventory(tmp_path / "inv", spec)
    assert cli("validate", "--host", "thor", "-i", str(inventory)).exit_code == 0


# Set by `aiinfra install` for one run (its flags, the nodes of engines across boxes), not by the spec.
RUN_FLAGS = {"aiinfra_allow_reboot", "aiinfra_allow_network_change", "aiinfra_agent_nodes"}


def test_role_variables_are_all_known_to_the_spec():
    """Every variable a role declares can be validated: the schema and the roles do not drift apart."""
    installer_only = RUN_FLAGS
    for spec_file in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        options = yaml.safe_load(spec_file.read_text())["argument_specs"]["main"]["options"]
        unknown = set(options) - set(HostSpec.model_fields) - installer_only
        assert not unknown, f"{spec_file}: not in the spec schema: {sorted(unknown)}"


def test_role_defaults_pass_validation():
    for defaults in sorted(ROOT.glob("roles/*/defaults/main.yml")):
        values = yaml.safe_load(defaults.read_text()) or {}
        for flag in RUN_FLAGS:
            values.pop(flag, None)
        # A default computed by Ansible from other variables ("{{ ... }}") is checked once rendered.
        values = {k: v for k, v in values.items() if not (isinstance(v, str) and v.startswith("{{"))}
        _, errors = validate("defaults", values)
        assert errors == [], f"{defaults}: {[str(e) for e in errors]}"


def test_power_limit_per_gpu_index(tmp_path, cli):
    spec = thor_spec() | {"gpu_power_limit_watts": {0: 350, 1: 300}}
    assert cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "a", spec))).exit_code == 0

    spec["gpu_power_limit_watts"] = {0: 350, 2: 300}
    result = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "b", spec)))
    assert result.exit_code == 2
    assert "thor: gpu_power_limit_watts: GPU 2 does not exist" in result.stderr

    spec["gpu_power_limit_watts"] = {0: "max"}
    result = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "c", spec)))
    assert result.stderr.splitlines()[0] == "thor: gpu_power_limit_watts.0: input should be a valid integer (got 'max')"


def test_keys_add_list_revoke_keep_only_hashes(tmp_path, cli):
    path = str(tmp_path / "keys.json")
    added = cli("keys", "add", "webui", "--models", "a,b", "--rpm", "30", "--file", path)
    assert added.exit_code == 0, added.output
    token = added.stdout.strip()
    assert token.startswith("aiinfra-") and token not in (tmp_path / "keys.json").read_text()
    assert "shown only now" in added.stderr
    listed = cli("keys", "list", "--file", path).stdout
    assert listed.splitlines()[1].split() == ["webui", token[:12] + "…", "30", "-", "-", "a,", "b"]
    assert token not in listed
    again = cli("keys", "add", "webui", "--file", path)
    assert again.exit_code == 2 and "a key named 'webui' exists" in again.stderr
    assert cli("keys", "revoke", "webui", "--file", path).exit_code == 0
    gone = cli("keys", "revoke", "webui", "--file", path)
    assert gone.exit_code == 2 and "no key named 'webui'" in gone.stderr


def test_both_commands_say_their_version(cli):
    assert cli("--version").stdout.strip() == f"aiinfra, version {version('aiinfra')}"
    agent = Path(sys.executable).with_name("aiinfra-agent")
    said = subprocess.run([str(agent), "--version"], capture_output=True, text=True, check=True).stdout
    assert said.splitlines()[0] == f"aiinfra-agent {version('aiinfra')}"


def test_the_keys_commands_name_themselves_and_need_an_agent_here(tmp_path, cli):
    helped = cli("keys", "list", "--help")
    assert helped.stdout.startswith("Usage: aiinfra keys list [OPTIONS]")
    missing = cli("keys", "list", "--file", str(tmp_path / "no-agent" / "keys.json"))
    assert missing.exit_code == 3 and "no agent on this machine" in missing.stderr
    assert missing.stdout == ""


def test_every_option_of_both_commands_says_what_it_does():
    import click

    from aiinfra.agent.main import main as agent_main
    from aiinfra.installer.cli import main as installer_main

    def silent(command: click.Command, path: str):
        for name, sub in getattr(command, "commands", {}).items():
            yield from silent(sub, f"{path} {name}")
        yield from (f"{path} {'/'.join(p.opts)}" for p in command.params
                    if isinstance(p, click.Option) and not p.hidden and not p.help)  # fmt: skip

    assert [*silent(installer_main, "aiinfra"), *silent(agent_main, "aiinfra-agent")] == []


def test_check_config_gives_its_verdict_as_json(tmp_path):
    agent = Path(sys.executable).with_name("aiinfra-agent")
    config = tmp_path / "agent.yml"
    config.write_text("engines: {}\nprofiles: {}\ndefault_profile: fast\npolicy: {tick_s: 0}\n")
    done = subprocess.run([str(agent), "check-config", "--config", str(config), "--json"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    verdict = json.loads(done.stdout)
    assert done.returncode == 2 and verdict["valid"] is False
    assert any("policy.tick_s: input should be greater than 0 (got 0)" in line for line in verdict["problems"])


def test_a_damaged_kept_lab_address_is_one_line_and_nothing_is_started(tmp_path, monkeypatch, cli):
    from aiinfra.installer import lab

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    called: list[tuple] = []
    monkeypatch.setattr(lab, "podman", lambda *args, **kw: called.append(args))
    kept = tmp_path / "aiinfra" / "lab" / "thor.address"
    kept.parent.mkdir(parents=True)
    kept.write_text("10.88.0.999\n")  # a half-written or edited file
    done = cli("lab", "up", "thor")
    assert done.exit_code != 0 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"aiinfra: {kept} holds '10.88.0.999', not an address: fix or remove it"
    ]
    assert called == []


def test_a_status_surface_beyond_loopback_is_a_warning(tmp_path, cli):
    spec = thor_spec()
    ok = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "inv", spec)))
    assert ok.exit_code == 0 and "aiinfra_agent_status_listen" not in ok.stderr
    spec["aiinfra_agent_status_listen"] = "0.0.0.0:8079"  # for Prometheus on the LAN
    result = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "inv2", spec)))
    assert result.exit_code == 0, result.output
    assert any(line.startswith("warning: thor: aiinfra_agent_status_listen: '0.0.0.0:8079' is not loopback")
               for line in result.stderr.splitlines()), result.stderr  # fmt: skip
    # With a bearer token asked for, it is the operator's considered choice: no warning.
    spec["status_token_sha256"] = hashlib.sha256(b"scraper-token").hexdigest()
    tokened = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "inv3", spec)))
    assert tokened.exit_code == 0 and "aiinfra_agent_status_listen" not in tokened.stderr, tokened.stderr
    spec["status_token_sha256"] = "scraper-token"  # the token itself, not its hash: refused, nothing written
    refused = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "inv4", spec)))
    assert refused.exit_code == 2 and "status_token_sha256" in refused.stderr, refused.output


def test_on_the_box_validate_and_plan_say_what_secure_boot_means_for_the_driver(tmp_path, cli):
    efivar = tmp_path / "SecureBoot-efivar"  # as efivarfs gives it: attributes, then 1 for on
    efivar.write_bytes(b"\x07\x00\x00\x00\x01")
    spec = thor_spec() | {"ansible_connection": "local", "nvidia_driver_secure_boot_efivar": str(efivar)}
    said = cli("validate", "--host", "thor", "-i", str(write_inventory(tmp_path / "inv", spec)))
    assert said.exit_code == 0, said.output
    assert said.stdout.splitlines()[1] == (
        "thor: Secure Boot is on here: the driver install means a refusal before the driver is touched: NVIDIA's "
        "CUDA repository has no modules signed for Ubuntu's kernel (use nvidia_driver_source: ubuntu, or enroll "
        "a key and set nvidia_driver_secure_boot_modules: dkms)"
    )
    ubuntu = spec | {"nvidia_driver_source": "ubuntu", "nvidia_driver_version": "580.159.03",
                     "nvidia_driver_flavour": "server"}  # fmt: skip
    planned = cli("plan", "--host", "thor", "-i", str(write_inventory(tmp_path / "inv2", ubuntu)))
    assert planned.exit_code == 0, planned.output
    assert planned.stdout.splitlines()[-1] == ("thor: Secure Boot is on here: the driver install means Canonical's "
                                               "signed modules for the running kernel, if they were built for the "
                                               "pinned driver")  # fmt: skip
    efivar.write_bytes(b"\x07\x00\x00\x00\x00")
    off = cli("validate", "--host", "thor", "-i", str(tmp_path / "inv"))
    assert off.stdout.splitlines()[1] == "thor: Secure Boot is off here: DKMS builds the driver's modules"
    remote = thor_spec() | {"nvidia_driver_secure_boot_efivar": str(efivar)}  # thor is another machine
    elsewhere = write_inventory(tmp_path / "inv3", remote)
    assert "Secure Boot" not in cli("validate", "--host", "thor", "-i", str(elsewhere)).stdout
