"""Filter of the nvidia_driver role: the driver's package names and version pattern in each source.

The sources name the same driver differently (checked December 2026):
- Ubuntu's archive (packages.ubuntu.com, noble): nvidia-driver-580-server-open, nvidia-dkms-580-server-open,
  at VERSION-0ubuntu0.24.04.N; only the kernel-side packages carry -open.
- NVIDIA's CUDA repository (developer.download.nvidia.com/compute/cuda/repos/ubuntu2404): no -server
  packages; nvidia-driver-580-open, nvidia-dkms-580-open at VERSION-0ubuntu1 or -1ubuntu1 (Debian's:
  VERSION-1); from branch 590 on the names lose the branch (nvidia-driver-open, nvidia-dkms-open; NVIDIA's
  driver installation guide, "Ubuntu 590 and later packages").
"""

from __future__ import annotations

import re

LAYOUTS = ("ubuntu", "cuda")


def driver_packages(version: str, layout: str, flavour: str, modules: str) -> dict:
    """{driver, dkms, version_regex, problem}: the metapackage and the DKMS package to install at the
    exact version, the pattern of that version's full Debian version in this source, and why the
    combination cannot exist there ("" when it can)."""
    branch = int(version.split(".")[0])
    kernel = "-open" if modules == "open" else ""
    problem = ""
    if layout == "ubuntu":
        tag = f"-{branch}" + ("-server" if flavour == "server" else "")
        revision = r"0ubuntu0\.[0-9.]+"
    elif layout == "cuda":
        tag = f"-{branch}" if branch < 590 else ""
        revision = r"[0-9]+(ubuntu[0-9]+)?"
        if flavour == "server":
            problem = (
                "NVIDIA's CUDA repository has no -server packages: set nvidia_driver_flavour: desktop "
                f"(its nvidia-driver{tag}{kernel}), or use source ubuntu with a version Ubuntu ships"
            )
    else:
        raise ValueError(f"unknown package layout {layout!r} (known: {', '.join(LAYOUTS)})")
    return {
        "driver": f"nvidia-driver{tag}{kernel}",
        "dkms": f"nvidia-dkms{tag}{kernel}",
        "version_regex": f"^{re.escape(version)}-{revision}$",
        "problem": problem,
    }


def signed_modules(version: str, layout: str, flavour: str, modules: str, kernel: str) -> dict:
    """Canonical's signed prebuilt modules (source linux-restricted-modules) for KERNEL: {package, meta,
    problem}. package is the running kernel's (linux-modules-nvidia-580-server-open-6.8.0-149-generic),
    meta follows that kernel flavour's updates (linux-modules-nvidia-580-server-open-generic). Only
    Ubuntu's archive has them; NVIDIA's CUDA repository does not sign for Ubuntu's kernels."""
    if layout != "ubuntu":
        return {"package": "", "meta": "", "problem": "NVIDIA's CUDA repository has no modules signed for Ubuntu's kernel"}
    branch = int(version.split(".")[0])
    tag = f"-{branch}" + ("-server" if flavour == "server" else "") + ("-open" if modules == "open" else "")
    kernel_flavour = re.sub(r"^[0-9.]+-[0-9]+-", "", kernel)  # 6.8.0-149-generic: generic
    return {
        "package": f"linux-modules-nvidia{tag}-{kernel}",
        "meta": f"linux-modules-nvidia{tag}-{kernel_flavour}",
        "problem": "",
    }


def signed_modules_fit(depends: str, full_version: str) -> str:
    """Why the signed modules cannot go with the pinned driver ("" when they can). Ubuntu made them depend
    on the driver's nvidia-kernel-common at the exact version they were built from (DEPENDS: the
    package's Depends fields, `apt-cache show`, every version apt knows)."""
    built = re.findall(r"nvidia-kernel-common-[\w-]+ \(= ([^)\s]+)\)", depends)
    if not built:
        return "they name no driver version they were built for"
    if full_version not in built:
        return f"they were built for driver {built[0]}, not the pinned {full_version}"
    return ""


class FilterModule:
    def filters(self):
        return {
            "driver_packages": driver_packages,
            "signed_modules": signed_modules,
            "signed_modules_fit": signed_modules_fit,
        }
