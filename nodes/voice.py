"""VoxCPM Prompt Audio: a clip (+ transcript) and/or a VoxCPM2 reference clip -> VOXCPM_VOICE (encoded once).

Modes, chosen from what is connected:
    prompt audio + transcript                     continuation      every model: the output continues the clip
    prompt audio alone, or reference audio alone  reference         VoxCPM2: timbre from the clip, no transcript needed
    prompt audio + transcript + reference audio   ref_continuation  VoxCPM2: both
Encoded latents are cached by (model, audio hash, transcript, trim), so the same clip is never encoded twice.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

from ..voxcpm_engine import Voice
from . import audio as audio_io
from .loader import CATEGORY, VoxCPMModel

RECOMMENDED = "5-30 s"
MIN_SECONDS = 0.5
MAX_CACHED_VOICES = 64
PREVIEW_SECONDS = 10.0  # of the source clip, kept with the voice for the voice library


class VoxCPMVoice:
    """The VOXCPM_VOICE value: an encoded engine Voice plus what it was made from (short repr for the UI)."""

    def __init__(self, voice: Voice, mode: str, model_name: str, seconds: float, source_hash: str = "",
                 preview: tuple | None = None, name: str = ""):
        self.voice, self.mode, self.model_name, self.seconds = voice, mode, model_name, seconds
        # for the voice library: a hash of the source audio and a short clip of it ([T] waveform, sample rate)
        self.source_hash, self.preview, self.name = source_hash, preview, name

    def __repr__(self) -> str:
        return f"VoxCPMVoice({self.mode}, {self.seconds:.1f} s, {self.voice.num_patches} patches, {self.model_name})"


def choose_mode(version: int, has_prompt: bool, has_transcript: bool, has_reference: bool) -> str:
    """The voice mode for the connected inputs, or a ValueError that says what to connect instead."""
    v1 = version != 2
    if has_transcript and not has_prompt:
        raise ValueError("a transcript was given but no prompt audio is connected: connect the clip the transcript "
                         "belongs to (prompt_audio), or clear the transcript")
    if not has_prompt and not has_reference:
        raise ValueError("connect prompt_audio (a clip of the voice to clone)" +
                         ("" if v1 else ", or reference_audio (VoxCPM2)"))
    if has_reference and v1:
        raise ValueError("reference_audio needs a VoxCPM2 model; VoxCPM-0.5B/1.5 clone only from prompt_audio + its "
                         "transcript. Disconnect reference_audio or load VoxCPM2")
    if has_prompt and not has_transcript:
        if v1:
            raise ValueError("VoxCPM-0.5B/1.5 need the transcript of the prompt audio (the exact words spoken in "
                             "it); type it into prompt_text, or use VoxCPM2, which can clone from audio alone")
        if has_reference:
            raise ValueError("prompt_audio without a transcript cannot be combined with reference_audio: type the "
                             "transcript of prompt_audio (ref_continuation mode), or disconnect one of the clips "
                             "(a single clip without transcript is used as the reference)")
        return "reference"
    if not has_prompt:
        return "reference"
    return "ref_continuation" if has_reference else "continuation"


class VoiceCache:
    """Encoded voices keyed by (model, mode, clip hashes, transcript, trim); least recently used dropped first."""

    def __init__(self, max_items: int = MAX_CACHED_VOICES):
        self.max_items = max_items
        self.items: OrderedDict[tuple, VoxCPMVoice] = OrderedDict()
        self.encodes = 0  # make_voice calls so far (tests check that nothing is re-encoded)

    def get(self, key: tuple):
        item = self.items.get(key)
        if item is not None:
            self.items.move_to_end(key)
        return item

    def put(self, key: tuple, voice: VoxCPMVoice) -> None:
        self.encodes += 1
        self.items[key] = voice
        while len(self.items) > self.max_items:
            self.items.popitem(last=False)

    def clear(self) -> None:
        self.items.clear()


VOICE_CACHE = VoiceCache()


def _clip(audio, name: str, trim: bool, max_seconds: float):
    wav, rate = audio_io.from_audio(audio, name)
    if trim:
        wav = audio_io.trim_silence(wav, rate)
    seconds = audio_io.duration(wav, rate)
    if wav.numel() and seconds < MIN_SECONDS and bool(wav.abs().max() > 0):
        raise ValueError(f"{name} is {seconds:.2f} s long{' after trimming silence' if trim else ''}; VoxCPM needs "
                         f"at least {MIN_SECONDS:g} s of speech ({RECOMMENDED} recommended)")
    if max_seconds and seconds > max_seconds:
        raise ValueError(f"{name} is {seconds:.1f} s long, more than max_seconds={max_seconds:g}; VoxCPM works best "
                         f"with {RECOMMENDED} clips. Cut it (e.g. with the Trim Audio Duration node) or raise "
                         "max_seconds (0 = no limit)")
    return wav, rate, seconds


class VoxCPMPromptAudio:
    DESCRIPTION = ("Encode a voice to clone once, for any number of VoxCPM Synthesize runs. With a transcript the "
                   "output continues the clip (every model); without one, or with a separate reference clip, "
                   "VoxCPM2 clones the timbre from the reference. Clips of 5-30 s work best.")
    RETURN_TYPES = ("VOXCPM_VOICE",)
    RETURN_NAMES = ("voice",)
    OUTPUT_TOOLTIPS = ("The encoded voice (mode: continuation, reference or ref_continuation).",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("VOXCPM_MODEL",),
                "prompt_text": ("STRING", {"multiline": True, "default": "", "tooltip": (
                    "The exact words spoken in prompt_audio. Needed by VoxCPM-0.5B/1.5; on VoxCPM2 leave it empty "
                    "to use the clip as a reference (timbre only).")}),
                "trim_silence": ("BOOLEAN", {"default": True, "tooltip": (
                    "Cut leading/trailing silence (quieter than -40 dB below the peak) from the clips.")}),
                "max_seconds": ("FLOAT", {"default": 30.0, "min": 0.0, "max": 600.0, "step": 1.0, "tooltip": (
                    "Refuse clips longer than this (0 = no limit); 5-30 s is recommended.")}),
            },
            "optional": {
                "prompt_audio": ("AUDIO", {"tooltip": "A clip of the voice to clone (any sample rate, mono mixed)."}),
                "reference_audio": ("AUDIO", {"tooltip": "VoxCPM2 only: a reference clip of the voice (no transcript)."}),
            },
        }

    def encode(self, model: VoxCPMModel, prompt_text="", trim_silence=True, max_seconds=30.0, prompt_audio=None,
               reference_audio=None):
        transcript = prompt_text.strip() if isinstance(prompt_text, str) else ""
        mode = choose_mode(model.version, prompt_audio is not None, bool(transcript), reference_audio is not None)
        clips = {}
        if prompt_audio is not None:
            clips["prompt_audio"] = _clip(prompt_audio, "prompt_audio", trim_silence, max_seconds)
        if reference_audio is not None:
            clips["reference_audio"] = _clip(reference_audio, "reference_audio", trim_silence, max_seconds)
        hashes = tuple((name, audio_io.audio_hash(wav, rate)) for name, (wav, rate, _) in clips.items())
        key = (model.base.key, mode, hashes, transcript, bool(trim_silence))
        cached = VOICE_CACHE.get(key)
        if cached is not None:
            return (cached,)

        engine = model.activate()
        prompt = clips.get("prompt_audio")
        reference = clips.get("reference_audio")
        if mode == "reference" and reference is None:  # a single clip without transcript is the reference
            prompt, reference = None, prompt
        voice = engine.make_voice(
            prompt_audio=prompt[0] if prompt else None, prompt_sample_rate=prompt[1] if prompt else None,
            prompt_text=transcript if prompt else None,
            reference_audio=reference[0] if reference else None,
            reference_sample_rate=reference[1] if reference else None)
        seconds = sum(c[2] for c in clips.values())
        first = next(iter(clips.values()))
        preview = (first[0].mean(dim=0)[: int(PREVIEW_SECONDS * first[1])].clone(), first[1])
        source_hash = audio_io.audio_hash(*first[:2]) if len(clips) == 1 else \
            hashlib.sha256("".join(h for _, h in hashes).encode()).hexdigest()
        result = VoxCPMVoice(voice, voice.mode, model.name, seconds, source_hash, preview)
        VOICE_CACHE.put(key, result)
        return (result,)
