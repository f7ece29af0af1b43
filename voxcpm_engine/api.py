"""Drop-in replacement for the official `voxcpm.VoxCPM` (file paths in, numpy out), over the tensor Engine."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import checkpoint
from .audio import read_audio
from .engine import Engine, GenerationOptions
from .voice import Voice


class VoxCPM:
    """`from voxcpm_engine import VoxCPM` works where code was written for `from voxcpm import VoxCPM`."""

    def __init__(self, voxcpm_model_path: str | Path, device: str | None = None, dtype: str | None = None,
                 low_vram: bool = False, **_ignored):
        self.engine = Engine.load(voxcpm_model_path, device=device, dtype=dtype, low_vram=low_vram)
        self.last_seed: int | None = None

    @classmethod
    def from_pretrained(cls, hf_model_id: str = "openbmb/VoxCPM2", device: str | None = None,
                        dtype: str | None = None, cache_dir: str | None = None, local_files_only: bool = False,
                        source: str = "huggingface", **kwargs) -> "VoxCPM":
        """A local folder is used as is; a hub id ("openbmb/VoxCPM2") is downloaded into cache_dir first.

        Reference-only arguments (load_denoiser, optimize, zipenhancer_model_id, ...) are accepted and ignored."""
        path = checkpoint.resolve_model_path(hf_model_id, cache_dir=cache_dir, source=source,
                                             local_files_only=local_files_only)
        return cls(path, device=device, dtype=dtype, **kwargs)

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate

    # ------------------------------------------------------------------------------------------- voices
    def make_voice(self, prompt_wav_path=None, prompt_text=None, reference_wav_path=None) -> Voice | None:
        """Encode prompt/reference files once; pass the Voice to generate(voice=...) for many generations."""
        if prompt_wav_path is None and prompt_text is None and reference_wav_path is None:
            return None
        if (prompt_wav_path is None) != (prompt_text is None):
            raise ValueError("prompt_wav_path and prompt_text must both be provided or both be None")
        prompt = read_audio(prompt_wav_path, "prompt_wav_path") if prompt_wav_path is not None else (None, None)
        ref = read_audio(reference_wav_path, "reference_wav_path") if reference_wav_path is not None else (None, None)
        return self.engine.make_voice(prompt[0], prompt[1], prompt_text, ref[0], ref[1],
                                      prompt_name=f"prompt_wav_path {prompt_wav_path}",
                                      reference_name=f"reference_wav_path {reference_wav_path}")

    # ------------------------------------------------------------------------------------------- generation
    def generate(self, text: str, prompt_wav_path=None, prompt_text=None, reference_wav_path=None,
                 cfg_value: float = 2.0, inference_timesteps: int = 10, min_len: int = 2, max_len: int = 4096,
                 normalize: bool = False, denoise: bool = False, retry_badcase: bool = True,
                 retry_badcase_max_times: int = 3, retry_badcase_ratio_threshold: float = 6.0,
                 seed: int | None = None, voice: Voice | None = None) -> np.ndarray:
        """Synthesize `text`; returns a 1-D float32 array at `sample_rate`.

        seed=None draws noise from torch's global generator (as the reference does); seed=N gives the output the
        reference gives after torch.manual_seed(N) without touching the global generator. `last_seed` reports it."""
        text, voice, options = self._request(text, prompt_wav_path, prompt_text, reference_wav_path, voice, normalize,
                                             denoise, cfg_value, inference_timesteps, min_len, max_len,
                                             retry_badcase, retry_badcase_max_times, retry_badcase_ratio_threshold)
        result = self.engine.generate(text, voice, options, seed=seed)
        self.last_seed = seed
        return result.waveform.numpy()

    def generate_streaming(self, text: str, prompt_wav_path=None, prompt_text=None, reference_wav_path=None,
                           cfg_value: float = 2.0, inference_timesteps: int = 10, min_len: int = 2,
                           max_len: int = 4096, normalize: bool = False, denoise: bool = False,
                           retry_badcase: bool = True, retry_badcase_max_times: int = 3,
                           retry_badcase_ratio_threshold: float = 6.0, seed: int | None = None,
                           voice: Voice | None = None) -> Iterator[np.ndarray]:
        """Like generate(), yielding 1-D float32 chunks as patches are generated (badcase retry is off here)."""
        text, voice, options = self._request(text, prompt_wav_path, prompt_text, reference_wav_path, voice, normalize,
                                             denoise, cfg_value, inference_timesteps, min_len, max_len, False,
                                             retry_badcase_max_times, retry_badcase_ratio_threshold)
        self.last_seed = seed
        return (chunk.numpy() for chunk in self.engine.stream(text, voice, options, seed=seed))

    def _request(self, text, prompt_wav_path, prompt_text, reference_wav_path, voice, normalize, denoise, cfg_value,
                 inference_timesteps, min_len, max_len, retry, retry_times, retry_ratio):
        if not isinstance(text, str) or not text.strip():
            raise ValueError("target text must be a non-empty string")
        if normalize:
            raise ValueError("normalize=True is not supported yet: write numbers and symbols out in words")
        if denoise and (prompt_wav_path is not None or reference_wav_path is not None):
            raise ValueError("denoise=True is not supported by the engine; denoise the clip first "
                             "(the VoxCPM Denoise node in ComfyUI)")
        if voice is not None and (prompt_wav_path or reference_wav_path or prompt_text is not None):
            raise ValueError("pass either voice= or prompt/reference files, not both")
        voice = voice or self.make_voice(prompt_wav_path, prompt_text, reference_wav_path)
        options = GenerationOptions(cfg_value, inference_timesteps, min_len, max_len, retry, retry_times, retry_ratio)
        return text, voice, options
