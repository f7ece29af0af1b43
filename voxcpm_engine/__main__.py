"""Command line: python -m voxcpm_engine --model PATH_OR_ID --text "..." --output out.wav"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .api import VoxCPM
from .audio import write_wav
from .engine import GenerationOptions


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m voxcpm_engine", description="VoxCPM text-to-speech")
    p.add_argument("--model", required=True, help="checkpoint folder, or hub id such as openbmb/VoxCPM2")
    p.add_argument("--text", required=True, help="text to speak; VoxCPM2 voice design: '(description)text'")
    p.add_argument("--output", required=True, help="output .wav path")
    p.add_argument("--prompt-audio", help="prompt clip to continue (needs --prompt-text)")
    p.add_argument("--prompt-text", help="exact transcript of --prompt-audio")
    p.add_argument("--reference-audio", help="VoxCPM2: reference clip for the voice (no transcript needed)")
    p.add_argument("--cfg", type=float, default=2.0, help="guidance scale (default 2.0)")
    p.add_argument("--steps", type=int, default=10, help="flow-matching steps (default 10)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: torch's global generator)")
    p.add_argument("--max-len", type=int, default=4096, help="maximum number of generated patches")
    p.add_argument("--no-retry", action="store_true", help="do not retry over-long (bad) generations")
    p.add_argument("--stream", action="store_true", help="generate chunk by chunk (streaming decode)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    p.add_argument("--low-vram", action="store_true", help="AudioVAE on the CPU, decoded in 10 s pieces")
    p.add_argument("--cache-dir", default=None, help="where hub downloads go")
    p.add_argument("--source", default="huggingface", choices=["huggingface", "modelscope"])
    args = p.parse_args(argv)
    if (args.prompt_audio is None) != (args.prompt_text is None):
        p.error("--prompt-audio and --prompt-text go together")
    if not 0.1 <= args.cfg <= 10:
        p.error("--cfg must be within 0.1..10")
    if not 1 <= args.steps <= 100:
        p.error("--steps must be within 1..100")
    return args


class Progress:
    """One-line progress bar on stderr."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} patches ({rate:.1f}/s)")
        sys.stderr.flush()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        tts = VoxCPM.from_pretrained(args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir,
                                     source=args.source, low_vram=args.low_vram)
        engine = tts.engine
        voice = tts.make_voice(args.prompt_audio, args.prompt_text, args.reference_audio)
        options = GenerationOptions(args.cfg, args.steps, max_len=args.max_len,
                                    retry_badcase=not (args.no_retry or args.stream))
        progress = Progress()
        if args.stream:
            chunks = [c.numpy() for c in engine.stream(args.text, voice, options, seed=args.seed, on_patch=progress)]
            wav = np.concatenate(chunks)
        else:
            wav = engine.generate(args.text, voice, options, seed=args.seed, on_patch=progress).waveform.numpy()
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    path = write_wav(args.output, wav, engine.sample_rate)
    print(f"\nwrote {path} ({len(wav) / engine.sample_rate:.2f} s at {engine.sample_rate} Hz)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
