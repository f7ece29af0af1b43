"""The CPU packed-weight fast path of layers.linear.Linear: same results as F.linear, used only where it applies,
repacked when the weight changes, and end-to-end parity with the reference when it is forced on tiny models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from voxcpm_engine.layers import linear
from voxcpm_engine.layers.linear import Linear, pack_small_batches, packing_available

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no MKL")


def packed_layer(in_features=512, out_features=768, bias=True) -> Linear:
    torch.manual_seed(0)
    layer = Linear(in_features, out_features, bias=bias)
    pack_small_batches(layer)
    return layer


def assert_matches_plain(layer: Linear, x: torch.Tensor) -> torch.Tensor:
    got = layer(x)
    expected = F.linear(x, layer.weight, layer.bias)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    return got


@torch.inference_mode()
def test_packed_product_matches_plain_linear():
    layer = packed_layer()
    assert_matches_plain(layer, torch.randn(2, 5, 512))  # the DiT's shape: CFG pair x 5 tokens
    assert layer._packed == {}  # a row count seen once (a prompt's length) is not worth packing
    assert_matches_plain(layer, torch.randn(2, 5, 512))
    assert list(layer._packed) == [10]
    assert_matches_plain(layer, torch.randn(5, 2, 512).transpose(0, 1))  # non-contiguous input, same row count
    assert list(layer._packed) == [10]


@pytest.mark.parametrize("case", ["off", "bf16", "one_row", "many_rows", "small_weight", "autograd"])
def test_fast_path_only_where_it_applies(case):
    layer = packed_layer(bias=False) if case != "small_weight" else packed_layer(16, 32)
    x = torch.randn(10, layer.in_features)
    if case == "off":
        pack_small_batches(layer, False)
    elif case == "bf16":
        layer, x = layer.to(torch.bfloat16), x.to(torch.bfloat16)
    elif case == "one_row":
        x = x[:1]
    elif case == "many_rows":
        x = torch.randn(linear.MAX_ROWS + 1, layer.in_features)
    if case == "autograd":
        layer(x)
        out = layer(x)
        assert out.requires_grad
        out.sum().backward()
        assert layer.weight.grad is not None
    else:
        with torch.no_grad():
            for _ in range(2):  # a packable row count would be packed on the second call
                torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    assert layer._packed == {}


@torch.inference_mode(False)
def test_changed_weight_is_packed_again():
    layer = packed_layer()
    x = torch.randn(8, 512)
    with torch.no_grad():
        layer(x)
        before = assert_matches_plain(layer, x)
        assert list(layer._packed) == [8]
        layer.weight.mul_(2)  # in place: same storage, new version
        layer(x)
        after = assert_matches_plain(layer, x)
    torch.testing.assert_close(after - layer.bias, 2 * (before - layer.bias), rtol=1e-5, atol=1e-4)
    layer.to(torch.float64)  # moving or casting drops the packed copies
    assert layer._packed == {}


@torch.inference_mode()
def test_keeps_the_two_most_recent_row_counts():
    layer = packed_layer()
    for rows in (10, 10, 20, 20, 10, 30, 40, 40):
        assert_matches_plain(layer, torch.randn(rows, 512))
    assert list(layer._packed) == [10, 40]  # 30 came once: never packed


def test_model_packs_only_the_local_transformers(tiny_v1):
    from voxcpm_engine.engine import Engine

    model = Engine.load(tiny_v1, device="cpu").model
    flags = {name: m.pack_small_batches for name, m in model.named_modules() if isinstance(m, Linear)}
    assert flags and all(flags[n] == n.startswith(("feat_encoder.", "feat_decoder.")) for n in flags)
    assert any(n.startswith("feat_decoder.") for n in flags)


def test_lora_keeps_the_fast_path():
    from voxcpm_engine.lora import LoraLinear

    base = packed_layer()
    lora = LoraLinear(base, torch.randn(4, 512), torch.randn(768, 4), scaling=0.5)
    assert lora.pack_small_batches and lora.base_linear().pack_small_batches
    x = torch.randn(10, 512)
    with torch.inference_mode():
        lora(x)
        expected = F.linear(x, base.weight, base.bias) + F.linear(F.linear(x, lora.lora_A), lora.lora_B) * 0.5
        torch.testing.assert_close(lora(x), expected, rtol=1e-5, atol=1e-4)
    assert list(lora._packed) == [10]


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_parity_with_packing_forced_on(kind, request, reference_model, monkeypatch):
    """Tiny weights are below the packing threshold; lower it so every DiT/LocEnc product of 4+ rows is packed."""
    import numpy as np

    from voxcpm_engine import VoxCPM

    monkeypatch.setattr(linear, "MIN_PACKED_WEIGHT", 0)
    folder = request.getfixturevalue(f"tiny_{kind}")
    ours, ref = VoxCPM(folder, device="cpu"), reference_model(folder)
    got = ours.generate("hello world", seed=5)
    torch.manual_seed(5)
    expected = ref.generate(text="hello world")
    assert got.shape == expected.shape
    assert float(np.max(np.abs(got - expected))) <= 1e-5
    packed = [m for m in ours.engine.model.feat_decoder.modules() if isinstance(m, Linear) and m._packed]
    assert packed, "the packed path did not run"


def test_a_failing_pack_falls_back_to_the_plain_product(monkeypatch, caplog):
    def refuse(*_):
        raise RuntimeError("no packed sgemm in this MKL")

    monkeypatch.setattr(torch.ops.mkl, "_mkl_reorder_linear_weight", refuse)
    monkeypatch.setattr(linear, "_packing_failed", False)
    layer = packed_layer()
    x = torch.randn(10, 512)
    with torch.inference_mode():
        for _ in range(3):
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
    assert layer._packed == {} and not packing_available()
    assert "MKL weight packing is unavailable" in caplog.text
