"""Conditional flow matching sampler: sway-scheduled Euler with CFG-Zero* guidance."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ModelConfig
from .locdit import LocDiT


def sway_schedule(n_timesteps: int, dtype: torch.dtype, device) -> torch.Tensor:
    """n+1 times from 1 (noise) to 0 (data), bunched toward t=1: t + (cos(pi t / 2) - 1 + t)."""
    t = torch.linspace(1, 0, n_timesteps + 1, dtype=dtype, device=device)
    return t + (torch.cos(math.pi / 2 * t) - 1 + t)


class FlowMatching(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.estimator = LocDiT(cfg)

    def guided_velocity(self, x, mu, t, cond, cfg_value: float) -> torch.Tensor:
        """Conditional and unconditional (mu = 0) velocities in one batched call, combined by CFG-Zero*."""
        B = x.size(0)
        v = self.estimator(torch.cat([x, x]), torch.cat([mu, torch.zeros_like(mu)]), t.expand(2 * B),
                           torch.cat([cond, cond]), torch.zeros(2 * B, dtype=x.dtype, device=x.device))
        v_cond, v_uncond = v.split(B)
        c, u = v_cond.reshape(B, -1), v_uncond.reshape(B, -1)
        # per-sample projection of v_cond onto v_uncond
        s = ((c * u).sum(1, keepdim=True) / ((u ** 2).sum(1, keepdim=True) + 1e-8)).view(B, 1, 1)
        return v_uncond * s + cfg_value * (v_cond - v_uncond * s)

    def forward(self, mu: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor, n_timesteps: int,
                cfg_value: float) -> torch.Tensor:
        """mu [B,...], cond [B,D,P], noise [B,D,P] (drawn by the caller in mu.dtype) -> latent patch [B,D,P]."""
        ts = sway_schedule(n_timesteps, mu.dtype, mu.device)
        zero_init_steps = max(1, int((n_timesteps + 1) * 0.04))
        x, t, dt = noise, ts[0], ts[0] - ts[1]
        for step in range(1, n_timesteps + 1):
            if step > zero_init_steps:  # CFG-Zero*: the first steps have zero velocity, x stays noise
                x = x - dt * self.guided_velocity(x, mu, t, cond, cfg_value)
            t = t - dt
            if step < n_timesteps:
                dt = t - ts[step + 1]  # re-derived from the running t, as the reference does
        return x
