"""LoRA adapters from the official VoxCPM fine-tuning, applied at inference without touching the base weights.

Files (what the official trainer writes, spec §9), given as their folder or as the weights file itself:
    lora_weights.safetensors | lora_weights.ckpt ({"state_dict": {...}}, read with weights_only=True)
        "<module>.lora_A" [r, in] and "<module>.lora_B" [out, r] for every adapted nn.Linear <module>, named as in
        the model (e.g. "base_lm.layers.0.self_attn.q_proj"); torch.compile's "_orig_mod" name parts are dropped.
    lora_config.json (optional, beside the weights): {"base_model": ..., "lora_config": {"r": .., "alpha": .., ...}}

The adapted layers are read from the keys and the rank from the shapes (the enable_* / target lists of
lora_config.json are not needed). alpha is taken from, in this order:
    1. lora_config.json: "lora_config" -> "alpha"            LoraInfo.alpha_source == "lora_config.json"
    2. safetensors metadata "lora_alpha" or "alpha"           "safetensors metadata 'lora_alpha'" (or 'alpha')
    3. nothing found: alpha = 16, the official LoRAConfig default "default (alpha = 16, official default)"
       (the official package falls back to r=8/alpha=16 when no lora_config.json is given; files of its older
       trainer, which wrote no config, were trained with exactly that)

Each adapted layer becomes a `LoraLinear` that shares the base layer's weight/bias Parameters and computes
    y = x Wᵀ + b + (x Aᵀ) Bᵀ · (alpha / r · strength)
in the reference's order of operations. Our fused projections (q/k/v, gate/up: layers/linear.py) take the official
per-projection names; their parts' pairs are joined into one: A stacked, B block-diagonal, so each part's low-rank
term lands on that part's outputs only. Nothing is merged into W, so removing the adapter restores the base model
exactly. A file is read and checked completely against the model before anything is changed.
"""
from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .layers.linear import Linear, part_names

WEIGHT_FILES = ("lora_weights.safetensors", "lora_weights.ckpt", "lora_weights.pth")
CONFIG_FILE = "lora_config.json"
METADATA_ALPHA_KEYS = ("lora_alpha", "alpha")
DEFAULT_ALPHA = 16.0
DEFAULT_ALPHA_SOURCE = "default (alpha = 16, official default)"
_HALVES = ("lora_A", "lora_B")


class LoraError(ValueError):
    """A LoRA file is malformed or does not fit the loaded model."""


@dataclass(frozen=True)
class LoraInfo:
    path: Path  # the weights file that was read
    strength: float
    rank: int
    alpha: float
    alpha_source: str  # where alpha came from (see the module docstring)
    modules: int  # number of adapted Linear layers
    base_model: str | None = None  # "base_model" of lora_config.json, if any

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank * self.strength


@dataclass(frozen=True)
class LoraAdapter:
    """A checked LoRA, ready to apply: module name -> (lora_A, lora_B) in that module's dtype and device (one pair
    per module: the parts of a fused module joined)."""

    info: LoraInfo
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]


class LoraLinear(Linear):
    """Linear plus a low-rank path; `weight` and `bias` are the base layer's own Parameters (never copied)."""

    def __init__(self, base: nn.Linear, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias
        self.pack_small_batches = getattr(base, "pack_small_batches", False)
        self.parts = getattr(base, "parts", None)
        self.register_buffer("lora_A", lora_A, persistent=False)  # not in state_dict: the checkpoint keys stay
        self.register_buffer("lora_B", lora_B, persistent=False)
        self.scaling = scaling
        self.train(base.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.scaling == 0.0:
            return out
        return out + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def base_linear(self) -> Linear:
        """A plain Linear over the same weight/bias Parameters."""
        plain = Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        plain.weight, plain.bias = self.weight, self.bias
        plain.pack_small_batches, plain.parts = self.pack_small_batches, self.parts
        return plain.train(self.training)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.lora_A.shape[0]}, scaling={self.scaling:g}"


# --------------------------------------------------------------------------------------------------- files

def find_lora_files(path: str | Path) -> tuple[Path, Path | None]:
    """(weights file, lora_config.json beside it or None) for a LoRA folder or weights file."""
    path = Path(path).expanduser()
    if path.is_dir():
        weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if weights is None:
            present = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
            raise FileNotFoundError(f"LoRA folder {path} has no {' or '.join(WEIGHT_FILES)} (present: {present})")
    elif path.is_file():
        weights = path
    else:
        raise FileNotFoundError(f"LoRA path {path} does not exist; give the folder with {WEIGHT_FILES[0]} "
                                "or the weights file itself")
    config = weights.parent / CONFIG_FILE
    return weights, (config if config.is_file() else None)


def _read_config(path: Path) -> tuple[dict, str | None]:
    """(the "lora_config" section, "base_model") of lora_config.json."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LoraError(f"Cannot read {path}: {e}") from None
    section = raw.get("lora_config", raw) if isinstance(raw, dict) else None
    if not isinstance(section, dict):
        raise LoraError(f"{path} must hold a JSON object with a \"lora_config\" object")
    base_model = raw.get("base_model")
    return section, (str(base_model) if base_model is not None else None)


def _metadata(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def _number(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise LoraError(f"{where} must be a finite number, got {value!r}")
    return number


def resolve_alpha(rank: int, config: dict | None, config_path: Path | None,
                  metadata: dict[str, str]) -> tuple[float, str]:
    """(alpha, where it came from): lora_config.json, else safetensors metadata, else the official default 16."""
    if config is not None and config.get("alpha") is not None:
        return _number(config["alpha"], f"{config_path}: lora_config.alpha"), CONFIG_FILE
    for key in METADATA_ALPHA_KEYS:
        if key in metadata:
            return _number(metadata[key], f"safetensors metadata {key!r}"), f"safetensors metadata {key!r}"
    return DEFAULT_ALPHA, DEFAULT_ALPHA_SOURCE


# --------------------------------------------------------------------------------------------------- checking

def _module_name(key: str) -> tuple[str, str]:
    """("base_lm.layers.0.self_attn.q_proj", "lora_A") for a key, "_orig_mod" parts dropped."""
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    return ".".join(parts[:-1]), parts[-1] if parts else ""


def _pairs(state: dict[str, torch.Tensor], weights: Path) -> dict[str, dict[str, tuple[str, torch.Tensor]]]:
    """module name -> {"lora_A": (key, tensor), "lora_B": (key, tensor)}; every key must belong to a full pair."""
    if not state:
        raise LoraError(f"{weights} holds no tensors: it is not a LoRA of the official fine-tuning")
    pairs: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state.items():
        name, half = _module_name(key)
        if half not in _HALVES or not name:
            raise LoraError(f"{weights}: key {key!r} is not a LoRA tensor (expected '<module>.lora_A' and "
                            "'<module>.lora_B' only)")
        if half in pairs.setdefault(name, {}):
            raise LoraError(f"{weights}: keys {pairs[name][half][0]!r} and {key!r} name the same tensor")
        pairs[name][half] = (key, tensor)
    for name, halves in pairs.items():
        if len(halves) == 1:
            (half, (key, _)), = halves.items()
            other = _HALVES[1 - _HALVES.index(half)]
            raise LoraError(f"{weights}: {key!r} has no matching {other!r} (expected {name}.{other})")
    return pairs


@dataclass(frozen=True)
class _Layer:
    """Where an adaptable layer (by its official name) lives: the module holding its weight, and its output rows."""
    module_name: str
    module: nn.Linear
    rows: slice

    @property
    def in_features(self) -> int:
        return self.module.in_features

    @property
    def out_features(self) -> int:
        return self.rows.stop - self.rows.start


def adaptable_layers(model: nn.Module) -> dict[str, _Layer]:
    """Every Linear layer a LoRA can name, by its official name (fused projections by their parts' names)."""
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if not getattr(module, "parts", None):
            layers[name] = _Layer(name, module, slice(0, module.out_features))
            continue
        for part_name, rows in part_names(name, module).items():
            layers[part_name] = _Layer(name, module, rows)
    return layers


def _target(model: nn.Module, layers: dict[str, _Layer], name: str, key: str, weights: Path) -> _Layer:
    if name in layers:
        return layers[name]
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise LoraError(f"{weights}: key {key!r} names a layer {name!r} that this model does not have "
                        "(a LoRA for another model?)") from None
    raise LoraError(f"{weights}: key {key!r} names {name!r}, a {type(module).__name__}, not a Linear layer")


def _check_pair(layer: _Layer, halves: dict[str, tuple[str, torch.Tensor]], weights: Path) -> int:
    """The rank of one (lora_A, lora_B) pair that fits `layer`."""
    (key_a, a), (key_b, b) = halves["lora_A"], halves["lora_B"]
    for key, t in ((key_a, a), (key_b, b)):
        if not t.is_floating_point():
            raise LoraError(f"{weights}: {key!r} has dtype {t.dtype}, expected floating point")
    fits = (a.ndim == 2 and b.ndim == 2 and a.shape[1] == layer.in_features
            and b.shape[0] == layer.out_features and a.shape[0] == b.shape[1] > 0)
    if not fits:
        raise LoraError(f"{weights}: {key_a!r} {list(a.shape)} / {key_b!r} {list(b.shape)} do not fit the layer "
                        f"(expected [r, {layer.in_features}] and [{layer.out_features}, r] with r > 0)")
    return a.shape[0]


def _rank(ranks: dict[str, int], config: dict | None, config_path: Path | None, weights: Path) -> int:
    distinct = sorted(set(ranks.values()))
    if len(distinct) > 1:
        raise LoraError(f"{weights}: layers have different ranks {distinct}; expected one rank for all")
    rank = distinct[0]
    declared = None if config is None else config.get("r")
    if declared is not None and _number(declared, f"{config_path}: lora_config.r") != rank:
        raise LoraError(f"{config_path} says r={declared} but the tensors in {weights} have rank {rank}")
    return rank


def _runtime_pair(pairs: list[tuple[_Layer, dict[str, tuple[str, torch.Tensor]]]]) -> tuple[torch.Tensor, ...]:
    """(lora_A, lora_B) for one module, in its dtype (the runtime dtype) on its device. The parts of a fused module
    are joined: A [sum r, in] stacked, B [out, sum r] block-diagonal (zero outside each part's rows)."""
    module = pairs[0][0].module
    cast = [tuple(halves[half][1].to(device=module.weight.device, dtype=module.weight.dtype) for half in _HALVES)
            for _, halves in pairs]
    if len(pairs) == 1 and pairs[0][0].out_features == module.out_features:
        return tuple(t.contiguous() for t in cast[0])
    lora_A = torch.cat([a for a, _ in cast])
    lora_B = lora_A.new_zeros(module.out_features, lora_A.shape[0])
    start = 0
    for (layer, _), (a, b) in zip(pairs, cast):
        lora_B[layer.rows, start:start + a.shape[0]] = b
        start += a.shape[0]
    return lora_A, lora_B


def _strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise LoraError(f"LoRA strength must be a number, got {strength!r}")
    return _number(strength, "LoRA strength")


# --------------------------------------------------------------------------------------------------- public

def load_lora(path: str | Path, model: nn.Module, strength: float = 1.0) -> LoraAdapter:
    """Read and check a LoRA against `model` (which is not modified); tensors are cast to each layer's dtype/device."""
    strength = _strength(strength)
    weights, config_path = find_lora_files(path)
    config, base_model = _read_config(config_path) if config_path is not None else (None, None)
    pairs = _pairs(checkpoint.read_state_dict(weights), weights)
    adaptable = adaptable_layers(model)
    targets = {name: _target(model, adaptable, name, halves["lora_A"][0], weights) for name, halves in pairs.items()}
    ranks = {name: _check_pair(targets[name], halves, weights) for name, halves in pairs.items()}
    rank = _rank(ranks, config, config_path, weights)
    alpha, source = resolve_alpha(rank, config, config_path, _metadata(weights))
    by_module: dict[str, list] = {}
    for name, layer in sorted(targets.items(), key=lambda item: item[1].rows.start):
        by_module.setdefault(layer.module_name, []).append((layer, pairs[name]))
    layers = {module_name: _runtime_pair(parts) for module_name, parts in by_module.items()}
    info = LoraInfo(weights, strength, rank, alpha, source, len(targets), base_model)
    return LoraAdapter(info, layers)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def remove_lora(model: nn.Module) -> int:
    """Put the plain Linear layers back (same Parameters); returns how many layers were adapted."""
    adapted = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLinear)]
    for name, module in adapted:
        _set_module(model, name, module.base_linear())
    return len(adapted)


def apply_lora(model: nn.Module, adapter: LoraAdapter) -> None:
    """Replace any LoRA on `model` by `adapter` (from `load_lora` on this model)."""
    remove_lora(model)
    scaling = adapter.info.scaling
    for name, (lora_A, lora_B) in adapter.layers.items():
        _set_module(model, name, LoraLinear(model.get_submodule(name), lora_A, lora_B, scaling))
