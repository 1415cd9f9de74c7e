"""The box's paths and addresses are named once (agent/box.py); the units are templates of the host's
variables, so a host whose spec moves a path gets units that name it, and the agent gets its folders."""

import re

import pytest

from aiinfra.agent import box, config, engines
from aiinfra.installer.workstation import project_dir
from tests import units

# A host that moved everything the units name.
MOVED = {
    "aiinfra_package_prefix": "/srv/aiinfra",
    "aiinfra_agent_config_file": "/srv/etc/agent.yml",
    "gpu_tuning_settings_file": "/srv/etc/gpu.yml",
    "aiinfra_user": "llm",
    "aiinfra_group": "llm",
    "model_storage_mount": "/data",
    "vllm_hf_home": "/cache/hf",
    "ollama_models_dir": "/data/ollama",
    "router_listen": "10.0.110.20:8000",
    "aiinfra_agent_status_listen": "127.0.0.1:9079",
}
DEFAULTS = [box.PREFIX, box.CONFIG_FILE, box.GPU_SETTINGS_FILE, box.MODEL_STORAGE_MOUNT, box.ROUTER_LISTEN,
            box.STATUS_LISTEN]  # fmt: skip


@pytest.mark.parametrize("unit", sorted(units.UNITS))
def test_no_unit_template_names_a_path_of_the_contract(unit):
    text = (project_dir() / "systemd" / f"{unit}.j2").read_text()
    assert [d for d in DEFAULTS if d in text] == []


@pytest.mark.parametrize("unit", sorted(units.UNITS))
def test_a_unit_rendered_for_a_moved_host_names_its_paths(unit):
    text = units.render(unit, **MOVED)
    assert [d for d in DEFAULTS if d in text] == []
    assert "{{" not in text and "{%" not in text


def test_what_each_unit_runs_and_where():
    agent = units.render("aiinfra-agent.service", **MOVED)
    assert "ExecStart=/srv/aiinfra/bin/aiinfra-agent run --config /srv/etc/agent.yml" in agent
    engine = units.render("aiinfra-engine@.service", **MOVED)
    assert "User=llm\nGroup=llm\n" in engine
    # The model disk, and HF_HOME outside it; the Ollama store is on the disk already.
    assert re.search(r"^ReadWritePaths=-/data -/cache/hf /var/lib/aiinfra$", engine, re.M)
    gpu = units.render("aiinfra-gpu-setup.service", **MOVED)
    assert "ExecStart=/srv/aiinfra/bin/aiinfra-agent gpu apply --settings /srv/etc/gpu.yml" in gpu
    assert "ListenStream=10.0.110.20:8000\n" in units.render("aiinfra-router.socket", **MOVED)


def test_the_agent_runs_engines_in_the_folders_it_is_given():
    cfg = config.parse({
        "model_storage_mount": "/data", "models_dir": "/weights", "hf_home": "/cache/hf",
        "ollama_models_dir": "/ollama",
        "engines": {"a": {"runtime": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct", "port": 8101, "gpus": [0]},
                    "b": {"runtime": "ollama", "models": ["qwen2.5:7b"], "port": 8102, "gpus": [1]}},
    })  # fmt: skip
    vllm, ollama = engines.launch("a", cfg), engines.launch("b", cfg)
    assert "/weights/Qwen/Qwen2.5-7B-Instruct" in vllm.argv and vllm.env["HF_HOME"] == "/cache/hf"
    assert ollama.env["OLLAMA_MODELS"] == "/ollama"
    # Given only the mount: the default layout under it.
    plain = config.parse({"model_storage_mount": "/data"})
    assert (plain.models_dir, plain.hf_home, plain.ollama_models_dir) == ("/data/models", "/data/hf-cache",
                                                                        "/data/ollama")  # fmt: skip


def test_nothing_the_box_or_the_workstation_runs_reads_the_tests():
    """The product, its roles and Molecule scenarios use the kit from the package; only the benchmarks
    share the tests' harness."""
    reads_tests = re.compile(r"\btests[/.][a-z_]|[\"']tests[\"']")
    found = []
    for folder in ("installer", "agent", "molecule", "roles", "playbooks", "scripts", "systemd"):
        for path in (project_dir() / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yml", ".j2", ".toml", "") and ".pyc" not in path.name:
                for line in path.read_text(errors="replace").splitlines():
                    if not line.strip().startswith("#") and reads_tests.search(line):  # comments may name them
                        found.append(f"{path.relative_to(project_dir())}: {line.strip()}")
    assert found == []


def test_engines_have_no_route_beyond_private_networks_unless_an_engine_needs_its_cloud():
    home = {"o": {"runtime": "ollama", "gpus": [0], "port": 11434}}
    locked = units.render("aiinfra-engine@.service", engines=home)
    assert "IPAddressDeny=any\n" in locked and "IPAddressAllow=localhost " in locked
    cloud = units.render("aiinfra-engine@.service", engines={"o": home["o"] | {"cloud": True}})
    assert "IPAddressDeny" not in cloud
    assert "IPAddressDeny" not in units.render("aiinfra-engine@.service", engines=home,
                                               aiinfra_agent_engines_internet=True)  # fmt: skip


def test_the_pinned_ollama_release_is_checked_against_its_published_sha256():
    from aiinfra.installer.rolevars import role_values

    pinned = role_values("ollama", {"ollama_arch": "amd64"})
    assert pinned["ollama_version"] == "0.34.2"
    assert pinned["ollama_archive_sha256"] == "e155b83589986d2c581fdbf1381ea3ebdb16549883679cd5a0627f7cdc05b12b"
    other = role_values("ollama", {"ollama_arch": "amd64", "ollama_version": "0.35.0"})
    assert other["ollama_archive_sha256"] == ""  # unknown here: the release's own sha256sum.txt is the check
