"""Dialogue scripts: "[Name] text" lines and "[pause:500ms]" tags, generated line by line, one voice per speaker.

Script syntax (one turn per line; blank lines are ignored):

    [Alice] Hello Bob, how are you?
    [Bob] (cheerful, fast) Great, thanks!        <- VoxCPM2: a style for this line in brackets at its start
    [pause:1.5s]                                 <- silence instead of the gap (ms or s; also inline in a line)
    [Alice] Good to hear.
    A line without a tag continues the previous speaker's turn.

Speaker tags are the names given in `speakers` (case-insensitive), or their numbers ([1], [spk1], [speaker1]).
Other bracketed words inside a line ([laughing], [sigh]) are left to the model. A speaker without a voice gets one
invented by their first line (VoxCPM2: steered by that line's style), frozen for all their later lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from .engine import Engine, GenerationOptions
from .longform import JoinOptions, Longform, chunk_seed, fade_edges
from .subtitles import Cue, render
from .text_split import split_text
from .voice import Voice

MAX_SPEAKERS = 8
_PAUSE = re.compile(r"\[\s*pause\s*[:=]?\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*\]", re.IGNORECASE)
_TAG = re.compile(r"^\[([^\[\]]+)\]\s*")
_STYLE = re.compile(r"^[(（]([^()（）]*)[)）]\s*")
_ALIAS = re.compile(r"^(?:spk|speaker|voice)?[ _-]?(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Line:
    speaker: str
    text: str
    style: str
    number: int  # line number in the script (1-based), for messages


@dataclass(frozen=True)
class Pause:
    ms: float
    number: int


@dataclass
class DialogueResult:
    mix: torch.Tensor  # [T] float32
    tracks: dict[str, torch.Tensor]  # speaker -> [T], silent where others speak (speakers' order)
    sample_rate: int
    cues: list[Cue]
    voices: dict[str, Voice | None]  # the voice each speaker ended up with (given, or frozen from a first line)

    def subtitles(self, fmt: str = "srt") -> str:
        return render(self.cues, fmt)


def parse_speakers(names: str | list[str]) -> list[str]:
    """"Alice, Bob" (commas or new lines) -> ["Alice", "Bob"]; names must be unique and at most 8."""
    if isinstance(names, str):
        names = re.split(r"[,\n;]", names)
    out = [n.strip() for n in names if n and n.strip()]
    if not out:
        raise ValueError("speakers: give the speaker names in order, e.g. 'Alice, Bob' (the first uses voice_1)")
    if len(out) > MAX_SPEAKERS:
        raise ValueError(f"speakers: at most {MAX_SPEAKERS} speakers, got {len(out)}")
    for n in out:
        if "[" in n or "]" in n or _ALIAS.match(n):
            raise ValueError(f"speakers: {n!r} cannot be a name (no brackets, not a bare number)")
    lowered = [n.lower() for n in out]
    dup = sorted({n for n in out if lowered.count(n.lower()) > 1})
    if dup:
        raise ValueError(f"speakers: {', '.join(dup)} appear more than once")
    return out


def _speaker(tag: str, speakers: list[str]) -> str | None:
    tag = tag.strip()
    for name in speakers:
        if name.lower() == tag.lower():
            return name
    m = _ALIAS.match(tag)
    if m and 1 <= int(m.group(1)) <= len(speakers):
        return speakers[int(m.group(1)) - 1]
    return None


def parse_script(script: str, speakers: list[str]) -> list[Line | Pause]:
    if not isinstance(script, str) or not script.strip():
        raise ValueError("script is empty: write lines like '[Alice] Hello!'")
    items: list[Line | Pause] = []
    current: str | None = None
    style = ""
    for number, raw in enumerate(script.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = _PAUSE.split(line)  # text, ms, unit, text, ms, unit, ...
        for k in range(0, len(parts), 3):
            segment = parts[k].strip()
            if k == 0:
                tag = _TAG.match(segment)
                if tag and not _PAUSE.match(segment):
                    name = _speaker(tag.group(1), speakers)
                    if name is None:
                        raise ValueError(
                            f"script line {number}: [{tag.group(1)}] is not one of the speakers "
                            f"({', '.join(speakers)}). Add it to `speakers`, or to start a line with a sound tag "
                            f"like [laughing], put the speaker first: [{speakers[0]}] [laughing] ...")
                    current, style = name, ""
                    segment = segment[tag.end():]
                    m = _STYLE.match(segment)
                    if m:
                        style = re.sub(r"\s+", " ", m.group(1)).strip()
                        segment = segment[m.end():]
                    segment = segment.strip()
            if segment:
                if current is None:
                    raise ValueError(f"script line {number}: start with a speaker tag, e.g. "
                                     f"[{speakers[0]}] {segment[:30]}")
                prev = items[-1] if items else None
                if k == 0 and not _TAG.match(parts[0].strip()) and isinstance(prev, Line) \
                        and prev.speaker == current:  # an untagged line continues the turn
                    items[-1] = Line(current, f"{prev.text} {segment}", prev.style, prev.number)
                else:
                    items.append(Line(current, segment, style, number))
            if k + 1 < len(parts):
                value, unit = float(parts[k + 1]), (parts[k + 2] or "ms").lower()
                ms = value * 1000 if unit == "s" else value
                if ms > 60_000:
                    raise ValueError(f"script line {number}: a pause of {ms / 1000:g} s is longer than 60 s")
                items.append(Pause(ms, number))
    if not any(isinstance(i, Line) for i in items):
        raise ValueError("script has no spoken lines: write lines like '[Alice] Hello!'")
    return items


def line_seed(seed: int, line: Line, occurrence: int) -> int:
    return chunk_seed(seed, f"{line.speaker}\x00{line.style}\x00{line.text}", occurrence)


def check_script(engine: Engine, items: list[Line | Pause], voices: dict[str, Voice | None]) -> None:
    """Refuse, before anything is generated, what would fail or be read aloud halfway through."""
    for item in items:
        if not isinstance(item, Line) or not item.style:
            continue
        if engine.version != 2:
            raise ValueError(f"script line {item.number}: a style ({item.style}) needs a VoxCPM2 model; "
                             "VoxCPM-0.5B/1.5 would read it aloud. Remove the brackets at the start of the line")
        voice = voices.get(item.speaker)
        if voice is not None and voice.mode != "reference":
            raise ValueError(f"script line {item.number}: {item.speaker}'s voice is a {voice.mode} voice (clip + "
                             "transcript), which a style cannot steer (it would be read aloud). Remove the style, or "
                             "give that speaker a reference voice (VoxCPM Prompt Audio without transcript)")


def render_dialogue(engine: Engine, items: list[Line | Pause], speakers: list[str], voices: dict[str, Voice | None],
                    options: GenerationOptions = GenerationOptions(), seed: int = 0, gap_ms: float = 400.0,
                    join: JoinOptions = JoinOptions(), max_chars: int = 0,
                    on_patch: Callable[[int, int, int], None] | None = None) -> DialogueResult:
    """Generate every line with its speaker's voice and lay them out one after another: `gap_ms` of silence between
    lines, or exactly the [pause] tags' total where there are any. Long lines are split into chunks joined with
    `join`. on_patch(line index, done, budget) reports progress."""
    voices = {name: voices.get(name) for name in speakers}
    check_script(engine, items, voices)
    rate = engine.sample_rate
    to_samples = lambda ms: int(round(ms * rate / 1000))  # noqa: E731
    freeze = "reference" if engine.version == 2 else "continuation"
    placed: list[tuple[str, int, torch.Tensor]] = []
    cues: list[Cue] = []
    cursor, pending, any_line, index = 0, None, False, 0
    seen: dict[tuple, int] = {}
    for item in items:
        if isinstance(item, Pause):
            pending = (pending or 0.0) + item.ms
            continue
        cursor += to_samples(pending if pending is not None else (gap_ms if any_line else 0.0))
        pending, any_line = None, True
        texts = split_text(item.text, max_chars)
        key = (item.speaker, item.style, item.text)
        base = line_seed(seed, item, seen.get(key, 0))
        seen[key] = seen.get(key, 0) + 1
        callback = None
        if on_patch is not None:
            callback = (lambda k: lambda _chunk, done, budget: on_patch(k, done, budget))(index)
        longform = Longform(engine, texts, voices[item.speaker], options, style=item.style, join=join, freeze=freeze,
                            seeds=[chunk_seed(base, t, j) for j, t in enumerate(texts)], speaker=item.speaker,
                            on_patch=callback)
        result = longform.run()
        if voices[item.speaker] is None:
            voices[item.speaker] = result.voice
        wav = fade_edges(result.waveform, int(round(join.crossfade_ms * rate / 1000)))
        placed.append((item.speaker, cursor, wav))
        for c in result.chunks:
            cues.append(Cue((cursor + c.start) / rate, (cursor + c.end) / rate, c.text, item.speaker))
        cursor += wav.shape[0]
        index += 1
    cursor += to_samples(pending or 0.0)  # trailing [pause]
    tracks = {name: torch.zeros(cursor) for name in speakers}
    for name, start, wav in placed:
        tracks[name][start:start + wav.shape[0]] += wav
    mix = torch.zeros(cursor)
    for t in tracks.values():
        mix += t
    return DialogueResult(mix, tracks, rate, cues, voices)


def count_lines(items: list[Line | Pause]) -> int:
    return sum(isinstance(i, Line) for i in items)
