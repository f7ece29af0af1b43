"""Side-by-side benchmark of our engine and the reference `voxcpm` on a random full-size checkpoint.

    python bench/engine.py --model 0.5B --dtype bfloat16 float32 --patches 12 --rounds 2

Builds (once) a random VoxCPM-0.5B-sized checkpoint in the official layout under --workdir, then measures in ONE
process, alternating ours and the reference: load time, peak RSS of the load, time per generated patch
(steady state, from per-step timestamps), and prints ratios (ours / reference). This machine's speed drifts, so
only the ratios of alternating runs are meaningful.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)
    except OSError:
        pass


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_checkpoint(folder: Path, name: str, device: str = "cpu") -> None:
    """Random full-size weights saved with our own (meta-free) build; tokenizer: the tiny synthetic one."""
    from safetensors.torch import save_file

    from real_configs import RELEASED
    from tiny import write_tokenizer
    from voxcpm_engine.config import parse_config
    from voxcpm_engine.layers.audiovae import AudioVAE
    from voxcpm_engine.model import VoxCPMModel

    raw = json.loads(json.dumps(RELEASED[name]))
    raw["device"] = "cpu"
    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    cfg = parse_config(raw)
    torch.manual_seed(0)
    with torch.device(device):  # random init is much faster on a GPU when one is there
        model = VoxCPMModel(cfg)
    with torch.no_grad():  # keep activations bounded through 24+ random layers
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(0.5)
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    del model
    vae = AudioVAE(cfg.audio_vae)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(folder / "audiovae.safetensors"))
    (folder / "config.json").write_text(json.dumps(raw, indent=1))


def variant(base: Path, dtype: str) -> Path:
    """Same weights, config.json dtype set (the reference takes its runtime dtype from there)."""
    folder = base.parent / f"{base.name}-{dtype}"
    folder.mkdir(exist_ok=True)
    for f in base.iterdir():
        if f.name != "config.json" and not (folder / f.name).exists():
            os.symlink(f, folder / f.name)
    raw = json.loads((base / "config.json").read_text())
    raw["dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def load_ours(folder: Path, dtype: str, device: str):
    from voxcpm_engine import VoxCPM

    return VoxCPM(folder, device=device, dtype=dtype)


def load_reference(folder: Path, dtype: str, device: str):
    from voxcpm.core import VoxCPM as RefVoxCPM

    return RefVoxCPM(str(folder), enable_denoiser=False, optimize=False, device=device)


def vram_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def warm_page_cache(folder: Path) -> None:
    """Read every file once so neither engine pays (or is spared) the cold disk read of going first."""
    for f in folder.iterdir():
        with open(f.resolve(), "rb") as fh:
            while fh.read(1 << 26):
                pass


def timed_load(loader, folder, dtype, device):
    gc.collect()
    base, vram_base = rss_mb(), (torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0)
    reset_peak()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tts = loader(folder, dtype, device)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return tts, time.perf_counter() - t0, peak_mb() - base, vram_mb() - vram_base


class StepClock:
    """Per-patch timestamps for both engines (ours via on_patch, the reference via its tqdm loop)."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, *_):
        self.stamps.append(time.perf_counter())

    def per_patch(self) -> float:
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:])]
        return statistics.median(gaps[1:] if len(gaps) > 2 else gaps)


def run_ours(tts, text: str, patches: int) -> float:
    from voxcpm_engine import GenerationOptions

    clock = StepClock()
    opts = GenerationOptions(min_len=patches, max_len=patches, retry_badcase=False)
    tts.engine.generate(text, None, opts, seed=0, on_patch=clock)
    return clock.per_patch()


def run_reference(tts, text: str, patches: int) -> float:
    import voxcpm.model.voxcpm as v1
    import voxcpm.model.voxcpm2 as v2

    clock = StepClock()

    def ticking(iterable, *a, **k):
        for item in iterable:
            clock()
            yield item

    saved = v1.tqdm, v2.tqdm
    v1.tqdm = v2.tqdm = ticking
    try:
        torch.manual_seed(0)
        tts.generate(text, min_len=patches, max_len=patches, retry_badcase=False)
    finally:
        v1.tqdm, v2.tqdm = saved
    return clock.per_patch()


def ttfc_ours(tts, text: str) -> float:
    t0 = time.perf_counter()
    stream = tts.generate_streaming(text, seed=0)
    next(iter(stream))
    elapsed = time.perf_counter() - t0
    stream.close()
    return elapsed


def ttfc_reference(tts, text: str) -> float:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    stream = tts.generate_streaming(text)
    next(stream)
    elapsed = time.perf_counter() - t0
    stream.close()
    return elapsed


def best_seconds(fn, device: str, runs: int, warmup: int) -> float:
    """The fastest of `runs` timed calls of fn() after `warmup` untimed ones (GPU work waited for)."""
    cuda = str(device).startswith("cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def bandwidth_gbs(device: str) -> float:
    """Memory bandwidth as a large fp32 matrix-vector product streams it (the decode step's access pattern)."""
    matrix = torch.randn(8192, 16384, device=device)  # 512 MB
    vector = torch.randn(16384, 1, device=device)
    return matrix.numel() * 4 / best_seconds(lambda: matrix @ vector, device, runs=5, warmup=2) / 1e9


def weight_bytes_per_patch(engine, n_timesteps: int = 10) -> int:
    """Bytes of weights one decode step reads: each LM layer once, LocEnc once, the DiT once per guided Euler
    step, plus the small projections (embeddings are not read by a step)."""
    m = engine.model

    def size(module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    dit_calls = n_timesteps - max(1, int((n_timesteps + 1) * 0.04))
    lms = size(m.base_lm) - size(m.base_lm.embed_tokens) + size(m.residual_lm)
    rest = size(m) - size(m.base_lm) - size(m.residual_lm) - size(m.feat_encoder) - size(m.feat_decoder)
    return lms + size(m.feat_encoder) + dit_calls * size(m.feat_decoder) + rest


def step_linear_calls(engine, texts: list[str]) -> list[tuple[torch.nn.Module, torch.Size]]:
    """Every Linear call (module, input shape, in order) of the third decode step of a batch generation."""
    from voxcpm_engine import GenerationOptions

    calls, marks = [], []
    linears = [m for m in engine.model.modules() if isinstance(m, torch.nn.Linear)]
    hooks = [m.register_forward_hook(lambda mod, args, out: calls.append((mod, args[0].shape))) for m in linears]
    try:
        opts = GenerationOptions(min_len=4, max_len=4, retry_badcase=False)
        engine.generate_batch(texts, None, opts, [0] * len(texts), on_patch=lambda *_: marks.append(len(calls)))
    finally:
        for h in hooks:
            h.remove()
    return calls[marks[1]:marks[2]]


def matmul_floor(engine, text: str) -> float:
    """Seconds the Linear products of one steady-state decode step take alone: every Linear call of step 3 is
    recorded, then replayed on random inputs of the same shapes. The rest of the step (attention, norms,
    activations, Python) is what ours spends above this floor."""
    step = [(m, torch.randn(shape, dtype=engine.dtype, device=engine.device))
            for m, shape in step_linear_calls(engine, [text])]

    def replay():
        for module, x in step:
            module(x)

    with torch.inference_mode():
        return best_seconds(replay, engine.device, runs=3, warmup=1)


def step_gflop(engine, texts: list[str]) -> float:
    """Arithmetic of one decode step's Linear products (2 x rows x in x out each), in GFLOP."""
    return sum(2 * shape.numel() * m.out_features for m, shape in step_linear_calls(engine, texts)) / 1e9


def peak_gemm_gflops(dtype: torch.dtype, device: str) -> float:
    """This machine's large-GEMM rate in `dtype` (2048 x 2048 x 2048), GFLOP/s: the most any product reaches."""
    a, b = (torch.randn(2048, 2048, device=device).to(dtype) for _ in range(2))
    return 2 * 2048 ** 3 / best_seconds(lambda: a @ b, device, runs=5, warmup=2) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="VoxCPM-0.5B", choices=["VoxCPM-0.5B", "VoxCPM1.5", "VoxCPM2"])
    ap.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"])
    ap.add_argument("--patches", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/voxcpm-bench")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = Path(args.workdir) / args.model
    if not (base / "config.json").exists():
        print(f"building random {args.model} checkpoint in {base} ...", flush=True)
        shutil.rmtree(base, ignore_errors=True)
        build_checkpoint(base, args.model, args.device)
    text = "hello world the quick brown fox"
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {args.patches} patches per run")
    for dtype in args.dtype:
        folder = variant(base, dtype)
        rows = {}
        warm_page_cache(folder)
        for name, loader in (("ours", load_ours), ("reference", load_reference)):
            tts, seconds, peak, vram = timed_load(loader, folder, dtype, args.device)
            rows[name] = {"load_s": seconds, "load_peak_mb": peak, "vram_mb": vram, "tts": tts, "patch_s": []}
        for _ in range(args.rounds):  # alternate to cancel drift
            rows["ours"]["patch_s"].append(run_ours(rows["ours"]["tts"], text, args.patches))
            rows["reference"]["patch_s"].append(run_reference(rows["reference"]["tts"], text, args.patches))
        for name, fn in (("ours", ttfc_ours), ("reference", ttfc_reference)):
            rows[name]["ttfc_s"] = min(fn(rows[name]["tts"], text) for _ in range(2))
        o, r = rows["ours"], rows["reference"]
        op, rp = min(o["patch_s"]), min(r["patch_s"])
        print(f"\n[{args.model} {dtype}]            ours      reference   ratio")
        print(f"load time (s)          {o['load_s']:8.2f}   {r['load_s']:8.2f}   {o['load_s'] / r['load_s']:.2f}")
        print(f"load peak RSS (MB)     {o['load_peak_mb']:8.0f}   {r['load_peak_mb']:8.0f}   "
              f"{o['load_peak_mb'] / r['load_peak_mb']:.2f}")
        if args.device.startswith("cuda"):
            print(f"load VRAM (MB)         {o['vram_mb']:8.0f}   {r['vram_mb']:8.0f}   {o['vram_mb'] / r['vram_mb']:.2f}")
        print(f"time per patch (ms)    {1000 * op:8.1f}   {1000 * rp:8.1f}   {op / rp:.2f}")
        bound = weight_bytes_per_patch(o["tts"].engine) / (bandwidth_gbs(args.device) * 1e9)
        print(f"bandwidth bound (ms)   {1000 * bound:8.1f}              ours / bound {op / bound:.2f}   "
              f"(weights read per patch / measured bandwidth)")
        floor = matmul_floor(o["tts"].engine, text)
        print(f"matmul floor (ms)      {1000 * floor:8.1f}              ours / floor {op / floor:.2f}   "
              f"(the step's Linear products alone, same shapes)")
        print(f"first chunk (ms)       {1000 * o['ttfc_s']:8.1f}   {1000 * r['ttfc_s']:8.1f}   "
              f"{o['ttfc_s'] / r['ttfc_s']:.2f}   (ours: {o['ttfc_s'] / op:.2f} x one patch)")
        seconds_per_patch = o["tts"].engine.config.samples_per_patch / o["tts"].sample_rate
        print(f"realtime factor        {op / seconds_per_patch:8.3f}   {rp / seconds_per_patch:8.3f}")
        del rows
        gc.collect()


if __name__ == "__main__":
    main()
