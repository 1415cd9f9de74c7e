"""TEST DOUBLE for NVIDIA's driver packages (hardware kit): tiny .debs named and versioned as each
real source publishes them, in a flat apt repository, so that a driver role's real apt, pin, hold and
upgrade paths run where no GPU, Ubuntu archive or CUDA repository is.

    python3 installer/kit/fake_nvidia_driver.py REPO_DIR 580.105.08 580.126.09 [--layout ubuntu|cuda]
        [--flavour server|desktop] [--modules open|proprietary]

builds, per version, the metapackage (nvidia-driver-580-server-open on Ubuntu's layout,
nvidia-driver-580-open on the CUDA repository's), nvidia-utils (a fake `nvidia-smi`),
libnvidia-compute, nvidia-compute-utils (a fake `nvidia-persistenced` and a unit shaped like
Ubuntu's) and nvidia-dkms (empty), at each source's revision (-0ubuntu0.24.04.1; -0ubuntu1 or
-1ubuntu1). Ubuntu's layout also gets nvidia-kernel-common per version and Canonical's signed
prebuilt modules (linux-restricted-modules) for one kernel, versioned by the kernel and built for the
first version given: they depend on that version's nvidia-kernel-common and provide its nvidia-dkms
(as the linux-restricted-modules packaging does), with their kernel flavour's metapackage. Then it
writes the repository's Packages index. Use it with `deb [trusted=yes] file:REPO_DIR ./`.

The fake nvidia-smi keeps GPU state in /var/lib/fake-nvidia/state.json, in the same format as the
fake pynvml (kit/fake-nvml), so the agent's NVML code and the roles' nvidia-smi calls see one
machine. Its driver version is the installed package's.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import tempfile
from pathlib import Path

STATE = "/var/lib/fake-nvidia/state.json"

NVIDIA_SMI = r'''#!/usr/bin/python3
"""TEST DOUBLE for nvidia-smi (aiinfra hardware kit), driver @VERSION@: GPU state in @STATE@."""
import json, os, sys

VERSION = "@VERSION@"
PATH = os.environ.get("AIINFRA_FAKE_NVML", "@STATE@")
DEFAULT = {"name": "NVIDIA GeForce RTX 3090", "memory_total": 25769803776, "memory_used": 0,
           "power_limit_mw": 350000, "power_min_mw": 100000, "power_max_mw": 390000,
           "power_default_mw": 350000, "power_usage_mw": 30000, "persistence": 0, "temperature": 35,
           "utilization": 0, "sm_clock": 210, "throttle": 0, "lost": False, "xid": []}


def load():
    try:
        with open(PATH) as f:
            state = json.load(f)
    except FileNotFoundError:
        state = {"gpus": [dict(DEFAULT) for _ in range(int(os.environ.get("FAKE_NVIDIA_GPUS", "2")))]}
    state["driver"] = state["library"] = VERSION  # the installed package is the driver
    return state


def save(state):
    os.makedirs(os.path.dirname(PATH), exist_ok=True)
    with open(PATH + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(PATH + ".tmp", PATH)


def query(state, fields, indices, header, units):
    """As nvidia-smi --query-gpu: a header line and units unless --format says noheader, nounits."""
    watts = ("power.limit", "power.min_limit", "power.max_limit", "power.default_limit")
    values = {"driver_version": lambda i, g: VERSION, "count": lambda i, g: str(len(state["gpus"])),
              "index": lambda i, g: str(i), "name": lambda i, g: g["name"],
              "power.limit": lambda i, g: f"{g['power_limit_mw'] / 1000:.2f}",
              "power.min_limit": lambda i, g: f"{g['power_min_mw'] / 1000:.2f}",
              "power.max_limit": lambda i, g: f"{g['power_max_mw'] / 1000:.2f}",
              "power.default_limit": lambda i, g: f"{g['power_default_mw'] / 1000:.2f}",
              "persistence_mode": lambda i, g: "Enabled" if g["persistence"] else "Disabled",
              "memory.total": lambda i, g: str(g["memory_total"] // 2**20)}
    unknown = [f for f in fields if f not in values]
    if unknown:
        sys.exit(f'Field "{unknown[0]}" is not a valid field to query.')
    unit = {f: " W" if f in watts else " MiB" if f == "memory.total" else "" for f in fields}
    if header:
        print(", ".join(f + (f" [{unit[f].strip()}]" if unit[f] else "") for f in fields))
    for i in indices:
        print(", ".join(values[f](i, state["gpus"][i]) + (unit[f] if units else "") for f in fields))


def main(argv):
    state = load()
    indices = list(range(len(state["gpus"])))
    fields, i = None, 0
    pl = pm = None
    form = []
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--query-gpu="):
            fields = arg.split("=", 1)[1].split(",")
        elif arg.startswith("--format="):
            form = arg.split("=", 1)[1].split(",")
            if form[0] != "csv" or not set(form[1:]) <= {"noheader", "nounits"}:
                sys.exit(f"Invalid format: {arg}")
        elif arg in ("-i", "--id"):
            indices = [int(x) for x in argv[i + 1].split(",")]
            i += 1
        elif arg in ("-pl", "--power-limit"):
            pl = float(argv[i + 1])
            i += 1
        elif arg in ("-pm", "--persistence-mode"):
            pm = int(argv[i + 1])
            i += 1
        elif arg == "--test-double-init":  # the package's postinst: the GPUs answer once the driver is in
            save(state)
            return
        else:  # as the real one: an argument it does not know is an error
            print("Invalid combination of input arguments. Please run 'nvidia-smi -h' for help.")
            sys.exit(2)
        i += 1
    if pl is not None:
        if os.geteuid() != 0:
            sys.exit("Changing power management limit is not supported in current scope for GPU. "
                     "Insufficient Permissions")
        for n in indices:
            g = state["gpus"][n]
            if not g["power_min_mw"] <= pl * 1000 <= g["power_max_mw"]:
                print(f"Provided power limit {pl:.2f} W is not a valid power limit which should be between "
                      f"{g['power_min_mw'] / 1000:.2f} W and {g['power_max_mw'] / 1000:.2f} W for GPU {n}")
                sys.exit(2)
            before = g["power_limit_mw"] / 1000
            g["power_limit_mw"] = int(pl * 1000)
            print(f"Power limit for GPU {n} was set to {pl:.2f} W from {before:.2f} W.")
        save(state)
        return
    if pm is not None:
        for n in indices:
            state["gpus"][n]["persistence"] = pm
            print(f"{'Enabled' if pm else 'Disabled'} persistence mode for GPU {n}.")
        save(state)
        return
    if fields:
        if not form:
            sys.exit("--format is required with --query-gpu")
        query(state, fields, indices, "noheader" not in form, "nounits" not in form)
        return
    print(f"| NVIDIA-SMI {VERSION}    Driver Version: {VERSION}    CUDA Version: 13.0 |")
    for n, g in enumerate(state["gpus"]):
        print(f"|   {n}  {g['name']}  {g['power_usage_mw'] // 1000}W / {g['power_limit_mw'] // 1000}W |")


main(sys.argv[1:])
'''

PERSISTENCED = r"""#!/bin/sh
# TEST DOUBLE for nvidia-persistenced (aiinfra hardware kit). As the real daemon: persistence mode
# comes on for every GPU unless --no-persistence-mode is given; then it forks into the background.
case " $* " in
  *" --no-persistence-mode "*) ;;
  *) /usr/bin/nvidia-smi -pm 1 >/dev/null ;;
esac
sleep infinity >/dev/null 2>&1 &
"""

# Shaped like the unit of Ubuntu's nvidia-compute-utils-580(-server) (and the CUDA repository's, built
# from the same packaging): --user and --verbose only, StopWhenUnneeded=true and no [Install]
# section, so nothing starts it at boot unless another unit wants it, and it stops once none does.
PERSISTENCED_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon (aiinfra test double)
Wants=syslog.target
StopWhenUnneeded=true
Before=systemd-backlight@backlight:nvidia_0.service

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --verbose
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced
"""

# A kernel Ubuntu 24.04 ships prebuilt NVIDIA modules for; their packages carry the kernel's version.
PREBUILT_KERNEL = ("6.8.0-149-generic", "6.8.0-149.149")


def revision(layout: str, version: str) -> str:
    """The Debian revision each source gives a driver version.

    ubuntu: Ubuntu's archive, e.g. 580.159.03-0ubuntu0.24.04.1 (packages.ubuntu.com, noble-updates).
    cuda: NVIDIA's CUDA repository (developer.download.nvidia.com/compute/cuda/repos/ubuntu2404),
    580.105.08-0ubuntu1, and -1ubuntu1 for the 580 releases after it."""
    if layout == "ubuntu":
        return "0ubuntu0.24.04.1"
    return "0ubuntu1" if tuple(map(int, version.split("."))) <= (580, 105, 8) else "1ubuntu1"


def package_names(layout: str, branch: int, flavour: str, modules: str) -> dict[str, str]:
    """The driver's packages by kind, as each source names them.

    ubuntu: only the kernel-side packages say -open; the server branch adds -server to all
    (nvidia-driver-580-server-open needs nvidia-utils-580-server; packages.ubuntu.com).
    cuda: no -server packages; from 590 on no branch in the names either (NVIDIA's driver
    installation guide, "Ubuntu 590 and later packages")."""
    kernel = "-open" if modules == "open" else ""
    if layout == "ubuntu":
        tag = f"-{branch}" + ("-server" if flavour == "server" else "")
    else:
        tag = f"-{branch}" if branch < 590 else ""
    names = {
        "nvidia-driver": f"nvidia-driver{tag}{kernel}",
        "nvidia-dkms": f"nvidia-dkms{tag}{kernel}",
        "nvidia-utils": f"nvidia-utils{tag}",
        "libnvidia-compute": f"libnvidia-compute{tag}",
        "nvidia-compute-utils": f"nvidia-compute-utils{tag}",
    }
    if layout == "ubuntu":
        names["nvidia-kernel-common"] = f"nvidia-kernel-common{tag}"
    return names


def build_deb(repo: Path, name: str, version: str, files: dict, depends: str = "", section: str = "restricted/libs",
              postinst: str = "", provides: str = ""):  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        base = Path(root)
        (base / "DEBIAN").mkdir()
        control = [
            f"Package: {name}",
            f"Version: {version}",
            "Architecture: all",
            *([f"Depends: {depends}"] if depends else []),
            *([f"Provides: {provides}"] if provides else []),
            "Maintainer: aiinfra tests <tests@aiinfra.invalid>",
            f"Section: {section}",
            "Priority: optional",
            f"Description: TEST DOUBLE of {name} (aiinfra hardware kit), no driver inside",
        ]
        (base / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
        if postinst:
            (base / "DEBIAN" / "postinst").write_text(postinst)
            (base / "DEBIAN" / "postinst").chmod(0o755)
        for path, (content, mode) in files.items():
            target = base / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            target.chmod(mode)
        deb = repo / f"{name}_{version}_all.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", str(base), str(deb)], check=True, capture_output=True
        )
    return deb


def build_version(repo: Path, version: str, layout: str, flavour: str, modules: str) -> list[Path]:
    if layout == "cuda" and flavour == "server":
        raise SystemExit("NVIDIA's CUDA repository has no -server packages")
    full = f"{version}-{revision(layout, version)}"
    names = package_names(layout, int(version.split(".")[0]), flavour, modules)
    files = {
        "nvidia-utils": {
            "usr/bin/nvidia-smi": (NVIDIA_SMI.replace("@VERSION@", version).replace("@STATE@", STATE), 0o755)
        },
        "nvidia-compute-utils": {
            "usr/bin/nvidia-persistenced": (PERSISTENCED, 0o755),
            "lib/systemd/system/nvidia-persistenced.service": (PERSISTENCED_UNIT, 0o644),
        },
        "libnvidia-compute": {
            f"usr/share/doc/{names['libnvidia-compute']}/README.test-double": (
                "Test double: no libnvidia-ml here.\n",
                0o644,
            )
        },
        "nvidia-dkms": {},
        "nvidia-driver": {},
        "nvidia-kernel-common": {},
    }
    needs = ("nvidia-utils", "libnvidia-compute", "nvidia-compute-utils", "nvidia-dkms")
    depends = {"nvidia-driver": ", ".join(f"{names[k]} (= {full})" for k in needs)}
    # Installed, the driver answers (no module to load in a container): NVML's state exists from then on.
    postinst = {"nvidia-utils": f"#!/bin/sh\nset -e\n[ -e {STATE} ] || /usr/bin/nvidia-smi --test-double-init\n"}
    return [build_deb(repo, names[kind], full, files[kind], depends.get(kind, ""), postinst=postinst.get(kind, ""))
            for kind in names]  # fmt: skip


def build_prebuilt_modules(repo: Path, version: str, flavour: str, modules: str) -> list[Path]:
    """Canonical's signed prebuilt modules (source linux-restricted-modules): versioned by the kernel,
    not by the driver (linux-modules-nvidia-580-server-open-6.8.0-149-generic 6.8.0-149.149), built
    from VERSION: they depend on its nvidia-kernel-common exactly and provide its nvidia-dkms; and the
    kernel flavour's metapackage (linux-modules-nvidia-580-server-open-generic), which follows it."""
    kernel, kernel_version = PREBUILT_KERNEL
    full = f"{version}-{revision('ubuntu', version)}"
    names = package_names("ubuntu", int(version.split(".")[0]), flavour, modules)
    tag = names["nvidia-dkms"].removeprefix("nvidia-dkms")
    name = f"linux-modules-nvidia{tag}-{kernel}"
    files = {f"lib/modules/{kernel}/kernel/nvidia{tag}/README.test-double": ("Test double: no module here.\n", 0o644)}
    exact = build_deb(repo, name, kernel_version, files, f"{names['nvidia-kernel-common']} (= {full})",
                      section="restricted/kernel", provides=f"{names['nvidia-dkms']} (= {full})")  # fmt: skip
    meta = build_deb(repo, f"linux-modules-nvidia{tag}-{kernel.rsplit('-', 1)[1]}", kernel_version, {},
                     f"{name} (= {kernel_version})", section="restricted/kernel")  # fmt: skip
    return [exact, meta]


def write_index(repo: Path) -> None:
    """The flat repository's Packages file: each .deb's control fields plus where and what it is."""
    stanzas = []
    for deb in sorted(repo.glob("*.deb")):
        control = subprocess.run(
            ["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True
        ).stdout.strip()
        data = deb.read_bytes()
        stanzas.append(
            f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}"
        )
    (repo / "Packages").write_text("\n\n".join(stanzas) + "\n")


def build(
    repo: Path, versions: list[str], layout: str = "ubuntu", flavour: str = "server", modules: str = "open"
) -> None:
    repo.mkdir(parents=True, exist_ok=True)
    for version in versions:
        build_version(repo, version, layout, flavour, modules)
    if layout == "ubuntu":
        built_for: dict[int, str] = {}  # per branch, the first version given
        for version in versions:
            built_for.setdefault(int(version.split(".")[0]), version)
        for version in built_for.values():
            build_prebuilt_modules(repo, version, flavour, modules)
    write_index(repo)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path)
    parser.add_argument("versions", nargs="+")
    parser.add_argument("--layout", choices=["ubuntu", "cuda"], default="ubuntu", help="whose package names")
    parser.add_argument("--flavour", choices=["server", "desktop"], default="server")
    parser.add_argument("--modules", choices=["open", "proprietary"], default="open")
    args = parser.parse_args()
    build(args.repo, args.versions, args.layout, args.flavour, args.modules)
