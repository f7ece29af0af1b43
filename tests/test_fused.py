"""Fused q/k/v and gate/up projections (layers/linear.fused_linear): the official per-projection keys in and out of
state dicts, the same products as separate layers, and strict loading that joins the parts and frees the file's
copies."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from voxcpm_engine import checkpoint
from voxcpm_engine.checkpoint import CheckpointError
from voxcpm_engine.config import parse_config
from voxcpm_engine.layers.minicpm import MLP, Attention, MiniCPMStack

from test_layers import tiny_raw

PARTS = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}


def lm_config():
    return parse_config(tiny_raw()).lm


def official_state(stack: MiniCPMStack, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the official keys (what a checkpoint file holds)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in stack.state_dict().items()}


class RecordingFile(dict):
    """A state dict with the `release` hook of checkpoint.SafetensorsFile, recording what the loader freed."""

    def __init__(self, *args):
        super().__init__(*args)
        self.released: list[str] = []

    def release(self, key: str) -> None:
        self.released.append(key)


def test_state_dict_lists_the_parts_as_views():
    attn, mlp = Attention(lm_config()), MLP(lm_config())
    assert set(attn.state_dict()) == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}
    assert set(mlp.state_dict()) == {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}
    sd, fused = attn.state_dict(), attn.qkv_proj.weight
    q, k, v = attn.qkv_sizes
    assert sd["q_proj.weight"].shape == (q, fused.shape[1]) and sd["v_proj.weight"].shape == (v, fused.shape[1])
    assert torch.equal(sd["k_proj.weight"], fused[q:q + k])
    assert sd["v_proj.weight"].data_ptr() == fused[q + k:].data_ptr()  # a view: state_dict() copies nothing


def test_load_state_dict_joins_the_parts_and_products_match_separate_layers():
    cfg = lm_config()
    with torch.device("meta"):
        stack = MiniCPMStack(cfg)
    state = official_state(stack)
    stack.load_state_dict(state, strict=True, assign=True)
    attn, mlp = stack.layers[0].self_attn, stack.layers[0].mlp
    prefix = "layers.0.self_attn."
    expected = torch.cat([state[prefix + p + ".weight"] for p in ("q_proj", "k_proj", "v_proj")])
    assert torch.equal(attn.qkv_proj.weight, expected)
    assert {k: v.shape for k, v in stack.state_dict().items()} == {k: v.shape for k, v in state.items()}

    x = torch.randn(2, 3, cfg.hidden_size)
    q, k, v = attn.qkv(x, rope=None)
    ref_v = F.linear(x, state[prefix + "v_proj.weight"]).view(2, 3, cfg.num_key_value_heads, -1).transpose(1, 2)
    ref_q = F.linear(x, state[prefix + "q_proj.weight"]).view(2, 3, cfg.num_attention_heads, -1).transpose(1, 2)
    torch.testing.assert_close(q, ref_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(v, ref_v, rtol=0, atol=1e-6)
    mp = "layers.0.mlp."
    ref_mlp = F.linear(F.silu(F.linear(x, state[mp + "gate_proj.weight"])) * F.linear(x, state[mp + "up_proj.weight"]),
                       state[mp + "down_proj.weight"])
    torch.testing.assert_close(mlp(x), ref_mlp, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_strict_joins_parts_and_releases_the_file_copies(dtype):
    with torch.device("meta"):
        stack = MiniCPMStack(lm_config())
    file = RecordingFile(official_state(stack))
    checkpoint.load_strict(stack, file, dtype=dtype)
    parts = {k for k in file if k.rsplit(".", 2)[-2] in PARTS}
    assert parts and parts <= set(file.released)  # every fused part's file copy is freed once joined
    kept = {k for k in file if k not in parts}
    if dtype == torch.float32:  # not cast, not fused: still the file's own memory, never released
        assert not kept & set(file.released)
        assert stack.layers[0].self_attn.o_proj.weight.data_ptr() == file["layers.0.self_attn.o_proj.weight"].data_ptr()
    gate_up = stack.layers[1].mlp.gate_up_proj.weight
    assert gate_up.dtype == dtype and gate_up.requires_grad
    assert torch.equal(gate_up, torch.cat([file["layers.1.mlp.gate_proj.weight"],
                                           file["layers.1.mlp.up_proj.weight"]]).to(dtype))


def test_load_strict_names_the_part_that_does_not_fit():
    with torch.device("meta"):
        stack = MiniCPMStack(lm_config())
    state = official_state(stack)
    key = "layers.0.self_attn.k_proj.weight"
    rows, cols = state[key].shape
    state[key] = torch.zeros(rows + 1, cols)
    with pytest.raises(CheckpointError, match=rf"shape mismatch\(es\): {key} \(file \[{rows + 1}, {cols}\], "
                                              rf"model \[{rows}, {cols}\]\)"):
        checkpoint.load_strict(stack, state)
    del state[key]
    with pytest.raises(CheckpointError, match=rf"1 missing key\(s\): {key}"):
        checkpoint.load_strict(stack, state)


def test_load_strict_reads_parts_straight_from_a_safetensors_file(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    with torch.device("meta"):
        stack = MiniCPMStack(lm_config())
    state = {k: v.to(torch.bfloat16) for k, v in official_state(stack, seed=3).items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    reads = []
    real = checkpoint.SafetensorsFile.read_into
    monkeypatch.setattr(checkpoint.SafetensorsFile, "read_into", lambda self, key, out: (reads.append(key),
                                                                                         real(self, key, out)))
    checkpoint.load_strict(stack, checkpoint.read_state_dict(tmp_path / "model.safetensors"), dtype=torch.bfloat16)
    # q/k/v are not stored together (safetensors sorts keys: k, o, q, v): read into the fused rows; gate/up are
    # stored back to back (down, gate, up): used in place, zero-copy
    assert sorted(reads) == sorted(k for k in state if k.rsplit(".", 2)[-2] in {"q_proj", "k_proj", "v_proj"})
    for i, layer in enumerate(stack.layers):
        p = f"layers.{i}."
        assert torch.equal(layer.self_attn.qkv_proj.weight, torch.cat(
            [state[p + f"self_attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]))
        assert torch.equal(layer.mlp.gate_up_proj.weight, torch.cat(
            [state[p + f"mlp.{n}.weight"] for n in ("gate_proj", "up_proj")]))
    assert {k: torch.equal(v, state[k]) for k, v in stack.state_dict().items()} == {k: True for k in state}
    file = checkpoint.read_state_dict(tmp_path / "model.safetensors")
    assert file.stacked_view(["layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight"]) is not None
    assert file.stacked_view(["layers.0.mlp.up_proj.weight", "layers.0.mlp.gate_proj.weight"]) is None  # order
    assert file.stacked_view(["layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight"]) is None


def test_fused_parts_stored_together_are_cast_when_the_dtype_differs(tmp_path):
    from safetensors.torch import save_file

    with torch.device("meta"):
        stack = MiniCPMStack(lm_config())
    state = official_state(stack, seed=4)  # fp32 file, bf16 model
    save_file(state, str(tmp_path / "model.safetensors"))
    checkpoint.load_strict(stack, checkpoint.read_state_dict(tmp_path / "model.safetensors"), dtype=torch.bfloat16)
    gate_up = stack.layers[0].mlp.gate_up_proj.weight
    assert gate_up.dtype == torch.bfloat16
    assert torch.equal(gate_up, torch.cat([state["layers.0.mlp.gate_proj.weight"],
                                           state["layers.0.mlp.up_proj.weight"]]).to(torch.bfloat16))
