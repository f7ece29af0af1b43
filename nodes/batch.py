"""VoxCPM Batch Synthesize: one clip per line of text, generated together as one batch in the same voice."""
from __future__ import annotations

from . import audio as audio_io
from . import comfy
from .synthesize import SEED_MAX, VoxCPMSynthesize, build_request, patch_budget

MAX_TEXTS = 256


def batch_lines(texts: str) -> list[str]:
    lines = [line.strip() for line in (texts or "").splitlines() if line.strip()]
    if not lines:
        raise ValueError("texts is empty: write one text per line")
    if len(lines) > MAX_TEXTS:
        raise ValueError(f"texts has {len(lines)} lines; at most {MAX_TEXTS} per run")
    return lines


class VoxCPMBatchSynthesize:
    DESCRIPTION = ("One clip per line of text, in the same voice, generated together as a batch (several times the "
                   "throughput of one text at a time). Line i uses seed + i, so it sounds exactly as VoxCPM "
                   "Synthesize would make it alone with that seed (up to float rounding).")
    RETURN_TYPES = ("AUDIO", "INT")
    RETURN_NAMES = ("audio", "seed")
    OUTPUT_IS_LIST = (True, True)
    OUTPUT_TOOLTIPS = ("One clip per line (a list: Save Audio saves each), at the model's sample rate.",
                       "The seed of each clip.")
    FUNCTION = "synthesize"
    CATEGORY = VoxCPMSynthesize.CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        base = VoxCPMSynthesize.INPUT_TYPES()
        required = {name: base["required"][name] for name in ("model", "style", "cfg", "steps", "seed",
                                                              "retry_badcase", "retry_max_times", "retry_ratio")}
        required["texts"] = ("STRING", {"multiline": True, "default": "", "tooltip": "One text per line."})
        required["batch_size"] = ("INT", {"default": 8, "min": 1, "max": 64, "tooltip": (
            "Lines generated together; larger is faster on GPUs and needs more memory.")})
        return {"required": required, "optional": {"voice": base["optional"]["voice"]}}

    @classmethod
    def VALIDATE_INPUTS(cls, texts=None):
        if isinstance(texts, str) and not texts.strip():
            return "texts is empty: write one text per line"
        return True

    def synthesize(self, model, texts, style="", cfg=2.0, steps=10, seed=0, retry_badcase=True, retry_max_times=3,
                   retry_ratio=6.0, batch_size=8, voice=None):
        lines = batch_lines(texts)
        if int(seed) + len(lines) - 1 > SEED_MAX:
            raise ValueError(f"seed + number of lines must stay below {SEED_MAX}")
        requests = [build_request(model, line, voice, style, False, cfg, steps, 0.0, retry_badcase,
                                  retry_max_times, retry_ratio, int(seed) + i) for i, line in enumerate(lines)]
        engine = requests[0].model.activate()
        budgets = [patch_budget(r) for r in requests]
        bar = comfy.Progress(sum(budgets))
        clips, done = [], 0
        for start in range(0, len(requests), int(batch_size)):
            group = requests[start:start + int(batch_size)]
            group_total = sum(budgets[start:start + len(group)])

            def on_patch(step: int, _total: int, base=done, size=len(group), cap=group_total) -> None:
                bar.update(base + min(step * size, cap))  # every step advances each sample still running
                comfy.check_interrupt()

            results = engine.generate_batch([r.text for r in group], group[0].voice, group[0].options,
                                            [r.seed for r in group], on_patch=on_patch)
            clips += [audio_io.to_audio(r.waveform, engine.sample_rate) for r in results]
            done += sum(budgets[start:start + len(group)])
            bar.update(done)
        return clips, [r.seed for r in requests]
