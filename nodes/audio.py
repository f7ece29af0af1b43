"""ComfyUI AUDIO values ({"waveform": [B, C, T] float32, "sample_rate": int}) <-> plain tensors."""
from __future__ import annotations

import base64
import hashlib

import torch


def from_audio(audio, name: str) -> tuple[torch.Tensor, int]:
    """An AUDIO input -> ([C, T] float32 CPU copy, sample_rate); one clip only (a batch is refused)."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise ValueError(f"{name}: expected an AUDIO value (a dict with 'waveform' and 'sample_rate'), "
                         f"got {type(audio).__name__}")
    wav = torch.as_tensor(audio["waveform"]).detach().to("cpu", torch.float32)
    if wav.dim() == 3:
        if wav.shape[0] != 1:
            raise ValueError(f"{name}: got a batch of {wav.shape[0]} clips; connect a single clip")
        wav = wav[0]
    elif wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2:
        raise ValueError(f"{name}: expected a waveform shaped [batch, channels, samples], got {tuple(wav.shape)}")
    return wav.clone(), int(audio["sample_rate"])


def to_audio(waveform: torch.Tensor, sample_rate: int) -> dict:
    """A mono waveform [T] -> a new AUDIO value: CPU float32 [1, 1, T]."""
    wav = waveform.detach().to("cpu", torch.float32).reshape(1, 1, -1).clone()
    return {"waveform": wav, "sample_rate": int(sample_rate)}


def audio_hash(wav: torch.Tensor, sample_rate: int) -> str:
    """Content hash of a clip (samples, shape and rate), used as a cache key."""
    h = hashlib.sha256()
    h.update(f"{tuple(wav.shape)}@{int(sample_rate)}".encode())
    h.update(wav.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def trim_silence(wav: torch.Tensor, sample_rate: int, threshold_db: float = -40.0, frame_ms: float = 20.0,
                 keep_ms: float = 100.0) -> torch.Tensor:
    """Cut leading and trailing silence from [C, T]: frames whose RMS (channel mean) is below threshold_db
    relative to the loudest frame are dropped at both ends, keeping keep_ms of margin. All-quiet clips are
    returned unchanged (the engine reports silent clips with its own message)."""
    frame = max(1, int(sample_rate * frame_ms / 1000))
    if not torch.isfinite(wav).all():
        return wav
    mono = wav.mean(dim=0)
    n = mono.shape[0] // frame
    if n < 2:
        return wav
    rms = mono[: n * frame].reshape(n, frame).pow(2).mean(dim=1).sqrt()
    peak = float(rms.max())
    if peak <= 0:
        return wav
    loud = (rms >= peak * 10 ** (threshold_db / 20)).nonzero().flatten()
    keep = int(sample_rate * keep_ms / 1000)
    start = max(0, int(loud[0]) * frame - keep)
    end = min(wav.shape[1], (int(loud[-1]) + 1) * frame + keep)
    return wav[:, start:end].clone()


def duration(wav: torch.Tensor, sample_rate: int) -> float:
    return wav.shape[-1] / float(sample_rate)


def pcm16(waveform: torch.Tensor) -> bytes:
    """Float samples -> 16-bit little-endian PCM (clipped to [-1, 1], scaled by 32767, rounded)."""
    wav = waveform.detach().to("cpu", torch.float32).reshape(-1).clamp(-1.0, 1.0)
    return (wav * 32767.0).round().to(torch.int16).numpy().astype("<i2").tobytes()


def pcm16_base64(waveform: torch.Tensor) -> str:
    return base64.b64encode(pcm16(waveform)).decode("ascii")


def write_flac(path: str, waveform: torch.Tensor, sample_rate: int) -> None:
    """A mono waveform [T] -> a 24-bit FLAC file (what ComfyUI's audio player shows)."""
    import soundfile as sf

    wav = waveform.detach().to("cpu", torch.float32).reshape(-1).clamp(-1.0, 1.0).numpy()
    sf.write(path, wav, int(sample_rate), format="FLAC", subtype="PCM_24")
