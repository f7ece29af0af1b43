"""A Voice: prompt and/or reference audio already encoded to VAE latents, reusable across generations."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Voice:
    """Encoded latents are fp32 CPU tensors shaped [patches, patch_size, feat_dim].

    mode: "continuation" (prompt audio + its transcript; every generation), "reference" (VoxCPM2: reference audio
    isolated between 103/104, no transcript) or "ref_continuation" (VoxCPM2: both)."""

    version: int  # model generation that encoded it (1 = VoxCPM-0.5B/1.5, 2 = VoxCPM2)
    sample_rate: int  # output sample rate of that model, to tell 0.5B (16 kHz) from 1.5 (44.1 kHz)
    prompt_feat: torch.Tensor | None = None
    prompt_text: str | None = None
    ref_feat: torch.Tensor | None = None

    def __post_init__(self):
        if (self.prompt_feat is None) != (self.prompt_text is None):
            raise ValueError("a Voice needs prompt audio and its transcript together (or neither)")
        if self.prompt_feat is None and self.ref_feat is None:
            raise ValueError("a Voice needs prompt audio with its transcript, or (VoxCPM2) reference audio")
        if self.ref_feat is not None and self.version != 2:
            raise ValueError("reference audio is only supported by VoxCPM2 models")

    @property
    def mode(self) -> str:
        if self.ref_feat is not None:
            return "ref_continuation" if self.prompt_feat is not None else "reference"
        return "continuation"

    @property
    def num_patches(self) -> int:
        return sum(f.shape[0] for f in (self.prompt_feat, self.ref_feat) if f is not None)


# ------------------------------------------------------------------------------------------------- voice files
# One safetensors file per voice: the latents as tensors (fp32), a short preview clip (int16), and the rest as
# string metadata. Loading checks everything before building the Voice.

VOICE_FORMAT = "voxcpm-voice"
VOICE_FORMAT_VERSION = 1
PREVIEW_SECONDS = 10.0
_GENERATIONS = {(1, 16000): "VoxCPM-0.5B", (1, 44100): "VoxCPM1.5", (2, 48000): "VoxCPM2"}


class VoiceFileError(ValueError):
    """A voice file cannot be used: not a voice, damaged, or made for another model generation."""


def generation_name(version: int, sample_rate: int) -> str:
    """"VoxCPM2", "VoxCPM1.5", "VoxCPM-0.5B" (or a plain description for other configurations)."""
    return _GENERATIONS.get((int(version), int(sample_rate)), f"a v{version} model at {sample_rate} Hz")


@dataclass(frozen=True)
class VoiceFile:
    """What a voice file holds besides the Voice."""

    voice: Voice
    source_hash: str  # sha256 of the audio the voice was encoded from ("" if unknown)
    preview: torch.Tensor | None  # [T] float32, a few seconds of that audio (or of the generated audio it froze)
    preview_sample_rate: int
    metadata: dict  # every metadata entry of the file (strings), e.g. "model_name", "created"


def save_voice(path, voice: Voice, *, source_hash: str = "", preview: torch.Tensor | None = None,
               preview_sample_rate: int = 0, extra: dict | None = None, overwrite: bool = False):
    """Write a voice file; an existing file is replaced only with overwrite=True (else FileExistsError).

    The file is written next to its destination and then renamed, so a failed save leaves no half-written voice."""
    import os
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"a voice file already exists at {path}")
    tensors = {}
    if voice.prompt_feat is not None:
        tensors["prompt_feat"] = voice.prompt_feat.detach().to("cpu", torch.float32).contiguous()
    if voice.ref_feat is not None:
        tensors["ref_feat"] = voice.ref_feat.detach().to("cpu", torch.float32).contiguous()
    meta = {str(k): str(v) for k, v in (extra or {}).items()}
    meta.update(format=VOICE_FORMAT, format_version=str(VOICE_FORMAT_VERSION), model_version=str(voice.version),
                sample_rate=str(voice.sample_rate), generation=generation_name(voice.version, voice.sample_rate),
                mode=voice.mode, source_hash=str(source_hash or ""))
    if voice.prompt_text is not None:
        meta["prompt_text"] = voice.prompt_text
    if preview is not None and preview.numel() and preview_sample_rate > 0:
        clip = preview.detach().to("cpu", torch.float32).reshape(-1)[: int(PREVIEW_SECONDS * preview_sample_rate)]
        tensors["preview"] = (clip.clamp(-1, 1) * 32767).round().to(torch.int16).contiguous()
        meta["preview_sample_rate"] = str(int(preview_sample_rate))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        if path.exists() and not overwrite:  # appeared meanwhile
            raise FileExistsError(f"a voice file already exists at {path}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _int(meta: dict, key: str, name: str) -> int:
    try:
        return int(meta[key])
    except (KeyError, ValueError):
        raise VoiceFileError(f"{name}: the voice file is damaged ({key!r} is missing or not a number)") from None


def _latents(tensors: dict, key: str, name: str) -> torch.Tensor | None:
    t = tensors.get(key)
    if t is None:
        return None
    if t.dim() != 3 or not t.is_floating_point() or t.shape[0] == 0:
        raise VoiceFileError(f"{name}: the voice file is damaged ({key} has shape {tuple(t.shape)} and dtype "
                             f"{t.dtype}; expected float [patches, patch_size, feat_dim])")
    if not torch.isfinite(t).all():
        raise VoiceFileError(f"{name}: the voice file is damaged ({key} contains NaN or infinite values)")
    return t.to(torch.float32)


def load_voice(path, *, version: int | None = None, sample_rate: int | None = None,
               patch_size: int | None = None, feat_dim: int | None = None, name: str | None = None) -> VoiceFile:
    """Read and check a voice file. With version/sample_rate (and patch_size/feat_dim) of the model that will use
    it, a voice of another model generation is refused with a message naming both."""
    from pathlib import Path

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise FileNotFoundError(f"voice {name!r}: file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != VOICE_FORMAT:
                raise VoiceFileError(f"{path.name} is not a VoxCPM voice file (saved by VoxCPM Save Voice)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise VoiceFileError(f"voice {name!r}: cannot read {path.name} ({e}); the file is damaged") from None
    if _int(meta, "format_version", name) > VOICE_FORMAT_VERSION:
        raise VoiceFileError(f"voice {name!r} was saved by a newer version of this package; update it")
    v, rate = _int(meta, "model_version", name), _int(meta, "sample_rate", name)
    if v not in (1, 2) or rate <= 0:
        raise VoiceFileError(f"voice {name!r}: the voice file is damaged (model version {v}, {rate} Hz)")
    if version is not None and sample_rate is not None and (v, rate) != (int(version), int(sample_rate)):
        raise VoiceFileError(
            f"voice {name!r} was made with {generation_name(v, rate)} ({rate} Hz), but the connected model is "
            f"{generation_name(version, sample_rate)} ({sample_rate} Hz). A voice only works with the model "
            f"generation that encoded it: load {generation_name(v, rate)}, or encode the source audio again with "
            "this model (VoxCPM Prompt Audio) and save it under another name.")
    prompt, ref = _latents(tensors, "prompt_feat", name), _latents(tensors, "ref_feat", name)
    text = meta.get("prompt_text")
    feats = [t for t in (prompt, ref) if t is not None]
    if not feats or (prompt is None) != (text is None):
        raise VoiceFileError(f"voice {name!r}: the voice file is damaged (latents and transcript do not match)")
    if len({tuple(t.shape[1:]) for t in feats}) != 1:
        raise VoiceFileError(f"voice {name!r}: the voice file is damaged (prompt and reference latents differ in "
                             "shape)")
    shape = tuple(feats[0].shape[1:])
    if patch_size is not None and feat_dim is not None and shape != (int(patch_size), int(feat_dim)):
        raise VoiceFileError(f"voice {name!r} has latents of {shape[0]}x{shape[1]} per patch but this model uses "
                             f"{patch_size}x{feat_dim}: it was made with a differently configured model")
    if meta.get("mode") not in (None, "continuation", "reference", "ref_continuation"):
        raise VoiceFileError(f"voice {name!r}: the voice file is damaged (unknown mode {meta.get('mode')!r})")
    try:
        voice = Voice(v, rate, prompt, text, ref)
    except ValueError as e:
        raise VoiceFileError(f"voice {name!r}: {e}") from None
    if meta.get("mode") and meta["mode"] != voice.mode:
        raise VoiceFileError(f"voice {name!r}: the voice file is damaged (mode {meta['mode']} but holds "
                             f"{voice.mode} latents)")
    preview, preview_rate = None, 0
    if "preview" in tensors:
        preview_rate = _int(meta, "preview_sample_rate", name)
        preview = tensors["preview"].to(torch.float32).reshape(-1) / 32767.0
    return VoiceFile(voice, meta.get("source_hash", ""), preview, preview_rate, meta)
