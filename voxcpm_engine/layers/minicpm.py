"""MiniCPM-4 transformer stack: RMSNorm, LongRoPE, GQA attention, static KV cache.

Every transformer of VoxCPM (base LM, residual LM, LocEnc, LocDiT) is one `MiniCPMStack`. The q/k/v and the
gate/up projections are each one fused product (layers/linear.py); state dicts keep the official per-projection keys.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import StackConfig
from .linear import Linear, fused_linear, keep_part_keys


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        # x * fp32 rsqrt promotes to fp32; round back to x's dtype before the weight multiply
        return (x * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


class RotaryEmbedding(nn.Module):
    """LongRoPE cos/sin tables [max_position_embeddings, head_dim], NeoX half-split layout."""

    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.cfg = cfg
        cos, sin = self._tables(device=None)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, rs = self.cfg, self.cfg.rope_scaling
        dim, n = cfg.head_dim, cfg.max_position_embeddings
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, device=device).float() / dim))
        factors = rs.long_factor if n > rs.original_max_position_embeddings else rs.short_factor
        factors = torch.tensor(factors, dtype=torch.float32, device=device)
        positions = torch.arange(n, dtype=torch.float32, device=device)
        freqs = torch.outer(positions, 1.0 / factors) * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        # magnitude correction for positions beyond the original context
        scale = math.sqrt(1 + math.log(n / rs.original_max_position_embeddings)
                          / math.log(rs.original_max_position_embeddings))
        return angles.cos() * scale, angles.sin() * scale

    @torch.no_grad()
    def init_buffers(self, device, dtype: torch.dtype) -> None:
        """(Re)build the tables after meta-device construction.

        Computed in fp32 on the CPU, where the reference builds them at construction, then cast and moved.
        """
        cos, sin = self._tables(device="cpu")
        self.cos = cos.to(device=device, dtype=dtype)
        self.sin = sin.to(device=device, dtype=dtype)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos[positions], self.sin[positions]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate in fp32 (tables are upcast exactly), round back to x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


class KVCache:
    """Static per-layer key/value storage: k, v [num_layers, B, Hkv, max_length, head_dim].

    Keys are stored post-RoPE; slot p holds absolute position p.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_length: int, head_dim: int,
                 device=None, dtype: torch.dtype | None = None):
        shape = (num_layers, batch_size, num_kv_heads, max_length, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    @property
    def max_length(self) -> int:
        return self.k.size(3)


class Attention(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_sizes = (q_dim, kv_dim, kv_dim)
        self.qkv_proj = fused_linear(cfg.hidden_size, dict(zip(("q_proj", "k_proj", "v_proj"), self.qkv_sizes)))
        self.o_proj = Linear(q_dim, cfg.hidden_size, bias=False)
        keep_part_keys(self)

    def qkv(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None):
        """x [B,T,H] -> q [B,Hq,T,hd], k/v [B,Hkv,T,hd] with q/k rotated."""
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return q.contiguous(), k.contiguous(), v.contiguous()

    def attend(self, q, k, v, is_causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        # enable_gqa: query head i reads kv head i // (Hq / Hkv)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=True)
        B, _, T, _ = q.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        size = cfg.intermediate_size
        self.gate_up_proj = fused_linear(cfg.hidden_size, {"gate_proj": size, "up_proj": size})
        self.down_proj = Linear(size, cfg.hidden_size, bias=False)
        keep_part_keys(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.residual_scale = cfg.residual_scale

    def forward(self, x, rope, is_causal: bool, kv_out: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Full sequence; when kv_out (layer slices of a cache) is given, store k/v at slots 0..T-1."""
        q, k, v = self.self_attn.qkv(self.input_layernorm(x), rope)
        if kv_out is not None:
            T = x.size(1)
            kv_out[0][:, :, :T].copy_(k)
            kv_out[1][:, :, :T].copy_(v)
        x = x + self.self_attn.attend(q, k, v, is_causal=is_causal) * self.residual_scale
        return x + self.mlp(self.post_attention_layernorm(x)) * self.residual_scale

    def step(self, x, rope, k_cache, v_cache, slot_index, mask):
        """x [B,1,H]; writes this token's k/v at each sample's slot, attends over the masked cache."""
        q, k, v = self.self_attn.qkv(self.input_layernorm(x), rope)
        k_cache.scatter_(2, slot_index, k)
        v_cache.scatter_(2, slot_index, v)
        x = x + self.self_attn.attend(q, k_cache, v_cache, mask=mask) * self.residual_scale
        return x + self.mlp(self.post_attention_layernorm(x)) * self.residual_scale


class MiniCPMStack(nn.Module):
    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.vocab_size > 0:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = None if cfg.no_rope else RotaryEmbedding(cfg)

    def new_cache(self, batch_size: int, max_length: int, device=None, dtype: torch.dtype | None = None) -> KVCache:
        c = self.cfg
        return KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, max_length, c.head_dim, device, dtype)

    def forward(self, x: torch.Tensor, is_causal: bool, cache: KVCache | None = None) -> torch.Tensor:
        """x [B,T,H] at positions 0..T-1 -> final-normed hidden [B,T,H]; optionally prefill `cache`."""
        rope = None
        if self.rotary is not None:
            rope = self.rotary(torch.arange(x.size(1), device=x.device))
        for i, layer in enumerate(self.layers):
            kv_out = None if cache is None else (cache.k[i], cache.v[i])
            x = layer(x, rope, is_causal, kv_out)
        return self.norm(x)

    def step(self, x: torch.Tensor, cache: KVCache, positions: torch.Tensor, limit: int | None = None) -> torch.Tensor:
        """One token per sample: x [B,H] at absolute positions [B] -> hidden [B,H]. Sync-free.

        limit (optional, > every position): attend over cache slots [0, limit) only instead of the whole static
        buffer; masked slots weigh exactly zero either way, so it only saves reading the empty tail."""
        B = x.size(0)
        rope = None
        if self.rotary is not None:
            cos, sin = self.rotary(positions)
            rope = cos.view(B, 1, 1, -1), sin.view(B, 1, 1, -1)
        c = self.cfg
        length = cache.max_length if limit is None else limit
        slot_index = positions.view(B, 1, 1, 1).expand(B, c.num_key_value_heads, 1, c.head_dim)
        slots = torch.arange(length, device=x.device)
        mask = (slots <= positions.view(B, 1)).view(B, 1, 1, -1)
        h = x.unsqueeze(1)
        for i, layer in enumerate(self.layers):
            h = layer.step(h, rope, cache.k[i][:, :, :length], cache.v[i][:, :, :length], slot_index, mask)
        return self.norm(h).squeeze(1)
