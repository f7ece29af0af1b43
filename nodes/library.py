"""The voice library: VoxCPM Save Voice writes a VOXCPM_VOICE to models/voxcpm/voices/<name>.safetensors, VoxCPM Load
Voice lists those files and gives the voice back without its source audio, ready for Synthesize or Dialogue.

A file holds the encoded latents, the transcript, the model generation and sample rate, a hash of the source audio
and a short preview clip (voxcpm_engine.voice.save_voice). Loading refuses a voice of another model generation.
"""
from __future__ import annotations

import datetime
import os
import re
import unicodedata

import torch

from ..voxcpm_engine.voice import load_voice, save_voice
from . import audio as audio_io
from . import comfy
from .loader import CATEGORY, VoxCPMModel
from .voice import VoxCPMVoice

MAX_NAME = 64
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_ALLOWED = re.compile(r"[^\w \-.()+&,'!]", re.UNICODE)


def voice_name(raw) -> str:
    """A safe file name for a voice, or a ValueError. Folder parts are refused (never silently dropped), other
    unusual characters become "_"."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("name is empty: type a name for the voice, e.g. 'narrator'")
    name = unicodedata.normalize("NFC", raw.strip())
    if name.lower().endswith(comfy.VOICE_EXTENSION):
        name = name[: -len(comfy.VOICE_EXTENSION)].rstrip()
    if any(c in name for c in "/\\:") or ".." in name or name.startswith(".") or os.path.isabs(name) \
            or any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError(f"name {raw!r} is not allowed: it must be a plain name, not a path (no '/', '\\', ':', "
                         "'..' or leading '.'); voices are always saved in models/voxcpm/voices/")
    name = re.sub(r"\s+", " ", _ALLOWED.sub("_", name)).strip(" .")
    if not name or set(name) <= {"_", " "}:
        raise ValueError(f"name {raw!r} has no usable characters; use letters, digits, spaces, '-' or '_'")
    if len(name) > MAX_NAME:
        raise ValueError(f"name is {len(name)} characters long; use at most {MAX_NAME}")
    if name.split(".")[0].lower() in _RESERVED:
        raise ValueError(f"name {raw!r} is reserved on Windows; choose another")
    return name


def _inside(folder: str, path: str) -> bool:
    folder, path = os.path.realpath(folder), os.path.realpath(path)
    return os.path.commonpath((folder, path)) == folder and path != folder


def _same_voice(a, b) -> bool:
    def same(x, y):
        return (x is None and y is None) or (x is not None and y is not None and x.shape == y.shape
                                             and torch.equal(x, y))
    return (a.version, a.sample_rate, a.prompt_text) == (b.version, b.sample_rate, b.prompt_text) \
        and same(a.prompt_feat, b.prompt_feat) and same(a.ref_feat, b.ref_feat)


def save(voice: VoxCPMVoice, name: str, overwrite: bool = False) -> tuple[str, str, str]:
    """Save a voice; returns (clean name, path, what happened: "saved" / "replaced" / "unchanged")."""
    if not isinstance(voice, VoxCPMVoice):
        raise ValueError("voice: connect a VOXCPM_VOICE (from VoxCPM Prompt Audio, Load Voice or Synthesize)")
    clean = voice_name(name)
    folder = comfy.voice_save_folder()
    path = os.path.join(folder, clean + comfy.VOICE_EXTENSION)
    if not _inside(folder, path):
        raise ValueError(f"name {name!r} is not allowed: it leads outside the voices folder")
    status = "saved"
    if os.path.exists(path):
        try:
            existing = load_voice(path).voice
        except (ValueError, OSError):
            existing = None
        if existing is not None and _same_voice(existing, voice.voice):
            return clean, path, "unchanged"
        if not overwrite:
            raise ValueError(f"a different voice named {clean!r} already exists ({path}). Choose another name, or "
                             "turn on overwrite to replace it")
        status = "replaced"
    preview, rate = voice.preview if voice.preview is not None else (None, 0)
    extra = {"name": clean, "model_name": voice.model_name, "seconds": f"{voice.seconds:.3f}",
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    save_voice(path, voice.voice, source_hash=voice.source_hash, preview=preview, preview_sample_rate=rate,
               extra=extra, overwrite=overwrite)
    comfy.log.info("VoxCPM: voice %s %s to %s", clean, status, path)
    return clean, path, status


def load(model: VoxCPMModel, name: str) -> tuple[VoxCPMVoice, dict]:
    """A saved voice for this model (refused across model generations) and its preview as an AUDIO value."""
    if not isinstance(model, VoxCPMModel):
        raise ValueError("model: connect the output of a Load VoxCPM node")
    path = comfy.voice_path(name) if isinstance(name, str) and name else None
    if path is None:
        raise FileNotFoundError(f"voice {name!r} was not found in {', '.join(comfy.voice_folders()) or 'models/voxcpm/voices'}"
                                "; save one with VoxCPM Save Voice and refresh the page")
    engine = model.engine
    vf = load_voice(path, version=model.version, sample_rate=model.sample_rate, patch_size=engine.config.patch_size,
                    feat_dim=engine.config.feat_dim, name=name)
    seconds = vf.voice.num_patches * engine.config.samples_per_patch / engine.sample_rate
    preview = (vf.preview, vf.preview_sample_rate) if vf.preview is not None else None
    voice = VoxCPMVoice(vf.voice, vf.voice.mode, vf.metadata.get("model_name", model.name), seconds,
                        vf.source_hash, preview, name)
    if preview is None:
        preview_audio = audio_io.to_audio(torch.zeros(engine.sample_rate // 10), engine.sample_rate)
    else:
        preview_audio = audio_io.to_audio(*preview)
    return voice, preview_audio


class VoxCPMSaveVoice:
    DESCRIPTION = ("Save a voice to models/voxcpm/voices/<name>.safetensors (encoded latents, transcript, model "
                   "generation, a hash and a short preview of the source audio), to reuse it later with VoxCPM Load "
                   "Voice without the source clip. An existing voice is only replaced with overwrite on.")
    RETURN_TYPES = ("VOXCPM_VOICE", "STRING")
    RETURN_NAMES = ("voice", "name")
    OUTPUT_TOOLTIPS = ("The same voice (pass-through).", "The name it was saved under (after cleaning).")
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "voice": ("VOXCPM_VOICE", {"tooltip": (
                "From VoxCPM Prompt Audio (a cloned voice) or VoxCPM Synthesize's voice output (a designed voice, "
                "frozen from its first chunk).")}),
            "name": ("STRING", {"default": "my_voice", "tooltip": (
                "File name in models/voxcpm/voices/ (letters, digits, spaces, - and _; no folders).")}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": (
                "Replace a different voice saved under the same name. Off: saving stops with an error instead "
                "(saving the very same voice again is always fine).")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, name=None):
        if isinstance(name, str):
            try:
                voice_name(name)
            except ValueError as e:
                return str(e)
        return True

    def save(self, voice, name, overwrite=False):
        clean, path, status = save(voice, name, overwrite)
        return {"ui": {"text": [f"{status}: {path}"]}, "result": (voice, clean)}


class VoxCPMLoadVoice:
    DESCRIPTION = ("Load a voice saved with VoxCPM Save Voice (models/voxcpm/voices/). No source audio is needed "
                   "and nothing is encoded again. A voice only works with the model generation that made it.")
    RETURN_TYPES = ("VOXCPM_VOICE", "AUDIO")
    RETURN_NAMES = ("voice", "preview")
    OUTPUT_TOOLTIPS = ("The saved voice.", "A few seconds of the audio it was made from (connect Preview Audio).")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("VOXCPM_MODEL",),
            "voice": (comfy.voice_files(), {"tooltip": (
                "Voices in models/voxcpm/voices/ (the list is read again when the page is refreshed).")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, voice=None):
        if isinstance(voice, str) and comfy.voice_path(voice) is None:
            found = comfy.voice_files()
            return (f"voice {voice!r} is not in models/voxcpm/voices/ (saved voices: "
                    f"{', '.join(found) if found else 'none yet; save one with VoxCPM Save Voice'})")
        return True

    @classmethod
    def IS_CHANGED(cls, voice=None, **kwargs):
        path = comfy.voice_path(voice) if isinstance(voice, str) else None
        if path is None:
            return ""
        stat = os.stat(path)
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"

    def load(self, model, voice):
        return load(model, voice)


comfy.register_voice_folder()
