"""Finite scalar quantization bottleneck applied to base-LM hidden states at audio positions."""
from __future__ import annotations

import torch
from torch import nn


class ScalarQuantizer(nn.Module):
    def __init__(self, hidden: int, latent_dim: int, scale: int):
        super().__init__()
        self.scale = scale
        self.in_proj = nn.Linear(hidden, latent_dim)
        self.out_proj = nn.Linear(latent_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.in_proj(x))
        # 2*scale+1 levels in [-1, 1]; torch.round is half-to-even
        return self.out_proj(torch.round(h * self.scale) / self.scale)
