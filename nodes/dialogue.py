"""VoxCPM Dialogue: a script of "[Name] line" turns spoken line by line, each speaker with their own voice.

The work happens in voxcpm_engine.dialogue (parsing, generation, timeline); this node maps sockets to it and back.
"""
from __future__ import annotations

import torch

from ..voxcpm_engine.dialogue import MAX_SPEAKERS, count_lines, parse_script, parse_speakers, render_dialogue
from ..voxcpm_engine.longform import JoinOptions
from . import audio as audio_io
from . import comfy
from .loader import CATEGORY, VoxCPMModel
from .synthesize import SEED_MAX, build_request
from .voice import VoxCPMVoice

EXAMPLE = """[Alice] Hi Bob! Did you finish the report?
[Bob] Almost. I need one more hour.
[pause:600ms]
[Alice] Great, send it to me when it's done."""


class VoxCPMDialogue:
    DESCRIPTION = ("Speak a dialogue script line by line, each speaker with their own voice, and lay the lines out "
                   "one after another. Script: '[Name] text' per line, '[pause:500ms]' for a pause (replaces the "
                   "gap there), VoxCPM2: '[Name] (style) text' styles one line. Outputs the mix, one track per "
                   "speaker and subtitles.")
    RETURN_TYPES = ("AUDIO", "AUDIO", "STRING")
    RETURN_NAMES = ("mix", "tracks", "subtitles")
    OUTPUT_TOOLTIPS = (
        "All lines in one mono track.",
        "One track per speaker, as a batch in the order of `speakers` (voice_1 first): each as long as the mix, "
        "silent where the others speak; the tracks add up to the mix. Save Audio writes one file per speaker.",
        "Subtitles (SRT or WebVTT text): one cue per line (long lines: per chunk), 'Name: text', with exact times.")
    FUNCTION = "speak"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        voices = {f"voice_{i}": ("VOXCPM_VOICE", {"tooltip": (
            f"The voice of speaker {i} (the {i}. name in speakers). Without one, the speaker's first line invents "
            "a voice (VoxCPM2: steered by that line's style), kept for their other lines.")})
            for i in range(1, MAX_SPEAKERS + 1)}
        return {
            "required": {
                "model": ("VOXCPM_MODEL",),
                "script": ("STRING", {"multiline": True, "default": EXAMPLE, "tooltip": (
                    "One turn per line: [Name] text. [pause:500ms] or [pause:1.5s] inserts that silence instead "
                    "of the gap (also inside a line). A line without a tag continues the previous turn. On VoxCPM2, "
                    "[Name] (style) text gives the line a style. Names may also be written [1], [spk1].")}),
                "speakers": ("STRING", {"default": "Alice, Bob", "tooltip": (
                    "Speaker names in order, separated by commas: the first speaks with voice_1, the second with "
                    "voice_2, and so on (up to 8).")}),
                "gap_ms": ("INT", {"default": 400, "min": 0, "max": 10000, "step": 10, "tooltip": (
                    "Silence between consecutive lines, exact to the sample.")}),
                "cfg": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 10.0, "step": 0.1}),
                "steps": ("INT", {"default": 10, "min": 1, "max": 100}),
                "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                                 "tooltip": ("Each line's seed is derived from this, its speaker and its text: "
                                             "editing one line regenerates only that line.")}),
                "max_chars": ("INT", {"default": 0, "min": 0, "max": 2000, "tooltip": (
                    "Long lines are split into chunks of at most this many characters (0 = automatic).")}),
                "subtitle_format": (["srt", "vtt"], {"default": "srt"}),
            },
            "optional": voices,
        }

    @classmethod
    def VALIDATE_INPUTS(cls, script=None, speakers=None):
        try:
            names = parse_speakers(speakers) if isinstance(speakers, str) else None
            if names is not None and isinstance(script, str):
                parse_script(script, names)
        except ValueError as e:
            return str(e)
        return True

    def speak(self, model, script, speakers="Alice, Bob", gap_ms=400, cfg=2.0, steps=10, seed=0, max_chars=0,
              subtitle_format="srt", voice_1=None, voice_2=None, voice_3=None, voice_4=None, voice_5=None,
              voice_6=None, voice_7=None, voice_8=None):
        voices = {f"voice_{i}": v for i, v in enumerate(
            (voice_1, voice_2, voice_3, voice_4, voice_5, voice_6, voice_7, voice_8), 1)}
        if not isinstance(model, VoxCPMModel):
            raise ValueError("model: connect the output of a Load VoxCPM node")
        names = parse_speakers(speakers)
        items = parse_script(script, names)
        engine_voices = {}
        for i, name in enumerate(names, 1):
            v = voices.get(f"voice_{i}")
            if v is not None and not isinstance(v, VoxCPMVoice):
                raise ValueError(f"voice_{i}: connect a VOXCPM_VOICE (VoxCPM Prompt Audio or Load Voice)")
            engine_voices[name] = v.voice if v is not None else None
        extra = [k for k, v in voices.items() if v is not None and k.startswith("voice_")
                 and int(k.split("_")[1]) > len(names)]
        if extra:
            raise ValueError(f"{', '.join(sorted(extra))} connected but speakers names only {len(names)}: add a name "
                             "for each connected voice")
        # the same checks and options as Synthesize (cfg, steps, seed; badcase retry on)
        request = build_request(model, "check", None, "", False, cfg, steps, 0.0, True, 3, 6.0, seed)
        engine = model.activate()
        total = count_lines(items)
        bar = comfy.Progress(total * 1000)
        bar.update(0)

        def on_patch(line: int, done: int, budget: int) -> None:
            bar.update(line * 1000 + int(1000 * min(done, budget) / max(budget, 1)))
            comfy.check_interrupt()

        result = render_dialogue(engine, items, names, engine_voices, request.options, request.seed, float(gap_ms),
                                 JoinOptions(), int(max_chars), on_patch)
        rate = result.sample_rate
        tracks = torch.stack([result.tracks[n] for n in names])[:, None, :]
        return (audio_io.to_audio(result.mix, rate), {"waveform": tracks.contiguous(), "sample_rate": rate},
                result.subtitles(subtitle_format))
