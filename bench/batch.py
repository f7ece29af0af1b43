"""Batch throughput of our engine: patches per second at batch 1/4/8/16 on one random full-size checkpoint.

    python bench/batch.py --model VoxCPM-0.5B --dtype bfloat16 --batch 1 4 8 16 --patches 8 [--device cuda]

Every sample generates exactly --patches patches (min_len = max_len), so throughput = B * patches / time of the
decode loop (prefill and VAE decode excluded, timed from the first to the last step). Each line also gives the
step's Linear arithmetic and the time it needs at this machine's large-GEMM rate: a compute floor, which large
batches approach (batch 1 is bound by reading the weights instead)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from engine import build_checkpoint, peak_gemm_gflops, step_gflop, variant  # noqa: E402  (bench/engine.py)

TEXTS = ["hello world the quick brown fox", "the lazy dog is quick", "this is a test of the voice",
         "brown fox jumps over the dog"]


def throughput(tts, batch: int, patches: int) -> float:
    from voxcpm_engine import GenerationOptions

    stamps: list[float] = []
    opts = GenerationOptions(min_len=patches, max_len=patches, retry_badcase=False)
    texts = [TEXTS[i % len(TEXTS)] for i in range(batch)]
    tts.engine.generate_batch(texts, None, opts, list(range(batch)), on_patch=lambda *_: stamps.append(
        time.perf_counter()))
    steps = len(stamps) - 1
    return batch * steps / (stamps[-1] - stamps[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="VoxCPM-0.5B")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--patches", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default="/tmp/voxcpm-bench")
    args = ap.parse_args()
    base = Path(args.workdir) / args.model
    if not (base / "config.json").exists():
        build_checkpoint(base, args.model, args.device)
    from voxcpm_engine import VoxCPM

    tts = VoxCPM(variant(base, args.dtype), device=args.device, dtype=args.dtype)
    throughput(tts, 1, 3)  # warm-up (and graph capture on CUDA)
    peak = peak_gemm_gflops(tts.engine.dtype, args.device)
    print(f"[{args.model} {args.dtype} {args.device}] large-GEMM rate {peak:.0f} GFLOP/s", flush=True)
    rates = {}
    for b in args.batch:
        rates[b] = max(throughput(tts, b, args.patches) for _ in range(2))
        gflop = step_gflop(tts.engine, [TEXTS[i % len(TEXTS)] for i in range(b)])
        print(f"[{args.model} {args.dtype} {args.device}] batch {b:3d}: {rates[b]:7.2f} patches/s "
              f"({rates[b] / rates[min(rates)]:.2f}x batch {min(rates)}); step {1e3 * b / rates[b]:.0f} ms, "
              f"its products {gflop:.1f} GFLOP = {1e3 * gflop / peak:.0f} ms at the large-GEMM rate", flush=True)


if __name__ == "__main__":
    main()
