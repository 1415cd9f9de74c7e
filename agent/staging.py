"""Model weights on the box, staged once by the installer (role vllm), never fetched by the agent.

Each model lives in ROOT/<model id> (ROOT/Qwen/Qwen2.5-7B-Instruct), plain files with a SHA256SUMS
manifest beside them. Each version of it is its own folder, ROOT/.versions/<model id>/<manifest digest>,
and ROOT/<model id> links the current one: a new version staged leaves the one before in place (the gate
goes back to it; retirement removes it once nothing keeps it), and a pin moved back to a kept version
needs no copy. Staging takes the model from a mirror first (a directory such as a mounted
NAS, or an rsync source `host:path`, laid out the same way and holding the manifest), else downloads
it (`hf download`), and checks every file against the manifest before the model is put in place:
a copy that fails the check is thrown away, never half-used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiinfra.agent.schema import OLLAMA_MODEL, model_id_problem

MANIFEST = "SHA256SUMS"
VERIFIED = ".aiinfra-verified"  # holds the manifest's own hash once every file matched it
VERSIONS = ".versions"  # not a model id (those start with a letter or digit), as ".staging" is not
DOWNLOAD_LEFTOVERS = (".cache",)  # `hf download --local-dir` keeps its bookkeeping here
BLOCK = 4 << 20
# Files copied at once from a mirror: a NAS or NVMe serves several streams faster than one, and
# hashing (which frees the GIL) keeps a core busy per stream.
COPIES_AT_ONCE = 4


class StagingError(Exception):
    """The model could not be staged; the message says from where and what failed."""


class BadModelId(StagingError):
    """A model id that would name a path outside the store: the caller's mistake, nothing touched."""


@dataclass(frozen=True)
class Staged:
    model: str
    path: str
    source: str  # "present", "kept" (a version staged before), "mirror" or "download"
    files: int
    bytes: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_hashing(source: Path, dest: Path) -> str:
    """Copy SOURCE to DEST and return its SHA-256, reading it from its disk once: each block is read
    and hashed, then the kernel copies it from the page cache (copy_file_range: no second trip through
    Python; where the filesystems refuse it, the block is written from the buffer)."""
    digest = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    in_kernel = hasattr(os, "copy_file_range")
    with source.open("rb", buffering=0) as src, dest.open("wb", buffering=0) as out:
        offset = 0
        while n := src.readinto(buffer):
            digest.update(view[:n])
            done = 0
            while in_kernel and done < n:
                try:
                    copied = os.copy_file_range(src.fileno(), out.fileno(), n - done, offset + done)
                except OSError:  # EXDEV, EOPNOTSUPP, …: not between these two
                    in_kernel = False
                    break
                if copied == 0:
                    in_kernel = False
                    break
                done += copied
            if done < n:
                out.write(view[done:n])
            offset += n
    shutil.copystat(source, dest)
    return digest.hexdigest()


def _fixed_modes(folder: Path) -> None:
    """Files 0644 and folders 0755 whatever the mirror or download had: no setuid, setgid or
    world-writable file reaches the model disk (copies keep their source's mode)."""
    os.chmod(folder, 0o755)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _files(folder: Path) -> list[Path]:
    return sorted(
        p.relative_to(folder)
        for p in folder.rglob("*")
        if p.is_file()
        and p.name not in (MANIFEST, VERIFIED)
        and p.relative_to(folder).parts[0] not in DOWNLOAD_LEFTOVERS
    )


def write_manifest(folder: Path) -> None:
    lines = [f"{_sha256(folder / rel)}  {rel.as_posix()}\n" for rel in _files(folder)]
    (folder / MANIFEST).write_text("".join(lines))


def _read_manifest(manifest: Path) -> dict[str, str]:
    """File → SHA-256 from a SHA256SUMS file; StagingError naming the bad line."""
    listed: dict[str, str] = {}
    for number, line in enumerate(manifest.read_text().splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise StagingError(f"{manifest}:{number}: not a 'SHA256  FILE' line")
        listed[name] = digest
    return listed


def _problems(listed: dict[str, str], found: dict[str, str | None], present: list[str]) -> list[str]:
    """FOUND: each listed file's hash (None: missing); PRESENT: every file there is."""
    problems = []
    for name, digest in listed.items():
        if found.get(name) is None:
            problems.append(f"{name}: missing")
        elif found[name] != digest:
            problems.append(f"{name}: checksum mismatch")
    return problems + [f"{name}: not in {MANIFEST}" for name in present if name not in listed]


def manifest_problems(folder: Path) -> list[str]:
    """Every file listed must be there with its hash, and nothing unlisted may be there."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return [f"{folder}: no {MANIFEST}"]
    try:
        listed = _read_manifest(manifest)
    except StagingError as exc:
        return [str(exc)]
    found = {name: _sha256(folder / name) if (folder / name).is_file() else None for name in listed}
    return _problems(listed, found, [rel.as_posix() for rel in _files(folder)])


def _manifest_digest(folder: Path) -> str:
    return hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()


def is_staged(folder: Path) -> bool:
    stamp = folder / VERIFIED
    return stamp.is_file() and (folder / MANIFEST).is_file() and stamp.read_text().strip() == _manifest_digest(folder)


def _is_rsync_source(mirror: str) -> bool:
    return not mirror.startswith("/") and ":" in mirror


def _no_manifest(model: str, mirror: str) -> StagingError:
    return StagingError(f"{model}: the mirror {mirror} has no {MANIFEST} for it; add one (sha256sum)")


def _from_mirror(model: str, mirror: str, dest: Path) -> list[str] | None:
    """Copy the model from the mirror into DEST and check it: its problems ([] when none), or None
    when the mirror does not have it. A directory mirror is read once, hashed as it is copied."""
    if not _is_rsync_source(mirror):
        return _copy_from_mirror(model, mirror, Path(mirror) / model, dest)
    proc = subprocess.run(
        ["rsync", "-a", "--delete", f"{mirror.rstrip('/')}/{model}/", f"{dest}/"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 23 and "No such file" in proc.stderr:
        return None
    if proc.returncode != 0:
        raise StagingError(f"{model}: rsync from {mirror} failed: {proc.stderr.strip()[-300:]}")
    if not (dest / MANIFEST).is_file():
        raise _no_manifest(model, mirror)
    return manifest_problems(dest)


def _copy_from_mirror(model: str, mirror: str, source: Path, dest: Path) -> list[str] | None:
    if not source.is_dir():
        return None
    if not (source / MANIFEST).is_file():
        raise _no_manifest(model, mirror)
    shutil.copyfile(source / MANIFEST, dest / MANIFEST)
    try:
        listed = _read_manifest(dest / MANIFEST)
    except StagingError as exc:
        return [str(exc)]
    present = [rel.as_posix() for rel in _files(source)]
    wanted = [name for name in present if name in listed]
    with ThreadPoolExecutor(COPIES_AT_ONCE) as pool:
        copied = pool.map(lambda name: _copy_hashing(source / name, dest / name), wanted)
        hashes: dict[str, str | None] = dict(zip(wanted, copied, strict=True))
    return _problems(listed, hashes, present)


def stage(model: str, root: Path, mirror: str | None, download: list[str], pin: str | None = None) -> Staged:
    """Make ROOT/MODEL hold the model, checked; idempotent. PIN: the SHA-256 its manifest must have (the
    spec's model_sha256); a copy with another is refused, naming both, and what was staged stays."""
    if (problem := model_id_problem(model)) is not None:
        raise BadModelId(problem)  # ROOT / "/var/lib/x" is /var/lib/x, which would be replaced
    final = root / model
    if final.is_dir() and is_staged(final) and pin in (None, _manifest_digest(final)):
        return Staged(model, str(final), "present", *_size(final))
    if pin is not None and is_staged(kept := version_dir(root, model, pin)) and _manifest_digest(kept) == pin:
        _point(root, model, kept)
        return Staged(model, str(final), "kept", *_size(final))
    work = root / ".staging" / model
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted run left
    work.mkdir(parents=True)
    try:
        problems = _from_mirror(model, mirror, work) if mirror else None
        source = "mirror"
        if problems is None:
            source = "download"
            _download(model, work, download)
            for leftover in DOWNLOAD_LEFTOVERS:
                shutil.rmtree(work / leftover, ignore_errors=True)
            if not (work / MANIFEST).is_file():
                write_manifest(work)  # first download: what arrived is what later copies are held to
            problems = manifest_problems(work)
        where = mirror if source == "mirror" else "download"
        if problems:
            raise StagingError(f"{model} from {where}: " + "; ".join(problems))
        if pin is not None and (got := _manifest_digest(work)) != pin:
            raise StagingError(f"{model} from {where}: its manifest ({MANIFEST}) has sha256 {got}, the spec pins "
                               f"{pin} (model_sha256); nothing was changed")  # fmt: skip
        (work / VERIFIED).write_text(_manifest_digest(work) + "\n")
        _fixed_modes(work)
        version = version_dir(root, model, _manifest_digest(work))
        if version.exists():
            shutil.rmtree(version)  # an unverified copy of the same version
        version.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, version)
        _point(root, model, version)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Staged(model, str(final), source, *_size(final))


def version_dir(root: Path, model: str, manifest_digest: str) -> Path:
    return root / VERSIONS / model / manifest_digest[:16]


def _point(root: Path, model: str, version: Path) -> None:
    """ROOT/MODEL names VERSION from now on: a link swapped in whole, so an engine starting meanwhile sees
    one version or the other. A folder staged there before versions is moved beside the others."""
    final = root / model
    if final.is_dir() and not final.is_symlink():
        if is_staged(final) and not (before := version_dir(root, model, _manifest_digest(final))).exists():
            before.parent.mkdir(parents=True, exist_ok=True)
            os.replace(final, before)
        else:
            shutil.rmtree(final)  # unverified, or the same version kept already
    final.parent.mkdir(parents=True, exist_ok=True)
    link = root / ".staging" / f"{model.replace('/', '--')}.link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    os.symlink(os.path.relpath(version, final.parent), link)
    os.replace(link, final)


def _download(model: str, dest: Path, command: list[str]) -> None:
    if not command:
        raise StagingError(f"{model}: not on the mirror and no download command")
    try:
        proc = subprocess.run([*command, model, "--local-dir", str(dest)], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise StagingError(f"{model}: cannot run {command[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        raise StagingError(f"{model}: download failed: {tail[-1] if tail else proc.returncode}")


def _size(folder: Path) -> tuple[int, int]:
    files = _files(folder)
    return len(files), sum((folder / f).stat().st_size for f in files)


# Ollama keeps its own content-addressed store (OLLAMA_MODELS): manifests/<registry>/<ns>/<name>/<tag>
# naming blobs/sha256-<hex>. A mirror holds the same layout under MIRROR/ollama; every blob copied
# is checked against its name. What the mirror lacks, the ollama role pulls through Ollama itself.
OLLAMA_REGISTRY = "registry.ollama.ai"


def ollama_manifest(name: str) -> Path:
    """'llama3.2:3b' → registry.ollama.ai/library/llama3.2/3b, as Ollama stores it."""
    base, _, tag = name.partition(":")
    parts = base.split("/")  # model, namespace/model, or host/namespace/model
    parts = [*([OLLAMA_REGISTRY] if len(parts) < 3 else []), *(["library"] if len(parts) == 1 else []), *parts]
    return Path("manifests", *parts, tag or "latest")


def _ollama_blobs(manifest: Path) -> list[str]:
    data = json.loads(manifest.read_text())
    digests = [layer["digest"] for layer in data.get("layers", [])] + [data["config"]["digest"]]
    return [d.replace(":", "-", 1) for d in digests]


def stage_ollama(name: str, store: Path, mirror: str | None) -> Staged:
    """Make Ollama's store hold model NAME from the mirror; source "missing" when it cannot."""
    if (problem := model_id_problem(name, OLLAMA_MODEL)) is not None:
        raise BadModelId(problem)
    wanted = ollama_manifest(name)
    manifest = store / wanted
    if manifest.is_file() and all((store / "blobs" / blob).is_file() for blob in _ollama_blobs(manifest)):
        return Staged(name, str(manifest), "present", *_ollama_size(store, manifest))
    source = Path(mirror) / "ollama" if mirror and not _is_rsync_source(mirror) else None
    if source is None or not (source / wanted).is_file():
        return Staged(name, str(manifest), "missing", 0, 0)
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    for blob in _ollama_blobs(source / wanted):
        digest = blob.removeprefix("sha256-")
        target = store / "blobs" / blob
        if target.is_file() and _sha256(target) == digest:
            continue
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(source / "blobs" / blob, partial)
        if _sha256(partial) != digest:
            partial.unlink()
            raise StagingError(f"{name} from {mirror}: blob {blob}: checksum mismatch")
        os.replace(partial, target)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / wanted, manifest)  # last: the model appears only when whole
    return Staged(name, str(manifest), "mirror", *_ollama_size(store, manifest))


def _ollama_size(store: Path, manifest: Path) -> tuple[int, int]:
    blobs = _ollama_blobs(manifest)
    return len(blobs), sum((store / "blobs" / b).stat().st_size for b in blobs)
