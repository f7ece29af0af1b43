"""Subtitles (SRT, WebVTT) from the timing of generated chunks or dialogue lines."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass

from .text_split import is_cjk

LINE_CHARS = 42  # Latin characters per subtitle line (the usual broadcast limit)
LINE_CHARS_CJK = 20


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float
    text: str
    speaker: str | None = None


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, int(round(seconds * 1000)))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def wrap(text: str) -> str:
    """Break a cue's text into lines of a readable length (at spaces; CJK text between characters)."""
    text = " ".join(text.split())
    cjk = sum(is_cjk(c) for c in text) > len(text) / 2
    if cjk:
        return "\n".join(text[i:i + LINE_CHARS_CJK] for i in range(0, len(text), LINE_CHARS_CJK))
    return "\n".join(textwrap.wrap(text, LINE_CHARS, break_long_words=False, break_on_hyphens=False)) or text


def _ordered(cues: list[Cue]) -> list[Cue]:
    """Cues in time order, each ending no later than the next one starts (a crossfade overlaps them slightly)."""
    cues = sorted(cues, key=lambda c: c.start)
    out = []
    for i, c in enumerate(cues):
        end = min(c.end, cues[i + 1].start) if i + 1 < len(cues) else c.end
        out.append(Cue(c.start, max(c.start, end), c.text, c.speaker))
    return out


def to_srt(cues: list[Cue]) -> str:
    blocks = []
    for i, c in enumerate(_ordered(cues), 1):
        text = wrap(c.text)
        if c.speaker:
            text = f"{c.speaker}: {text}"
        blocks.append(f"{i}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(cues: list[Cue]) -> str:
    blocks = ["WEBVTT\n"]
    for c in _ordered(cues):
        text = wrap(c.text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        if c.speaker:
            text = f"<v {c.speaker}>{text}"
        blocks.append(f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n{text}\n")
    return "\n".join(blocks)


def render(cues: list[Cue], fmt: str = "srt") -> str:
    fmt = (fmt or "srt").lower()
    if fmt == "srt":
        return to_srt(cues)
    if fmt == "vtt":
        return to_vtt(cues)
    raise ValueError(f"subtitle format must be 'srt' or 'vtt', got {fmt!r}")


def parse_srt(text: str) -> list[Cue]:
    """Read SRT back (tests and round trips): cues with their times; "Name: " prefixes are kept in the text."""
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.strip().splitlines()
        if len(lines) < 2 or "-->" not in lines[1]:
            continue
        a, b = (part.strip() for part in lines[1].split("-->"))
        cues.append(Cue(_seconds(a), _seconds(b), "\n".join(lines[2:])))
    return cues


def _seconds(stamp: str) -> float:
    hms, ms = stamp.replace(".", ",").split(",")
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s + int(ms) / 1000
