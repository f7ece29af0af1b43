"""End-to-end parity with the reference `voxcpm==2.0.3` on tiny random checkpoints (same weights, same seeds).

Every generation and mode: zero-shot, continuation, VoxCPM2 reference / ref_continuation / voice design,
streaming and non-streaming, badcase retry. fp32: same length and max abs difference <= 1e-5."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from voxcpm_engine import GenerationOptions, VoxCPM

TOL_FP32 = 1e-5
TEXT = "hello world"
SEED = 1234


def prompt_clip(path, sample_rate, seconds, seed=7, channels=1):
    """A deterministic pseudo-speech clip (noise bursts under a slow envelope)."""
    rng = np.random.default_rng(seed)
    n = int(sample_rate * seconds)
    envelope = 0.5 + 0.5 * np.sin(np.linspace(0, 6 * np.pi, n))
    wav = (0.3 * envelope * rng.standard_normal(n)).astype(np.float32)
    if channels > 1:
        wav = np.stack([wav, 0.5 * wav], axis=1)
    sf.write(str(path), wav, sample_rate)
    return str(path)


def assert_close(ours: np.ndarray, ref: np.ndarray, tol: float = TOL_FP32):
    assert ours.dtype == np.float32 and ours.ndim == 1
    assert ours.shape == ref.shape, f"length differs: ours {ours.shape} vs reference {ref.shape}"
    diff = float(np.max(np.abs(ours - ref))) if ours.size else 0.0
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol}"
    return diff


def run_reference(ref, seed, streaming=False, **kwargs):
    torch.manual_seed(seed)
    if streaming:
        return [np.asarray(c) for c in ref.generate_streaming(**kwargs)]
    return ref.generate(**kwargs)


def check_pair(ours, ref, streaming, **kwargs):
    """Same seed, same inputs: identical chunk count / length and waveforms within TOL_FP32."""
    expected = run_reference(ref, SEED, streaming, **kwargs)
    if not streaming:
        return assert_close(ours.generate(seed=SEED, **kwargs), expected)
    got = list(ours.generate_streaming(seed=SEED, **kwargs))
    assert len(got) == len(expected) >= 4
    return max(assert_close(a, b) for a, b in zip(got, expected))


@pytest.fixture(scope="module")
def pair_v1(tiny_v1, reference_model):
    return VoxCPM(tiny_v1, device="cpu"), reference_model(tiny_v1)


@pytest.fixture(scope="module")
def pair_v1_5(tiny_v1_5, reference_model):
    return VoxCPM(tiny_v1_5, device="cpu"), reference_model(tiny_v1_5)


@pytest.fixture(scope="module")
def pair_v2(tiny_v2, reference_model):
    return VoxCPM(tiny_v2, device="cpu"), reference_model(tiny_v2)


PAIRS = ["pair_v1", "pair_v1_5", "pair_v2"]


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("streaming", [False, True])
def test_zero_shot(pair, streaming, request):
    ours, ref = request.getfixturevalue(pair)
    check_pair(ours, ref, streaming, text=TEXT, retry_badcase=not streaming)
    assert ours.generate(TEXT, seed=SEED).size >= 4 * ours.engine.config.samples_per_patch
    assert ours.last_seed == SEED


@pytest.mark.parametrize("pair,rate,channels", [("pair_v1", 22050, 2), ("pair_v1_5", 16000, 1),
                                                 ("pair_v2", 16000, 2)])
@pytest.mark.parametrize("streaming", [False, True])
def test_continuation(pair, rate, channels, streaming, request, tmp_path, patched_torchaudio_load):
    """Prompt audio + transcript; v1 resamples with torchaudio like the reference (odd rate, stereo)."""
    ours, ref = request.getfixturevalue(pair)
    clip = prompt_clip(tmp_path / "prompt.wav", rate, 0.5, channels=channels)
    kwargs = dict(text=TEXT, prompt_wav_path=clip, prompt_text="你好", retry_badcase=not streaming)
    check_pair(ours, ref, streaming, **kwargs)


@pytest.mark.parametrize("mode", ["reference", "ref_continuation", "design"])
@pytest.mark.parametrize("streaming", [False, True])
def test_v2_modes(pair_v2, mode, streaming, tmp_path):
    ours, ref = pair_v2
    clip = prompt_clip(tmp_path / "ref.wav", 16000, 0.6, seed=3)
    kwargs = dict(text=TEXT, retry_badcase=not streaming)
    if mode == "reference":
        kwargs.update(reference_wav_path=clip)
    elif mode == "ref_continuation":
        kwargs.update(reference_wav_path=clip, prompt_wav_path=prompt_clip(tmp_path / "p.wav", 16000, 0.3),
                      prompt_text="你好")
    else:
        kwargs.update(text="(calm voice)" + TEXT)
    check_pair(ours, ref, streaming, **kwargs)


def test_v2_streaming_equals_non_streaming_zero_shot_and_reference(pair_v2, tmp_path):
    ours, _ = pair_v2
    clip = prompt_clip(tmp_path / "ref.wav", 16000, 0.6, seed=3)
    for extra in ({}, {"reference_wav_path": clip}):
        whole = ours.generate(TEXT, seed=5, retry_badcase=False, **extra)
        chunks = list(ours.generate_streaming(TEXT, seed=5, **extra))
        assert all(c.size == ours.engine.config.samples_per_patch for c in chunks)
        assert_close(np.concatenate(chunks), whole, tol=1e-5)


@pytest.mark.parametrize("pair", PAIRS)
def test_retry_badcase_matches_reference(pair, request):
    """A ratio threshold of 0.5 makes every attempt 'bad': 3 attempts, the last one is returned."""
    ours, ref = request.getfixturevalue(pair)
    kwargs = dict(text=TEXT, retry_badcase=True, retry_badcase_ratio_threshold=0.5)
    expected = run_reference(ref, SEED, **kwargs)
    result = ours.engine.generate(TEXT, None, GenerationOptions(retry_badcase_ratio_threshold=0.5), seed=SEED)
    assert result.attempts == 3
    assert_close(result.waveform.numpy(), expected)


def test_seed_none_uses_global_generator_like_reference(pair_v2):
    ours, ref = pair_v2
    torch.manual_seed(99)
    got = ours.generate(TEXT)
    expected = run_reference(ref, 99, text=TEXT)
    assert_close(got, expected)


def test_seed_does_not_touch_global_generator(pair_v1):
    ours, _ = pair_v1
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ours.generate(TEXT, seed=11)
    assert torch.equal(before, torch.get_rng_state())
    b = ours.generate(TEXT, seed=11)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ours.generate(TEXT, seed=12))


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_bf16_parity(kind, tmp_path, reference_model):
    """bf16 runtime (config dtype bfloat16, as the releases): the LM path is bit-exact with the reference, the
    fp32 VAE differs only by float rounding. Stated tolerance: 1e-5 on the waveform."""
    from tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(tmp_path / kind, kind, dtype="bfloat16")
    ours, ref = VoxCPM(folder, device="cpu"), reference_model(folder)
    assert ours.engine.dtype == torch.bfloat16
    assert_close(ours.generate(TEXT, seed=SEED), run_reference(ref, SEED, text=TEXT))
    got = list(ours.generate_streaming(TEXT, seed=SEED))
    expected = run_reference(ref, SEED, streaming=True, text=TEXT, retry_badcase=False)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert_close(a, b)


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_bf16_parity_with_attention_window(kind, tmp_path, reference_model, patched_torchaudio_load):
    """A static KV buffer far longer than the sequence: decoding attends over the filled prefix rounded up to whole
    attention blocks (512 slots, then 1024 once a long prompt crosses a block) and stays bit-exact in bf16."""
    import json

    from tiny import build_tiny_checkpoint
    from voxcpm_engine.decode_step import ATTENTION_BLOCK, EagerStep

    folder = build_tiny_checkpoint(tmp_path / kind, kind, dtype="bfloat16")
    config = json.loads((folder / "config.json").read_text())
    config["max_length"] = config["lm_config"]["max_position_embeddings"] = 4 * ATTENTION_BLOCK
    (folder / "config.json").write_text(json.dumps(config))
    ours, ref = VoxCPM(folder, device="cpu"), reference_model(folder)
    windows = []
    original = EagerStep.advance
    EagerStep.advance = lambda self, patch: (windows.append(self.limit), original(self, patch))[1]
    try:
        assert_close(ours.generate(TEXT, seed=SEED), run_reference(ref, SEED, text=TEXT))
        assert set(windows) == {ATTENTION_BLOCK}
        windows.clear()
        rate = 16000
        seconds = 1.2 * ATTENTION_BLOCK * ours.engine.config.samples_per_patch / ours.engine.sample_rate
        clip = prompt_clip(tmp_path / "long.wav", rate, seconds)
        kwargs = dict(text=TEXT, prompt_wav_path=clip, prompt_text="你好", retry_badcase=False)
        assert_close(ours.generate(seed=SEED, **kwargs), run_reference(ref, SEED, **kwargs))
        assert set(windows) == {2 * ATTENTION_BLOCK}
    finally:
        EagerStep.advance = original


def test_zero_shot_prefill_skips_the_patch_encoder(pair_v2):
    """Text-only prompts have no audio positions: the prefill does not run LocEnc over the (all-zero) patches;
    only the generated patches are encoded (one patch per step). Same audio as the reference (test above)."""
    ours, _ = pair_v2
    encoder = ours.engine.model.feat_encoder
    rows = []
    handle = encoder.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[:2]))
    try:
        ours.generate(TEXT, seed=SEED, max_len=6, retry_badcase=False)
    finally:
        handle.remove()
    assert rows and all(tuple(r) == (1, 1) for r in rows)
