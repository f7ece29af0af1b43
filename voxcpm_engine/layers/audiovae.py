"""AudioVAE: the causal convolutional codec between waveforms and latents (both generations).

v1 (VoxCPM-0.5B, VoxCPM1.5) and v2 (VoxCPM2) share one topology. The config decides the rest:
  * causal left pad of a strided encoder conv: v1 `2*ceil(s/2)`, v2 `2*ceil(s/2) - s%2` (differs for odd s);
  * v2 with `sr_bin_boundaries`: a per-channel scale/bias picked by the output sample rate before every
    decoder block; v2 decodes at `out_sample_rate`, v1 at `sample_rate`.

Parameter names and shapes follow the released `audiovae.pth` files (legacy weight norm: `weight_g`, `weight_v`).
Every causal layer takes an optional `cache` dict; passing the same dict across calls decodes chunk by chunk
with the left context carried over, which equals decoding everything at once (see `stream_decoder`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AudioVAEConfig

Cache = dict  # module -> its last input frames; None means "whole signal, zero history"


def _with_history(key: nn.Module, x: torch.Tensor, n: int, cache: Cache | None) -> torch.Tensor:
    """Prepend n frames of left context: zeros at the start of a signal, else the tail of the previous chunk."""
    if n == 0:
        return x
    if cache is None:
        return F.pad(x, (n, 0))
    prev = cache.get(key)
    x = torch.cat([x.new_zeros(*x.shape[:2], n) if prev is None else prev, x], dim=-1)
    cache[key] = x[..., -n:].detach()
    return x


class Snake(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        # x + sin(a x)^2 / a, with the reference's epsilon
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class _WeightNormConv(nn.Module):
    """Conv parameters under weight norm: W = g * v / |v|, the norm over all dims but the first."""

    def __init__(self, weight_shape: tuple[int, ...], out_channels: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(weight_shape))
        self.weight_g = nn.Parameter(torch.empty(weight_shape[0], 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("folded_weight", None, persistent=False)
        with torch.no_grad():
            nn.init.normal_(self.weight_v, std=0.02)
            self.weight_g.copy_(self.weight_v.norm(dim=(1, 2), keepdim=True))

    def weight(self) -> torch.Tensor:
        if self.folded_weight is not None:
            return self.folded_weight
        v = self.weight_v
        return v * (self.weight_g / v.norm(dim=(1, 2), keepdim=True))

    @torch.no_grad()
    def fold(self) -> None:
        self.folded_weight = None
        self.folded_weight = self.weight()

    def _load_from_state_dict(self, *args, **kwargs):
        self.folded_weight = None  # new g/v invalidate a folded weight
        super()._load_from_state_dict(*args, **kwargs)


class CausalConv1d(_WeightNormConv):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1,
                 left_pad: int = 0):
        super().__init__((cout, cin // groups, kernel), cout)
        self.stride, self.dilation, self.groups, self.left_pad = stride, dilation, groups, left_pad

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        x = _with_history(self, x, self.left_pad, cache)
        return F.conv1d(x, self.weight(), self.bias, self.stride, 0, self.dilation, self.groups)


class CausalConvTranspose1d(_WeightNormConv):
    """Upsample by `stride` with kernel 2*stride; output frame t*stride+j sees input frames t-1 and t."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__((cin, cout, 2 * stride), cout)  # transposed layout: g is per *input* channel
        self.stride = stride

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        frames = x.shape[-1]
        if cache is not None:
            x = _with_history(self, x, 1, cache)
        y = F.conv_transpose1d(x, self.weight(), self.bias, self.stride)
        start = (x.shape[-1] - frames) * self.stride  # outputs of the context frame belong to the previous chunk
        return y[..., start:start + frames * self.stride]


def _run(layers: nn.ModuleList, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
    for layer in layers:
        x = layer(x, cache)
    return x


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int, groups: int):
        super().__init__()
        self.block = nn.ModuleList([
            Snake(dim),
            CausalConv1d(dim, dim, 7, dilation=dilation, groups=groups, left_pad=6 * dilation),
            Snake(dim),
            CausalConv1d(dim, dim, 1),
        ])

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return x + _run(self.block, x, cache)


def _residual_units(dim: int, groups: int) -> list[nn.Module]:
    return [ResidualUnit(dim, d, groups) for d in (1, 3, 9)]


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, stride: int, groups: int, version: int):
        super().__init__()
        pad = 2 * math.ceil(stride / 2) - (stride % 2 if version == 2 else 0)
        self.block = nn.ModuleList(_residual_units(cin, groups) + [
            Snake(cin),
            CausalConv1d(cin, 2 * cin, 2 * stride, stride=stride, left_pad=pad),
        ])

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return _run(self.block, x, cache)


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.block = nn.ModuleList([Snake(cin), CausalConvTranspose1d(cin, cout, stride)]
                                   + _residual_units(cout, groups))

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        return _run(self.block, x, cache)


class Encoder(nn.Module):
    def __init__(self, cfg: AudioVAEConfig):
        super().__init__()
        dim = cfg.encoder_dim
        layers: list[nn.Module] = [CausalConv1d(1, dim, 7, left_pad=6)]
        for stride in cfg.encoder_rates:
            layers.append(EncoderBlock(dim, stride, dim if cfg.depthwise else 1, cfg.version))
            dim *= 2
        self.block = nn.ModuleList(layers)
        self.fc_mu = CausalConv1d(dim, cfg.latent_channels, 3, left_pad=2)
        self.fc_logvar = CausalConv1d(dim, cfg.latent_channels, 3, left_pad=2)  # kept for the state dict only

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.fc_mu(_run(self.block, wav, None))


class SampleRateCondition(nn.Module):
    """v2 "scale_bias": x * scale[bucket] + bias[bucket], per channel."""

    def __init__(self, channels: int, buckets: int):
        super().__init__()
        self.scale_embed = nn.Embedding(buckets, channels)
        self.bias_embed = nn.Embedding(buckets, channels)
        nn.init.ones_(self.scale_embed.weight)
        nn.init.zeros_(self.bias_embed.weight)

    def forward(self, x: torch.Tensor, bucket: torch.Tensor) -> torch.Tensor:
        return x * self.scale_embed(bucket)[..., None] + self.bias_embed(bucket)[..., None]


class Decoder(nn.Module):
    def __init__(self, cfg: AudioVAEConfig):
        super().__init__()
        latent, dim = cfg.latent_channels, cfg.decoder_dim
        if cfg.depthwise:
            layers: list[nn.Module] = [CausalConv1d(latent, latent, 7, groups=latent, left_pad=6),
                                       CausalConv1d(latent, dim, 1)]
        else:
            layers = [CausalConv1d(latent, dim, 7, left_pad=6)]
        first_block = len(layers)
        for stride in cfg.decoder_rates:
            layers.append(DecoderBlock(dim, dim // 2, stride, dim // 2 if cfg.depthwise else 1))
            dim //= 2
        layers += [Snake(dim), CausalConv1d(dim, 1, 7, left_pad=6)]
        self.model = nn.ModuleList(layers)

        self.sr_cond_model = None
        if cfg.version == 2 and cfg.sr_bin_boundaries is not None:
            if cfg.cond_type != "scale_bias" or cfg.cond_out_layer:
                raise ValueError(f"AudioVAE: cond_type {cfg.cond_type!r} / cond_out_layer={cfg.cond_out_layer} "
                                 "is not supported (released VoxCPM2 uses 'scale_bias' without an out layer)")
            self.register_buffer("sr_bin_boundaries", torch.tensor(cfg.sr_bin_boundaries, dtype=torch.int32))
            buckets = len(cfg.sr_bin_boundaries) + 1
            # keyed by the index of the decoder block it conditions, like the reference's aligned list
            self.sr_cond_model = nn.ModuleDict({
                str(first_block + i): SampleRateCondition(cfg.decoder_dim // 2 ** i, buckets)
                for i in range(len(cfg.decoder_rates))})

    def forward(self, z: torch.Tensor, sample_rate: int, cache: Cache | None = None) -> torch.Tensor:
        bucket = None
        if self.sr_cond_model is not None:
            sr = torch.tensor([sample_rate], dtype=torch.int32, device=z.device)
            bucket = torch.bucketize(sr, self.sr_bin_boundaries)
        x = z
        for i, layer in enumerate(self.model):
            if bucket is not None and str(i) in self.sr_cond_model:
                x = self.sr_cond_model[str(i)](x, bucket)
            x = layer(x, cache)
        return torch.tanh(x)


class AudioVAE(nn.Module):
    def __init__(self, cfg: AudioVAEConfig):
        super().__init__()
        if cfg.use_noise_block:
            raise ValueError("AudioVAE: use_noise_block is not supported")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def out_sample_rate(self) -> int:
        return self.cfg.output_sample_rate

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    @property
    def decode_hop_length(self) -> int:
        return self.cfg.decode_hop_length

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_channels

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav [B,1,T] or [B,T] at `sample_rate` -> latents [B, latent_dim, ceil(T/hop_length)]."""
        if wav.ndim == 2:
            wav = wav[:, None]
        wav = F.pad(wav, (0, -wav.shape[-1] % self.hop_length))
        return self.encoder(wav)

    def decode(self, z: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """latents [B, latent_dim, F] -> wav [B,1,F*decode_hop_length] at `out_sample_rate`.

        `cache` carries the causal context between chunks; use `stream_decoder()` instead of passing it."""
        return self.decoder(z, self.out_sample_rate, cache)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)

    def fold_weight_norm(self) -> None:
        """Precompute every conv's effective weight (inference speed-up). Loading a state dict unfolds again."""
        for m in self.modules():
            if isinstance(m, _WeightNormConv):
                m.fold()


class StreamDecoder:
    """Chunk-by-chunk decoding; the concatenated chunks equal one `decode` of all the latents."""

    def __init__(self, vae: AudioVAE):
        self.vae = vae
        self.cache: Cache = {}

    def decode(self, z_chunk: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z_chunk, self.cache)
