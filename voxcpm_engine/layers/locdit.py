"""LocDiT: the per-patch velocity estimator of the flow-matching decoder."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from .minicpm import MiniCPMStack


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """t [N] -> [N, dim] = cat(sin, cos). Everything in t's dtype, so under bf16 even the
    frequency indices are bf16-rounded (…, 256, 256, 258, …) like the reference."""
    half = dim // 2
    rate = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=t.dtype, device=t.device) * -rate)
    angles = (scale * t).unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class TimestepMLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(nn.functional.silu(self.linear_1(x)))


class LocDiT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        stack = cfg.local_stack(cfg.dit)
        self.hidden = stack.hidden_size
        self.mu_as_tokens = cfg.version == 2  # v2: mu = [lm proj, residual proj] as two tokens; v1: added to time
        self.in_proj = nn.Linear(cfg.feat_dim, self.hidden)
        self.cond_proj = nn.Linear(cfg.feat_dim, self.hidden)
        self.out_proj = nn.Linear(self.hidden, cfg.feat_dim)
        self.time_mlp = TimestepMLP(self.hidden)
        self.delta_time_mlp = TimestepMLP(self.hidden)
        self.decoder = MiniCPMStack(stack)

    def forward(self, x: torch.Tensor, mu: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                dt: torch.Tensor) -> torch.Tensor:
        """x [N,D,P], mu [N,H] (v1) / [N,2H] (v2), t [N], cond [N,D,P'], dt [N] -> velocity [N,D,P]."""
        return self.velocity(x, mu, self.time_embedding(t, dt, x.dtype), cond)

    def time_embedding(self, t: torch.Tensor, dt: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t [N], dt [N] -> [N,H]: depends on the time alone, so the sampler can compute it once per schedule."""
        time = self.time_mlp(sinusoidal_embedding(t, self.hidden).to(dtype))
        return time + self.delta_time_mlp(sinusoidal_embedding(dt, self.hidden).to(dtype))

    def velocity(self, x: torch.Tensor, mu: torch.Tensor, time: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """forward() with the time embedding [N,H] given."""
        N, _, P = x.shape
        x = self.in_proj(x.transpose(1, 2).contiguous())
        cond = self.cond_proj(cond.transpose(1, 2).contiguous())
        if self.mu_as_tokens:
            prefix = torch.cat([mu.view(N, -1, self.hidden), time.unsqueeze(1)], dim=1)
        else:
            prefix = (mu + time).unsqueeze(1)
        h = self.decoder(torch.cat([prefix, cond, x], dim=1), is_causal=False)
        return self.out_proj(h[:, -P:]).transpose(1, 2).contiguous()
