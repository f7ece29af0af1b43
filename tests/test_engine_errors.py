"""Bad input gets a clear error before any generation, and the loaded model stays usable afterwards."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from voxcpm_engine import Engine, GenerationOptions, VoxCPM
from voxcpm_engine.audio import AudioError
from voxcpm_engine.config import ConfigError


@pytest.fixture(scope="module")
def v1(tiny_v1):
    return VoxCPM(tiny_v1, device="cpu")


@pytest.fixture(scope="module")
def v2(tiny_v2):
    return VoxCPM(tiny_v2, device="cpu")


def clip(path, rate=16000, seconds=0.5, value=None, channels=1):
    n = int(rate * seconds)
    wav = np.random.default_rng(0).standard_normal((n, channels)).astype(np.float32) * 0.2
    if value is not None:
        wav[:] = value
    sf.write(str(path), wav, rate)
    return str(path)


def still_works(tts, seed=1):
    """The model gives the same output as a fresh run after the error (no state left behind)."""
    out = tts.generate("hello world", seed=seed, retry_badcase=False)
    assert out.size > 0 and np.isfinite(out).all()
    return out


CASES_ANY = [
    (dict(text=""), ValueError, "non-empty"),
    (dict(text="   \n\t "), ValueError, "non-empty"),
    (dict(text=None), ValueError, "non-empty"),
    (dict(text="hello", prompt_text="hello"), ValueError, "both be provided"),
    (dict(text="hello", cfg_value=2.0, inference_timesteps=0), ValueError, "inference_timesteps"),
    (dict(text="hello", max_len=0), ValueError, "max_len"),
]


@pytest.mark.parametrize("kwargs,exc,message", CASES_ANY)
def test_bad_arguments(v1, kwargs, exc, message):
    before = still_works(v1)
    with pytest.raises(exc, match=message):
        v1.generate(**kwargs)
    np.testing.assert_array_equal(still_works(v1), before)


def test_prompt_audio_without_transcript_v1(v1, tmp_path):
    with pytest.raises(ValueError, match="both be provided"):
        v1.generate("hello", prompt_wav_path=clip(tmp_path / "a.wav"))
    with pytest.raises(ValueError, match="transcript"):
        v1.engine.make_voice(torch.randn(8000), 16000, None)
    with pytest.raises(ValueError, match="prompt_text is empty"):
        v1.generate("hello", prompt_wav_path=clip(tmp_path / "a.wav"), prompt_text="  ")
    still_works(v1)


def test_reference_audio_on_v1_model(v1, tmp_path):
    with pytest.raises(ValueError, match="only supported by VoxCPM2"):
        v1.generate("hello", reference_wav_path=clip(tmp_path / "r.wav"))
    still_works(v1)


@pytest.mark.parametrize("make,message", [
    (lambda p: str(p / "missing.wav"), "file not found"),
    (lambda p: (p / "junk.wav").write_bytes(b"not audio at all") and str(p / "junk.wav"), "cannot read"),
    (lambda p: clip(p / "empty.wav", seconds=0), "empty"),
    (lambda p: clip(p / "silent.wav", value=0.0), "silent"),
    (lambda p: clip(p / "short.wav", seconds=0.001), "shorter than one patch"),
])
def test_unusable_prompt_audio(v2, tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises((AudioError, FileNotFoundError), match=message) as info:
        v2.generate("hello", reference_wav_path=path)
    assert "reference_wav_path" in str(info.value)
    still_works(v2)


def test_nan_audio_tensor(v2):
    wav = torch.randn(16000)
    wav[100] = float("nan")
    with pytest.raises(AudioError, match="NaN"):
        v2.engine.make_voice(reference_audio=wav, reference_sample_rate=16000)
    still_works(v2)


def test_stereo_and_odd_rate_accepted(v2):
    stereo = torch.randn(2, 11025 // 2) * 0.1
    voice = v2.engine.make_voice(reference_audio=stereo, reference_sample_rate=11025)
    assert voice.mode == "reference" and voice.ref_feat.dtype == torch.float32
    out = v2.generate("hello world", voice=voice, seed=0)
    assert out.size % v2.engine.config.samples_per_patch == 0


def test_text_too_long_names_the_limit(v1):
    text = "hello world " * 200  # far beyond the tiny model's max_length of 256 positions
    with pytest.raises(ValueError, match=r"at most 256 \(max_length\)"):
        v1.generate(text)
    still_works(v1)


def test_voice_from_another_generation_is_refused(v1, v2, tmp_path):
    voice = v2.make_voice(reference_wav_path=clip(tmp_path / "r.wav"))
    with pytest.raises(ValueError, match="different model generation"):
        v1.generate("hello", voice=voice)


def test_interrupt_mid_generation_leaves_model_usable(v2):
    before = v2.engine.generate("hello world", seed=3).waveform

    class Stop(Exception):
        pass

    def interrupt(done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):
        v2.engine.generate("hello world", seed=3, on_patch=interrupt)
    torch.testing.assert_close(v2.engine.generate("hello world", seed=3).waveform, before, rtol=0, atol=0)


def test_progress_total_is_the_true_budget(v2):
    seen = []
    options = GenerationOptions(retry_badcase=False)
    result = v2.engine.generate("hello world", options=options, seed=0, on_patch=lambda d, t: seen.append((d, t)))
    seq = v2.engine.build_sequence("hello world", None)
    budget = v2.engine.max_patches(seq, options)
    assert [d for d, _ in seen] == list(range(1, result.patches.shape[0] + 1))
    assert {t for _, t in seen} == {budget}


def test_missing_files_and_bad_config(tiny_v1, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_v1, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Engine.load(broken, device="cpu")
    shutil.copy(tiny_v1 / "model.safetensors", broken / "model.safetensors")
    raw = json.loads((broken / "config.json").read_text())
    raw["lm_config"]["hidden_size"] = "big"
    (broken / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="lm_config.hidden_size"):
        Engine.load(broken, device="cpu")


def test_mismatched_checkpoint_names_the_tensor(tiny_v1, tiny_v2, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_v1, mixed)
    shutil.copy(tiny_v2 / "model.safetensors", mixed / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors") as info:
        Engine.load(mixed, device="cpu")
    assert "fusion_concat_proj" in str(info.value) or "shape" in str(info.value)


def test_unknown_device_and_dtype(tiny_v1):
    with pytest.raises(ValueError, match="Unsupported device"):
        Engine.load(tiny_v1, device="tpu")
    with pytest.raises(ValueError, match="Unsupported dtype"):
        Engine.load(tiny_v1, device="cpu", dtype="int8")
