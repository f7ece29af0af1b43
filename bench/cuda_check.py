"""CUDA check: our engine vs the reference on tiny random checkpoints, on the GPU, in fp32 / bf16 / fp16.

    python bench/cuda_check.py

Prints, per generation and dtype, the output lengths and the max abs waveform difference (same seed), plus whether
streaming chunks match. Needs the reference `voxcpm` (test-only) and a CUDA device.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from tiny import build_tiny_checkpoint, reference_model  # noqa: E402
from voxcpm_engine import VoxCPM  # noqa: E402


def main() -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
    root = Path(tempfile.mkdtemp())
    for kind in ("v1", "v1_5", "v2"):
        for dtype in ("float32", "bfloat16", "float16"):
            folder = build_tiny_checkpoint(root / f"{kind}-{dtype}", kind, dtype=dtype)
            ours = VoxCPM(folder, device="cuda")
            ref = reference_model(folder, device="cuda")
            for text in ("hello world", "你好世界"):
                torch.manual_seed(7)
                expected = ref.generate(text, retry_badcase=False)
                got = ours.generate(text, seed=7, retry_badcase=False)
                same = got.shape == expected.shape
                diff = float(np.abs(got - expected).max()) if same else float("nan")
                torch.manual_seed(8)
                ref_chunks = list(ref.generate_streaming(text))
                our_chunks = list(ours.generate_streaming(text, seed=8))
                stream_diff = (max(float(np.abs(a - b).max()) for a, b in zip(our_chunks, ref_chunks))
                               if len(ref_chunks) == len(our_chunks) else float("nan"))
                print(f"{kind:5s} {dtype:9s} {text!r:14s} len ours/ref {got.size}/{expected.size} "
                      f"max|diff| {diff:.3g}  stream chunks {len(our_chunks)}/{len(ref_chunks)} "
                      f"max|diff| {stream_diff:.3g}  finite {bool(np.isfinite(got).all())}", flush=True)
            del ours, ref


if __name__ == "__main__":
    main()
