"""One engine across two lab hosts under their real units: `aiinfra lab up` twice (two systemd containers
on the lab's network), one `aiinfra install --host` for both, the real vLLM CPU build on each serving the
kit's tiny model tensor-parallel, then as data-parallel replicas, the head's router the way in. A
follower's vLLM killed whole (its unit's cgroup): the engine comes back in one new start, the requests
sent once the head's agent knows answered, nothing of the old start left on either host. (The rules
themselves, in fake time: tests/unit/agent/test_ranks.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
import yaml

from aiinfra.installer.lab import EXAMPLE_SPEC
from tests.lab.conftest import podman, require_lab

pytestmark = pytest.mark.lab
HEAD, FOLLOWER = "labthor", "labodin"
AIINFRA = str(Path(sys.executable).with_name("aiinfra"))
ENGINE = {"runtime": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct", "served_name": "tiny", "gpus": [0], "port": 8001,
          "max_model_len": 512, "max_num_seqs": 4, "skip_fit_check": True,
          "span": {"nodes": [HEAD, FOLLOWER], "parallel": "tensor", "port": 29500}}  # fmt: skip
# What the pair needs of the site: the engines' user and folders, vLLM and the staged model, the agent.
TAGS = "host_base,model_storage,vllm,aiinfra_agent"


class Pair:
    def __init__(self, state: Path) -> None:
        self.env = {**os.environ, "XDG_STATE_HOME": str(state)}
        self.inventory = ""

    def aiinfra(self, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AIINFRA, *args], capture_output=True, text=True, env=self.env, check=False,
                              timeout=timeout)  # fmt: skip

    def status(self) -> dict:
        proc = self.aiinfra("status", "--host", f"{HEAD},{FOLLOWER}", "-i", self.inventory, "--json", timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def wait(self, predicate, timeout: float, what: str) -> dict:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            last = self.status()
            if predicate(last):
                return last
            time.sleep(2)
        raise AssertionError(f"timed out waiting for {what}; last: {json.dumps(last)[:3000]}")

    def box(self, host: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return podman("exec", f"aiinfra-lab-{host}", *argv)

    def client(self, timeout: float = 120) -> openai.OpenAI:
        address = podman("inspect", "-f", "{{.NetworkSettings.IPAddress}}", f"aiinfra-lab-{HEAD}").stdout.strip()
        key = (Path(self.env["XDG_STATE_HOME"]) / "aiinfra" / "lab" / f"{HEAD}.key").read_text().strip()
        return openai.OpenAI(base_url=f"http://{address}:8000/v1", api_key=key, max_retries=0, timeout=timeout)


def both_ready(report: dict) -> bool:
    return all(report[h]["engines"]["big"]["phase"] == "ready" for h in (HEAD, FOLLOWER))


def unit_pids(pair: Pair, host: str) -> set[str]:
    procs = pair.box(host, "cat", "/sys/fs/cgroup/system.slice/system-aiinfra\\x2dengine.slice/"
                     "aiinfra-engine@big.service/cgroup.procs")  # fmt: skip
    if procs.returncode != 0:  # cgroup v1: systemd's own view of the unit's processes
        procs = pair.box(host, "systemd-cgls", "--no-pager", "-u", "aiinfra-engine@big.service")
        return {line.split()[0].lstrip("├└─│ ") for line in procs.stdout.splitlines()[1:] if line.strip()}
    return set(procs.stdout.split())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    require_lab()
    pair = Pair(tmp_path_factory.mktemp("pair"))
    spec = yaml.safe_load(EXAMPLE_SPEC.read_text())
    spec |= {"engines": {"big": ENGINE}, "profiles": {"on": ["big"]}, "default_profile": "on",
             "trusted_network": "10.88.0.0/16"}  # fmt: skip
    spec_file = tmp_path_factory.mktemp("spec") / "pair.yml"
    spec_file.write_text(yaml.safe_dump(spec))
    for host in (HEAD, FOLLOWER):
        up = pair.aiinfra("lab", "up", host, "--spec", str(spec_file))
        assert up.returncode == 0, up.stderr
        pair.inventory = up.stdout.strip()
    yield pair
    for host in (HEAD, FOLLOWER):
        pair.aiinfra("lab", "down", host)


def test_one_install_brings_up_an_engine_across_two_hosts_answering_through_the_heads_endpoint(pair):
    started = time.monotonic()
    done = pair.aiinfra("install", "--host", f"{HEAD},{FOLLOWER}", "-i", pair.inventory, "--tags", TAGS)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    report = pair.wait(both_ready, 600, "both ranks ready")
    print(f"\ninstall of the pair and both ranks ready: {time.monotonic() - started:.0f}s")
    assert pair.client().completions.create(model="tiny", prompt="Hello", max_tokens=4).choices[0].text
    spans = {h: report[h]["engines"]["big"]["span"] for h in (HEAD, FOLLOWER)}
    assert (spans[HEAD]["rank"], spans[FOLLOWER]["rank"]) == (0, 1) and spans[HEAD]["start"] == spans[FOLLOWER]["start"]
    view = pair.aiinfra("status", "--host", f"{HEAD},{FOLLOWER}", "-i", pair.inventory, timeout=120)
    assert f"big across {HEAD}, {FOLLOWER}: ready ({HEAD} rank 0 ready, {FOLLOWER} rank 1 ready)" in view.stdout
    # The follower's rank runs headless under its unit, as the engines' user, reaching the head on the lab network.
    argv = pair.box(FOLLOWER, "python3", "-c", "import json; print(' '.join(json.load(open("
                    "'/run/aiinfra/engines/big.json'))['argv']))").stdout  # fmt: skip
    head_address = pair.box(HEAD, "hostname", "-I").stdout.split()[0]
    assert "--headless" in argv and f"--node-rank 1 --master-addr {head_address} --master-port 29500" in argv
    # Its unit talks to loopback and the two nodes only (enforced where cgroup v2 is; the lab's is v1).
    follower_address = pair.box(FOLLOWER, "hostname", "-I").stdout.split()[0]
    ip = pair.box(FOLLOWER, "systemctl", "show", "-p", "IPAddressAllow,IPAddressDeny", "aiinfra-engine@big")
    filters = {k: set(v.split()) for k, _, v in (line.partition("=") for line in ip.stdout.splitlines())}
    # systemd lists the prefixes in no fixed order
    assert filters == {"IPAddressAllow": {f"{head_address}/32", f"{follower_address}/32", "127.0.0.0/8", "::1/128"},
                       "IPAddressDeny": {"0.0.0.0/0", "::/0"}}, ip.stdout  # fmt: skip
    shown = pair.box(FOLLOWER, "systemctl", "show", "-p", "User", "-p", "ActiveState", "aiinfra-engine@big")
    assert "ActiveState=active" in shown.stdout and "User=aiinfra" in shown.stdout
    rss = {h: int(pair.box(h, "sh", "-c", "ps -eo rss= | awk '{s+=$1} END {print s}'").stdout) // 1024 for h in spans}
    print(f"resident memory of each host's processes: {rss} MiB")


def test_the_same_engine_as_data_parallel_replicas_after_one_install_of_the_agents(pair):
    """Another kind of parallelism is another identity: the head passes its gate in the new start, which
    the follower joins."""
    inventory = Path(pair.inventory) / "host_vars"
    for host in (HEAD, FOLLOWER):
        values = yaml.safe_load((inventory / f"{host}.yml").read_text())
        values["engines"]["big"]["span"]["parallel"] = "data"
        (inventory / f"{host}.yml").write_text(yaml.safe_dump(values))
    started = time.monotonic()
    done = pair.aiinfra("install", "--host", f"{HEAD},{FOLLOWER}", "-i", pair.inventory, "--tags", "aiinfra_agent")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-3000:]
    assert (
        f"agent: {HEAD} profile on: big ready" in done.stdout
        and f"agent: {FOLLOWER} profile on: big ready" in done.stdout
    )
    report = pair.wait(both_ready, 300, "both ranks ready as replicas")
    print(f"\nto data parallel: {time.monotonic() - started:.0f}s; gate: {report[HEAD]['engines']['big']['gate']}")
    assert report[HEAD]["engines"]["big"]["gate"]["state"] == "passed"
    argv = pair.box(FOLLOWER, "python3", "-c", "import json; print(' '.join(json.load(open("
                    "'/run/aiinfra/engines/big.json'))['argv']))").stdout  # fmt: skip
    assert "--data-parallel-size 2 --data-parallel-size-local 1" in argv and "--data-parallel-start-rank 1" in argv
    assert pair.client().completions.create(model="tiny", prompt="Hello", max_tokens=4).choices[0].text


def test_a_killed_follower_brings_the_engine_back_whole_and_leaves_nothing_of_its_old_start(pair):
    before = pair.wait(both_ready, 300, "both ranks ready")
    old = {h: unit_pids(pair, h) for h in (HEAD, FOLLOWER)}
    assert all(old.values()), old
    answers: list[tuple[float, str]] = []
    api = pair.client(timeout=300)

    def client() -> None:
        while len(answers) < 10:
            sent = time.monotonic()
            try:
                answers.append((sent, "ok" if api.completions.create(model="tiny", prompt="Hello", max_tokens=4)
                                else "empty"))  # fmt: skip
            except openai.APIError as exc:
                answers.append((sent, f"{type(exc).__name__}: {exc}"))
            time.sleep(1)

    killed = time.monotonic()
    assert pair.box(FOLLOWER, "systemctl", "kill", "-s", "KILL", "aiinfra-engine@big").returncode == 0
    asking = threading.Thread(target=client, daemon=True)
    asking.start()
    head_pid = before[HEAD]["engines"]["big"]["pid"]
    pair.wait(lambda r: r[HEAD]["engines"]["big"]["pid"] != head_pid, 120, "the head to start again")
    noticed = time.monotonic()
    after = pair.wait(both_ready, 600, "both ranks ready again")
    took = time.monotonic() - killed
    asking.join(600)
    print(f"\nfollower killed: the head started again within {noticed - killed:.1f}s, the engine ready again "
          f"{took:.1f}s after the kill; answers: {[a for _, a in answers]}")  # fmt: skip
    assert after[HEAD]["engines"]["big"]["span"]["start"] == after[FOLLOWER]["engines"]["big"]["span"]["start"]
    for host in (HEAD, FOLLOWER):
        assert not old[host] & unit_pids(pair, host), f"a process of the old start lives on on {host}"
    late = [a for sent, a in answers if sent >= noticed]
    assert late and all(a == "ok" for a in late), answers
