"""Audio in: read, check, mono-mix and resample prompt/reference clips. Audio out: write wav files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class AudioError(ValueError):
    """A prompt or reference clip cannot be used; the message names the input and what to do."""


def read_audio(path: str | Path, name: str = "audio") -> tuple[torch.Tensor, int]:
    """Read a file into ([channels, samples] float32, sample_rate) with soundfile."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: file not found: {path}")
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises its own LibsndfileError / RuntimeError
        raise AudioError(f"{name}: cannot read {path} as audio ({e}); use a WAV/FLAC/OGG file") from None
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate)


def to_mono(wav: torch.Tensor | np.ndarray, name: str = "audio") -> torch.Tensor:
    """Accept [T], [C, T] or [1, C, T] (ComfyUI's AUDIO layout); return [1, T] float32 (channel mean)."""
    wav = torch.as_tensor(wav).detach().to("cpu", torch.float32)
    if wav.dim() == 3:
        if wav.shape[0] != 1:
            raise AudioError(f"{name}: expected one clip, got a batch of {wav.shape[0]}; pass clips one at a time")
        wav = wav[0]
    if wav.dim() == 1:
        wav = wav.unsqueeze(0)
    if wav.dim() != 2:
        raise AudioError(f"{name}: expected a waveform shaped [samples] or [channels, samples], got {tuple(wav.shape)}")
    return wav.mean(dim=0, keepdim=True) if wav.shape[0] > 1 else wav


def prepare_audio(wav: torch.Tensor | np.ndarray, sample_rate: int, target_rate: int, *, min_samples: int = 1,
                  name: str = "audio") -> torch.Tensor:
    """Check a clip and bring it to [1, T] float32 mono at target_rate (torchaudio sinc resampling)."""
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"{name}: invalid sample rate {sample_rate!r}")
    wav = to_mono(wav, name)
    if wav.shape[1] == 0:
        raise AudioError(f"{name}: the clip is empty")
    if not torch.isfinite(wav).all():
        raise AudioError(f"{name}: the clip contains NaN or infinite samples")
    if wav.abs().max() == 0:
        raise AudioError(f"{name}: the clip is silent (all samples are zero)")
    if sample_rate != target_rate:
        import torchaudio.functional as AF

        wav = AF.resample(wav, int(sample_rate), int(target_rate))
    if wav.shape[1] < min_samples:
        raise AudioError(f"{name}: the clip is {1000 * wav.shape[1] / target_rate:.0f} ms long, shorter than one "
                         f"patch ({1000 * min_samples / target_rate:.0f} ms); use a clip of a few seconds (5-30 s "
                         "recommended)")
    return wav


def write_wav(path: str | Path, wav: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = torch.as_tensor(wav).detach().cpu().float().reshape(-1).numpy()
    sf.write(str(path), data, int(sample_rate))
    return path
