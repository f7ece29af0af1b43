"""AudioVAE parity with the reference `voxcpm` classes (the oracle), for both generations."""
import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from voxcpm_engine.config import VAE_DEFAULTS, AudioVAEConfig
from voxcpm_engine.layers.audiovae import AudioVAE

TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")  # the reference's legacy API


def _load_reference(name: str):
    # Load the single file: importing the `voxcpm` package would pull in its whole runtime (slow).
    root = Path(importlib.util.find_spec("voxcpm").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location(f"ref_{name}", root / "modules" / "audiovae" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = {1: _load_reference("audio_vae"), 2: _load_reference("audio_vae_v2")}


def reference_vae(cfg: AudioVAEConfig):
    """Our config -> the reference AudioVAE of the same generation."""
    kw = dict(encoder_dim=cfg.encoder_dim, encoder_rates=list(cfg.encoder_rates), latent_dim=cfg.latent_channels,
              decoder_dim=cfg.decoder_dim, decoder_rates=list(cfg.decoder_rates), depthwise=cfg.depthwise,
              sample_rate=cfg.sample_rate, use_noise_block=cfg.use_noise_block)
    if cfg.version == 2:
        kw.update(out_sample_rate=cfg.output_sample_rate, cond_type=cfg.cond_type, cond_dim=cfg.cond_dim,
                  cond_out_layer=cfg.cond_out_layer,
                  sr_bin_boundaries=None if cfg.sr_bin_boundaries is None else list(cfg.sr_bin_boundaries))
    ref = REF[cfg.version]
    return ref.AudioVAE(ref.AudioVAEConfig(**kw))


TINY_V1 = AudioVAEConfig(version=1, encoder_dim=4, encoder_rates=(4, 5), latent_dim=8, decoder_dim=16,
                         decoder_rates=(5, 4), depthwise=True, sample_rate=16000)
TINY_V1_ODD = dataclasses.replace(TINY_V1, encoder_rates=(2, 3, 7), decoder_rates=(7, 3, 2), sample_rate=44100)
TINY_V2 = dataclasses.replace(TINY_V1, version=2, decoder_rates=(5, 4, 3), out_sample_rate=48000,
                              sr_bin_boundaries=(20000, 30000, 40000), cond_type="scale_bias")
TINY_V2_ODD = dataclasses.replace(TINY_V2, encoder_rates=(3, 7), decoder_rates=(7, 3, 2))
TINY_V1_DENSE = dataclasses.replace(TINY_V1, depthwise=False)
TINY = {"v1": TINY_V1, "v1_odd": TINY_V1_ODD, "v1_dense": TINY_V1_DENSE, "v2": TINY_V2, "v2_odd": TINY_V2_ODD}

VOXCPM15_VAE = dataclasses.replace(VAE_DEFAULTS[1], encoder_dim=64, encoder_rates=(2, 3, 6, 7, 7), latent_dim=64,
                                   decoder_dim=2048, decoder_rates=(7, 7, 6, 3, 2), sample_rate=44100)
FULL = {"voxcpm-0.5b": (VAE_DEFAULTS[1], 243), "voxcpm1.5": (VOXCPM15_VAE, 299), "voxcpm2": (VAE_DEFAULTS[2], 312)}


def make_pair(cfg: AudioVAEConfig, seed: int = 0):
    """A reference VAE with every parameter moved off its init, and ours loaded from it (strict)."""
    torch.manual_seed(seed)
    ref = reference_vae(cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("alpha", "weight_g", "_embed.weight")):
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
            if name.endswith("bias_embed.weight"):
                p.normal_(0, 0.1)
    ours = AudioVAE(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=list(TINY))
def pair(request):
    return request.param, TINY[request.param], *make_pair(TINY[request.param])


@torch.no_grad()
def test_encode_matches_reference(pair):
    name, cfg, ref, ours = pair
    torch.manual_seed(1)
    wav = torch.randn(2, 1, 7 * cfg.hop_length + 13) * 0.3  # not a multiple of hop: exercises the right pad
    z = ours.encode(wav)
    assert z.shape == (2, cfg.latent_channels, 8)
    d = max_diff(z, ref.encode(wav, cfg.sample_rate))
    print(f"{name} encode max|diff| = {d:.2e}")
    assert d <= TOL
    assert max_diff(ours.encode(wav[:, 0]), z) == 0.0  # [B,T] input


@torch.no_grad()
def test_decode_matches_reference(pair):
    name, cfg, ref, ours = pair
    torch.manual_seed(2)
    z = torch.randn(2, cfg.latent_channels, 9)
    wav = ours.decode(z)
    assert wav.shape == (2, 1, 9 * ours.decode_hop_length)
    assert 0.01 < wav.std() and wav.abs().max() < 0.999  # not silent, not saturated by tanh
    d = max_diff(wav, ref.decode(z))
    print(f"{name} decode max|diff| = {d:.2e}")
    assert d <= TOL


@torch.no_grad()
def test_stream_decode_equals_full_decode(pair):
    name, cfg, ref, ours = pair
    torch.manual_seed(3)
    zs = [torch.randn(2, cfg.latent_channels, 11), torch.randn(2, cfg.latent_channels, 11)]
    streams = [ours.stream_decoder(), ours.stream_decoder()]  # two interleaved streams over one module
    sizes = [2, 1, 3, 4, 1]
    outs = [[], []]
    for i in range(len(sizes)):
        for z, dec, out in zip(zs, streams, outs):
            chunk = torch.split(z, sizes, dim=-1)[i]
            piece = dec.decode(chunk)
            assert piece.shape == (2, 1, chunk.shape[-1] * ours.decode_hop_length)
            out.append(piece)
    for z, out in zip(zs, outs):
        d = max_diff(torch.cat(out, dim=-1), ours.decode(z))
        print(f"{name} stream vs full max|diff| = {d:.2e}")
        assert d <= TOL
    z = zs[0]
    if cfg.version == 2:
        with ref.streaming_decode() as dec:
            ref_stream = torch.cat([dec.decode_chunk(c) for c in torch.split(z, sizes, dim=-1)], dim=-1)
        d = max_diff(torch.cat(outs[0], dim=-1), ref_stream)
        print(f"{name} stream vs reference stream max|diff| = {d:.2e}")
        assert d <= TOL


@torch.no_grad()
def test_fold_weight_norm_and_reload(pair):
    name, cfg, ref, _ = pair
    ours = AudioVAE(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    z = torch.randn(1, cfg.latent_channels, 5)
    expected = ours.decode(z)
    ours.fold_weight_norm()
    assert max_diff(ours.decode(z), expected) == 0.0
    assert set(ours.state_dict()) == set(ref.state_dict())  # folded weights are not state
    fresh = AudioVAE(cfg).eval()
    ours.load_state_dict(fresh.state_dict(), strict=True)  # loading unfolds
    assert max_diff(ours.decode(z), fresh.decode(z)) == 0.0


@torch.no_grad()
def test_meta_build_assign_load(pair):
    name, cfg, ref, ours = pair
    with torch.device("meta"):
        meta = AudioVAE(cfg)
    meta.load_state_dict(ref.state_dict(), strict=True, assign=True)
    meta.eval()
    assert all(not t.is_meta for t in meta.state_dict().values())
    torch.manual_seed(4)
    wav = torch.randn(1, 1, 3 * cfg.hop_length) * 0.3
    z = torch.randn(1, cfg.latent_channels, 4)
    assert max_diff(meta.encode(wav), ours.encode(wav)) == 0.0
    assert max_diff(meta.decode(z), ours.decode(z)) == 0.0


def test_sample_rate_bucket_and_properties():
    v2 = AudioVAE(TINY_V2)
    assert (v2.sample_rate, v2.out_sample_rate, v2.hop_length, v2.decode_hop_length, v2.latent_dim) == \
        (16000, 48000, 20, 60, 8)
    assert v2.decoder.sr_bin_boundaries.dtype == torch.int32
    v1 = AudioVAE(TINY_V1_ODD)
    assert (v1.sample_rate, v1.out_sample_rate, v1.hop_length, v1.decode_hop_length) == (44100, 44100, 42, 42)
    # 48 kHz falls in the last bucket (torch.bucketize, right=False): its scale/bias are the ones used
    _, ours = make_pair(TINY_V2)
    z = torch.randn(1, 8, 3)
    with torch.no_grad():
        before = ours.decode(z)
        for cond in ours.decoder.sr_cond_model.values():
            cond.scale_embed.weight[:3] = 0.0
        assert max_diff(ours.decode(z), before) == 0.0
        for cond in ours.decoder.sr_cond_model.values():
            cond.scale_embed.weight[3] += 0.5
        assert max_diff(ours.decode(z), before) > 1e-3


def _shapes(module: torch.nn.Module) -> dict:
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", list(FULL))
def test_full_size_state_dict_matches_reference(name):
    cfg, n_keys = FULL[name]
    with torch.device("meta"):
        ref, ours = reference_vae(cfg), AudioVAE(cfg)
    assert _shapes(ours) == _shapes(ref)
    assert len(_shapes(ours)) == n_keys
    assert not any("padding" in k for k in _shapes(ours))
