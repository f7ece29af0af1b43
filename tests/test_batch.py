"""Batch generation: several texts in one batch give each text the audio it gets alone (same seed)."""
from __future__ import annotations

import pytest
import torch

from voxcpm_engine import Engine, GenerationOptions

TEXTS = ["hello world", "你好世界", "Hello, world! This is a test.", "the quick brown fox"]


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_batch_equals_single_runs(kind, request):
    engine = Engine.load(request.getfixturevalue(f"tiny_{kind}"), device="cpu")
    options = GenerationOptions(retry_badcase=False)
    seeds = [11, 12, 13, 14]
    batch = engine.generate_batch(TEXTS, None, options, seeds)
    assert len(batch) == len(TEXTS)
    lengths = set()
    for text, seed, got in zip(TEXTS, seeds, batch):
        alone = engine.generate(text, None, options, seed=seed)
        assert got.waveform.shape == alone.waveform.shape
        torch.testing.assert_close(got.waveform, alone.waveform, rtol=0, atol=1e-5)
        lengths.add(got.waveform.numel())
    assert len(lengths) > 1, "the texts should stop at different lengths (per-sample stop)"


def test_batch_with_voice_and_retry(tiny_v2):
    engine = Engine.load(tiny_v2, device="cpu")
    voice = engine.make_voice(reference_audio=torch.randn(16000) * 0.1, reference_sample_rate=16000)
    options = GenerationOptions(retry_badcase_ratio_threshold=0.5)  # every attempt is "bad": 3 attempts each
    batch = engine.generate_batch(TEXTS[:3], voice, options, [1, 2, 3])
    assert [r.attempts for r in batch] == [3, 3, 3]
    for text, seed, got in zip(TEXTS[:3], [1, 2, 3], batch):
        alone = engine.generate(text, voice, options, seed=seed)
        assert alone.attempts == 3
        torch.testing.assert_close(got.waveform, alone.waveform, rtol=0, atol=1e-5)


def test_batch_errors(tiny_v1):
    engine = Engine.load(tiny_v1, device="cpu")
    with pytest.raises(ValueError, match="non-empty list"):
        engine.generate_batch("hello")
    with pytest.raises(ValueError, match="2 seeds for 1 texts"):
        engine.generate_batch(["hello"], seeds=[1, 2])
    with pytest.raises(ValueError, match="non-empty string"):
        engine.generate_batch(["hello", "  "])


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_low_vram_piecewise_decode_gives_the_same_audio(kind, request):
    folder = request.getfixturevalue(f"tiny_{kind}")
    normal = Engine.load(folder, device="cpu")
    low = Engine.load(folder, device="cpu", low_vram=True)
    assert low.vae_device.type == "cpu" and low.decode_chunk_frames == 10 * 16000 // low.config.audio_vae.hop_length
    low.decode_chunk_frames = 3  # force several pieces on these short tiny outputs
    options = GenerationOptions(retry_badcase=False)
    for text, seed in (("hello world", 1), ("Hello, world! This is a test.", 2)):
        expected = normal.generate(text, None, options, seed=seed).waveform
        got = low.generate(text, None, options, seed=seed)
        assert got.patches.shape[0] * low.config.patch_size > 3  # really decoded in pieces
        torch.testing.assert_close(got.waveform, expected, rtol=0, atol=1e-6)
