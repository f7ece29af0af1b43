"""Our lazy .safetensors reader gives exactly what the safetensors package gives, one tensor at a time."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from voxcpm_engine.checkpoint import CheckpointError, SafetensorsFile, read_state_dict


def test_reader_matches_safetensors(tmp_path):
    tensors = {"a.f32": torch.randn(3, 5), "b.bf16": torch.randn(7).bfloat16(), "c.f16": torch.randn(2, 2).half(),
               "d.i32": torch.tensor([20000, 30000, 40000], dtype=torch.int32), "e.empty": torch.zeros(0, 4),
               "f.i64": torch.arange(6).view(2, 3), "g.bool": torch.tensor([True, False])}
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path), metadata={"lora_alpha": "16"})
    expected = load_file(str(path))
    lazy = read_state_dict(path)
    assert isinstance(lazy, SafetensorsFile) and lazy.metadata == {"lora_alpha": "16"}
    assert sorted(lazy) == sorted(expected) and len(lazy) == len(expected)
    for key, value in expected.items():
        assert lazy.shape_of(key) == value.shape
        got = lazy[key]
        assert got.dtype == value.dtype and torch.equal(got, value)


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(100, 100)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_state_dict(path)
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_state_dict(path)
