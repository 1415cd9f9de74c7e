"""`aiinfra install` end to end: the real CLI, ansible-runner and the whole site against a lab container
(the hardware kit's test doubles in place of GPUs, vLLM, Ollama and the NAS), then a rehearsed rebuild:
the container destroyed, a fresh one, the same inventory, one command, the same appliance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import yaml

from tests.agent.conftest import Senders
from tests.lab.conftest import podman, require_lab

pytestmark = pytest.mark.lab
HOST = "labtest"
AIINFRA = str(Path(sys.executable).with_name("aiinfra"))
RECORDS = "/mnt/nvme/aiinfra-agent"  # the agent's records on the model disk


class Lab:
    def __init__(self, state: Path) -> None:
        self.env = {**os.environ, "XDG_STATE_HOME": str(state)}
        self.inventory = ""

    def aiinfra(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AIINFRA, *args], capture_output=True, text=True, env=self.env, check=False, timeout=900)

    def install(self, *args: str) -> tuple[int, dict]:
        proc = self.aiinfra("install", "--host", HOST, "-i", self.inventory, "--json", *args)
        assert proc.stdout, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    @property
    def host_vars(self) -> Path:
        return Path(self.inventory) / "host_vars" / f"{HOST}.yml"

    def set_vars(self, **changes) -> None:
        values = yaml.safe_load(self.host_vars.read_text())
        self.host_vars.write_text(yaml.safe_dump(values | changes))

    def read(self, path: str) -> str:
        return podman("exec", f"aiinfra-lab-{HOST}", "cat", path).stdout

    def status(self) -> dict:
        proc = self.aiinfra("status", "--host", HOST, "-i", self.inventory, "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)[HOST]

    def client(self, key: str | None = None) -> openai.OpenAI:
        address = podman("inspect", "-f", "{{.NetworkSettings.IPAddress}}", f"aiinfra-lab-{HOST}").stdout.strip()
        key = key or (Path(self.env["XDG_STATE_HOME"]) / "aiinfra" / "lab" / f"{HOST}.key").read_text().strip()
        return openai.OpenAI(base_url=f"http://{address}:8000/v1", api_key=key, max_retries=0, timeout=30)

    def box(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", f"aiinfra-lab-{HOST}", *argv)


def appliance_state(lab: Lab) -> dict:
    """What an operator would compare before and after a rebuild."""
    report = lab.status()
    raw = lab.client().chat.completions.with_raw_response.create(
        model="Qwen/Qwen2.5-7B-Instruct",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=4,
        extra_body={"ignore_eos": True},  # the tiny model's random weights may pick the end token early
    )
    answer = raw.parse()
    vllm = lab.box("/opt/vllm/current/bin/python", "-c", "import vllm; print(vllm.__version__)").stdout.strip()
    # each model's current version, through the link its id names (the versions are beside, in .versions)
    current = "cd /mnt/nvme/models && find -L . -name SHA256SUMS -not -path './.*' | sort"
    staged = lab.box("sh", "-c", current).stdout.split()
    return {
        # where a saved `curl` line or client points
        "address": podman("inspect", "-f", "{{.NetworkSettings.IPAddress}}", f"aiinfra-lab-{HOST}").stdout.strip(),
        "profile": report["profile"],
        "ready": sorted(n for n, e in report["engines"].items() if e["phase"] == "ready"),
        "gpus": report["gpu"]["state"],
        # A real vLLM (the CPU build) generated it: four tokens of the tiny model, by vLLM's count.
        "answer": (answer.system_fingerprint or "").rpartition("-")[0],
        "tokens": answer.usage.completion_tokens,
        "vllm": vllm,
        "staged": staged,
        "ollama": lab.box("ls", "/mnt/nvme/ollama/manifests/registry.ollama.ai/library/llama3.2").stdout.split(),
        # What made the answer: the engine's identity, as /status and the answer's headers name it.
        "identity": report["engines"]["qwen7b"]["identity"],
        "answered_by": {k.removeprefix("x-aiinfra-"): v for k, v in raw.headers.items() if k.startswith("x-aiinfra-")},
    }


@pytest.fixture(scope="module")
def lab_host(tmp_path_factory):
    require_lab()
    host = Lab(tmp_path_factory.mktemp("state"))
    up = host.aiinfra("lab", "up", HOST)
    assert up.returncode == 0, up.stderr
    host.inventory = up.stdout.strip()
    yield host
    assert host.aiinfra("lab", "down", HOST).returncode == 0
    assert podman("container", "exists", f"aiinfra-lab-{HOST}").returncode == 1


def test_install_converges_then_a_second_run_changes_nothing(lab_host):
    rc, first = lab_host.install()
    assert rc == 0, first
    assert first["changed"] > 0 and first["hosts"][HOST]["failed"] == 0

    # A second run of the whole site changes nothing: Molecule's default scenario proves it on Debian 13
    # (idempotence); here the CLI's account of an unchanged run, for one role.
    second = lab_host.aiinfra("install", "--host", HOST, "-i", lab_host.inventory, "--tags", "host_base")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "changed 0, failed 0, unreachable 0" in second.stdout
    log = second.stdout.splitlines()[-1].removeprefix("log: ")
    assert "PLAY RECAP" in Path(log).read_text()
    assert "task 1: Gathering Facts" in second.stderr  # progress, one line per task in a log

    assert "vm.swappiness = 10" in lab_host.read("/etc/sysctl.d/60-aiinfra.conf")

    # The spec's VLAN is validated and staged, not applied (no --allow-network-change); the model
    # directories are made (no device in the spec) and the summary shows the space left.
    assert first["network_change_staged"] == [HOST]
    assert "trusted:" in lab_host.read("/etc/aiinfra/network/60-aiinfra-vlans.yaml")
    assert podman("exec", f"aiinfra-lab-{HOST}", "test", "-e", "/etc/netplan/60-aiinfra-vlans.yaml").returncode == 1
    assert first["hosts"][HOST]["model_storage"].startswith("/mnt/nvme on ")
    owners = podman("exec", f"aiinfra-lab-{HOST}", "stat", "-c", "%U %a", "/mnt/nvme/models", "/mnt/nvme/hf-cache")
    assert owners.stdout.split("\n")[:2] == ["aiinfra 750", "aiinfra 750"]

    # The driver (the kit's fake packages) is installed at the spec's version and held; a reboot is
    # asked for, not done; the GPU settings are applied by the boot unit.
    assert first["reboot_required"] == [HOST]
    assert first["hosts"][HOST]["secure_boot"] == "off (DKMS builds the modules)"  # the kit's firmware double
    assert f"reboot required: {HOST}" in second.stdout
    held = podman(
        "exec",
        f"aiinfra-lab-{HOST}",
        "dpkg-query",
        "-W",
        "-f",
        "${Version} ${db:Status-Abbrev}",
        "nvidia-driver-580-open",
    )
    # The example spec's source is NVIDIA's CUDA repository: its names and its revision.
    assert held.stdout.strip() == "580.105.08-0ubuntu1 hi"
    gpus = podman(
        "exec", f"aiinfra-lab-{HOST}", "nvidia-smi", "--query-gpu=power.limit,persistence_mode", "--format=csv,noheader"
    )
    assert gpus.stdout.splitlines() == ["350.00 W, Enabled", "350.00 W, Enabled"]
    unit = podman("exec", f"aiinfra-lab-{HOST}", "systemctl", "is-active", "aiinfra-gpu-setup.service")
    assert unit.stdout.strip() == "active"


def test_the_appliance_serves_through_the_router_with_a_key(lab_host):
    state = appliance_state(lab_host)
    assert state.pop("address").startswith("10.88.")  # podman's network; the rebuild test compares it
    made_by, answered_by = state.pop("identity"), state.pop("answered_by")
    manifest = lab_host.box("sha256sum", "/mnt/nvme/models/Qwen/Qwen2.5-7B-Instruct/SHA256SUMS").stdout.split()[0]
    assert made_by == {"model": manifest, "program": "vllm 0.32.0", "args": made_by["args"]}
    assert answered_by == {"engine": "qwen7b", "model-digest": manifest, "program": "vllm 0.32.0",
                           "args-digest": made_by["args"]}  # fmt: skip
    assert state == {
        "profile": "fast",
        "ready": ["qwen14b", "qwen7b"],
        "gpus": "ok",
        "answer": "vllm-0.32.0",  # vLLM's own fingerprint on the answer, through the router
        "tokens": 4,
        "vllm": "0.32.0",
        "staged": ["./Qwen/Qwen2.5-14B-Instruct-AWQ/SHA256SUMS", "./Qwen/Qwen2.5-32B-Instruct-AWQ/SHA256SUMS",
                   "./Qwen/Qwen2.5-7B-Instruct/SHA256SUMS"],
        "ollama": ["3b"],
    }  # fmt: skip
    # The README's main job ends with `aiinfra lab endpoint`: its curl line works as printed.
    shown = lab_host.aiinfra("lab", "endpoint", HOST)
    assert shown.returncode == 0, shown.stderr
    curl = next(line.strip() for line in shown.stdout.splitlines() if line.strip().startswith("curl "))
    answer = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, env=lab_host.env, check=False)
    reply = json.loads(answer.stdout)
    assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] >= 1
    with pytest.raises(openai.AuthenticationError):
        lab_host.client(key="aiinfra-not-a-key").models.list()
    model_dir = "/mnt/nvme/models/Qwen/Qwen2.5-7B-Instruct"
    checked = lab_host.box("sh", "-c", f"cd {model_dir} && sha256sum -c --quiet SHA256SUMS")
    assert checked.returncode == 0, checked.stdout
    assert lab_host.box("systemctl", "is-enabled", "aiinfra-agent").stdout.strip() == "enabled"
    user = lab_host.box("systemctl", "show", "-p", "User", "--value", "aiinfra-engine@qwen7b").stdout.strip()
    assert user == "aiinfra"


def test_three_agent_restarts_cut_no_request_of_two_clients_of_the_real_vllm(lab_host):
    """The agent drains what is in hand before it exits, and systemd's socket holds new connections for
    the next one; the engines' units live on. Also: the units' memory ceiling and OOM preference."""
    agent = lab_host.box("systemctl", "show", "-p", "MemoryMax", "-p", "OOMScoreAdjust", "aiinfra-agent").stdout
    assert sorted(agent.split()) == ["MemoryMax=1073741824", "OOMScoreAdjust=-900"], agent
    engine = lab_host.box("systemctl", "show", "-p", "OOMScoreAdjust", "--value", "aiinfra-engine@qwen7b").stdout
    assert engine.strip() == "500"
    # No route beyond loopback and private networks for the engines (no engine needs a cloud here).
    denied = lab_host.box("systemctl", "show", "-p", "IPAddressDeny", "--value", "aiinfra-engine@qwen7b").stdout
    assert "0.0.0.0/0" in denied and "::/0" in denied, denied
    # What may hold secrets is root's (the launch file: the engines' group may read it), and the real vLLM
    # answers only the router, which alone knows its key.
    modes = lab_host.box(
        "stat",
        "-c",
        "%n %U:%G %a",
        "/etc/aiinfra/agent.yml",
        "/run/aiinfra/engines",
        "/run/aiinfra/engines/qwen7b.json",
        "/run/aiinfra/engine-keys.secret",
    ).stdout.splitlines()
    assert modes == ["/etc/aiinfra/agent.yml root:root 600", "/run/aiinfra/engines root:aiinfra 750",
                     "/run/aiinfra/engines/qwen7b.json root:aiinfra 640",
                     "/run/aiinfra/engine-keys.secret root:root 600"]  # fmt: skip
    around = (
        "import urllib.request, urllib.error\ntry: urllib.request.urlopen('http://127.0.0.1:8001/v1/models')\n"
        "except urllib.error.HTTPError as e: print(e.code)"
    )
    assert lab_host.box("python3", "-c", around).stdout.strip() == "401"
    api = lab_host.client()
    ask = {"model": "Qwen/Qwen2.5-7B-Instruct", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8,
           "extra_body": {"ignore_eos": True}}  # fmt: skip

    def one(stream: bool) -> bool:
        if stream:
            return len(list(api.chat.completions.create(stream=True, **ask))) >= 8
        return api.chat.completions.create(**ask).usage.completion_tokens == 8

    counted_before = lab_host.status()["energy"]["tokens"].get("qwen7b", 0)
    senders = Senders(one)
    try:
        for _ in range(3):
            time.sleep(3)
            assert lab_host.box("systemctl", "restart", "aiinfra-agent").returncode == 0
        time.sleep(3)
    finally:
        senders.stop()
    outcomes = {"answered": senders.answered, "cut": senders.cut}
    # The cost ledger lives where the agent may write it (its records on the model disk): the tokens of
    # every answer are still counted after three restarts (8 completion tokens each, prompts besides).
    counted = lab_host.status()["energy"]["tokens"].get("qwen7b", 0)
    assert counted >= counted_before + 8 * senders.answered, (counted_before, counted, senders.answered)
    records = lab_host.box("stat", "-c", "%n %U %a", RECORDS, f"{RECORDS}/energy.json", f"{RECORDS}/audit.log")
    assert records.stdout.splitlines() == [f"{RECORDS} root 700", f"{RECORDS}/energy.json root 600",
                                           f"{RECORDS}/audit.log root 600"]  # fmt: skip
    print(f"three agent restarts, two clients of the real vLLM: {outcomes['answered']} answered, "
          f"{len(outcomes['cut'])} cut")  # fmt: skip
    assert outcomes["cut"] == [] and outcomes["answered"] >= 6, outcomes


def test_the_deep_profile_answers_from_its_two_way_tensor_parallel_vllm(lab_host):
    """qwen32b spans both GPUs, so vLLM runs it as two ranks; on the CPU build that needs the lab's
    thread binding off and the vllm role's compiler and Python headers (its first answer compiles a
    kernel): without them the engine is refused at start, or ready and answering only 500s."""
    profile = ["--host", HOST, "-i", lab_host.inventory]
    assert lab_host.aiinfra("profile", "deep", *profile).returncode == 0
    deep = wait_engine(lab_host, "qwen32b", lambda e: e["phase"] in ("ready", "failed"), 300)
    assert deep["phase"] == "ready", deep
    assert "--tensor-parallel-size 2" in lab_host.box("cat", f"/proc/{deep['pid']}/cmdline").stdout.replace("\0", " ")
    answer = (
        lab_host.client()
        .with_options(timeout=300)
        .chat.completions.create(
            model="Qwen/Qwen2.5-32B-Instruct-AWQ",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=2,
            extra_body={"ignore_eos": True},
        )
    )
    assert answer.usage.completion_tokens == 2
    assert lab_host.aiinfra("profile", "fast", *profile).returncode == 0
    for engine in ("qwen7b", "qwen14b"):
        wait_engine(lab_host, engine, lambda e: e["phase"] == "ready", 300)


def test_a_flag_the_pinned_vllm_lacks_is_refused_by_the_check_the_install_runs(lab_host):
    """The agent role writes agent.yml only through `aiinfra-agent check-config`, which holds each
    engine's command line against `vllm serve --help=all` of the installed vLLM (the vllm role
    recorded it): a flag that release lacks fails the install, naming the flag and the version."""
    config = yaml.safe_load(lab_host.read("/etc/aiinfra/agent.yml"))
    config["engines"]["qwen7b"]["extra_args"] = ["--enable-warp-drive"]
    lab_host.box("sh", "-c", f"cat > /tmp/agent-bad.yml <<'EOF'\n{yaml.safe_dump(config)}EOF")
    checked = lab_host.box("/opt/aiinfra/bin/aiinfra-agent", "check-config", "--config", "/tmp/agent-bad.yml")
    assert checked.returncode == 2
    assert checked.stderr.strip() == (
        "/tmp/agent-bad.yml: engines.qwen7b: vLLM 0.32.0 has no flag --enable-warp-drive; "
        "remove it or pin a vLLM that has it"
    )


def wait_engine(lab: Lab, name: str, predicate, timeout: float) -> dict:
    deadline, engine = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        engine = lab.status()["engines"][name]
        if predicate(engine):
            return engine
        time.sleep(1)
    raise AssertionError(f"{name} did not get there in {timeout:.0f}s: {engine}")


def engine_unit_pids(lab: Lab, engine: str) -> list[int]:
    """Every process in the engine's unit (its cgroup): vllm serve, EngineCore, Worker."""
    found = lab.box("sh", "-c", f"grep -l 'aiinfra-engine@{engine}.service' /proc/[0-9]*/cgroup").stdout.split()
    return sorted(int(path.split("/")[2]) for path in found)


def test_real_vllm_under_systemd_is_adopted_and_a_killed_leader_leaves_nothing_in_its_unit(lab_host):
    """The systemd backend with a real vLLM: an agent restart adopts the running server; SIGKILL of
    `vllm serve` takes its EngineCore and Worker along (the unit's cgroup) and the engine comes back."""
    before = lab_host.status()["engines"]["qwen7b"]
    pids = engine_unit_pids(lab_host, "qwen7b")
    assert before["phase"] == "ready" and len(pids) >= 3, pids  # vllm serve, EngineCore, Worker
    assert lab_host.box("systemctl", "restart", "aiinfra-agent").returncode == 0
    adopted = wait_engine(lab_host, "qwen7b", lambda e: e["phase"] != "starting", 60)
    assert (adopted["phase"], adopted["pid"], adopted["restarts"]) == ("ready", before["pid"], before["restarts"])
    assert engine_unit_pids(lab_host, "qwen7b") == pids

    assert lab_host.box("kill", "-9", str(before["pid"])).returncode == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and set(engine_unit_pids(lab_host, "qwen7b")) & set(pids):
        time.sleep(0.5)
    assert not set(engine_unit_pids(lab_host, "qwen7b")) & set(pids), "EngineCore/Worker outlived vllm serve"
    wait_engine(lab_host, "qwen7b", lambda e: e["phase"] == "ready" and e["restarts"] == before["restarts"] + 1, 300)


def test_a_change_that_fails_its_gate_fails_the_install_and_the_real_vllm_before_answers_as_it_did(lab_host):
    """The spec changes qwen7b's vLLM arguments and gives it a golden check the tiny model cannot pass: the
    install restarts the agent, the new identity is gated and fails, the one before serves again (the same
    greedy answer), and the install exits 1 naming the engine, the check and what serves."""

    def greedy() -> str:
        return lab_host.client().completions.create(model="Qwen/Qwen2.5-7B-Instruct", prompt="The box", max_tokens=8,
                                                    temperature=0).choices[0].text  # fmt: skip

    before, answer = lab_host.status()["engines"]["qwen7b"]["identity"], greedy()
    spec = yaml.safe_load(lab_host.host_vars.read_text())
    changed = json.loads(json.dumps(spec["engines"]))
    golden = [{"prompt": "Hello", "contains": "no random model says this"}]
    changed["qwen7b"] |= {"extra_args": ["--seed", "5"], "gate": {"golden": golden}}
    lab_host.set_vars(engines=changed)
    try:
        rc, summary = lab_host.install("--tags", "aiinfra_agent")
    finally:
        lab_host.set_vars(engines=spec["engines"])
    assert rc == 1, summary
    (failure,) = [f for f in summary["failures"] if "failed its gate" in f]
    assert "engine qwen7b" in failure and "lacks 'no random model says this'" in failure, failure
    assert "the identity before serves again" in failure and before["args"][:12] in failure, failure
    engine = lab_host.status()["engines"]["qwen7b"]
    assert (engine["phase"], engine["identity"], engine["gate"]["serving"]) == ("ready", before, before)
    assert greedy() == answer
    print(f"gated change on the lab host (real vLLM, failed), seconds per step: {engine['gate']['took']}")
    # The spec is as it was again (finally, above): the next install serves what it names, which is what
    # serves now (the rebuild below installs it on a fresh OS with these records).


def test_a_rebuilt_host_is_the_same_appliance_with_its_models_and_records_from_its_disk(lab_host):
    """The box dies; a fresh OS with the same model disk, the same inventory, one command. The models and
    the agent's records (the cost ledger, the audit log, the restart counts) come back from the disk."""
    before = appliance_state(lab_host)
    report = lab_host.status()
    # What the ledger holds on the disk (saved each minute and at a stop; the box dies with no stop).
    hours = json.loads(lab_host.read(f"{RECORDS}/energy.json"))["hours"].values()
    tokens = sum(hour["tokens"].get("qwen7b", 0) for hour in hours)
    assert tokens > 0
    restarts = {name: e["restarts"] for name, e in report["engines"].items()}
    assert restarts["qwen7b"] >= 1  # the test above killed its vllm serve
    audit = lab_host.box("head", "-n", "1", f"{RECORDS}/audit.log").stdout
    assert podman("rm", "-f", "-t", "2", f"aiinfra-lab-{HOST}").returncode == 0  # the box dies
    up = lab_host.aiinfra("lab", "up", HOST)  # fresh OS; the inventory, mirror, disk and key are the operator's
    assert up.returncode == 0, up.stderr
    assert lab_host.box("test", "-e", "/opt/aiinfra").returncode == 1
    again = lab_host.aiinfra("install", "--host", HOST, "-i", lab_host.inventory)
    assert again.returncode == 0, again.stdout + again.stderr
    assert appliance_state(lab_host) == before
    after = lab_host.status()
    assert after["energy"]["tokens"]["qwen7b"] >= tokens + 4  # appliance_state asked for 4 more since
    assert {name: e["restarts"] for name, e in after["engines"].items()} == restarts
    assert lab_host.box("head", "-n", "1", f"{RECORDS}/audit.log").stdout == audit
    # The summary, as the operator reads it: every model was found on the disk (3 vLLM, 1 Ollama),
    # each file checked against its manifest.
    assert f"models: {HOST} 4 already in place\n" in again.stdout
    assert f"agent: {HOST} profile fast: qwen14b, qwen7b ready\n" in again.stdout
    assert f"network change staged, not applied: {HOST} (re-run with --allow-network-change)" in again.stdout
    assert f"model storage: {HOST} /mnt/nvme on " in again.stdout
    checked = lab_host.box("sh", "-c", "cd /mnt/nvme/models/Qwen/Qwen2.5-14B-Instruct-AWQ && sha256sum -c SHA256SUMS")
    assert checked.returncode == 0 and checked.stdout.count(": OK") == 6, checked.stdout


def test_check_mode_reports_a_change_and_makes_none(lab_host):
    lab_host.set_vars(host_base_hugepages=32)
    try:
        rc, summary = lab_host.install("--check", "--tags", "host_base")  # the whole site: Molecule's default
        assert rc == 0 and summary["check"] is True
        assert summary["changed"] >= 1
        assert "vm.nr_hugepages" not in lab_host.read("/etc/sysctl.d/60-aiinfra.conf")
    finally:
        lab_host.set_vars(host_base_hugepages=0)


def test_a_failing_task_exits_1_and_names_it(lab_host):
    lab_host.set_vars(host_base_extra_packages=["aiinfra-no-such-package"])
    try:
        rc, summary = lab_host.install("--tags", "host_base")
    finally:
        lab_host.set_vars(host_base_extra_packages=[])
    assert rc == 1
    assert summary["hosts"][HOST]["failed"] == 1
    assert any("Install the base packages" in f and "aiinfra-no-such-package" in f for f in summary["failures"])


def test_a_pending_reboot_is_reported_and_not_done_without_permission(lab_host):
    container = f"aiinfra-lab-{HOST}"
    assert podman("exec", container, "touch", "/run/reboot-required").returncode == 0
    started = podman("inspect", "--format", "{{.State.StartedAt}}", container).stdout
    try:
        proc = lab_host.aiinfra("install", "--host", HOST, "-i", lab_host.inventory, "--tags", "report-only")
        assert proc.returncode == 0, proc.stderr
        assert f"reboot required: {HOST}" in proc.stdout
        assert podman("inspect", "--format", "{{.State.StartedAt}}", container).stdout == started
        assert podman("exec", container, "test", "-e", "/run/reboot-required").returncode == 0
    finally:
        podman("exec", container, "rm", "-f", "/run/reboot-required")


def test_an_unreachable_host_exits_3(lab_host):
    assert podman("stop", "-t", "2", f"aiinfra-lab-{HOST}").returncode == 0
    rc, summary = lab_host.install()
    assert rc == 3
    assert summary["hosts"][HOST]["unreachable"] == 1
