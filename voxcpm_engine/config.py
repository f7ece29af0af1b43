"""config.json -> typed, validated configuration.

One `ModelConfig` describes every generation; the fields where VoxCPM-0.5B/1.5 ("voxcpm", v1) and VoxCPM2
("voxcpm2", v2) differ carry their generation's default. Every error names the offending field.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARCHITECTURES = {"voxcpm": 1, "voxcpm2": 2}


class ConfigError(ValueError):
    """config.json is missing a field or holds a value of the wrong type."""


@dataclass(frozen=True)
class RopeScaling:
    long_factor: tuple[float, ...]
    short_factor: tuple[float, ...]
    original_max_position_embeddings: int


@dataclass(frozen=True)
class StackConfig:
    """One MiniCPM-4 transformer stack (base LM, residual LM, LocEnc or LocDiT)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling
    max_position_embeddings: int
    vocab_size: int
    scale_emb: float
    scale_depth: float
    use_mup: bool = True
    kv_channels: int | None = None
    no_rope: bool = False

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def residual_scale(self) -> float:
        """Scale of each residual branch: scale_depth/sqrt(L) under muP, else 1."""
        return self.scale_depth / math.sqrt(self.num_hidden_layers) if self.use_mup else 1.0


@dataclass(frozen=True)
class LocalConfig:
    """encoder_config / dit_config: the small per-patch transformers."""

    hidden_dim: int = 1024
    ffn_dim: int = 4096
    num_heads: int = 16
    num_layers: int = 4
    kv_channels: int | None = None


@dataclass(frozen=True)
class AudioVAEConfig:
    version: int = 1
    encoder_dim: int = 128
    encoder_rates: tuple[int, ...] = (2, 5, 8, 8)
    latent_dim: int | None = 64
    decoder_dim: int = 1536
    decoder_rates: tuple[int, ...] = (8, 8, 5, 2)
    depthwise: bool = True
    sample_rate: int = 16000
    out_sample_rate: int | None = None  # v2 only; v1 decodes at sample_rate
    use_noise_block: bool = False
    sr_bin_boundaries: tuple[int, ...] | None = None  # v2 only
    cond_type: str = "scale_bias"
    cond_dim: int = 128
    cond_out_layer: bool = False

    @property
    def hop_length(self) -> int:
        """Input samples per latent frame."""
        return math.prod(self.encoder_rates)

    @property
    def decode_hop_length(self) -> int:
        """Output samples per latent frame."""
        return math.prod(self.decoder_rates)

    @property
    def output_sample_rate(self) -> int:
        return self.out_sample_rate or self.sample_rate

    @property
    def latent_channels(self) -> int:
        return self.latent_dim or self.encoder_dim * 2 ** len(self.encoder_rates)


VAE_DEFAULTS = {
    1: AudioVAEConfig(),
    2: AudioVAEConfig(version=2, decoder_dim=2048, decoder_rates=(8, 6, 5, 2, 2, 2), out_sample_rate=48000,
                      sr_bin_boundaries=(20000, 30000, 40000)),
}

# Top-level defaults of each generation (reference pydantic models).
GENERATION_DEFAULTS = {
    1: dict(patch_size=2, feat_dim=64, residual_lm_num_layers=6, scalar_quantization_latent_dim=256,
            scalar_quantization_scale=9, max_length=4096),
    2: dict(patch_size=4, feat_dim=64, residual_lm_num_layers=8, scalar_quantization_latent_dim=512,
            scalar_quantization_scale=9, max_length=8192),
}


@dataclass(frozen=True)
class ModelConfig:
    version: int  # 1 = VoxCPM-0.5B / VoxCPM1.5, 2 = VoxCPM2
    lm: StackConfig
    encoder: LocalConfig
    dit: LocalConfig
    audio_vae: AudioVAEConfig
    patch_size: int
    feat_dim: int
    residual_lm_num_layers: int
    scalar_quantization_latent_dim: int
    scalar_quantization_scale: int
    max_length: int
    residual_lm_no_rope: bool = False
    dit_mean_mode: bool = False
    device: str = "cuda"
    dtype: str = "bfloat16"
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def architecture(self) -> str:
        return "voxcpm2" if self.version == 2 else "voxcpm"

    # --- derived stacks: every transformer is a copy of lm_config with a few overrides ---
    @property
    def residual_lm(self) -> StackConfig:
        no_rope = self.residual_lm_no_rope if self.version == 2 else self.lm.no_rope
        return dataclasses.replace(self.lm, num_hidden_layers=self.residual_lm_num_layers, vocab_size=0,
                                   no_rope=no_rope)

    def local_stack(self, local: LocalConfig) -> StackConfig:
        return dataclasses.replace(self.lm, hidden_size=local.hidden_dim, intermediate_size=local.ffn_dim,
                                   num_attention_heads=local.num_heads, num_hidden_layers=local.num_layers,
                                   kv_channels=local.kv_channels, vocab_size=0)

    @property
    def samples_per_patch(self) -> int:
        """Output waveform samples produced by one generated patch."""
        return self.patch_size * self.audio_vae.decode_hop_length

    @property
    def input_samples_per_patch(self) -> int:
        """Prompt-audio samples (at the VAE input rate) encoded into one patch."""
        return self.patch_size * self.audio_vae.hop_length

    @property
    def sample_rate(self) -> int:
        return self.audio_vae.output_sample_rate

    @property
    def encode_sample_rate(self) -> int:
        return self.audio_vae.sample_rate


# ------------------------------------------------------------------------------------------------- parsing

_MISSING = object()


def _get(d: dict, key: str, kind, where: str, default=_MISSING):
    if key not in d:
        if default is _MISSING:
            raise ConfigError(f"config.json: missing required field '{where}{key}'")
        return default
    value = d[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, float)
    elif kind is str:
        ok = isinstance(value, str)
    elif kind is list:
        ok = isinstance(value, list)
    elif kind is dict:
        ok = isinstance(value, dict)
    else:
        raise TypeError(kind)
    if not ok:
        raise ConfigError(f"config.json: field '{where}{key}' should be {kind.__name__}, got {value!r}")
    return value


def _numbers(d: dict, key: str, kind, where: str, default=_MISSING) -> tuple | None:
    values = _get(d, key, list, where, default)
    if values is None or values is default:
        return values if values is None else tuple(values)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or (kind is int and not isinstance(v, int)):
            raise ConfigError(f"config.json: field '{where}{key}' should be a list of {kind.__name__}, got {values!r}")
    return tuple(kind(v) for v in values)


def _positive(value: int, name: str) -> int:
    if value <= 0:
        raise ConfigError(f"config.json: field '{name}' must be positive, got {value}")
    return value


def _parse_lm(d: dict) -> StackConfig:
    w = "lm_config."
    rs = _get(d, "rope_scaling", dict, w)
    rope = RopeScaling(
        long_factor=_numbers(rs, "long_factor", float, w + "rope_scaling."),
        short_factor=_numbers(rs, "short_factor", float, w + "rope_scaling."),
        original_max_position_embeddings=_get(rs, "original_max_position_embeddings", int, w + "rope_scaling."),
    )
    cfg = StackConfig(
        hidden_size=_positive(_get(d, "hidden_size", int, w), w + "hidden_size"),
        intermediate_size=_positive(_get(d, "intermediate_size", int, w), w + "intermediate_size"),
        num_attention_heads=_positive(_get(d, "num_attention_heads", int, w), w + "num_attention_heads"),
        num_key_value_heads=_positive(_get(d, "num_key_value_heads", int, w), w + "num_key_value_heads"),
        num_hidden_layers=_positive(_get(d, "num_hidden_layers", int, w), w + "num_hidden_layers"),
        rms_norm_eps=_get(d, "rms_norm_eps", float, w),
        rope_theta=_get(d, "rope_theta", float, w),
        rope_scaling=rope,
        max_position_embeddings=_positive(_get(d, "max_position_embeddings", int, w), w + "max_position_embeddings"),
        vocab_size=_get(d, "vocab_size", int, w),
        scale_emb=_get(d, "scale_emb", float, w),
        scale_depth=_get(d, "scale_depth", float, w),
        use_mup=_get(d, "use_mup", bool, w, True),  # the reference defaults to True when absent
        kv_channels=_get(d, "kv_channels", int, w, None),
        no_rope=_get(d, "no_rope", bool, w, False),
    )
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ConfigError(f"config.json: '{w}num_attention_heads' ({cfg.num_attention_heads}) must be a multiple of "
                          f"'{w}num_key_value_heads' ({cfg.num_key_value_heads})")
    return cfg


def _parse_local(d: dict, where: str) -> LocalConfig:
    base = LocalConfig()
    return LocalConfig(
        hidden_dim=_get(d, "hidden_dim", int, where, base.hidden_dim),
        ffn_dim=_get(d, "ffn_dim", int, where, base.ffn_dim),
        num_heads=_get(d, "num_heads", int, where, base.num_heads),
        num_layers=_get(d, "num_layers", int, where, base.num_layers),
        kv_channels=_get(d, "kv_channels", int, where, None),
    )


def _parse_vae(d: dict | None, version: int) -> AudioVAEConfig:
    base = VAE_DEFAULTS[version]
    if d is None:
        return base
    w = "audio_vae_config."
    kw: dict[str, Any] = dict(
        encoder_dim=_get(d, "encoder_dim", int, w, base.encoder_dim),
        encoder_rates=_numbers(d, "encoder_rates", int, w, base.encoder_rates),
        latent_dim=_get(d, "latent_dim", int, w, base.latent_dim) if d.get("latent_dim", 0) is not None else None,
        decoder_dim=_get(d, "decoder_dim", int, w, base.decoder_dim),
        decoder_rates=_numbers(d, "decoder_rates", int, w, base.decoder_rates),
        depthwise=_get(d, "depthwise", bool, w, base.depthwise),
        sample_rate=_get(d, "sample_rate", int, w, base.sample_rate),
        use_noise_block=_get(d, "use_noise_block", bool, w, base.use_noise_block),
    )
    if version == 2:
        kw.update(
            out_sample_rate=_get(d, "out_sample_rate", int, w, base.out_sample_rate),
            sr_bin_boundaries=(None if d.get("sr_bin_boundaries", 0) is None
                               else _numbers(d, "sr_bin_boundaries", int, w, base.sr_bin_boundaries)),
            cond_type=_get(d, "cond_type", str, w, base.cond_type),
            cond_dim=_get(d, "cond_dim", int, w, base.cond_dim),
            cond_out_layer=_get(d, "cond_out_layer", bool, w, base.cond_out_layer),
        )
    cfg = dataclasses.replace(base, **kw)
    if cfg.use_noise_block:
        raise ConfigError("config.json: 'audio_vae_config.use_noise_block: true' is not supported (no released "
                          "VoxCPM model uses it)")
    if version == 2 and cfg.sr_bin_boundaries is not None and cfg.cond_type != "scale_bias":
        raise ConfigError(f"config.json: 'audio_vae_config.cond_type' {cfg.cond_type!r} is not supported "
                          "(released VoxCPM2 uses 'scale_bias')")
    if cfg.decoder_dim % (2 ** len(cfg.decoder_rates)):
        raise ConfigError("config.json: 'audio_vae_config.decoder_dim' must be divisible by 2**len(decoder_rates)")
    return cfg


def parse_config(raw: dict) -> ModelConfig:
    """Validate a config.json dictionary (unknown keys are ignored, like the reference)."""
    if not isinstance(raw, dict):
        raise ConfigError("config.json must hold a JSON object")
    arch = raw.get("architecture", "voxcpm")
    if not isinstance(arch, str) or arch.lower() not in ARCHITECTURES:
        raise ConfigError(f"config.json: field 'architecture' is {arch!r}; supported: {sorted(ARCHITECTURES)}")
    version = ARCHITECTURES[arch.lower()]
    defaults = GENERATION_DEFAULTS[version]
    lm = _parse_lm(_get(raw, "lm_config", dict, ""))
    dit_raw = _get(raw, "dit_config", dict, "")
    _get(dit_raw, "cfm_config", dict, "dit_config.")  # required by the reference, unused at inference
    vae_raw = raw.get("audio_vae_config")
    if vae_raw is not None and not isinstance(vae_raw, dict):
        raise ConfigError(f"config.json: field 'audio_vae_config' should be an object, got {vae_raw!r}")
    cfg = ModelConfig(
        version=version,
        lm=lm,
        encoder=_parse_local(_get(raw, "encoder_config", dict, ""), "encoder_config."),
        dit=_parse_local(dit_raw, "dit_config."),
        audio_vae=_parse_vae(vae_raw, version),
        patch_size=_positive(_get(raw, "patch_size", int, "", defaults["patch_size"]), "patch_size"),
        feat_dim=_positive(_get(raw, "feat_dim", int, "", defaults["feat_dim"]), "feat_dim"),
        residual_lm_num_layers=_get(raw, "residual_lm_num_layers", int, "", defaults["residual_lm_num_layers"]),
        scalar_quantization_latent_dim=_get(raw, "scalar_quantization_latent_dim", int, "",
                                            defaults["scalar_quantization_latent_dim"]),
        scalar_quantization_scale=_get(raw, "scalar_quantization_scale", int, "",
                                       defaults["scalar_quantization_scale"]),
        max_length=_positive(_get(raw, "max_length", int, "", defaults["max_length"]), "max_length"),
        residual_lm_no_rope=_get(raw, "residual_lm_no_rope", bool, "", False) if version == 2 else False,
        dit_mean_mode=(_get(dit_raw, "dit_mean_mode", bool, "dit_config.", False) if version == 2
                       else _get(raw, "dit_mean_mode", bool, "", False)),
        device=_get(raw, "device", str, "", "cuda"),
        dtype=_get(raw, "dtype", str, "", "bfloat16"),
        raw=raw,
    )
    if cfg.feat_dim != cfg.audio_vae.latent_channels:
        raise ConfigError(f"config.json: 'feat_dim' ({cfg.feat_dim}) must equal the VAE latent dim "
                          f"({cfg.audio_vae.latent_channels})")
    if cfg.dit_mean_mode:
        raise ConfigError("config.json: mean-flow mode ('dit_mean_mode: true') is not supported by any released model")
    for name, stack in (("lm_config", cfg.lm), ("encoder_config", cfg.local_stack(cfg.encoder)),
                        ("dit_config", cfg.local_stack(cfg.dit))):
        if stack.num_attention_heads % stack.num_key_value_heads:
            raise ConfigError(f"config.json: '{name}' heads ({stack.num_attention_heads}) must be a multiple of "
                              f"lm_config.num_key_value_heads ({stack.num_key_value_heads})")
        if not stack.no_rope and stack.head_dim != 2 * len(stack.rope_scaling.short_factor):
            raise ConfigError(f"config.json: '{name}' head dim {stack.head_dim} must be twice the number of "
                              f"lm_config.rope_scaling factors ({len(stack.rope_scaling.short_factor)})")
    return cfg


def load_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"No config.json at {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    return parse_config(raw)
