"""config.json values of the three released models (spec §2.5), for key/shape checks at full size."""
from __future__ import annotations

import copy


def _rope(n: int) -> dict:
    # The exact factor values do not change any shape; only their count (head_dim / 2) matters.
    factors = [1.0 + 0.5 * i for i in range(n)]
    return {"type": "longrope", "long_factor": factors, "short_factor": factors,
            "original_max_position_embeddings": 32768}


def _lm(hidden, ffn, layers, heads, kv_heads, head_dim, kv_channels=None) -> dict:
    lm = {"bos_token_id": 1, "eos_token_id": 2, "hidden_size": hidden, "intermediate_size": ffn,
          "max_position_embeddings": 32768, "num_attention_heads": heads, "num_hidden_layers": layers,
          "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5, "rope_scaling": _rope(head_dim // 2),
          "vocab_size": 73448, "use_mup": False, "scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4,
          "rope_theta": 10000.0}
    if kv_channels:
        lm["kv_channels"] = kv_channels
    return lm


def _local(layers, kv_channels=None) -> dict:
    d = {"hidden_dim": 1024, "ffn_dim": 4096, "num_heads": 16, "num_layers": layers}
    if kv_channels:
        d["kv_channels"] = kv_channels
    return d


CFM = {"sigma_min": 1e-6, "solver": "euler", "t_scheduler": "log-norm", "inference_cfg_rate": 2.0}

VOXCPM_0_5B = {
    "architecture": "voxcpm", "lm_config": _lm(1024, 4096, 24, 16, 2, 64), "patch_size": 2, "feat_dim": 64,
    "residual_lm_num_layers": 6, "scalar_quantization_latent_dim": 256, "scalar_quantization_scale": 9,
    "encoder_config": _local(4), "dit_config": {**_local(4), "cfm_config": CFM}, "max_length": 4096,
    "device": "cuda", "dtype": "bfloat16",
}

VOXCPM_1_5 = {
    **copy.deepcopy(VOXCPM_0_5B), "patch_size": 4, "residual_lm_num_layers": 8,
    "encoder_config": _local(8), "dit_config": {**_local(8), "cfm_config": CFM},
    "audio_vae_config": {"encoder_dim": 64, "encoder_rates": [2, 3, 6, 7, 7], "latent_dim": 64, "decoder_dim": 2048,
                         "decoder_rates": [7, 7, 6, 3, 2], "depthwise": True, "sample_rate": 44100,
                         "use_noise_block": False},
}

VOXCPM_2 = {
    "architecture": "voxcpm2", "lm_config": _lm(2048, 6144, 28, 16, 2, 128, kv_channels=128), "patch_size": 4,
    "feat_dim": 64, "residual_lm_num_layers": 8, "residual_lm_no_rope": True, "scalar_quantization_latent_dim": 512,
    "scalar_quantization_scale": 9, "encoder_config": _local(12, 128),
    "dit_config": {**_local(12, 128), "cfm_config": CFM, "dit_mean_mode": False, "mean_mode": False},
    "audio_vae_config": {"encoder_dim": 128, "encoder_rates": [2, 5, 8, 8], "latent_dim": 64, "decoder_dim": 2048,
                         "decoder_rates": [8, 6, 5, 2, 2, 2], "depthwise": True, "sample_rate": 16000,
                         "out_sample_rate": 48000, "use_noise_block": False,
                         "sr_bin_boundaries": [20000, 30000, 40000], "cond_type": "scale_bias", "cond_dim": 128,
                         "cond_out_layer": False},
    "max_length": 8192, "device": "cuda", "dtype": "bfloat16",
}

RELEASED = {"VoxCPM-0.5B": VOXCPM_0_5B, "VoxCPM1.5": VOXCPM_1_5, "VoxCPM2": VOXCPM_2}
