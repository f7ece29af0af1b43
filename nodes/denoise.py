"""VoxCPM Denoise: AUDIO -> AUDIO through ZipEnhancer (the official demo's prompt denoiser).

Same sample rate, channel count and length out as in; see voxcpm_engine/frontends/denoise.py for the windowing.
"""
from __future__ import annotations

from ..voxcpm_engine.frontends.denoise import ZIPENHANCER, ZipEnhancer
from . import audio as audio_io
from . import comfy
from .frontends import (DEVICES, FRONTEND_CACHE, device_for, list_models, load_with_progress, model_folder,
                        progress_callback)
from .loader import CATEGORY

FOLDER = "zipenhancer"  # models/zipenhancer/speech_zipenhancer_ans_multiloss_16k_base/
SOURCES = ["modelscope", "offline"]  # ZipEnhancer is published on ModelScope only
WORKING_BYTES = 2 << 30  # a 2 s window of the full-size model needs about 1.5 GB besides its 8 MB of weights


class VoxCPMDenoise:
    DESCRIPTION = ("Remove background noise from a voice clip with ZipEnhancer (as the official VoxCPM demo does "
                   "before cloning). The output keeps the input's sample rate, channels and length. The model "
                   "(models/zipenhancer/) is downloaded from ModelScope on first use; needs "
                   'pip install "modelscope[framework]".')
    RETURN_TYPES = ("AUDIO",)
    RETURN_NAMES = ("audio",)
    OUTPUT_TOOLTIPS = ("The denoised clip (same sample rate, channels and length as the input).",)
    FUNCTION = "denoise"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "audio": ("AUDIO", {"tooltip": "The clip to clean (any sample rate; every channel is denoised)."}),
            "model": (list_models(FOLDER, ZIPENHANCER), {"default": ZIPENHANCER.name, "tooltip": (
                "A folder in models/zipenhancer/ (configuration.json + pytorch_model.bin). The official model "
                "is downloaded there from ModelScope (iic/speech_zipenhancer_ans_multiloss_16k_base) on first use.")}),
            "normalize_loudness": ("BOOLEAN", {"default": False, "tooltip": (
                "Bring the result to -20 LUFS (the official demo does this); off keeps the input's level.")}),
            "device": (DEVICES, {"default": "cpu", "tooltip": (
                "cpu keeps the GPU free (about real time for the full model); gpu uses ComfyUI's device.")}),
            "download_source": (SOURCES, {"default": "modelscope", "tooltip": (
                "Where a missing model is downloaded from; offline never touches the network (so does "
                "HF_HUB_OFFLINE=1).")}),
            "keep_loaded": ("BOOLEAN", {"default": False, "tooltip": (
                "Keep the model in memory for the next run; off frees it right after use.")}),
        }}

    def denoise(self, audio, model, normalize_loudness=False, device="cpu", download_source="modelscope",
                keep_loaded=False):
        wav, rate = audio_io.from_audio(audio, "audio")
        folder = model_folder(FOLDER, ZIPENHANCER, model)
        dev = device_for(device)
        comfy.free_memory(WORKING_BYTES, dev)

        def load():
            return load_with_progress(ZIPENHANCER, folder, download_source,
                                      lambda: ZipEnhancer.load(folder, dev, download_source))

        def run(enhancer: ZipEnhancer):
            bar = comfy.Progress(1)
            return enhancer.enhance(wav, rate, loudness=bool(normalize_loudness), progress=progress_callback(bar))

        out = FRONTEND_CACHE.use(("zipenhancer", str(folder), dev), load, bool(keep_loaded), run)
        return ({"waveform": out[None].contiguous(), "sample_rate": rate},)


comfy.register_extra_model_folder(FOLDER, {".json", ".bin"})
