"""Malformed specs: each exits 2 with one line naming the field, and Ansible never starts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ansible_runner
import pytest

from tests.conftest import thor_spec, write_inventory

Mutate = Callable[[dict[str, Any]], None]


def setter(key: str, value: Any) -> Mutate:
    return lambda spec: spec.__setitem__(key, value)


def engine(name: str, key: str, value: Any) -> Mutate:
    return lambda spec: spec["engines"][name].__setitem__(key, value)


def drop(name: str, key: str) -> Mutate:
    return lambda spec: spec["engines"][name].pop(key)


def vlan(key: str, value: Any) -> Mutate:
    return lambda spec: spec["vlans"][0].__setitem__(key, value)


def rename(old: str, new: str) -> Mutate:
    return lambda spec: spec.__setitem__(new, spec.pop(old))


def two_pins(spec: dict) -> None:
    spec["engines"]["qwen14b"]["model"] = spec["engines"]["qwen7b"]["model"]
    spec["engines"]["qwen7b"]["model_sha256"] = "a" * 64
    spec["engines"]["qwen14b"]["model_sha256"] = "b" * 64


CASES: dict[str, tuple[Mutate, str, str]] = {
    # name: (change to the thor spec, field named in the error, words of the message)
    "power limit not a number": (setter("gpu_power_limit_watts", "350W"), "gpu_power_limit_watts", "valid integer"),
    "power limit below any card": (setter("gpu_power_limit_watts", 5), "gpu_power_limit_watts", "greater than"),
    "driver version unquoted": (setter("nvidia_driver_version", 580.105), "nvidia_driver_version", "valid string"),
    "driver branch only": (setter("nvidia_driver_version", "580"), "nvidia_driver_version", "exact driver version"),
    "driver version a word": (
        setter("nvidia_driver_version", "latest"),
        "nvidia_driver_version",
        "exact driver version",
    ),
    "misspelt driver variable": (
        rename("nvidia_driver_version", "nvidia_drivr_version"),
        "nvidia_drivr_version",
        "did you mean 'nvidia_driver_version'",
    ),
    "misspelt engines": (rename("engines", "engins"), "engins", "did you mean 'engines'"),
    "unknown variable with our prefix": (setter("gpu_clock_lock", 1800), "gpu_clock_lock", "unknown variable"),
    "misspelt engine key": (
        engine("qwen7b", "max_model_length", 4096),
        "engines.qwen7b.max_model_length",
        "did you mean 'max_model_len'",
    ),
    "vllm engine without model": (drop("qwen7b", "model"), "engines.qwen7b.model", "required"),
    "engine without runtime": (drop("qwen7b", "runtime"), "engines.qwen7b.runtime", "'vllm', 'ollama'"),
    "unknown runtime": (engine("qwen7b", "runtime", "tgi"), "engines.qwen7b.runtime", "'vllm', 'ollama'"),
    "duplicate port": (engine("qwen14b", "port", 8001), "engines.qwen7b.port", "already used by engine 'qwen14b'"),
    "model pin not a digest": (engine("qwen7b", "model_sha256", "abc"), "engines.qwen7b.model_sha256", "pattern"),
    "one model, two pins": (two_pins, "engines.qwen7b.model_sha256", "pins model Qwen/Qwen2.5-7B-Instruct to another"),
    "golden check not a regular expression": (
        engine("qwen7b", "gate", {"golden": [{"prompt": "2+2=", "matches": "(4"}]}),
        "engines.qwen7b.gate.golden.0.matches",
        "not a regular expression",
    ),
    "misspelt gate key": (
        engine("qwen7b", "gate", {"golden": [{"prompt": "2+2=", "contain": "4"}]}),
        "engines.qwen7b.gate.golden.0.contain",
        "unknown key",
    ),
    "agreement above 1": (engine("qwen7b", "gate", {"agreement": 2}), "engines.qwen7b.gate.agreement", "less than"),
    "engine on the router's port": (engine("qwen7b", "port", 8000), "engines.qwen7b.port", "router"),
    "port out of range": (engine("qwen7b", "port", 70000), "engines.qwen7b.port", "less than or equal to 65535"),
    "two engines of a profile on one GPU": (engine("qwen14b", "gpus", [0]), "profiles.fast", "both use GPU 0"),
    "GPU the host lacks": (engine("qwen7b", "gpus", [2]), "engines.qwen7b.gpus", "GPU 2 does not exist"),
    "no GPU for an engine": (engine("qwen7b", "gpus", []), "engines.qwen7b.gpus", "at least 1"),
    "memory utilisation above 1": (
        engine("qwen7b", "gpu_memory_utilization", 1.5),
        "engines.qwen7b.gpu_memory_utilization",
        "less than or equal",
    ),
    "ollama keep_alive a word": (engine("ollama", "keep_alive", "forever"), "engines.ollama.keep_alive", "pattern"),
    "profile with an unknown engine": (
        lambda s: s["profiles"].__setitem__("fast", ["qwen7", "qwen14b"]),
        "profiles.fast",
        "did you mean 'qwen7b'",
    ),
    "default profile missing": (setter("default_profile", "turbo"), "default_profile", "not one of the profiles"),
    "VLAN id out of range": (vlan("id", 5000), "vlans.0.id", "less than or equal to 4094"),
    "VLAN address without prefix": (vlan("addresses", ["10.0.110.20"]), "vlans.0.addresses", "prefix"),
    "VLAN gateway not an address": (vlan("gateway", "10.0.110"), "vlans.0.gateway", "not an IP address"),
    "misspelt VLAN key": (vlan("adresses", ["10.0.110.21/24"]), "vlans.0.adresses", "did you mean 'addresses'"),
    "duplicate VLAN ids": (lambda s: s["vlans"].append(dict(s["vlans"][0], name="dup")), "vlans", "more than once"),
    "relative mount path": (setter("model_storage_mount", "mnt/nvme"), "model_storage_mount", "absolute path"),
    "router address without port": (setter("router_listen", "8000"), "router_listen", "HOST:PORT"),
    "persistence as a string": (setter("gpu_persistence_mode", "yes"), "gpu_persistence_mode", "valid boolean"),
    "negative huge pages": (setter("host_base_hugepages", -1), "host_base_hugepages", "greater than or equal to 0"),
    "sysctl as a list": (setter("host_base_sysctl", ["vm.swappiness=10"]), "host_base_sysctl", "valid dictionary"),
    "service user with spaces": (setter("aiinfra_user", "ai infra"), "aiinfra_user", "pattern"),
    "passthrough id not vendor:device": (
        setter("proxmox_passthrough_gpu_ids", ["10de-2204"]),
        "proxmox_passthrough_gpu_ids.0",
        "pattern",
    ),
    "unknown bootloader": (
        setter("proxmox_passthrough_bootloader", "lilo"),
        "proxmox_passthrough_bootloader",
        "'auto', 'grub' or 'systemd-boot'",
    ),
    "VM id below Proxmox's range": (
        setter("proxmox_passthrough_vm_id", 42),
        "proxmox_passthrough_vm_id",
        "greater than or equal to 100",
    ),
    "misspelt passthrough variable": (
        setter("proxmox_passthrough_enable", True),
        "proxmox_passthrough_enable",
        "did you mean 'proxmox_passthrough_enabled'",
    ),
    "driver source unknown": (
        setter("nvidia_driver_source", "ppa"),
        "nvidia_driver_source",
        "'ubuntu', 'cuda' or 'custom'",
    ),
    "custom driver source without its repository": (
        setter("nvidia_driver_source", "custom"),
        "nvidia_driver_custom_repo",
        "source custom needs the repository",
    ),
    "custom repository without a trust choice": (
        setter("nvidia_driver_custom_repo", {"uris": "http://mirror/nvidia", "suites": "./"}),
        "nvidia_driver_custom_repo",
        "exactly one of key_url, signed_by or trusted",
    ),
    "custom repository with a misspelt key": (
        setter("nvidia_driver_custom_repo", {"uri": "http://mirror/nvidia", "suites": "./", "trusted": True}),
        "nvidia_driver_custom_repo.uri",
        "did you mean 'uris'",
    ),
    "settings file not absolute": (
        setter("gpu_tuning_settings_file", "gpu.yml"),
        "gpu_tuning_settings_file",
        "absolute",
    ),
    "an engine's extra_args take its address": (
        engine("qwen7b", "extra_args", ["--host", "0.0.0.0"]),
        "engines.qwen7b.extra_args",
        "--host is set by aiinfra",
    ),
    "an engine's extra_args take its key": (
        engine("qwen7b", "extra_args", ["--api-key=x"]),
        "engines.qwen7b.extra_args",
        "--api-key is set by aiinfra",
    ),
    "the box's vLLM arguments take the port": (
        setter("aiinfra_agent_vllm_extra_args", ["--port", "9"]),
        "aiinfra_agent_vllm_extra_args",
        "--port is set",
    ),
    "model id with a newline": (
        engine("qwen7b", "model", "Qwen/Qwen2.5-7B-Instruct\n"),
        "engines.qwen7b.model",
        "is not a model id",
    ),
    "profile named with a newline": (
        lambda spec: spec["profiles"].__setitem__("deep\n", spec["profiles"].pop("deep")),
        "profiles.'deep\\n'",
        "profile names are lower-case letters",
    ),
    "served name with a control character": (
        engine("qwen7b", "served_name", "qwen\x1b[2J"),
        "engines.qwen7b.served_name",
        "should match pattern",
    ),
    "driver version with a newline": (
        setter("nvidia_driver_version", "580.105.08\n"),
        "nvidia_driver_version",
        "exact driver version",
    ),
    "one key name twice": (
        setter(
            "aiinfra_agent_api_keys", [{"name": "laptop", "sha256": "a" * 64}, {"name": "laptop", "sha256": "b" * 64}]
        ),
        "aiinfra_agent_api_keys",
        "key 'laptop' is named twice",
    ),
    "a router setting out of its range": (
        setter("router_max_connections_per_client", 0),
        "router_max_connections_per_client",
        "greater than or equal",
    ),
    "VLAN name used twice": (
        lambda spec: spec["vlans"].append({**spec["vlans"][0], "id": 999}),
        "vlans",
        "interface name 'trusted' is used by more than one VLAN",
    ),
    "rollback too quick to reconnect": (
        setter("network_vlans_rollback_after_s", 5),
        "network_vlans_rollback_after_s",
        "greater than or equal to 30",
    ),
    "netplan file outside /etc/netplan": (
        setter("network_vlans_netplan_file", "/etc/aiinfra/vlans.yaml"),
        "network_vlans_netplan_file",
        "pattern",
    ),
    "misspelt apply switch": (
        setter("network_vlans_aply", True),
        "network_vlans_aply",
        "did you mean 'network_vlans_apply'",
    ),
    "model disk not a path": (setter("model_storage_device", "nvme1n1"), "model_storage_device", "absolute"),
    "filesystem aiinfra does not make": (
        setter("model_storage_fstype", "ntfs"),
        "model_storage_fstype",
        "'ext4' or 'xfs'",
    ),
    "format as a string": (setter("model_storage_format", "yes"), "model_storage_format", "valid boolean"),
    "label too long for ext4": (
        setter("model_storage_label", "my-very-long-model-label"),
        "model_storage_label",
        "pattern",
    ),
    "label too long for xfs": (
        setter("model_storage_fstype", "xfs"),
        "model_storage_label",
        "xfs labels have at most 12 characters",
    ),
    "model directory with a slash": (
        setter("model_storage_dirs", {"models": "a/b"}),
        "model_storage_dirs.models",
        "pattern",
    ),
    "journal size without unit": (
        setter("host_base_journald_max_use", "2000"),
        "host_base_journald_max_use",
        "pattern",
    ),
    "model mirror a relative path": (setter("model_mirror", "nas/models"), "model_mirror", "rsync source"),
    "ollama archive file without its checksum": (
        setter("ollama_archive_file", "/home/ops/ollama-linux-amd64.tgz"),
        "ollama_archive_sha256",
        "required with ollama_archive_file",
    ),
    "ollama archive not a release archive": (
        setter("ollama_archive_file", "/home/ops/ollama.zip"),
        "ollama_archive_file",
        "not an Ollama release archive",
    ),
    "driver from the cuda repository in the server flavour": (
        setter("nvidia_driver_flavour", "server"),
        "nvidia_driver_flavour",
        "CUDA repository has no -server packages",
    ),
    "mirror of the cuda repository in the server flavour": (
        lambda spec: spec.update(
            nvidia_driver_source="custom",
            nvidia_driver_flavour="server",
            nvidia_driver_custom_repo={"uris": "http://mirror/cuda", "suites": "/", "trusted": True, "layout": "cuda"},
        ),
        "nvidia_driver_flavour",
        "no -server packages",
    ),
    "model id an absolute path": (
        engine("qwen7b", "model", "/var/lib/important"),
        "engines.qwen7b.model",
        "'/var/lib/important' is not a model id",
    ),
    "model id climbing out of the store": (
        engine("qwen7b", "model", "Qwen/../../etc"),
        "engines.qwen7b.model",
        "inside",
    ),
    "ollama model name a path": (
        engine("ollama", "models", ["../../etc/passwd"]),
        "engines.ollama.models",
        "not a model id like 'llama3.2:3b'",
    ),
    "engine on a privileged port": (engine("qwen7b", "port", 80), "engines.qwen7b.port", "from 1024 (got 80)"),
    "model disk on the root": (setter("model_storage_mount", "/"), "model_storage_mount", "'/' is a system directory"),
    "model disk on /var/lib": (setter("model_storage_mount", "/var/lib"), "model_storage_mount", "system directory"),
    "router open to all without keys": (
        setter("aiinfra_agent_router_auth", False),
        "aiinfra_agent_router_auth",
        "false with router_listen '0.0.0.0:8000'",
    ),
    "ollama checksum not sha256": (setter("ollama_archive_sha256", "abc123"), "ollama_archive_sha256", "pattern"),
    "vllm version not exact": (setter("vllm_version", "latest"), "vllm_version", "pattern"),
    "misspelt agent policy setting": (
        setter("aiinfra_agent_policy", {"startup_timeout": 600}),
        "aiinfra_agent_policy.startup_timeout",
        "did you mean 'startup_timeout_s'",
    ),
    "api key given in clear": (
        setter("aiinfra_agent_api_keys", [{"name": "laptop", "sha256": "aiinfra-abcdef"}]),
        "aiinfra_agent_api_keys.0.sha256",
        "pattern",
    ),
}


@pytest.fixture
def runner_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(ansible_runner, "run", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ansible_runner, "run_async", lambda **kw: calls.append(kw))
    return calls


@pytest.mark.parametrize("case", CASES)
def test_malformed_spec_exits_2_naming_the_field(case, tmp_path, cli, runner_calls):
    mutate, field, words = CASES[case]
    spec = thor_spec()
    mutate(spec)
    inventory = write_inventory(tmp_path / "inventory", spec)

    result = cli("install", "--host", "thor", "-i", str(inventory))

    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"thor: {field}: ")]
    assert lines, f"no line names thor: {field}:\n{result.stderr}"
    assert any(words in line for line in lines), lines
    assert "nothing was changed" in result.stderr
    assert runner_calls == []


def test_unknown_host_lists_the_known_ones(tmp_path, cli, runner_calls):
    inventory = write_inventory(tmp_path / "inventory", thor_spec())
    result = cli("install", "--host", "odin", "-i", str(inventory))
    assert result.exit_code == 2
    assert "odin: no such host or group" in result.stderr and "(hosts: thor)" in result.stderr
    assert runner_calls == []


def test_host_outside_the_inference_group_is_refused(tmp_path, cli, runner_calls):
    inventory = write_inventory(tmp_path / "inventory", thor_spec(), group="gpu_boxes")
    result = cli("install", "--host", "thor", "-i", str(inventory))
    assert result.exit_code == 2
    assert "thor: groups: not in group 'inference' or 'proxmox_hosts'" in result.stderr
    assert runner_calls == []


def test_missing_inventory_is_a_usage_error(tmp_path, cli, runner_calls):
    result = cli("install", "--host", "thor", "-i", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    assert runner_calls == []


def test_unparsable_inventory_is_a_usage_error(tmp_path, cli, runner_calls):
    (tmp_path / "hosts.yml").write_text("inference: [unclosed\n")
    result = cli("install", "--host", "thor", "-i", str(tmp_path / "hosts.yml"))
    assert result.exit_code == 2
    assert "cannot be read" in result.stderr
    assert runner_calls == []


def test_every_error_of_a_spec_is_reported_at_once(tmp_path, cli, runner_calls):
    spec = thor_spec()
    spec["gpu_power_limit_watts"] = "high"
    spec["engins"] = spec.pop("engines")
    spec["profiles"] = {}
    spec.pop("default_profile")
    inventory = write_inventory(tmp_path / "inventory", spec)
    result = cli("validate", "--host", "thor", "-i", str(inventory))
    assert result.exit_code == 2
    named = {line.split(": ")[1] for line in result.stderr.splitlines() if line.startswith("thor: ")}
    assert named == {"engins", "gpu_power_limit_watts"}


def test_empty_inventory_path_is_refused(cli, runner_calls):
    result = cli("install", "--host", "thor", "-i", "")
    assert result.exit_code == 2
    assert "inventory path is empty" in result.stderr
    assert runner_calls == []


def test_the_docs_name_exactly_the_prefixes_the_check_refuses():
    from aiinfra.installer.spec import OUR_PREFIXES
    from aiinfra.installer.workstation import project_dir

    text = " ".join((project_dir() / "docs" / "spec.md").read_text().split())
    listed = text.split("carrying one of its prefixes (", 1)[1].split(")", 1)[0]
    assert [p.strip(" `") for p in listed.split(",")] == list(OUR_PREFIXES)
