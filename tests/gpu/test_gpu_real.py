"""Real NVML on a real GPU: runs only where an NVIDIA driver is loaded (marker `gpu`)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from aiinfra.agent.gpu.nvml import Nvml

pytestmark = pytest.mark.gpu


def real_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and Nvml().read().state == "ok"


@pytest.mark.skipif(not real_gpu(), reason="no NVIDIA GPU and driver here")
def test_nvml_reads_what_nvidia_smi_reports():
    snapshot = Nvml().read()
    smi = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=driver_version,power.limit,memory.total,persistence_mode",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [line.split(", ") for line in smi.stdout.strip().splitlines()]
    assert snapshot.driver == rows[0][0]
    assert len(snapshot.gpus) == len(rows)
    for gpu, (_, limit, memory, persistence) in zip(snapshot.gpus, rows, strict=True):
        assert abs(gpu.power_limit_w - float(limit)) < 1
        assert abs(gpu.memory_total / 2**20 - float(memory)) < 64
        assert gpu.persistence == (persistence == "Enabled")
        assert gpu.power_min_w <= gpu.power_limit_w <= gpu.power_max_w
