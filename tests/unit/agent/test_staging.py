"""Model staging: mirror first, download otherwise, every file checked against SHA256SUMS."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from aiinfra.agent import staging
from tests.conftest import kit_script

MODEL = "Qwen/Qwen2.5-7B-Instruct"
AGENT = str(Path(sys.executable).with_name("aiinfra-agent"))


def make_mirror(root: Path) -> Path:
    folder = root / MODEL
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"num_hidden_layers": 28}')
    (folder / "model.safetensors").write_bytes(b"\0weights" * 1000)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    staging.write_manifest(folder)
    return root


def fake_hf(tmp: Path, log: Path) -> list[str]:
    """TEST DOUBLE for `hf download MODEL --local-dir DIR` (the Hugging Face Hub cannot be reached
    here): writes two files and its .cache bookkeeping, and logs each call."""
    script = tmp / "hf"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'dir="$4"; mkdir -p "$dir/.cache/huggingface"\n'
        'echo "{}" > "$dir/config.json"; echo weights > "$dir/model.safetensors"\n'
        'echo x > "$dir/.cache/huggingface/x"\n'
    )
    script.chmod(0o755)
    return [str(script), "download"]


def test_from_the_mirror_then_present(tmp_path):
    mirror = make_mirror(tmp_path / "nas")
    root = tmp_path / "models"
    first = staging.stage(MODEL, root, str(mirror), [])
    assert (first.source, first.files) == ("mirror", 3)
    assert first.bytes == 8000 + len(b'{"num_hidden_layers": 28}') + 2
    assert (root / MODEL / "sub" / "tokenizer.json").read_text() == "{}"
    assert staging.manifest_problems(root / MODEL) == []
    assert staging.stage(MODEL, root, str(mirror), []).source == "present"
    assert not (root / ".staging" / MODEL).exists()


_opened: list[tuple[str, str]] = []
sys.addaudithook(lambda event, args: _opened.append((str(args[0]), str(args[1]))) if event == "open" else None)


def test_staging_from_a_mirror_reads_each_weight_once_hashing_as_it_copies(tmp_path):
    mirror = make_mirror(tmp_path / "nas")
    root = tmp_path / "models"
    _opened.clear()
    staging.stage(MODEL, root, str(mirror), [])
    weights_read = [path for path, mode in _opened if path.endswith("model.safetensors") and "r" in mode]
    assert weights_read == [str(mirror / MODEL / "model.safetensors")]  # not the copy again
    assert staging.manifest_problems(root / MODEL) == []


def test_a_corrupt_mirror_copy_is_refused_and_nothing_is_left(tmp_path):
    mirror = make_mirror(tmp_path / "nas")
    (mirror / MODEL / "model.safetensors").write_bytes(b"bitrot")
    root = tmp_path / "models"
    with pytest.raises(staging.StagingError, match=r"model.safetensors: checksum mismatch"):
        staging.stage(MODEL, root, str(mirror), [])
    assert not (root / MODEL).exists()
    assert not (root / ".staging" / MODEL).exists()


def test_a_mirror_without_a_manifest_is_refused(tmp_path):
    mirror = make_mirror(tmp_path / "nas")
    (mirror / MODEL / staging.MANIFEST).unlink()
    with pytest.raises(staging.StagingError, match="has no SHA256SUMS"):
        staging.stage(MODEL, tmp_path / "models", str(mirror), [])


def test_not_on_the_mirror_it_is_downloaded_once(tmp_path):
    log = tmp_path / "hf.log"
    download = fake_hf(tmp_path, log)
    root = tmp_path / "models"
    staged = staging.stage(MODEL, root, str(tmp_path / "empty-nas"), download)
    assert staged.source == "download" and staged.files == 2
    assert not (root / MODEL / ".cache").exists()
    assert (root / MODEL / staging.MANIFEST).read_text().count("\n") == 2
    assert staging.stage(MODEL, root, None, download).source == "present"
    assert log.read_text().splitlines() == [f"download {MODEL} --local-dir {root / '.staging' / MODEL}"]


def test_a_changed_staged_file_is_caught_by_the_manifest(tmp_path):
    root = tmp_path / "models"
    staging.stage(MODEL, root, str(make_mirror(tmp_path / "nas")), [])
    (root / MODEL / "config.json").write_text("{}")
    (root / MODEL / "extra.bin").write_text("?")
    assert staging.manifest_problems(root / MODEL) == ["config.json: checksum mismatch", "extra.bin: not in SHA256SUMS"]


def test_the_cli_prints_json_and_fails_with_one_line(tmp_path):
    mirror = make_mirror(tmp_path / "nas")
    ok = subprocess.run(
        [AGENT, "models", "stage", MODEL, "--root", str(tmp_path / "m"), "--mirror", str(mirror)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["source"] == "mirror"
    missing = subprocess.run(
        [AGENT, "models", "stage", "Org/None", "--root", str(tmp_path / "m"), "--mirror", str(mirror)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip() == "aiinfra-agent: Org/None: not on the mirror and no download command"


def test_ollama_models_come_from_the_mirror_blob_by_blob(tmp_path):
    fake_models = kit_script("fake_models")

    manifest = fake_models.ollama_model(tmp_path / "nas", "llama3.2:3b")
    store = tmp_path / "ollama"
    first = staging.stage_ollama("llama3.2:3b", store, str(tmp_path / "nas"))
    assert first.source == "mirror" and first.files == 3
    assert (store / "manifests/registry.ollama.ai/library/llama3.2/3b").read_text() == manifest.read_text()
    assert staging.stage_ollama("llama3.2:3b", store, str(tmp_path / "nas")).source == "present"
    assert staging.stage_ollama("qwen2.5:7b", store, str(tmp_path / "nas")).source == "missing"
    assert staging.stage_ollama("llama3.2:3b", tmp_path / "other", None).source == "missing"


def test_a_corrupt_ollama_blob_is_refused_and_the_model_does_not_appear(tmp_path):
    fake_models = kit_script("fake_models")

    fake_models.ollama_model(tmp_path / "nas", "user/tiny")
    blob = max((tmp_path / "nas/ollama/blobs").iterdir(), key=lambda p: p.stat().st_size)
    blob.write_bytes(b"bitrot")
    store = tmp_path / "ollama"
    with pytest.raises(staging.StagingError, match=f"blob {blob.name}: checksum mismatch"):
        staging.stage_ollama("user/tiny", store, str(tmp_path / "nas"))
    assert not (store / "manifests/registry.ollama.ai/user/tiny/latest").exists()
    assert list((store / "blobs").glob("*.partial")) == []


def test_a_fake_mirror_model_passes_its_own_manifest(tmp_path):
    fake_models = kit_script("fake_models")

    assert staging.manifest_problems(fake_models.vllm_model(tmp_path, MODEL)) == []


def test_the_kits_tiny_models_are_the_same_bytes_for_the_same_id_and_differ_between_ids(tmp_path):
    fake_models = kit_script("fake_models")

    first = fake_models.vllm_model(tmp_path / "a", MODEL)
    again = fake_models.vllm_model(tmp_path / "b", MODEL)
    other = fake_models.vllm_model(tmp_path / "c", "Qwen/Qwen2.5-14B-Instruct-AWQ")
    assert (first / "SHA256SUMS").read_text() == (again / "SHA256SUMS").read_text()
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    config = json.loads((first / "config.json").read_text())
    assert config["aiinfra_test_double"] == {"stands_in_for": MODEL}
    assert config["hidden_size"] // config["num_attention_heads"] >= 32  # CPU attention's minimum head size


def test_where_the_kernel_cannot_copy_between_the_two_the_blocks_are_written(tmp_path, monkeypatch):
    def cross_device(*args):
        raise OSError(18, "Invalid cross-device link")  # EXDEV: a NAS mount and the model disk, older kernels

    monkeypatch.setattr(staging.os, "copy_file_range", cross_device)
    monkeypatch.setattr(staging, "BLOCK", 1000)  # several blocks a file
    mirror = make_mirror(tmp_path / "nas")
    staged = staging.stage(MODEL, tmp_path / "models", str(mirror), [])
    assert staged.source == "mirror" and staging.manifest_problems(tmp_path / "models" / MODEL) == []
    assert (tmp_path / "models" / MODEL / "model.safetensors").read_bytes() == b"\0weights" * 1000


def test_a_mirror_manifest_with_a_bad_line_is_refused_naming_the_model_and_the_line(tmp_path):
    mirror = make_mirror(tmp_path / "nas")
    (mirror / MODEL / staging.MANIFEST).write_text("not a checksum line\n")
    refused = rf"^{MODEL} from {mirror}: .*SHA256SUMS:1: not a 'SHA256  FILE' line$"
    with pytest.raises(staging.StagingError, match=refused):
        staging.stage(MODEL, tmp_path / "models", str(mirror), [])
    assert not (tmp_path / "models" / MODEL).exists()


def test_staged_files_get_fixed_modes_whatever_the_mirror_had(tmp_path):
    mirror = make_mirror(tmp_path / "nas")
    (mirror / MODEL / "model.safetensors").chmod(0o4777)  # setuid and world-writable on the NAS
    (mirror / MODEL / "sub").chmod(0o2777)
    (mirror / MODEL / "config.json").chmod(0o600)
    root = tmp_path / "models"
    staging.stage(MODEL, root, str(mirror), [])
    staged = root / MODEL
    modes = {p.relative_to(staged).as_posix(): p.stat().st_mode & 0o7777 for p in [staged, *staged.rglob("*")]}
    assert modes == {".": 0o755, "sub": 0o755, "sub/tokenizer.json": 0o644, "config.json": 0o644,
                     "model.safetensors": 0o644, "SHA256SUMS": 0o644, staging.VERIFIED: 0o644}  # fmt: skip


def test_a_pinned_manifest_is_staged_and_another_is_refused_naming_both_with_nothing_changed(tmp_path):
    mirror = make_mirror(tmp_path / "nas")
    root = tmp_path / "models"
    pin = hashlib.sha256((mirror / MODEL / staging.MANIFEST).read_bytes()).hexdigest()
    assert staging.stage(MODEL, root, str(mirror), [], pin).source == "mirror"
    assert staging.stage(MODEL, root, str(mirror), [], pin).source == "present"

    (mirror / MODEL / "model.safetensors").write_bytes(b"\0other weights" * 500)  # version 2 on the NAS
    staging.write_manifest(mirror / MODEL)
    before = (root / MODEL / "model.safetensors").read_bytes()
    with pytest.raises(staging.StagingError) as refused:
        staging.stage(MODEL, root, str(mirror), [], "0" * 64)  # a pin matching neither
    new = hashlib.sha256((mirror / MODEL / staging.MANIFEST).read_bytes()).hexdigest()
    assert f"has sha256 {new}, the spec pins {'0' * 64}" in str(refused.value)
    assert (root / MODEL / "model.safetensors").read_bytes() == before  # the staged version stays
    assert not (root / ".staging" / MODEL).exists()

    moved = staging.stage(MODEL, root, str(mirror), [], new)  # the pin moved to version 2: staged anew
    assert moved.source == "mirror" and (root / MODEL / "model.safetensors").read_bytes() != before
    # version 1 stays on the disk, beside version 2: the pin moved back needs no mirror
    assert staging.stage(MODEL, root, None, [], pin).source == "kept"
    assert (root / MODEL / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in (root / staging.VERSIONS / MODEL).iterdir()) == sorted([pin[:16], new[:16]])
    done = subprocess.run([AGENT, "models", "stage", MODEL, "--root", str(root), "--mirror", str(mirror),
                           "--manifest-sha256", "1" * 64], capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 1 and f"the spec pins {'1' * 64}" in done.stderr and "Traceback" not in done.stderr


def test_a_model_staged_before_versions_is_kept_as_a_version_when_the_next_one_comes(tmp_path):
    mirror = make_mirror(tmp_path / "nas")
    root = tmp_path / "models"
    staging.stage(MODEL, root, str(mirror), [])
    old_layout = root / MODEL
    version = old_layout.resolve()
    old_layout.unlink()
    version.rename(old_layout)  # as an earlier release staged it: the folder itself
    (mirror / MODEL / "model.safetensors").write_bytes(b"\0version two" * 500)
    staging.write_manifest(mirror / MODEL)
    new = hashlib.sha256((mirror / MODEL / staging.MANIFEST).read_bytes()).hexdigest()
    assert staging.stage(MODEL, root, str(mirror), [], new).source == "mirror"  # the spec pins version two
    assert (root / MODEL).is_symlink() and b"version two" in (root / MODEL / "model.safetensors").read_bytes()
    kept = [p for p in (root / staging.VERSIONS / MODEL).iterdir() if p != (root / MODEL).resolve()]
    assert len(kept) == 1 and (kept[0] / "model.safetensors").read_bytes() == b"\0weights" * 1000
