"""SenseVoice Small speech recognition (iic/SenseVoiceSmall) through funasr, tensors in and a string out.

The model is loaded the official way, funasr's AutoModel on the local folder, with the settings that keep it offline
and strict: no update check, no hub lookup (an absolute existing folder), shape mismatches are errors, the thread
count of the process is left alone, and feature dither is off so the same clip always gives the same text.
Audio of any rate and channel count is mixed to mono and resampled to 16 kHz here, in memory.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from . import ModelSpec, ensure_model, require

SENSEVOICE = ModelSpec(
    name="SenseVoiceSmall",
    what="SenseVoice Small (speech recognition)",
    repos={"modelscope": "iic/SenseVoiceSmall", "huggingface": "FunAudioLLM/SenseVoiceSmall"},
    files=("configuration.json", "config.yaml", "model.pt", "chn_jpn_yue_eng_ko_spectok.bpe.model", "am.mvn"),
)
MODEL_RATE = 16000
LANGUAGES = ("auto", "zh", "en", "yue", "ja", "ko")
TAG_MODES = ("strip", "keep", "emoji")

_RICH_TAG = re.compile(r"<\|[^<>|]*\|>")


def strip_rich_tags(text: str) -> str:
    """Remove SenseVoice's rich tags (<|en|>, <|HAPPY|>, <|BGM|>, <|withitn|>, ...) and tidy the spaces left."""
    text = _RICH_TAG.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


class SenseVoice:
    """A loaded SenseVoice Small (funasr AutoModel) on one device."""

    def __init__(self, auto_model, folder: Path, device: str):
        self.auto_model, self.folder, self.device = auto_model, folder, str(device)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", source: str = "offline") -> "SenseVoice":
        """Load the model folder (downloading it first if it is missing and `source` allows)."""
        folder = ensure_model(SENSEVOICE, folder, source)
        funasr = require("funasr", "funasr", "SenseVoice transcription")
        auto_model = funasr.AutoModel(
            model=str(folder), device=str(device), disable_update=True, disable_pbar=True, log_level="WARNING",
            ignore_init_mismatch=False, ncpu=torch.get_num_threads(), frontend_conf={"dither": 0.0})
        auto_model.model.requires_grad_(False)
        return cls(auto_model, folder, str(device))

    @property
    def network(self) -> torch.nn.Module:
        return self.auto_model.model

    def to(self, device) -> "SenseVoice":
        self.network.to(device)
        self.device = str(device)
        self.auto_model.kwargs["device"] = str(device)
        return self

    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.network.parameters())

    def raw_transcribe(self, wav: torch.Tensor, sample_rate: int, language: str = "auto", use_itn: bool = True) -> str:
        """The model's text with its rich tags, for [C, T] or [T] audio at any rate."""
        import torchaudio.functional as AF

        if language not in LANGUAGES:
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, got {language!r}")
        wav = torch.as_tensor(wav).detach().to("cpu", torch.float32)
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() != 2:
            raise ValueError(f"audio to transcribe must be [channels, samples], got {tuple(wav.shape)}")
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"invalid sample rate {sample_rate!r}")
        if wav.shape[1] == 0:
            raise ValueError("the audio to transcribe is empty")
        if not bool(torch.isfinite(wav).all()):
            raise ValueError("the audio to transcribe contains NaN or infinite samples")
        mono = wav.mean(dim=0, keepdim=True)
        if int(sample_rate) != MODEL_RATE:
            mono = AF.resample(mono, int(sample_rate), MODEL_RATE)
        with torch.inference_mode():
            result = self.auto_model.generate(input=mono[0].numpy(), language=language, use_itn=bool(use_itn),
                                              disable_pbar=True)
        if not result or "text" not in result[0]:
            raise RuntimeError(f"SenseVoice returned no text ({result!r})")
        return str(result[0]["text"])

    def transcribe(self, wav: torch.Tensor, sample_rate: int, language: str = "auto", use_itn: bool = True,
                   tags: str = "strip") -> str:
        """The transcript: rich tags stripped ("strip"), kept as the model wrote them ("keep"), or turned into
        emoji by funasr's rich_transcription_postprocess ("emoji")."""
        if tags not in TAG_MODES:
            raise ValueError(f"tags must be one of {', '.join(TAG_MODES)}, got {tags!r}")
        text = self.raw_transcribe(wav, sample_rate, language, use_itn)
        if tags == "keep":
            return text
        if tags == "emoji":
            from funasr.utils.postprocess_utils import rich_transcription_postprocess

            return rich_transcription_postprocess(text).strip()
        return strip_rich_tags(text)
