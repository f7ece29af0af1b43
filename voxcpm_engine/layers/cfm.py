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


def euler_times(ts: torch.Tensor, n_timesteps: int):
    """Yield (step, t, dt) of the Euler loop, t running from ts[0] with dt re-derived from it (as the reference)."""
    t, dt = ts[0], ts[0] - ts[1]
    for step in range(1, n_timesteps + 1):
        yield step, t, dt
        t = t - dt
        if step < n_timesteps:
            dt = t - ts[step + 1]


class FlowMatching(nn.Module):
    MAX_TIME_TABLES = 8

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.estimator = LocDiT(cfg)
        self._time_tables: dict[tuple, dict[int, torch.Tensor]] = {}

    def guided_velocity(self, x, mu, time, cond, cfg_value: float) -> torch.Tensor:
        """Conditional and unconditional (mu = 0) velocities in one batched call, combined by CFG-Zero*.
        time: the [2B, H] time embedding of this step."""
        B = x.size(0)
        v = self.estimator.velocity(torch.cat([x, x]), torch.cat([mu, torch.zeros_like(mu)]), time,
                                    torch.cat([cond, cond]))
        v_cond, v_uncond = v.split(B)
        c, u = v_cond.reshape(B, -1), v_uncond.reshape(B, -1)
        # per-sample projection of v_cond onto v_uncond
        s = ((c * u).sum(1, keepdim=True) / ((u ** 2).sum(1, keepdim=True) + 1e-8)).view(B, 1, 1)
        return v_uncond * s + cfg_value * (v_cond - v_uncond * s)

    def time_table(self, n_timesteps: int, rows: int, dtype: torch.dtype, device) -> dict[int, torch.Tensor]:
        """step -> [rows, H] time embedding (dt input 0, as the reference). The schedule is the same for every
        patch, so this is computed once (same shapes and ops as per step, hence the same values) and reused."""
        mlps = (self.estimator.time_mlp.linear_1, self.estimator.time_mlp.linear_2,
                self.estimator.delta_time_mlp.linear_1, self.estimator.delta_time_mlp.linear_2)
        key = (n_timesteps, rows, dtype, torch.device(device),
               tuple((id(m), m.weight.data_ptr(), m.weight.device) for m in mlps))
        if key not in self._time_tables:
            while len(self._time_tables) >= self.MAX_TIME_TABLES:
                self._time_tables.pop(next(iter(self._time_tables)))
            ts = sway_schedule(n_timesteps, dtype, device)
            zero = torch.zeros(rows, dtype=dtype, device=device)
            self._time_tables[key] = {step: self.estimator.time_embedding(t.expand(rows), zero, dtype)
                                      for step, t, _ in euler_times(ts, n_timesteps)}
        return self._time_tables[key]

    def _apply(self, fn, recurse=True):
        self._time_tables.clear()
        return super()._apply(fn, recurse)

    def forward(self, mu: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor, n_timesteps: int,
                cfg_value: float) -> torch.Tensor:
        """mu [B,...], cond [B,D,P], noise [B,D,P] (drawn by the caller in mu.dtype) -> latent patch [B,D,P]."""
        ts = sway_schedule(n_timesteps, mu.dtype, mu.device)
        times = self.time_table(n_timesteps, 2 * mu.size(0), mu.dtype, mu.device)
        zero_init_steps = max(1, int((n_timesteps + 1) * 0.04))
        x = noise
        for step, _, dt in euler_times(ts, n_timesteps):
            if step > zero_init_steps:  # CFG-Zero*: the first steps have zero velocity, x stays noise
                x = x - dt * self.guided_velocity(x, mu, times[step], cond, cfg_value)
        return x
