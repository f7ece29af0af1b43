"""VoxCPM Synthesize: text (+ voice, + VoxCPM2 style) -> AUDIO, with a true per-patch progress bar and interrupts.

The work is split so a streaming node can share it: `build_request` turns socket values into an engine request
(all input checks happen there), `patch_budget` gives the progress total before generating, and `run` generates.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..voxcpm_engine import Engine, GenerationOptions
from ..voxcpm_engine.engine import clean_text
from ..voxcpm_engine.longform import JoinOptions, Longform, LongformResult, freeze_voice
from ..voxcpm_engine.subtitles import Cue, render
from ..voxcpm_engine.text_split import split_text
from . import audio as audio_io
from . import comfy
from .loader import CATEGORY, VoxCPMModel
from .voice import VoxCPMVoice

SEED_MAX = 0xFFFFFFFFFFFFFFFF
_STYLE_BRACKETS = re.compile(r"[()（）\[\]【】{}]")
_CJK_END = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]$")


# ------------------------------------------------------------------------------------------------- text

def normalize_text(text: str) -> str:
    """Light cleanup for text pasted from chat or documents: markdown marks, links, html tags and bullets are
    removed, a line that ends without punctuation gets a full stop (headings and list items become sentences), and
    whitespace is collapsed. Numbers, dates and symbols are NOT spelled out."""
    text = re.sub(r"```[^\n]*", "", text)  # code fences
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", text)  # images -> alt text
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)  # links -> link text
    text = re.sub(r"<[^<>\n]+>", " ", text)  # html tags
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^\s{0,3}(#{1,6}\s+|>\s?|[-*+]\s+)", "", line)  # headings, quotes, bullets
        if re.fullmatch(r"\s*([-*_]\s*){3,}", line):  # horizontal rule
            continue
        line = re.sub(r"(\*\*|__|~~)(?=\S)(.+?)(?<=\S)\1", r"\2", line)  # bold / strike
        line = re.sub(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])", r"\1", line)  # *italic*
        line = re.sub(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)", r"\1", line)  # _italic_
        line = re.sub(r"`([^`]*)`", r"\1", line)  # inline code
        line = re.sub(r"\s+", " ", line).strip()
        if not line:
            continue
        if line[-1].isalnum():
            line += "。" if _CJK_END.search(line) else "."
        lines.append(line)
    return " ".join(lines)


def style_prefix(style: str) -> str:
    """The voice-design description without brackets (the model reads "(description)text")."""
    return re.sub(r"\s+", " ", _STYLE_BRACKETS.sub(" ", style or "")).strip()


# ------------------------------------------------------------------------------------------------- request

@dataclass
class Request:
    model: VoxCPMModel
    text: str  # what the engine receives ("(style)" prefix included)
    voice: object  # voxcpm_engine.Voice or None
    options: GenerationOptions
    seed: int


def max_patches_for(engine: Engine, max_seconds: float) -> int:
    """The engine's max_len (in patches) for a length cap in seconds; 0 = the engine default."""
    if not max_seconds or max_seconds <= 0:
        return GenerationOptions.max_len
    per_patch = engine.config.samples_per_patch / engine.sample_rate
    return max(1, math.ceil(max_seconds / per_patch))


def build_request(model: VoxCPMModel, text: str, voice: VoxCPMVoice | None = None, style: str = "",
                  normalize: bool = False, cfg: float = 2.0, steps: int = 10, max_seconds: float = 0.0,
                  retry_badcase: bool = True, retry_max_times: int = 3, retry_ratio: float = 6.0,
                  seed: int = 0, stream: bool = False) -> Request:
    if not isinstance(model, VoxCPMModel):
        raise ValueError("model: connect the output of a Load VoxCPM node")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text is empty: type the words to speak")
    if normalize:
        text = normalize_text(text)
        if not text:
            raise ValueError("text is empty after normalize removed the markdown; type the words to speak")
    if voice is not None and not isinstance(voice, VoxCPMVoice):
        raise ValueError("voice: connect the output of a VoxCPM Prompt Audio node")
    description = style_prefix(style)
    if style and style.strip() and not description:
        raise ValueError("style contains only brackets; describe the voice, e.g. 'a calm elderly man, slow pace'")
    if description:
        if model.version != 2:
            raise ValueError("style (voice design) needs a VoxCPM2 model: VoxCPM-0.5B/1.5 would read the "
                             "description aloud. Clear the style or load VoxCPM2")
        if voice is not None and voice.mode != "reference":
            raise ValueError(f"style cannot steer a {voice.mode} voice: with prompt audio + transcript the model "
                             "continues the clip and reads the description aloud. Leave the transcript empty (the "
                             "clip becomes a reference), or clear the style")
        text = f"({description}){text.strip()}"
    options = GenerationOptions(cfg_value=float(cfg), inference_timesteps=int(steps),
                                max_len=max_patches_for(model.engine, max_seconds),
                                retry_badcase=bool(retry_badcase) and not stream,
                                retry_badcase_max_times=int(retry_max_times),
                                retry_badcase_ratio_threshold=float(retry_ratio))
    options.check()
    if not 0 <= int(seed) <= SEED_MAX:
        raise ValueError(f"seed must be between 0 and {SEED_MAX}, got {seed}")
    return Request(model, text, voice.voice if voice is not None else None, options, int(seed))


def patch_budget(request: Request) -> int:
    """Patches the generation may take at most: the progress bar's true total, known before generating."""
    engine = request.model.engine
    if request.voice is not None:
        engine.check_voice(request.voice)
    seq = engine.build_sequence(clean_text(request.text), request.voice)
    return engine.max_patches(seq, request.options)


def progress_callback(total: int):
    """An on_patch callback: advance the node's progress bar and stop at Cancel."""
    bar = comfy.Progress(total)
    bar.update(0)

    def on_patch(done: int, budget: int) -> None:
        bar.update(done, budget)
        comfy.check_interrupt()

    return on_patch


def run(request: Request):
    """Generate the whole utterance; returns the engine Result."""
    engine = request.model.activate()
    on_patch = progress_callback(patch_budget(request))
    return engine.generate(request.text, request.voice, request.options, seed=request.seed, on_patch=on_patch)


def run_stream(request: Request, on_start=None):
    """The streaming counterpart of `run`: yield one float32 CPU chunk per generated patch, with the same
    progress bar and Cancel (raised right after the chunk of the step it was pressed in). on_start(budget) is
    called once the request is checked, before the first step."""
    engine = request.model.activate()
    budget = patch_budget(request)
    if on_start is not None:
        on_start(budget)
    on_patch = progress_callback(budget)
    yield from engine.stream(request.text, request.voice, request.options, seed=request.seed, on_patch=on_patch)


# ------------------------------------------------------------------------------------------------- long text

def longform_texts(text: str, normalize: bool = False, long_text: bool = True, max_chars: int = 0) -> list[str]:
    """The chunks a long-form run speaks: the (normalized) text split at sentence boundaries, max_chars per chunk
    (0 = automatic: about 200 Latin / 80 CJK characters). One element when the text fits in one chunk or
    long_text is off: then `run` is used unchanged."""
    plain = normalize_text(text) if normalize else text
    plain = plain.strip()
    if not long_text:
        return [plain]
    return split_text(plain, int(max_chars)) or [plain]


def run_longform(request: Request, texts: list[str], style: str = "", join: JoinOptions = JoinOptions(),
                 freeze: str = "continuation") -> Longform:
    """A Longform over the request's model, voice, options and seed (style = the description without brackets),
    with one progress bar over all chunks and Cancel after any patch. Iterate it for (chunk, samples, raw) as
    each chunk is done, or call .run() for the joined LongformResult."""
    engine = request.model.activate()
    bar_state = {}

    def on_patch(index: int, done: int, budget: int) -> None:
        bar = bar_state["bar"]
        offsets, budgets = bar_state["offsets"], bar_state["budgets"]
        bar.update(offsets[index] + min(done, budgets[index]))
        comfy.check_interrupt()

    longform = Longform(engine, texts, request.voice, request.options, request.seed, style, join, freeze,
                        on_patch=on_patch)
    budgets = longform.patch_budgets()
    offsets = [sum(budgets[:k]) for k in range(len(budgets))]
    bar_state.update(bar=comfy.Progress(sum(budgets)), offsets=offsets, budgets=budgets)
    bar_state["bar"].update(0)
    return longform


def frozen_voice_output(model: VoxCPMModel, voice, waveform, sample_rate: int) -> VoxCPMVoice:
    """A VOXCPM_VOICE for a voice frozen from generated audio (its preview and hash are that audio)."""
    seconds = waveform.shape[-1] / sample_rate
    wav = waveform.detach().reshape(-1).float()
    return VoxCPMVoice(voice, voice.mode, model.name, seconds, audio_io.audio_hash(wav[None], sample_rate),
                       (wav.clone(), sample_rate))


# ------------------------------------------------------------------------------------------------- node

class VoxCPMSynthesize:
    DESCRIPTION = ("Speak the text with VoxCPM. Without a voice the model invents one (VoxCPM2: describe it in "
                   "style); with a voice from VoxCPM Prompt Audio it clones that voice.")
    RETURN_TYPES = ("AUDIO", "INT", "STRING", "VOXCPM_VOICE")
    RETURN_NAMES = ("audio", "seed", "subtitles", "voice")
    OUTPUT_TOOLTIPS = ("The speech, mono, at the model's sample rate (16 / 44.1 / 48 kHz).",
                       "The seed that produced it (long text: each chunk's seed is derived from it and the "
                       "chunk's text).",
                       "Subtitles (SRT or WebVTT text), one cue per chunk with its exact start and end.",
                       "The voice used: the connected one, or (no voice connected) the invented voice frozen from "
                       "the first chunk; connect VoxCPM Save Voice to keep a designed voice.")
    FUNCTION = "synthesize"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("VOXCPM_MODEL",),
                "text": ("STRING", {"multiline": True, "default": "", "tooltip": "The text to speak."}),
                "style": ("STRING", {"multiline": True, "default": "", "tooltip": (
                    "VoxCPM2 voice design / style, e.g. 'a young woman, cheerful, fast pace'. Used without a voice "
                    "or with a reference-mode voice; brackets are removed. Leave empty for none.")}),
                "cfg": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 10.0, "step": 0.1, "tooltip": (
                    "Guidance: higher follows the text and voice more strictly; 1.5-1.6 helps long or buzzy "
                    "output.")}),
                "steps": ("INT", {"default": 10, "min": 1, "max": 100, "tooltip": (
                    "Diffusion steps per patch: more is slower and slightly cleaner.")}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                                 "tooltip": "Same seed + same inputs = same audio."}),
                "normalize": ("BOOLEAN", {"default": False, "tooltip": (
                    "Clean text pasted from chat/markdown: removes markdown marks, links and bullets, ends "
                    "headings and list items with a full stop, collapses whitespace. Numbers are not spelled "
                    "out.")}),
                "max_seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 3600.0, "step": 1.0, "tooltip": (
                    "Stop after this much audio (0 = automatic: the length the text allows).")}),
                "retry_badcase": ("BOOLEAN", {"default": True, "tooltip": (
                    "Regenerate when the audio is far too long for the text (a stuck generation).")}),
                "retry_max_times": ("INT", {"default": 3, "min": 1, "max": 10}),
                "retry_ratio": ("FLOAT", {"default": 6.0, "min": 1.0, "max": 20.0, "step": 0.5, "tooltip": (
                    "Audio patches per text token above which a generation counts as stuck; also caps the "
                    "length.")}),
            },
            "optional": {
                "voice": ("VOXCPM_VOICE", {"tooltip": "A voice from VoxCPM Prompt Audio (optional)."}),
                "long_text": ("BOOLEAN", {"default": True, "tooltip": (
                    "Text longer than max_chars is split at sentence boundaries and spoken chunk by chunk, every "
                    "chunk from the same voice (without a voice: the first chunk's voice is kept for the rest). "
                    "Avoids the drift, speed-up and buzz of one long pass. Off: one pass, as before.")}),
                "max_chars": ("INT", {"default": 0, "min": 0, "max": 2000, "tooltip": (
                    "Characters per chunk at most (0 = automatic: about 200 for English, 80 for Chinese). "
                    "Chunks never end inside a word, number, abbreviation, quote or bracket when avoidable.")}),
                "pause_ms": ("INT", {"default": 250, "min": 0, "max": 5000, "step": 10, "tooltip": (
                    "Silence inserted between chunks, exact to the sample.")}),
                "crossfade_ms": ("INT", {"default": 10, "min": 0, "max": 200, "tooltip": (
                    "Short fades at chunk edges next to a pause; with pause 0 the chunks overlap by this much "
                    "instead (crossfade).")}),
                "subtitle_format": (["srt", "vtt"], {"default": "srt", "tooltip": (
                    "Format of the subtitles output: SRT or WebVTT.")}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, text=None):
        if isinstance(text, str) and not text.strip():
            return "text is empty: type the words to speak"
        return True

    def synthesize(self, model, text, style="", cfg=2.0, steps=10, seed=0, normalize=False, max_seconds=0.0,
                   retry_badcase=True, retry_max_times=3, retry_ratio=6.0, voice=None, long_text=True, max_chars=0,
                   pause_ms=250, crossfade_ms=10, subtitle_format="srt"):
        request = build_request(model, text, voice, style, normalize, cfg, steps, max_seconds, retry_badcase,
                                retry_max_times, retry_ratio, seed)
        rate = request.model.sample_rate
        texts = longform_texts(text, normalize, long_text, max_chars)
        if len(texts) > 1:
            join = JoinOptions(float(pause_ms), float(crossfade_ms))
            result: LongformResult = run_longform(request, texts, style_prefix(style), join).run()
            waveform, cues = result.waveform, result.cues()
            frozen = (result.voice, result.chunk_waveforms[0]) if result.frozen else None
        else:
            single = run(request)
            waveform = single.waveform
            cues = [Cue(0.0, waveform.shape[0] / rate, texts[0])]
            frozen = None if request.voice is not None else \
                (freeze_voice(request.model.engine, single, texts[0]), single.waveform)
        out_voice = voice if frozen is None else frozen_voice_output(request.model, frozen[0], frozen[1], rate)
        return (audio_io.to_audio(waveform, rate), request.seed, render(cues, subtitle_format), out_voice)
