"""A Voice: prompt and/or reference audio already encoded to VAE latents, reusable across generations."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Voice:
    """Encoded latents are fp32 CPU tensors shaped [patches, patch_size, feat_dim].

    mode: "continuation" (prompt audio + its transcript; every generation), "reference" (VoxCPM2: reference audio
    isolated between 103/104, no transcript) or "ref_continuation" (VoxCPM2: both)."""

    version: int  # model generation that encoded it (1 = VoxCPM-0.5B/1.5, 2 = VoxCPM2)
    sample_rate: int  # output sample rate of that model, to tell 0.5B (16 kHz) from 1.5 (44.1 kHz)
    prompt_feat: torch.Tensor | None = None
    prompt_text: str | None = None
    ref_feat: torch.Tensor | None = None

    def __post_init__(self):
        if (self.prompt_feat is None) != (self.prompt_text is None):
            raise ValueError("a Voice needs prompt audio and its transcript together (or neither)")
        if self.prompt_feat is None and self.ref_feat is None:
            raise ValueError("a Voice needs prompt audio with its transcript, or (VoxCPM2) reference audio")
        if self.ref_feat is not None and self.version != 2:
            raise ValueError("reference audio is only supported by VoxCPM2 models")

    @property
    def mode(self) -> str:
        if self.ref_feat is not None:
            return "ref_continuation" if self.prompt_feat is not None else "reference"
        return "continuation"

    @property
    def num_patches(self) -> int:
        return sum(f.shape[0] for f in (self.prompt_feat, self.ref_feat) if f is not None)
