"""The VoxCPM network (everything stored in model.safetensors), wired for all generations.

One autoregressive step turns the current LM state into one patch of `patch_size` latent frames:
    mu = dit_condition(lm_hidden, residual_hidden)          DiT condition
    patch = FlowMatching(mu, previous patch, noise)          LocDiT + Euler/CFG-Zero*
    lm_hidden = FSQ(base_lm.step(LocEnc(patch)))             next base-LM state
    residual_hidden = residual_lm.step(fuse(lm_hidden, LocEnc(patch)))
The generations differ only in how the residual input and the DiT condition are fused (v1 add, v2 concat).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers.cfm import FlowMatching
from .layers.fsq import ScalarQuantizer
from .layers.linear import pack_small_batches
from .layers.locenc import LocEnc
from .layers.minicpm import KVCache, MiniCPMStack

AUDIO_START_TOKEN = 101
REF_AUDIO_START_TOKEN = 103  # VoxCPM2 only: reference audio sits between 103 and 104
REF_AUDIO_END_TOKEN = 104


@dataclass
class DecodeState:
    """What one AR step needs from the previous one (all tensors carry the batch dimension)."""

    lm_hidden: torch.Tensor  # [B, H] base-LM output conditioning the next patch
    residual_hidden: torch.Tensor  # [B, H]
    prev_patch: torch.Tensor  # [B, P, D] the DiT's condition patch
    positions: torch.Tensor  # [B] next KV-cache slot of each sample


@dataclass
class Caches:
    base: KVCache
    residual: KVCache


class VoxCPMModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        hidden, enc_hidden, dit_hidden = config.lm.hidden_size, config.encoder.hidden_dim, config.dit.hidden_dim
        self.base_lm = MiniCPMStack(config.lm)
        self.residual_lm = MiniCPMStack(config.residual_lm)
        self.feat_encoder = LocEnc(config)
        self.feat_decoder = FlowMatching(config)
        self.fsq_layer = ScalarQuantizer(hidden, config.scalar_quantization_latent_dim,
                                         config.scalar_quantization_scale)
        self.enc_to_lm_proj = nn.Linear(enc_hidden, hidden)
        self.lm_to_dit_proj = nn.Linear(hidden, dit_hidden)
        self.res_to_dit_proj = nn.Linear(hidden, dit_hidden)
        if config.version == 2:
            self.fusion_concat_proj = nn.Linear(2 * hidden, hidden)
        self.stop_proj = nn.Linear(hidden, hidden)
        self.stop_head = nn.Linear(hidden, 2, bias=False)
        # the local transformers run a few rows at a time: packed-weight products on CPU (see layers/linear.py)
        pack_small_batches(self.feat_encoder)
        pack_small_batches(self.feat_decoder)

    # ----------------------------------------------------------------------------------- building blocks
    def embed_patches(self, feat: torch.Tensor) -> torch.Tensor:
        """[B, T, P, D] latent patches -> [B, T, H] LM embeddings."""
        return self.enc_to_lm_proj(self.feat_encoder(feat))

    def residual_input(self, lm_hidden: torch.Tensor, audio_embed: torch.Tensor) -> torch.Tensor:
        if self.config.version == 2:
            return self.fusion_concat_proj(torch.cat((lm_hidden, audio_embed), dim=-1))
        return lm_hidden + audio_embed

    def dit_condition(self, lm_hidden: torch.Tensor, residual_hidden: torch.Tensor) -> torch.Tensor:
        from_lm, from_residual = self.lm_to_dit_proj(lm_hidden), self.res_to_dit_proj(residual_hidden)
        if self.config.version == 2:
            return torch.cat((from_lm, from_residual), dim=-1)
        return from_lm + from_residual

    def stop_requested(self, lm_hidden: torch.Tensor) -> torch.Tensor:
        """[B] bool: the stop head prefers 'stop' (argmax, ties continue)."""
        return self.stop_head(F.silu(self.stop_proj(lm_hidden))).argmax(dim=-1) == 1

    def new_caches(self, batch_size: int, max_length: int, device, dtype) -> Caches:
        return Caches(self.base_lm.new_cache(batch_size, max_length, device, dtype),
                      self.residual_lm.new_cache(batch_size, max_length, device, dtype))

    # ----------------------------------------------------------------------------------- prefill / step
    def prefill(self, tokens: torch.Tensor, text_mask: torch.Tensor, feat: torch.Tensor, audio_mask: torch.Tensor,
                caches: Caches, lengths: torch.Tensor | None = None) -> DecodeState:
        """Run the whole prompt sequence [B, S] (tokens, masks) / [B, S, P, D] (patches) through both LMs.

        Batched sequences of different lengths are right-padded (masks 0) with their true lengths [B] given:
        the causal LMs never let a real position see the padding, and decoding continues at each sample's length."""
        if bool(audio_mask.any()):
            feat_embed = self.embed_patches(feat)
        else:  # text only (zero-shot, voice design): every patch embedding would be multiplied by 0 below
            feat_embed = feat.new_zeros(*feat.shape[:2], self.config.lm.hidden_size)
        scale_emb = self.config.lm.scale_emb if self.config.lm.use_mup else 1.0
        text_embed = self.base_lm.embed_tokens(tokens) * scale_emb
        text_mask, audio_mask = text_mask.unsqueeze(-1), audio_mask.unsqueeze(-1)
        hidden = self.base_lm(text_mask * text_embed + audio_mask * feat_embed, is_causal=True, cache=caches.base)
        # FSQ only at audio positions: text positions (incl. the final 101 token) keep the raw hidden.
        hidden = self.fsq_layer(hidden) * audio_mask + hidden * text_mask
        residual = self.residual_lm(self.residual_input(hidden, audio_mask * feat_embed), is_causal=True,
                                    cache=caches.residual)
        if lengths is None:
            lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device)
        rows, last = torch.arange(tokens.shape[0], device=tokens.device), lengths - 1
        return DecodeState(hidden[rows, last], residual[rows, last], feat[rows, last], lengths.clone())

    def sample_patch(self, state: DecodeState, noise: torch.Tensor, n_timesteps: int,
                     cfg_value: float) -> torch.Tensor:
        """Draw the next patch [B, P, D] given noise [B, D, P]."""
        mu = self.dit_condition(state.lm_hidden, state.residual_hidden)
        cond = state.prev_patch.transpose(1, 2).contiguous()
        return self.feat_decoder(mu, cond, noise, n_timesteps, cfg_value).transpose(1, 2)

    def advance(self, state: DecodeState, patch: torch.Tensor, caches: Caches, limit: int | None = None) -> DecodeState:
        """Feed a generated patch back through both LMs (the base LM sees only the audio embedding).
        limit: optional bound (> every position) on the KV slots attended (see MiniCPMStack.step)."""
        embed = self.embed_patches(patch.unsqueeze(1))[:, 0]
        lm_hidden = self.fsq_layer(self.base_lm.step(embed, caches.base, state.positions, limit))
        residual = self.residual_lm.step(self.residual_input(lm_hidden, embed), caches.residual, state.positions,
                                         limit)
        return DecodeState(lm_hidden, residual, patch, state.positions + 1)
