"""Checkpoint discovery, safe reading and strict loading: the happy paths and every error path."""
from __future__ import annotations

import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from voxcpm_engine import checkpoint
from voxcpm_engine.checkpoint import CheckpointError, DownloadError


@pytest.fixture
def folder(tiny_v1, tmp_path):
    """A private copy of the tiny v1 checkpoint (model.safetensors + audiovae.pth)."""
    return shutil.copytree(tiny_v1, tmp_path / "ckpt")


# ------------------------------------------------------------------------------------------------- discovery

def test_official_layout_found(folder):
    files = checkpoint.find_checkpoint_files(folder)
    assert files.folder == folder
    assert (files.config.name, files.weights.name, files.vae.name, files.tokenizer.name) == (
        "config.json", "model.safetensors", "audiovae.pth", "tokenizer.json")
    assert files.tokenizer_config.name == "tokenizer_config.json"
    assert files.special_tokens_map.name == "special_tokens_map.json"


def test_bin_layout_found_and_equal(folder):
    """VoxCPM-0.5B ships pytorch_model.bin + audiovae.pth."""
    expected = load_file(folder / "model.safetensors")
    torch.save(expected, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    files = checkpoint.find_checkpoint_files(folder)
    assert (files.weights.name, files.vae.name) == ("pytorch_model.bin", "audiovae.pth")
    got = checkpoint.read_state_dict(files.weights)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    vae = checkpoint.read_state_dict(files.vae)  # {"state_dict": ...} is unwrapped
    assert any(k.endswith("weight_g") for k in vae)


def test_safetensors_preferred(folder):
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    save_file(checkpoint.read_state_dict(folder / "audiovae.pth"), folder / "audiovae.safetensors")
    files = checkpoint.find_checkpoint_files(folder)
    assert (files.weights.name, files.vae.name) == ("model.safetensors", "audiovae.safetensors")
    a, b = checkpoint.read_state_dict(files.vae), checkpoint.read_state_dict(folder / "audiovae.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_files_listed(folder):
    (folder / "model.safetensors").unlink()
    (folder / "audiovae.pth").unlink()
    with pytest.raises(FileNotFoundError) as e:
        checkpoint.find_checkpoint_files(folder)
    msg = str(e.value)
    assert "missing model.safetensors or pytorch_model.bin; audiovae.safetensors or audiovae.pth" in msg
    assert "Present: config.json, special_tokens_map.json, tokenizer.json, tokenizer_config.json" in msg
    assert str(folder) in msg


def test_missing_config_and_tokenizer(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"missing config.json; .*tokenizer.json.*Present: notes.txt"):
        checkpoint.find_checkpoint_files(tmp_path)


def test_nonexistent_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.find_checkpoint_files(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="is a file"):
        checkpoint.find_checkpoint_files(tmp_path / "config.json")


# ------------------------------------------------------------------------------------------------- reading

def test_state_dict_wrapper_unwrapped(tmp_path):
    sd = {"a": torch.arange(3), "b": torch.ones(2, dtype=torch.bfloat16)}
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "w.pth")
    got = checkpoint.read_state_dict(tmp_path / "w.pth")
    assert got.keys() == sd.keys() and got["b"].dtype == torch.bfloat16


def test_legacy_torch_format_loads(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "old.bin", _use_new_zipfile_serialization=False)
    assert torch.equal(checkpoint.read_state_dict(tmp_path / "old.bin")["a"], torch.ones(2))


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_truncated_file(folder, name):
    if name.endswith(".bin"):
        torch.save(load_file(folder / "model.safetensors"), folder / name)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"Cannot read .*{name}: the file is corrupt.*download it again"):
        checkpoint.read_state_dict(folder / name)


@pytest.mark.parametrize("name", ["audiovae.safetensors", "audiovae.pth"])
def test_garbage_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=rf"{name}: the file is corrupt"):
        checkpoint.read_state_dict(tmp_path / name)


def test_git_lfs_pointer(tmp_path):
    (tmp_path / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n")
    with pytest.raises(CheckpointError, match="model.safetensors is a Git LFS pointer.*git lfs pull"):
        checkpoint.read_state_dict(tmp_path / "model.safetensors")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint.read_state_dict(tmp_path / "model.safetensors")


MARKER = {}


def _side_effect(path):
    MARKER["ran"] = path
    return {}


class Evil:
    def __reduce__(self):
        return _side_effect, ("pwned",)


def test_malicious_pickle_refused(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": Evil()}, tmp_path / "audiovae.pth")
    with pytest.raises(CheckpointError, match="Refusing to load .*audiovae.pth"):
        checkpoint.read_state_dict(tmp_path / "audiovae.pth")
    with pytest.raises(CheckpointError, match="Refusing"):
        checkpoint.safe_torch_load(tmp_path / "audiovae.pth")
    assert "ran" not in MARKER


def test_non_tensor_entries_rejected(tmp_path):
    torch.save({"w": torch.ones(1), "step": 3}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not tensors: step"):
        checkpoint.read_state_dict(tmp_path / "pytorch_model.bin")
    torch.save([torch.ones(1)], tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match="holds a list"):
        checkpoint.read_state_dict(tmp_path / "list.bin")


# ------------------------------------------------------------------------------------------------- strict load

class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(3))
        self.register_buffer("bins", torch.zeros(2, dtype=torch.int32))
        self.register_buffer("cos", torch.zeros(5), persistent=False)


def small_state(dtype=torch.bfloat16) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"proj.weight": torch.randn(3, 4, generator=g).to(dtype), "proj.bias": torch.randn(3, generator=g).to(dtype),
            "norm.weight": torch.rand(3, generator=g).to(dtype), "bins": torch.tensor([7, 9], dtype=torch.int32)}


def meta_small() -> Small:
    with torch.device("meta"):
        return Small()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, None])
def test_load_strict_assigns_and_casts(dtype):
    sd = small_state()
    module = checkpoint.load_strict(meta_small(), sd, dtype=dtype)
    want = dtype or torch.float32  # None: the dtype the module was built with
    assert isinstance(module.proj.weight, nn.Parameter) and module.proj.weight.requires_grad
    for key in ("proj.weight", "proj.bias", "norm.weight"):
        t = module.get_parameter(key)
        assert t.device.type == "cpu" and t.dtype == want and torch.equal(t, sd[key].to(want))
    assert module.bins.dtype == torch.int32 and module.bins.tolist() == [7, 9]
    assert module.cos.is_meta  # non-persistent buffers are left to the caller
    if dtype == torch.bfloat16:  # no copy when the file already has the target dtype
        assert module.proj.weight.data_ptr() == sd["proj.weight"].data_ptr()


def test_load_strict_missing_key():
    sd = small_state()
    del sd["norm.weight"]
    with pytest.raises(CheckpointError, match=r"model.safetensors does not match .* 1 missing key\(s\): norm.weight"):
        checkpoint.load_strict(meta_small(), sd)


def test_load_strict_unexpected_key():
    sd = small_state()
    sd["audio_vae.decoder.x"] = torch.ones(1)
    with pytest.raises(CheckpointError, match=r"audiovae.pth .* 1 unexpected key\(s\): audio_vae.decoder.x"):
        checkpoint.load_strict(meta_small(), sd, what="audiovae.pth")


def test_load_strict_shape_mismatch():
    sd = small_state()
    sd["proj.weight"] = torch.ones(3, 5)
    with pytest.raises(CheckpointError, match=r"shape mismatch\(es\): proj.weight \(file \[3, 5\], model \[3, 4\]\)"):
        checkpoint.load_strict(meta_small(), sd)


def test_load_strict_lists_at_most_ten():
    with torch.device("meta"):
        module = nn.Sequential(*[nn.Linear(2, 2, bias=False) for _ in range(13)])
    with pytest.raises(CheckpointError, match=r"13 missing key\(s\): 0.weight, .*9.weight \.\.\. and 3 more"):
        checkpoint.load_strict(module, {})


def test_load_strict_detects_tensors_left_on_meta():
    class Hidden(Small):  # a parameter that state_dict() does not report can never be assigned
        def _save_to_state_dict(self, destination, prefix, keep_vars):
            super()._save_to_state_dict(destination, prefix, keep_vars)
            destination.pop(prefix + "bins")

    with torch.device("meta"):
        module = Hidden()
    sd = small_state()
    del sd["bins"]
    with pytest.raises(CheckpointError, match="never assigned .*: bins"):
        checkpoint.load_strict(module, sd)


# ------------------------------------------------------------------------------------------------- hub

def test_download_failure_explains_offline_setup(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DownloadError) as e:
        checkpoint.download("openbmb/VoxCPM2", tmp_path / "VoxCPM2")
    msg = str(e.value)
    assert "Could not download 'openbmb/VoxCPM2' from huggingface (OSError: no network)" in msg
    assert str(tmp_path / "VoxCPM2") in msg and "model.safetensors (or pytorch_model.bin)" in msg


def test_download_local_files_only_fails_fast(tmp_path):
    with pytest.raises(DownloadError, match="openbmb/VoxCPM2"):
        checkpoint.download("openbmb/VoxCPM2", None, cache_dir=tmp_path, local_files_only=True, progress=False)


def test_download_success(monkeypatch, tmp_path, tiny_v2):
    import huggingface_hub
    from huggingface_hub.utils import are_progress_bars_disabled

    calls = {}

    def fake(repo_id, **kwargs):
        calls.update(kwargs, repo_id=repo_id, bars_off=are_progress_bars_disabled())
        shutil.copytree(tiny_v2, kwargs["local_dir"])
        return str(kwargs["local_dir"])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    before = are_progress_bars_disabled()
    got = checkpoint.download("openbmb/VoxCPM2", tmp_path / "m", progress=False)
    assert got == tmp_path / "m" and calls["repo_id"] == "openbmb/VoxCPM2" and calls["bars_off"]
    assert "model.safetensors" in calls["allow_patterns"] and are_progress_bars_disabled() == before


def test_download_incomplete_snapshot(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="incomplete"):
        checkpoint.download("owner/name", tmp_path)


def test_modelscope_needs_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(DownloadError, match="pip install modelscope"):
        checkpoint.download("OpenBMB/VoxCPM2", tmp_path, source="modelscope")
    with pytest.raises(ValueError, match="source must be one of"):
        checkpoint.download("OpenBMB/VoxCPM2", tmp_path, source="github")


def test_resolve_model_path(monkeypatch, tmp_path, tiny_v1):
    assert checkpoint.resolve_model_path(tiny_v1) == tiny_v1
    assert checkpoint.resolve_model_path(str(tiny_v1)) == tiny_v1
    seen = {}

    def fake_download(repo_id, target_dir, source, progress, **kw):
        seen.update(kw, repo_id=repo_id, source=source)
        return tiny_v1

    monkeypatch.setattr(checkpoint, "download", fake_download)
    assert checkpoint.resolve_model_path("openbmb/VoxCPM2", cache_dir=tmp_path, source="modelscope") == tiny_v1
    assert seen == dict(repo_id="openbmb/VoxCPM2", source="modelscope", cache_dir=tmp_path, local_files_only=False)
    for bad in (tmp_path / "missing" / "deep" / "x", "just-a-name", "./rel/missing"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            checkpoint.resolve_model_path(bad)
    (tmp_path / "f.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file"):
        checkpoint.resolve_model_path(tmp_path / "f.bin")


def test_resolve_reports_both_interpretations(monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(DownloadError, match="'models/VoxCPM2' is not a local folder, and as a hub id: Could not"):
        checkpoint.resolve_model_path("models/VoxCPM2")


# ------------------------------------------------------------------------------------------------- tiny fixtures

@pytest.mark.parametrize("fixture,version,patch,rate", [("tiny_v1", 1, 2, 16000), ("tiny_v1_5", 1, 4, 44100),
                                                        ("tiny_v2", 2, 4, 48000)])
def test_tiny_checkpoints_use_the_official_layout(fixture, version, patch, rate, request):
    from voxcpm_engine.config import load_config

    files = checkpoint.find_checkpoint_files(request.getfixturevalue(fixture))
    config = load_config(files.config)
    assert (config.version, config.patch_size, config.sample_rate) == (version, patch, rate)
    model, vae = checkpoint.read_state_dict(files.weights), checkpoint.read_state_dict(files.vae)
    assert not any(k.startswith("audio_vae.") for k in model) and "stop_head.weight" in model
    assert any(k.endswith("weight_g") for k in vae) and not any(k.startswith("audio_vae.") for k in vae)
    norms = torch.cat([v for k, v in model.items() if k.endswith("norm.weight")])
    assert not torch.allclose(norms, torch.ones_like(norms))  # perturbed away from the all-ones init
