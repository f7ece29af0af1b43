"""Long text: split into chunks, generate every chunk from the same voice, join with exact pauses.

Why chunks: one autoregressive pass over a long text drifts, speeds up, buzzes or never stops (and runs out of
context). Each chunk here is a separate, short generation from the *same* voice latents, so nothing accumulates.

The voice of every chunk:
* with a voice (cloning), every chunk uses exactly that voice; chunks are not chained to each other, so a bad chunk
  cannot drag the following ones with it;
* without a voice (zero-shot / VoxCPM2 voice design), the first chunk invents the voice and is then *frozen*: its
  generated latents and its text become a voice for all later chunks. By default that is a **continuation** voice
  (the latents are the prompt audio, the chunk text its transcript): continuation is the mode that carries timbre,
  pace and loudness forward, it works on every model generation, and the generated latents are used as they are
  (no decode/encode round trip). A VoxCPM2 style then only shapes the first chunk, which the others continue.
  `freeze="reference"` (VoxCPM2) freezes them as a reference voice instead: timbre only, so a style can still be
  applied to every later chunk (the dialogue node uses this for per-line styles).

Seeds: chunk k is generated with `chunk_seed(seed, text_k, n)` (n counts earlier chunks with the same text), so
editing one sentence regenerates only that chunk; every other chunk comes out identical (with a frozen voice,
as long as the first chunk is unchanged). Each chunk gets the engine's badcase retry.

Joining: `pause_ms` of silence between chunks, exact to the sample; the chunk edges next to a pause get a short fade
(`crossfade_ms`) so no click is heard. With `pause_ms=0` consecutive chunks overlap by `crossfade_ms` with a linear
crossfade instead. Lengths: sum(chunks) + (n-1) * pause, or sum(chunks) - overlaps when pause is 0.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .engine import Engine, GenerationOptions, Result, clean_text
from .subtitles import Cue, render
from .text_split import is_cjk, split_text
from .voice import Voice

SEED_BITS = 63
FREEZE_MODES = ("continuation", "reference")


@dataclass(frozen=True)
class JoinOptions:
    pause_ms: float = 250.0
    crossfade_ms: float = 10.0

    def check(self) -> None:
        if not 0 <= self.pause_ms <= 60_000:
            raise ValueError(f"pause_ms must be between 0 and 60000, got {self.pause_ms}")
        if not 0 <= self.crossfade_ms <= 1000:
            raise ValueError(f"crossfade_ms must be between 0 and 1000, got {self.crossfade_ms}")


@dataclass
class Chunk:
    index: int
    text: str
    seed: int
    start: int  # first sample of this chunk in the joined waveform
    end: int  # one past its last sample
    sample_rate: int
    attempts: int = 1
    speaker: str | None = None

    @property
    def start_seconds(self) -> float:
        return self.start / self.sample_rate

    @property
    def end_seconds(self) -> float:
        return self.end / self.sample_rate


@dataclass
class LongformResult:
    waveform: torch.Tensor  # [T] float32 CPU
    sample_rate: int
    chunks: list[Chunk]
    chunk_waveforms: list[torch.Tensor]  # each chunk as generated, before fades and joining
    voice: Voice | None  # the voice the chunks used (the caller's, or the frozen first chunk)
    frozen: bool = False  # whether `voice` was frozen from the first chunk

    def cues(self) -> list[Cue]:
        return [Cue(c.start_seconds, c.end_seconds, c.text, c.speaker) for c in self.chunks]

    def subtitles(self, fmt: str = "srt") -> str:
        return render(self.cues(), fmt)


# ------------------------------------------------------------------------------------------------- seeds

def chunk_seed(seed: int, text: str, occurrence: int = 0) -> int:
    """A seed for one chunk from the run's seed and the chunk's own text (whitespace-insensitive)."""
    key = f"{int(seed)}\x00{occurrence}\x00{' '.join(text.split())}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") & ((1 << SEED_BITS) - 1)


def chunk_seeds(seed: int, texts: list[str]) -> list[int]:
    seen: dict[str, int] = {}
    out = []
    for text in texts:
        key = " ".join(text.split())
        out.append(chunk_seed(seed, text, seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return out


# ------------------------------------------------------------------------------------------------- voices

def freeze_voice(engine: Engine, result: Result, text: str, mode: str = "continuation") -> Voice:
    """A voice made of generated audio: its latents (and, for continuation, its text as the transcript)."""
    if mode not in FREEZE_MODES:
        raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {mode!r}")
    latents = result.patches.detach().to("cpu", torch.float32).contiguous()
    if mode == "reference" and engine.version == 2:
        return Voice(engine.version, engine.sample_rate, ref_feat=latents)
    transcript = clean_text(text).strip()
    if transcript and not is_cjk(transcript[-1]):
        transcript += " "  # the next text is appended directly to the transcript
    return Voice(engine.version, engine.sample_rate, prompt_feat=latents, prompt_text=transcript)


def styled(text: str, style: str, voice: Voice | None) -> str:
    """The engine text of a chunk: "(style)text" where a style applies (no voice, or a reference voice)."""
    if style and (voice is None or voice.mode == "reference"):
        return f"({style}){text}"
    return text


# ------------------------------------------------------------------------------------------------- joining

def _ramp(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float32) + 0.5) / n


def fade_edges(wav: torch.Tensor, samples: int, start: bool = True, end: bool = True) -> torch.Tensor:
    """A copy of wav with linear fades of `samples` (at most half its length) at the chosen edges."""
    wav = wav.clone()
    n = min(int(samples), wav.shape[0] // 2)
    if n > 0:
        if start:
            wav[:n] *= _ramp(n)
        if end:
            wav[-n:] *= _ramp(n).flip(0)
    return wav


class Joiner:
    """Joins chunks one at a time, so streaming gives exactly the samples the whole join gives.

    push(wav, last) returns (start sample of this chunk in the output, samples ready to emit now)."""

    def __init__(self, sample_rate: int, join: JoinOptions = JoinOptions()):
        join.check()
        self.pause = int(round(join.pause_ms * sample_rate / 1000))
        self.fade = int(round(join.crossfade_ms * sample_rate / 1000))
        self.held: torch.Tensor | None = None  # the previous chunk's tail, waiting to be crossfaded
        self.emitted = 0
        self.count = 0

    def push(self, wav: torch.Tensor, last: bool) -> tuple[int, torch.Tensor]:
        wav = wav.detach().to("cpu", torch.float32).reshape(-1)
        first = self.count == 0
        self.count += 1
        parts: list[torch.Tensor] = []
        if self.pause > 0 or self.fade == 0:
            body = fade_edges(wav, self.fade, start=not first, end=not last) if self.pause > 0 else wav
            start = self.emitted
            parts.append(body)
            if not last:
                parts.append(torch.zeros(self.pause))
        else:  # no pause: crossfade the held tail of the previous chunk with the head of this one
            body, start = wav, self.emitted
            if self.held is not None:
                x = min(self.held.shape[0], wav.shape[0] // 2)
                parts.append(self.held[: self.held.shape[0] - x])
                start = self.emitted + self.held.shape[0] - x
                ramp = _ramp(x)
                body = torch.cat([self.held[self.held.shape[0] - x:] * (1 - ramp) + wav[:x] * ramp, wav[x:]])
                self.held = None
            if not last:
                h = min(self.fade, body.shape[0] // 2)
                body, self.held = body[: body.shape[0] - h], body[body.shape[0] - h:]
            parts.append(body)
        piece = torch.cat(parts) if parts else wav[:0]
        self.emitted += piece.shape[0]
        return start, piece


# ------------------------------------------------------------------------------------------------- generation

class Longform:
    """Generate a list of chunk texts from one voice; iterate for (chunk, samples) as each chunk is ready, or
    call run() for the joined result. `voice` holds the frozen voice once the first chunk is done."""

    def __init__(self, engine: Engine, texts: list[str], voice: Voice | None = None,
                 options: GenerationOptions = GenerationOptions(), seed: int = 0, style: str = "",
                 join: JoinOptions = JoinOptions(), freeze: str = "continuation", seeds: list[int] | None = None,
                 speaker: str | None = None,
                 on_patch: Callable[[int, int, int], None] | None = None):
        texts = [t.strip() for t in texts if t and t.strip()]
        if not texts:
            raise ValueError("text is empty: nothing to speak")
        if freeze not in FREEZE_MODES:
            raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {freeze!r}")
        if style and voice is not None and voice.mode != "reference":
            raise ValueError(f"a style cannot steer a {voice.mode} voice (the model would read it aloud); use a "
                             "reference voice or no voice")
        if style and engine.version != 2:
            raise ValueError("a style (voice design) needs a VoxCPM2 model")
        if seeds is not None and len(seeds) != len(texts):
            raise ValueError("seeds: one per chunk")
        join.check()
        options.check()
        self.engine, self.texts, self.voice, self.options = engine, texts, voice, options
        self.style, self.join, self.freeze, self.speaker, self.on_patch = style, join, freeze, speaker, on_patch
        self.seeds = list(seeds) if seeds is not None else chunk_seeds(seed, texts)
        self.frozen = False

    def engine_text(self, index: int, voice: Voice | None) -> str:
        return styled(self.texts[index], self.style, voice)

    def patch_budgets(self) -> list[int]:
        """Each chunk's patch budget (the progress total), checking that every chunk fits the model's context.
        Chunks after a frozen first chunk are estimated without the voice they will get."""
        budgets = []
        for i in range(len(self.texts)):
            seq = self.engine.build_sequence(clean_text(self.engine_text(i, self.voice)), self.voice)
            budgets.append(self.engine.max_patches(seq, self.options))
        return budgets

    def __iter__(self) -> Iterator[tuple[Chunk, torch.Tensor, torch.Tensor]]:
        """Yield (chunk, samples to append to the output now, the chunk as generated) for each chunk in order."""
        rate = self.engine.sample_rate
        joiner = Joiner(rate, self.join)
        n = len(self.texts)
        for i, text in enumerate(self.texts):
            on_patch = None
            if self.on_patch is not None:
                on_patch = (lambda k: lambda done, budget: self.on_patch(k, done, budget))(i)
            result = self.engine.generate(self.engine_text(i, self.voice), self.voice, self.options,
                                          seed=self.seeds[i], on_patch=on_patch)
            if self.voice is None:
                self.voice, self.frozen = freeze_voice(self.engine, result, text, self.freeze), True
            start, piece = joiner.push(result.waveform, last=i == n - 1)
            chunk = Chunk(i, text, self.seeds[i], start, start + result.waveform.shape[0], rate, result.attempts,
                          self.speaker)
            yield chunk, piece, result.waveform

    def run(self) -> LongformResult:
        chunks, pieces, raw = [], [], []
        for chunk, piece, wav in self:
            chunks.append(chunk)
            pieces.append(piece)
            raw.append(wav)
        return LongformResult(torch.cat(pieces), self.engine.sample_rate, chunks, raw, self.voice, self.frozen)


def synthesize_longform(engine: Engine, text: str, voice: Voice | None = None, *, max_chars: int = 0,
                        options: GenerationOptions = GenerationOptions(), seed: int = 0, style: str = "",
                        join: JoinOptions = JoinOptions(), freeze: str = "continuation",
                        on_patch: Callable[[int, int, int], None] | None = None) -> LongformResult:
    """Split `text` (max_chars per chunk, 0 = automatic) and generate it chunk by chunk; see the module doc."""
    return Longform(engine, split_text(text, max_chars), voice, options, seed, style, join, freeze,
                    on_patch=on_patch).run()


def stream_longform(engine: Engine, text: str, voice: Voice | None = None, *, max_chars: int = 0,
                    options: GenerationOptions = GenerationOptions(), seed: int = 0, style: str = "",
                    join: JoinOptions = JoinOptions(), freeze: str = "continuation",
                    on_patch: Callable[[int, int, int], None] | None = None) -> Iterator[tuple[Chunk, torch.Tensor]]:
    """Like synthesize_longform, yielding (chunk, samples) as each chunk is done; the samples concatenated equal
    synthesize_longform's waveform exactly (the last crossfade tail, if any, comes with the last chunk)."""
    for chunk, piece, _ in Longform(engine, split_text(text, max_chars), voice, options, seed, style, join, freeze,
                                    on_patch=on_patch):
        yield chunk, piece
