"""Layer-level parity against the reference `voxcpm` modules (the oracle), fp32 and bf16.

Each reference module is built under a fixed seed with perturbed RMSNorm weights; ours is built on the meta device,
gets the reference state_dict with strict=True/assign=True and its RoPE tables rebuilt, exactly as the engine loads.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from voxcpm.modules.layers.scalar_quantization_layer import ScalarQuantizationLayer
from voxcpm.modules.locdit import local_dit as ref_dit_v1
from voxcpm.modules.locdit import local_dit_v2 as ref_dit_v2
from voxcpm.modules.locdit.unified_cfm import CfmConfig, UnifiedCFM
from voxcpm.modules.locenc.local_encoder import VoxCPMLocEnc
from voxcpm.modules.minicpm4.config import MiniCPM4Config
from voxcpm.modules.minicpm4.model import MiniCPMModel

from voxcpm_engine.config import parse_config
from voxcpm_engine.layers.cfm import FlowMatching
from voxcpm_engine.layers.fsq import ScalarQuantizer
from voxcpm_engine.layers.locdit import LocDiT, sinusoidal_embedding
from voxcpm_engine.layers.locenc import LocEnc
from voxcpm_engine.layers.minicpm import MiniCPMStack, RotaryEmbedding

# fp32 must match to this; bf16 is bit-exact (asserted with 0)
FP32_TOL = 1e-6
DTYPES = [torch.float32, torch.bfloat16]

LOCAL = {"hidden_dim": 16, "ffn_dim": 32, "num_heads": 2, "num_layers": 1, "kv_channels": 8}


def tiny_raw(version: int = 1, use_mup: bool = True) -> dict:
    """The tiny config.json of spec §13.2."""
    raw = {
        "architecture": "voxcpm2" if version == 2 else "voxcpm",
        "lm_config": {
            "bos_token_id": 1, "eos_token_id": 2, "vocab_size": 110,
            "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, "kv_channels": 8, "max_position_embeddings": 512,
            "rope_scaling": {"type": "longrope", "long_factor": [1.0, 1.5, 2.0, 2.5],
                             "short_factor": [1.0, 1.1, 1.2, 1.3], "original_max_position_embeddings": 256},
            "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "scale_emb": 12, "dim_model_base": 256,
            "scale_depth": 1.4, "use_mup": use_mup,
        },
        "patch_size": 2, "feat_dim": 8, "residual_lm_num_layers": 1,
        "scalar_quantization_latent_dim": 16, "scalar_quantization_scale": 9,
        "encoder_config": dict(LOCAL),
        "dit_config": {**LOCAL, "cfm_config": {"sigma_min": 1e-6, "solver": "euler", "t_scheduler": "log-norm",
                                                "inference_cfg_rate": 2.0}},
        "audio_vae_config": {"encoder_dim": 4, "encoder_rates": [4, 5], "latent_dim": 8, "decoder_dim": 16,
                             "decoder_rates": [5, 4], "depthwise": True, "sample_rate": 16000},
        "max_length": 256, "device": "cpu", "dtype": "float32",
    }
    if version == 2:
        raw["residual_lm_no_rope"] = True
        raw["dit_config"]["dit_mean_mode"] = False
        raw["audio_vae_config"].update(decoder_rates=[5, 4, 3], out_sample_rate=48000,
                                       sr_bin_boundaries=[20000, 30000, 40000], cond_type="scale_bias")
    return raw


def ref_lm_config(raw: dict, **overrides) -> MiniCPM4Config:
    cfg = MiniCPM4Config(**copy.deepcopy(raw["lm_config"]))
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def ref_local_config(raw: dict, local: dict) -> MiniCPM4Config:
    """The reference derives every local stack from a copy of lm_config."""
    return ref_lm_config(raw, hidden_size=local["hidden_dim"], intermediate_size=local["ffn_dim"],
                         num_attention_heads=local["num_heads"], num_hidden_layers=local["num_layers"],
                         kv_channels=local["kv_channels"], vocab_size=0)


def build_ref(factory, seed: int, dtype: torch.dtype):
    torch.manual_seed(seed)
    ref = factory()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:  # all-ones init would hide normalization bugs
                p.copy_(1 + 0.5 * torch.randn_like(p))
    return ref.to(dtype).eval()


def load_ours(factory, ref: torch.nn.Module):
    """Meta-build ours, assign the reference weights (strict), rebuild the derived RoPE buffers."""
    dtype = next(ref.parameters()).dtype
    with torch.device("meta"):
        ours = factory()
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    for m in ours.modules():
        if isinstance(m, RotaryEmbedding):
            m.init_buffers("cpu", dtype)
    return ours.eval()


def assert_close(ours: torch.Tensor, ref: torch.Tensor):
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    diff = (ours.float() - ref.float()).abs().max().item()
    tol = FP32_TOL if ref.dtype == torch.float32 else 0.0
    assert diff <= tol, f"max abs diff {diff} > {tol}"


def randn(*shape, dtype):
    return torch.randn(*shape).to(dtype)


# ------------------------------------------------------------------------------------------------ MiniCPM stack

STACK_CASES = [  # (use_mup, no_rope)
    (True, False), (False, False), (True, True),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("use_mup,no_rope", STACK_CASES, ids=["mup", "no-mup", "no-rope"])
@torch.inference_mode()
def test_stack_prefill_and_steps(use_mup, no_rope, dtype):
    raw = tiny_raw(use_mup=use_mup)
    raw["lm_config"]["no_rope"] = no_rope
    cfg = parse_config(raw)
    ref = build_ref(lambda: MiniCPMModel(ref_lm_config(raw)), 0, dtype)
    ours = load_ours(lambda: MiniCPMStack(cfg.lm), ref)
    assert hasattr(ours, "embed_tokens") and (ours.rotary is None) == no_rope

    T, max_len, n_steps = 7, 32, 6
    x = randn(1, T, 32, dtype=dtype)
    ref.setup_cache(1, max_len, "cpu", dtype)
    ref_h, ref_kv = ref(x, is_causal=True)
    ref.kv_cache.fill_caches(ref_kv)
    cache = ours.new_cache(1, max_len, "cpu", dtype)
    assert_close(ours(x, is_causal=True, cache=cache), ref_h)

    for _ in range(n_steps):
        xs = randn(1, 32, dtype=dtype)
        pos = ref.kv_cache.step()
        ref_y = ref.forward_step(xs, torch.tensor([pos]))
        assert_close(ours.step(xs, cache, torch.tensor([pos])), ref_y)
    assert_close(cache.k, ref.kv_cache.kv_cache[0])
    assert_close(cache.v, ref.kv_cache.kv_cache[1])


@torch.inference_mode()
def test_stack_non_causal_and_no_embedding():
    raw = tiny_raw()
    cfg = parse_config(raw)
    ref = build_ref(lambda: MiniCPMModel(ref_lm_config(raw, vocab_size=0)), 1, torch.float32)
    ours = load_ours(lambda: MiniCPMStack(dataclasses.replace(cfg.lm, vocab_size=0)), ref)
    assert not hasattr(ours, "embed_tokens")
    x = torch.randn(2, 5, 32)
    assert_close(ours(x, is_causal=False), ref(x, is_causal=False)[0])


@torch.inference_mode()
def test_rope_tables_match_reference():
    raw = tiny_raw()
    cfg = parse_config(raw)
    for dtype in DTYPES:
        ref = MiniCPMModel(ref_lm_config(raw)).to(dtype)
        ours = load_ours(lambda: MiniCPMStack(cfg.lm), ref)
        assert torch.equal(ours.rotary.cos, ref.rope_emb.cos_cached)
        assert torch.equal(ours.rotary.sin, ref.rope_emb.sin_cached)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@torch.inference_mode()
def test_step_batch_of_two_matches_single_runs(dtype):
    """Per-sample positions: a batched step equals each sample stepped alone."""
    cfg = parse_config(tiny_raw())
    torch.manual_seed(2)
    stack = MiniCPMStack(cfg.lm).to(dtype).eval()
    with torch.no_grad():
        for layer in stack.layers:
            layer.input_layernorm.weight.copy_(1 + 0.5 * torch.randn(32))
    max_len, lengths, n_steps = 24, (5, 9), 4
    prompts = [randn(1, n, 32, dtype=dtype) for n in lengths]
    steps = randn(n_steps, 2, 32, dtype=dtype)

    batched = stack.new_cache(2, max_len, "cpu", dtype)
    singles = []
    for b, prompt in enumerate(prompts):
        single = stack.new_cache(1, max_len, "cpu", dtype)
        stack(prompt, is_causal=True, cache=single)
        batched.k[:, b], batched.v[:, b] = single.k[:, 0], single.v[:, 0]
        singles.append(single)

    positions = torch.tensor(lengths)
    for i in range(n_steps):
        y = stack.step(steps[i], batched, positions + i)
        for b in range(2):
            y1 = stack.step(steps[i, b:b + 1], singles[b], torch.tensor([lengths[b] + i]))
            # batch 2 vs 1 may pick different GEMM kernels: fp32 differs by ~5e-7; bf16 is exact here but
            # allowed one ulp
            tol = dict(rtol=0, atol=FP32_TOL) if dtype == torch.float32 else dict(rtol=2 ** -7, atol=1e-3)
            torch.testing.assert_close(y[b:b + 1], y1, **tol)


# ------------------------------------------------------------------------------------------------ LocEnc / FSQ

@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@torch.inference_mode()
def test_locenc(dtype):
    raw = tiny_raw()
    cfg = parse_config(raw)
    ref = build_ref(lambda: VoxCPMLocEnc(ref_local_config(raw, LOCAL), input_dim=8), 3, dtype)
    ours = load_ours(lambda: LocEnc(cfg), ref)
    x = randn(2, 3, 2, 8, dtype=dtype)
    assert_close(ours(x), ref(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@torch.inference_mode()
def test_fsq(dtype):
    ref = build_ref(lambda: ScalarQuantizationLayer(32, 32, 16, 9), 4, dtype)
    ours = load_ours(lambda: ScalarQuantizer(32, 16, 9), ref)
    x = randn(3, 5, 32, dtype=dtype) * 3
    assert_close(ours(x), ref(x))


# ------------------------------------------------------------------------------------------------ LocDiT / CFM

def ref_locdit(raw: dict, version: int):
    module = ref_dit_v2 if version == 2 else ref_dit_v1
    return module.VoxCPMLocDiT(ref_local_config(raw, LOCAL), in_channels=8)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("version", [1, 2], ids=["v1", "v2"])
@torch.inference_mode()
def test_locdit(version, dtype):
    raw = tiny_raw(version)
    cfg = parse_config(raw)
    ref = build_ref(lambda: ref_locdit(raw, version), 5, dtype)
    ours = load_ours(lambda: LocDiT(cfg), ref)
    N, P = 3, 2
    args = (randn(N, 8, P, dtype=dtype), randn(N, 16 * version, dtype=dtype), torch.rand(N).to(dtype),
            randn(N, 8, P, dtype=dtype), torch.zeros(N, dtype=dtype))
    assert_close(ours(*args), ref(*args))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
def test_sinusoid_bf16_arange_quirk(dtype):
    """At real width (1024) the bf16 frequency indices above 256 are rounded; ours must round the same way."""
    t = torch.tensor([0.0, 0.3, 0.987, 1.0]).to(dtype)
    assert torch.equal(sinusoidal_embedding(t, 1024), ref_dit_v1.SinusoidalPosEmb(1024)(t, scale=1000))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("version,n_timesteps", [(1, 10), (2, 10), (2, 49)], ids=["v1-10", "v2-10", "v2-49"])
@torch.inference_mode()
def test_cfm(version, n_timesteps, dtype):
    """n=49 is the first n with two zero-init steps (int(50 * 0.04) = 2).

    The reference draws its noise internally; we redraw it from the same seed.
    """
    raw = tiny_raw(version)
    cfg = parse_config(raw)
    ref = build_ref(lambda: UnifiedCFM(8, CfmConfig(), ref_locdit(raw, version)), 6, dtype)
    ours = load_ours(lambda: FlowMatching(cfg), ref)
    B, P = 2, 2
    mu, cond = randn(B, 16 * version, dtype=dtype), randn(B, 8, P, dtype=dtype)
    torch.manual_seed(123)
    ref_out = ref(mu, n_timesteps, P, cond, cfg_value=2.0)
    torch.manual_seed(123)
    noise = torch.randn((B, 8, P), dtype=dtype)
    assert_close(ours(mu, cond, noise, n_timesteps, 2.0), ref_out)
