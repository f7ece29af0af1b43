"""ZipEnhancer speech denoising (iic/speech_zipenhancer_ans_multiloss_16k_base), tensors in and out.

The model is loaded the official way, through modelscope's acoustic-noise-suppression pipeline on the local folder.
Inference calls that pipeline's network directly on tensors, window by window: the pipeline itself only reads files,
prints to stdout, runs clips of up to 6 s in one piece (memory grows with the square of the length) and zeroes up to
0.25 s at the end of some long clips. Here every clip longer than 2 s is cut into 2 s windows (the pipeline's own window
for long audio) that overlap by 0.5 s and are cross-faded, so memory stays flat for any length; a shorter clip is one
piece at its own length. The output has exactly the input's length, sample rate and channel count (each channel is
denoised on its own).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from . import ModelSpec, ensure_model, require

ZIPENHANCER = ModelSpec(
    name="speech_zipenhancer_ans_multiloss_16k_base",
    what="ZipEnhancer (speech denoiser)",
    repos={"modelscope": "iic/speech_zipenhancer_ans_multiloss_16k_base"},  # published on ModelScope only
    files=("configuration.json", "pytorch_model.bin"),
)
MODEL_RATE = 16000
HOP = 100  # the network's STFT hop (n_fft 400): windows are whole multiples of it
MIN_SAMPLES = 4 * HOP  # shorter clips are zero-padded to this
WINDOW_SECONDS = 2.0
OVERLAP_SECONDS = 0.5
TARGET_LUFS = -20.0  # what the official VoxCPM demo normalises the denoised prompt to
_PIP = '"modelscope[framework]"'


# ------------------------------------------------------------------------------------------------- windowing

def window_starts(length: int, window: int, hop: int) -> list[int]:
    """Start offsets of windows of `window` samples covering [0, length); the last one ends exactly at `length`."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, hop))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def window_weights(window: int, fade: int, first: bool, last: bool) -> torch.Tensor:
    """Cross-fade weights of one window: raised-cosine ramps of `fade` samples at the edges that meet a neighbour.
    Every ramp value is > 0, so the weighted overlap-add below never divides by zero."""
    w = torch.ones(window, dtype=torch.float64)
    fade = min(fade, window // 2)
    if fade > 0:
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(fade, dtype=torch.float64) + 0.5) / fade)
        if not first:
            w[:fade] = ramp
        if not last:
            w[-fade:] = ramp.flip(0)
    return w


def overlap_add(length: int, window: int, overlap: int, run: Callable[[torch.Tensor], torch.Tensor],
                signal: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """run() on every window of a 1-D signal, cross-faded back together; the result has `length` samples."""
    starts = window_starts(length, window, window - overlap)
    out = torch.zeros(max(length, window), dtype=torch.float64)
    norm = torch.zeros_like(out)
    padded = torch.nn.functional.pad(signal, (0, max(0, window - length)))
    for i, start in enumerate(starts):
        piece = run(padded[start:start + window])
        w = window_weights(window, overlap, first=i == 0, last=i == len(starts) - 1)
        out[start:start + window] += piece.to(torch.float64).cpu() * w
        norm[start:start + window] += w
        if progress is not None:
            progress(i + 1, len(starts))
    return (out / norm)[:length].to(torch.float32)


# ------------------------------------------------------------------------------------------------- loudness

def normalize_loudness(wav: torch.Tensor, sample_rate: int, target_lufs: float = TARGET_LUFS) -> torch.Tensor:
    """Scale [C, T] to `target_lufs` (ITU-R BS.1770), never above a peak of 0.999; clips too short or too quiet to
    measure (under 0.4 s, or silent) are returned unchanged."""
    import torchaudio.functional as AF

    if wav.shape[-1] < int(0.4 * sample_rate) or not bool(wav.abs().max() > 0):
        return wav
    loudness = float(AF.loudness(wav.to(torch.float32), sample_rate))
    if not math.isfinite(loudness):
        return wav
    out = wav * 10.0 ** ((target_lufs - loudness) / 20.0)
    peak = float(out.abs().max())
    return out * (0.999 / peak) if peak > 0.999 else out


# ------------------------------------------------------------------------------------------------- model

class ZipEnhancer:
    """A loaded ZipEnhancer network on one device."""

    def __init__(self, network: torch.nn.Module, folder: Path, device: str):
        self.network, self.folder, self.device = network, folder, torch.device(device)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", source: str = "offline") -> "ZipEnhancer":
        """Load the model folder (downloading it first if it is missing and `source` allows)."""
        folder = ensure_model(ZIPENHANCER, folder, source)
        require("modelscope", _PIP, "The ZipEnhancer denoiser")
        for module in ("addict", "datasets"):  # modelscope's pipelines import these; only the extra installs them
            require(module, _PIP, "The ZipEnhancer denoiser")
        pipelines = require("modelscope.pipelines", _PIP, "The ZipEnhancer denoiser")
        from modelscope.utils.constant import Tasks

        # An absolute folder never reaches the hub (a relative "a/b" would be taken for a model id).
        pipe = pipelines.pipeline(Tasks.acoustic_noise_suppression, model=str(folder), device="cpu")
        network = pipe.model
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"{folder}/configuration.json does not describe a ZipEnhancer model "
                            f"(the pipeline built a {type(network).__name__})")
        network.eval().requires_grad_(False)
        return cls(network.to(device), folder, str(device))

    def to(self, device) -> "ZipEnhancer":
        self.network.to(device)
        self.device = torch.device(device)
        return self

    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.network.parameters())

    def _run_window(self, piece: torch.Tensor) -> torch.Tensor:
        if not bool(piece.abs().max() > 0):  # the network normalises by the RMS: silence would give NaN
            return torch.zeros_like(piece)
        x = piece.to(self.device, torch.float32)[None]
        with torch.inference_mode():
            y = self.network({"noisy": x})["wav_l2"][0]
        y = y.float().cpu()
        if y.shape[0] < piece.shape[0]:  # the inverse STFT may end a few samples short of the window
            y = torch.nn.functional.pad(y, (0, piece.shape[0] - y.shape[0]))
        return torch.nan_to_num(y[:piece.shape[0]])

    def enhance(self, wav: torch.Tensor, sample_rate: int, *, loudness: bool = False,
                window_seconds: float = WINDOW_SECONDS, overlap_seconds: float = OVERLAP_SECONDS,
                progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Denoise [C, T] (or [T]) audio at any sample rate; returns float32 [C, T] at the same rate and length.

        `loudness` normalises the result to -20 LUFS (as the official demo does). `progress(done, total)` is called
        after every window (it may raise to cancel)."""
        import torchaudio.functional as AF

        wav = torch.as_tensor(wav).detach().to("cpu", torch.float32)
        squeeze = wav.dim() == 1
        if squeeze:
            wav = wav[None]
        if wav.dim() != 2:
            raise ValueError(f"audio to denoise must be [channels, samples], got {tuple(wav.shape)}")
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"invalid sample rate {sample_rate!r}")
        sample_rate = int(sample_rate)
        if wav.shape[1] == 0:
            raise ValueError("the audio to denoise is empty")
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("the audio to denoise contains NaN or infinite samples")
        window = max(MIN_SAMPLES, int(round(window_seconds * MODEL_RATE / HOP)) * HOP)
        overlap = min(int(round(overlap_seconds * MODEL_RATE)), window // 2)
        channels, length = wav.shape
        x = AF.resample(wav, sample_rate, MODEL_RATE) if sample_rate != MODEL_RATE else wav
        n = x.shape[1]
        if n <= window:  # one piece at its own length (whole STFT hops), not padded to a full window
            window = max(MIN_SAMPLES, -(-n // HOP) * HOP)
        total = channels * len(window_starts(n, window, window - overlap))
        outs = []
        for c in range(channels):
            done = c * (total // channels)
            step = None if progress is None else (lambda i, _t, d=done: progress(d + i, total))
            outs.append(overlap_add(n, window, overlap, self._run_window, x[c], step))
        y = torch.stack(outs)
        if sample_rate != MODEL_RATE:
            y = AF.resample(y, MODEL_RATE, sample_rate)
        if y.shape[1] < length:
            y = torch.nn.functional.pad(y, (0, length - y.shape[1]))
        y = y[:, :length].contiguous()
        if loudness:
            y = normalize_loudness(y, sample_rate)
        return y[0] if squeeze else y
