"""LocEnc: per-patch transformer that summarizes one latent patch into a CLS embedding."""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .minicpm import MiniCPMStack


class LocEnc(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        stack = cfg.local_stack(cfg.encoder)
        self.special_token = nn.Parameter(torch.zeros(1, 1, 1, stack.hidden_size))
        self.in_proj = nn.Linear(cfg.feat_dim, stack.hidden_size, bias=True)
        self.encoder = MiniCPMStack(stack)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,T,P,D] -> [B,T,H_enc]: the CLS position of [special, patch] after a bidirectional pass."""
        B, T, P, _ = x.shape
        x = self.in_proj(x)
        cls = self.special_token.expand(B, T, 1, -1)
        x = torch.cat([cls, x], dim=2).reshape(B * T, P + 1, -1)
        return self.encoder(x, is_causal=False)[:, 0].reshape(B, T, -1)
