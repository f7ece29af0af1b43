"""Key/shape compatibility with the reference at the real sizes of the three released models (meta device)."""
from __future__ import annotations

import types

import pytest
import torch

from real_configs import RELEASED
from voxcpm_engine.config import parse_config
from voxcpm_engine.layers.audiovae import AudioVAE
from voxcpm_engine.model import VoxCPMModel

# (model.safetensors keys, audiovae keys, parameters without the VAE) of the releases (spec §1.3)
EXPECTED = {"VoxCPM-0.5B": (377, 243, 652.3e6), "VoxCPM1.5": (467, 299, 801.7e6), "VoxCPM2": (577, 312, 2290.0e6)}


def reference_shapes(raw: dict) -> dict[str, tuple]:
    from voxcpm.model.voxcpm import VoxCPMConfig as V1Config, VoxCPMModel as V1Model
    from voxcpm.model.voxcpm2 import VoxCPMConfig as V2Config, VoxCPM2Model
    from voxcpm.modules.audiovae import AudioVAE as V1VAE, AudioVAEV2
    from voxcpm.modules.audiovae.audio_vae import AudioVAEConfig as V1VAEConfig
    from voxcpm.modules.audiovae.audio_vae_v2 import AudioVAEConfig as V2VAEConfig

    v2 = raw["architecture"] == "voxcpm2"
    config = (V2Config if v2 else V1Config).model_validate(raw)
    tokenizer = types.SimpleNamespace(vocab={})  # the wrapper only reads the vocabulary
    with torch.device("meta"):
        vae_cfg = raw.get("audio_vae_config")
        if v2:
            vae = AudioVAEV2(V2VAEConfig(**vae_cfg))
        else:
            vae = V1VAE(V1VAEConfig(**vae_cfg)) if vae_cfg else V1VAE()
        model = (VoxCPM2Model if v2 else V1Model)(config, tokenizer, vae, device="cpu")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def our_shapes(raw: dict) -> tuple[dict, dict, int]:
    config = parse_config(raw)
    with torch.device("meta"):
        model, vae = VoxCPMModel(config), AudioVAE(config.audio_vae)
    params = sum(p.numel() for p in model.parameters())
    return ({k: tuple(v.shape) for k, v in model.state_dict().items()},
            {k: tuple(v.shape) for k, v in vae.state_dict().items()}, params)


@pytest.mark.parametrize("name", list(RELEASED))
def test_state_dict_matches_reference_at_full_size(name):
    raw = RELEASED[name]
    model_shapes, vae_shapes, params = our_shapes(raw)
    ours = {**model_shapes, **{"audio_vae." + k: v for k, v in vae_shapes.items()}}
    ref = reference_shapes(raw)
    assert sorted(set(ref) - set(ours)) == [], "keys missing in ours"
    assert sorted(set(ours) - set(ref)) == [], "keys the reference does not have"
    assert {k: v for k, v in ours.items() if ref[k] != v} == {}
    n_model, n_vae, n_params = EXPECTED[name]
    assert (len(model_shapes), len(vae_shapes)) == (n_model, n_vae)
    assert abs(params - n_params) / n_params < 1e-3
