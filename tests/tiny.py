"""Tiny random VoxCPM checkpoints in the exact official folder layout, built with the reference classes.

`build_tiny_checkpoint(folder, kind)` writes config.json, model.safetensors | pytorch_model.bin,
audiovae.pth | audiovae.safetensors and the tokenizer files for three kinds:

* "v1"   VoxCPM-0.5B-like: patch 2, 16 kHz VAE, muP on (key omitted -> reference default True), kv_channels set.
* "v1_5" VoxCPM1.5-like: patch 4, 44.1 kHz VAE with odd strides 3/7, use_mup false, no kv_channels anywhere.
* "v2"   VoxCPM2-like: "voxcpm2", residual LM without RoPE, use_mup false, kv_channels != hidden/heads,
         VAE 16 kHz -> 48 kHz (decoder_rates [5, 4, 3]).

Weights are random (seeded) with RMSNorm weights, Snake alphas, weight-norm gains and the v2 sample-rate
scale/bias moved away from their trivial init, and a stop head calibrated so that zero-shot generations of a short
text end after a handful of patches. `reference_model(folder)` loads the reference `voxcpm.core.VoxCPM` on a folder.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import string
import warnings
from pathlib import Path

import torch

KINDS = ("v1", "v1_5", "v2")
MAX_LENGTH = 256
CALIBRATION_TEXTS = ("hello world", "你好世界", "Hello, world! This is a test.")
STOP_QUANTILE = 0.75

# Text pieces the synthetic vocabulary covers (every character has a piece).
CORPUS = [
    "hello world",
    "Hello, world! This is a test.",
    "the quick brown fox jumps over the lazy dog",
    "你好世界",
    "你好，世界！今天天气很好。",
    "我们是中国人，我爱北京。",
    "佢哋喺度食緊飯㗎。",  # Cantonese ("㗎" is outside U+4E00..U+9FFF)
    "巴适得板，要得！",  # Sichuanese
    "2024年3月15日，价格是3.14元。",
    "1234567890",
    "△ABC∽△DEF，AB:DE=1:2",
    "x + y = 10 - 3 * 2 / 1 (calm voice)",
    "“你好”、《世界》；",
]

_CJK_WORDS = ["你好", "世界", "今天", "天气", "我们", "中国", "北京", "巴适", "要得", "佢哋", "食緊", "飯㗎", "很好",
              "中国人"]
_SPACE_WORDS = ["▁hello", "▁world", "▁the", "▁test", "▁你好", "▁voice"]
_WORDS = ["hello", "world", "the", "is", "quick", "brown", "fox", "calm", "voice", "Hello", "This"]
_PUNCT = list(",.!?;:'\"()-=+*/%&[]<>_") + list("，。！？、；：“”‘’（）《》—…·")
_SYMBOLS = list("△∽≈≠≤≥×÷√∞°")
# A few byte-fallback pieces: "\n", "\t" and "€" (E2 82 AC) survive as bytes, other unknown characters vanish.
_BYTES = ["<0x0A>", "<0x09>", "<0xE2>", "<0x82>", "<0xAC>"]


def _corpus_chars() -> list[str]:
    chars = {c for line in CORPUS for c in line if not c.isspace()}
    return sorted(chars)


def tokenizer_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of the synthetic BPE: specials 0-2, fillers to 100, ids 101-104, then the test pieces."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<reserved_{i}>": i for i in range(3, 101)})
    vocab.update({"<|audio_start|>": 101, "<|audio_end|>": 102, "<|ref_audio_start|>": 103, "<|ref_audio_end|>": 104})
    merges: list[tuple[str, str]] = []

    def add(piece: str):
        vocab.setdefault(piece, len(vocab))

    def add_word(word: str):  # left-to-right merges, every prefix is a piece
        for i in range(1, len(word)):
            add(word[:i])
            if (word[:i], word[i]) not in merges:
                merges.append((word[:i], word[i]))
        add(word)

    for piece in _BYTES + ["▁"] + list(string.ascii_letters + string.digits) + _PUNCT + _SYMBOLS + _corpus_chars():
        add(piece)
    for c in string.ascii_letters + string.digits:
        add_word("▁" + c)
    for word in _SPACE_WORDS + _CJK_WORDS + _WORDS:  # "▁你" merges before "你好": "▁你好" is reachable
        add_word(word)
    return vocab, merges


def write_tokenizer(folder: Path) -> int:
    """Write tokenizer.json / tokenizer_config.json / special_tokens_map.json; return len(tokenizer)."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers.pre_tokenizers import Metaspace
    from transformers import LlamaTokenizerFast

    vocab, merges = tokenizer_vocab()
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = Metaspace("▁", prepend_scheme="first")
    fast = LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder))
    token = dict(lstrip=False, normalized=False, rstrip=False, single_word=False)
    specials = {name: dict(content=value, **token) for name, value in
                (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"))}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    return len(LlamaTokenizerFast.from_pretrained(str(folder)))


# ------------------------------------------------------------------------------------------------- config.json

_ROPE = {"type": "longrope", "long_factor": [1.0, 1.5, 2.0, 2.5], "short_factor": [1.0, 1.1, 1.2, 1.3],
         "original_max_position_embeddings": 256}
_CFM = {"sigma_min": 1e-06, "solver": "euler", "t_scheduler": "log-norm", "inference_cfg_rate": 2.0}


def _lm(vocab_size: int, **over) -> dict:
    lm = dict(bos_token_id=1, eos_token_id=2, hidden_size=32, intermediate_size=64, max_position_embeddings=512,
              num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=2, rms_norm_eps=1e-05,
              rope_scaling=copy.deepcopy(_ROPE), vocab_size=vocab_size, scale_emb=12, dim_model_base=256,
              scale_depth=1.4, rope_theta=10000.0)
    lm.update(over)
    return lm


def tiny_config_dict(kind: str, *, vocab_size: int | None = None, dtype: str = "float32") -> dict:
    """The config.json of a tiny checkpoint (vocab_size defaults to the synthetic tokenizer's size)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if vocab_size is None:
        vocab_size = len(tokenizer_vocab()[0])
    local = dict(hidden_dim=16, ffn_dim=32, num_heads=2, num_layers=1, kv_channels=8)
    common = dict(feat_dim=8, scalar_quantization_latent_dim=16, scalar_quantization_scale=9,
                  max_length=MAX_LENGTH, device="cpu", dtype=dtype)
    if kind == "v1":
        return dict(architecture="voxcpm", lm_config=_lm(vocab_size, kv_channels=8), patch_size=2,
                    residual_lm_num_layers=1, encoder_config=dict(local),
                    dit_config=dict(local, cfm_config=dict(_CFM)),
                    audio_vae_config=dict(encoder_dim=4, encoder_rates=[4, 5], latent_dim=8, decoder_dim=16,
                                          decoder_rates=[5, 4], depthwise=True, sample_rate=16000,
                                          use_noise_block=False),
                    **common)
    if kind == "v1_5":
        local = dict(hidden_dim=16, ffn_dim=32, num_heads=2, num_layers=2)  # head dim 8 by default
        return dict(architecture="voxcpm", lm_config=_lm(vocab_size, use_mup=False), patch_size=4,
                    residual_lm_num_layers=2, encoder_config=dict(local),
                    dit_config=dict(local, cfm_config=dict(_CFM)),
                    audio_vae_config=dict(encoder_dim=4, encoder_rates=[3, 7, 3], latent_dim=8, decoder_dim=16,
                                          decoder_rates=[3, 7, 3], depthwise=True, sample_rate=44100,
                                          use_noise_block=False),
                    **common)
    local = dict(hidden_dim=16, ffn_dim=32, num_heads=4, num_layers=1, kv_channels=8)  # q_proj 16 -> 32
    return dict(architecture="voxcpm2",
                lm_config=_lm(vocab_size, hidden_size=48, intermediate_size=96, kv_channels=8, use_mup=False),
                patch_size=4, residual_lm_num_layers=1, residual_lm_no_rope=True,
                encoder_config=dict(local),
                dit_config=dict(local, dit_mean_mode=False, mean_mode=False, cfm_config=dict(_CFM)),
                audio_vae_config=dict(encoder_dim=4, encoder_rates=[4, 5], latent_dim=8, decoder_dim=16,
                                      decoder_rates=[5, 4, 3], depthwise=True, sample_rate=16000,
                                      out_sample_rate=48000, use_noise_block=False,
                                      sr_bin_boundaries=[20000, 30000, 40000], cond_type="scale_bias", cond_dim=8,
                                      cond_out_layer=False),
                **common)


# ------------------------------------------------------------------------------------------------- weights

def _reference_classes(kind: str):
    if kind == "v2":
        from voxcpm.model.voxcpm2 import VoxCPM2Model as Model, VoxCPMConfig
        from voxcpm.modules.audiovae.audio_vae_v2 import AudioVAE, AudioVAEConfig
    else:
        from voxcpm.model.voxcpm import VoxCPMConfig, VoxCPMModel as Model
        from voxcpm.modules.audiovae.audio_vae import AudioVAE, AudioVAEConfig
    return Model, VoxCPMConfig, AudioVAE, AudioVAEConfig


def _uniform(p: torch.Tensor, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(p.shape, generator=g)


@torch.no_grad()
def _perturb(model: torch.nn.Module, g: torch.Generator) -> None:
    """Move the all-ones / trivial inits away from their defaults (they hide scale and indexing bugs)."""
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith(".alpha"):
            p.copy_(_uniform(p, 0.6, 1.6, g))
        elif name.endswith("weight_g"):
            p.mul_(_uniform(p, 0.7, 1.3, g))
        elif name.endswith("scale_embed.weight"):
            p.copy_(_uniform(p, 0.7, 1.3, g))
        elif name.endswith("bias_embed.weight"):
            p.copy_(0.05 * torch.randn(p.shape, generator=g))


def _stop_inputs_and_margins(model, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per calibration text: the stop_proj inputs [steps, H] and stop margins [steps] of steps > min_len."""
    inputs, margins, xs, ms = [], [], [], []
    h1 = model.stop_proj.register_forward_hook(lambda m, i, out: xs.append(i[0][0].float().clone()))
    h2 = model.stop_head.register_forward_hook(lambda m, i, out: ms.append(float(out[0, 1] - out[0, 0])))
    try:
        for k, text in enumerate(CALIBRATION_TEXTS):
            xs.clear(), ms.clear()
            torch.manual_seed(seed + k)
            model.generate(target_text=text, min_len=10_000, max_len=16)  # stopping disabled
            inputs.append(torch.stack(xs[3:]))  # steps 0-2 may never stop (i > min_len)
            margins.append(torch.tensor(ms[3:]))
    finally:
        h1.remove(), h2.remove()
    return inputs, margins


def _silu(x: float) -> float:
    return x / (1 + math.exp(-x))


@torch.no_grad()
def _calibrate_stop(model, seed: int) -> None:
    """Make short generations stop after a handful of patches, whatever the text.

    The random stop head alone mostly reflects the text (some texts never cross the threshold), so two stop_proj
    channels are redesigned while all others stay random: channel 0 reads the direction along which the LM hidden
    varies most from step to step (text means removed) and dominates the margin; channel 1 is a constant that acts
    as a bias putting the threshold at the upper quartile of the calibration margins (~1-in-4 chance per step).
    Stopping never changes the trajectory before it fires, so runs with stopping disabled measure every step.
    """
    weight, bias, head = model.stop_proj.weight, model.stop_proj.bias, model.stop_head.weight
    weight[:2], bias[:2], head[:, :2] = 0.0, 0.0, 0.0
    inputs, random_margins = _stop_inputs_and_margins(model, seed)
    means = torch.stack([x.mean(0) for x in inputs])
    between = torch.linalg.qr((means - means.mean(0)).T).Q  # directions that separate the texts
    within = torch.cat([x - x.mean(0) for x in inputs])
    direction = torch.linalg.svd(within - within @ between @ between.T, full_matrices=False).Vh[0]
    proj = torch.cat(inputs) @ direction
    weight[0] = direction / proj.std()
    bias[0] = 3.0 - proj.mean() / proj.std()  # pre-activation ~ 3 +- 1, where silu is nearly linear
    head[1, 0] = 5.0 * torch.cat(random_margins).std()  # this channel dominates the random ones
    bias[1] = 2.0  # channel 1: constant silu(2)
    _, margins = _stop_inputs_and_margins(model, seed)
    head[0, 1] = torch.cat(margins).quantile(STOP_QUANTILE) / _silu(2.0)


def _float_cast(sd: dict, dtype: torch.dtype) -> dict:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().clone() for k, v in sd.items()}


def build_tiny_checkpoint(folder, kind: str, *, seed: int = 0, weights_format: str = "safetensors",
                          vae_format: str = "pth", dtype: str = "float32") -> Path:
    """Build a tiny random checkpoint of `kind` in `folder` (official layout) and return the folder."""
    from safetensors.torch import save_file
    from transformers import LlamaTokenizerFast

    if weights_format not in ("safetensors", "bin") or vae_format not in ("pth", "safetensors"):
        raise ValueError(f"bad formats: weights_format={weights_format!r}, vae_format={vae_format!r}")
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(folder)
    raw = tiny_config_dict(kind, vocab_size=vocab_size, dtype=dtype)
    (folder / "config.json").write_text(json.dumps(raw, indent=2), encoding="utf-8")

    Model, VoxCPMConfig, AudioVAE, AudioVAEConfig = _reference_classes(kind)
    config = VoxCPMConfig.model_validate(dict(raw, dtype="float32"))  # calibrate in fp32
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm in the reference VAE
        torch.manual_seed(seed)
        vae = AudioVAE(AudioVAEConfig(**raw["audio_vae_config"]))
        model = Model(config, LlamaTokenizerFast.from_pretrained(str(folder)), vae, device="cpu").eval()
        _perturb(model, torch.Generator().manual_seed(seed + 1))
        _calibrate_stop(model, seed + 2)

    state = model.state_dict()
    main = _float_cast({k: v for k, v in state.items() if not k.startswith("audio_vae.")}, torch_dtype)
    vae_sd = _float_cast(model.audio_vae.state_dict(), torch.float32)
    if weights_format == "safetensors":
        save_file(main, str(folder / "model.safetensors"))
    else:
        torch.save(main, folder / "pytorch_model.bin")
    if vae_format == "pth":
        torch.save({"state_dict": vae_sd}, folder / "audiovae.pth")
    else:
        save_file(vae_sd, str(folder / "audiovae.safetensors"))
    return folder


# ------------------------------------------------------------------------------------------------- reference

def _soundfile_load(path, *args, **kwargs):
    import soundfile as sf

    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), sr


@contextlib.contextmanager
def soundfile_torchaudio_load():
    """Patch `torchaudio.load` (needs torchcodec since torchaudio 2.9) to read with soundfile: ([C, T] float32, sr)."""
    import torchaudio

    original = torchaudio.load
    torchaudio.load = _soundfile_load
    try:
        yield
    finally:
        torchaudio.load = original


def reference_model(folder, device: str = "cpu"):
    """The reference `voxcpm.core.VoxCPM` on a folder (no denoiser, no torch.compile warm-up)."""
    from voxcpm.core import VoxCPM

    return VoxCPM(str(folder), enable_denoiser=False, optimize=False, device=device)
