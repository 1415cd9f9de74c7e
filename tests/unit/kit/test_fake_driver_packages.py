"""The hardware kit's fake driver packages: real names and versions, an apt-readable index, and a
fake nvidia-smi that shares its GPU state with the fake pynvml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiinfra.installer.lab import kit_files as kit
from tests.conftest import kit_script

build = kit_script("fake_nvidia_driver").build

FAKE_NVML = kit.FAKE_NVML


def stanzas(repo: Path) -> dict[str, dict[str, str]]:
    found = {}
    for block in (repo / "Packages").read_text().strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        found[f"{fields['Package']}={fields['Version']}"] = fields
    return found


def test_two_versions_of_the_server_driver_in_ubuntus_layout(tmp_path):
    repo = tmp_path / "repo"
    build(repo, ["580.105.08", "580.126.09"])
    index = stanzas(repo)
    assert len(index) == 14  # six packages per version, and the signed modules with their flavour's metapackage
    meta = index["nvidia-driver-580-server-open=580.105.08-0ubuntu0.24.04.1"]
    # Only the kernel-side packages say -open in Ubuntu's names.
    assert meta["Depends"] == (
        "nvidia-utils-580-server (= 580.105.08-0ubuntu0.24.04.1), "
        "libnvidia-compute-580-server (= 580.105.08-0ubuntu0.24.04.1), "
        "nvidia-compute-utils-580-server (= 580.105.08-0ubuntu0.24.04.1), "
        "nvidia-dkms-580-server-open (= 580.105.08-0ubuntu0.24.04.1)"
    )
    assert meta["Description"].startswith("TEST DOUBLE")
    # Prebuilt modules carry the kernel's version, not the driver's, and were built for the first version.
    signed = index["linux-modules-nvidia-580-server-open-6.8.0-149-generic=6.8.0-149.149"]
    assert signed["Depends"] == "nvidia-kernel-common-580-server (= 580.105.08-0ubuntu0.24.04.1)"
    assert signed["Provides"] == "nvidia-dkms-580-server-open (= 580.105.08-0ubuntu0.24.04.1)"
    assert index["linux-modules-nvidia-580-server-open-generic=6.8.0-149.149"]["Depends"] == (
        "linux-modules-nvidia-580-server-open-6.8.0-149-generic (= 6.8.0-149.149)"
    )
    for fields in index.values():
        assert (repo / fields["Filename"]).stat().st_size == int(fields["Size"])


def test_the_cuda_repositorys_layout_has_no_server_packages_and_its_own_revisions(tmp_path):
    repo = tmp_path / "repo"
    build(repo, ["580.105.08", "580.126.09", "590.44.01"], layout="cuda", flavour="desktop")
    assert sorted(index for index in stanzas(repo) if index.startswith("nvidia-driver")) == [
        "nvidia-driver-580-open=580.105.08-0ubuntu1",
        "nvidia-driver-580-open=580.126.09-1ubuntu1",
        "nvidia-driver-open=590.44.01-1ubuntu1",  # from 590 on, no branch in the names
    ]
    assert not [name for name in stanzas(repo) if "server" in name or name.startswith("linux-modules")]
    with pytest.raises(SystemExit, match="no -server packages"):
        build(tmp_path / "other", ["580.105.08"], layout="cuda", flavour="server")


def test_the_persistence_daemons_unit_is_shaped_like_ubuntus(tmp_path):
    repo = tmp_path / "repo"
    build(repo, ["580.105.08"])
    root = tmp_path / "root"
    deb = repo / "nvidia-compute-utils-580-server_580.105.08-0ubuntu0.24.04.1_all.deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    unit = (root / "lib/systemd/system/nvidia-persistenced.service").read_text()
    assert "StopWhenUnneeded=true" in unit and "[Install]" not in unit
    assert "ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --verbose\n" in unit


def test_the_fake_nvidia_smi_and_the_fake_pynvml_see_one_machine(tmp_path):
    repo = tmp_path / "repo"
    build(repo, ["580.105.08"])
    root = tmp_path / "root"
    subprocess.run(
        ["dpkg-deb", "-x", str(repo / "nvidia-utils-580-server_580.105.08-0ubuntu0.24.04.1_all.deb"), str(root)],
        check=True,
    )
    state = tmp_path / "state.json"
    env = {**os.environ, "AIINFRA_FAKE_NVML": str(state)}

    def smi(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(root / "usr/bin/nvidia-smi"), *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    assert smi("--query-gpu=driver_version,count", "--format=csv,noheader").stdout.splitlines() == [
        "580.105.08, 2",
        "580.105.08, 2",
    ]
    # Like the real one: a header and units unless --format turns them off; unknown arguments fail.
    assert smi("-i", "0", "--query-gpu=index,power.limit", "--format=csv").stdout.splitlines() == [
        "index, power.limit [W]",
        "0, 350.00 W",
    ]
    assert smi("-i", "0", "--query-gpu=power.limit", "--format=csv,noheader,nounits").stdout == "350.00\n"
    assert smi("--query-gpu=driver_version", "--format=csv", "noheader").returncode == 2
    assert smi("--query-gpu=clocks.bogus", "--format=csv").returncode != 0
    first = smi("-pm", "1")
    assert first.returncode == 0
    limited = smi("-i", "0", "-pl", "300")
    if os.geteuid() == 0:
        assert limited.returncode == 0 and "set to 300.00 W from 350.00 W" in limited.stdout
        refused = smi("-i", "1", "-pl", "500")
        assert refused.returncode == 2
        assert "not a valid power limit which should be between 100.00 W and 390.00 W" in refused.stdout
    else:  # like the real one: only root may set limits
        assert limited.returncode != 0 and "Insufficient Permissions" in limited.stderr

    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "from aiinfra.agent.gpu.nvml import Nvml; s = Nvml().read(); "
            "print(s.driver, [g.power_limit_w for g in s.gpus], [g.persistence for g in s.gpus])",
        ],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(FAKE_NVML)},
        check=True,
    )
    expected_limit = 300.0 if os.geteuid() == 0 else 350.0
    assert read.stdout.split(" ", 1)[0] == "580.105.08"
    assert f"[{expected_limit}, 350.0] [True, True]" in read.stdout
    assert json.loads(state.read_text())["driver"] == "580.105.08"
