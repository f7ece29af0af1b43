"""Load VoxCPM: model folder (or official model, downloaded once) + device + dtype + optional LoRA -> VOXCPM_MODEL.

One module-level `ModelCache` keeps every loaded model, so re-running a workflow or switching between workflows never
loads the same checkpoint twice. LoRA variants share their base model: each VOXCPM_MODEL handle names the LoRA it
wants, and `activate()` puts exactly that LoRA (or none) on the shared engine before every use.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..voxcpm_engine import Engine
from ..voxcpm_engine import checkpoint
from ..voxcpm_engine.config import load_config
from ..voxcpm_engine.runtime import resolve_device, resolve_dtype
from . import comfy

CATEGORY = "audio/VoxCPM"
OFFICIAL_MODELS = {"VoxCPM2": "openbmb/VoxCPM2", "VoxCPM1.5": "openbmb/VoxCPM1.5",
                   "VoxCPM-0.5B": "openbmb/VoxCPM-0.5B"}
DEVICES = ["auto", "cuda", "cpu", "mps"]
DTYPES = ["auto", "bfloat16", "float16", "float32"]
NO_LORA = "none"
MAX_ENGINES = 3  # base models kept in memory (least recently used is dropped first)


# ------------------------------------------------------------------------------------------------- folders

def list_models() -> list[str]:
    """Official names first (downloaded on first use), then every other folder with a config.json."""
    local = set()
    for root in comfy.folder_paths_for(comfy.MODEL_FOLDER):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            depth = os.path.relpath(dirpath, root).count(os.sep)
            if "config.json" in filenames and dirpath != root:
                local.add(os.path.relpath(dirpath, root).replace(os.sep, "/"))
                dirnames[:] = []  # a model folder holds no further models
            elif depth >= 1:
                dirnames[:] = []  # look at most two levels deep (models/voxcpm/<org>/<name>)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return list(OFFICIAL_MODELS) + sorted(local - set(OFFICIAL_MODELS))


def find_model(name: str) -> Path | None:
    for root in comfy.folder_paths_for(comfy.MODEL_FOLDER):
        folder = Path(root, *name.split("/"))
        if (folder / "config.json").is_file():
            return folder
    return None


def resolve_model(name: str, source: str = "huggingface") -> Path:
    """The folder of a model name; an official model that is not present yet is downloaded into models/voxcpm/."""
    folder = find_model(name)
    if folder is not None and name in OFFICIAL_MODELS:
        try:
            checkpoint.find_checkpoint_files(folder)
        except FileNotFoundError:  # an interrupted download: fetch the rest into the same folder
            comfy.log.warning("VoxCPM: %s is incomplete, downloading the missing files", folder)
            return _download(name, folder, source)
    if folder is not None:
        return folder
    roots = comfy.folder_paths_for(comfy.MODEL_FOLDER)
    if name not in OFFICIAL_MODELS:
        raise FileNotFoundError(f"VoxCPM model {name!r} was not found: no {name}/config.json in "
                                f"{', '.join(roots) or 'the models/voxcpm folder'}. Put the checkpoint folder there "
                                "(config.json, model.safetensors, audiovae.pth, tokenizer files) and refresh the page, "
                                f"or pick one of the official models ({', '.join(OFFICIAL_MODELS)}).")
    if not roots:
        raise FileNotFoundError("no models/voxcpm folder is configured to download into")
    return _download(name, Path(roots[0], name), source)


def _download(name: str, target: Path, source: str) -> Path:
    """Fetch an official model into target (per-file progress in the console; the node's bar marks the stage)."""
    comfy.log.info("VoxCPM: downloading %s from %s into %s", OFFICIAL_MODELS[name], source, target)
    progress = comfy.Progress(2)
    progress.update(0)
    folder = checkpoint.download(OFFICIAL_MODELS[name], target, source=source, progress=True)
    progress.update(1)
    return folder


# ------------------------------------------------------------------------------------------------- memory

def kv_cache_bytes(engine: Engine) -> int:
    """The static KV caches generation allocates: base LM + residual LM, max_length positions, batch 1."""
    cfg = engine.config
    elsize = torch.empty((), dtype=engine.dtype).element_size()
    total = 0
    for stack in (cfg.lm, cfg.residual_lm):
        total += 2 * stack.num_hidden_layers * stack.num_key_value_heads * cfg.max_length * stack.head_dim * elsize
    return total


def model_bytes(engine: Engine) -> int:
    """Device memory of a loaded model: every weight and buffer (LoRA included) plus the KV caches; in low-VRAM
    mode the AudioVAE stays on the CPU and is not counted."""
    modules = (engine.model,) if engine.low_vram else (engine.model, engine.vae)
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors) + kv_cache_bytes(engine)


def _estimate_before_load(folder: Path, dtype: torch.dtype) -> int:
    """A rough upper bound before loading (weight files assumed half precision), to make room on the GPU."""
    files = checkpoint.find_checkpoint_files(folder)
    scale = torch.empty((), dtype=dtype).element_size() / 2
    return int(files.weights.stat().st_size * scale + files.vae.stat().st_size * 2)


class _Modules(torch.nn.Module):
    """The engine's network and AudioVAE under one module, for ComfyUI's model management. In low-VRAM mode the
    AudioVAE is left out, so ComfyUI never moves it off the CPU."""

    def __init__(self, engine: Engine):
        super().__init__()
        self.network = engine.model
        self.manage_vae(engine)

    def manage_vae(self, engine: Engine) -> None:
        if engine.low_vram:
            self._modules.pop("vae", None)
        else:
            self.vae = engine.vae


def _release_kv_caches(engine: Engine) -> None:
    # After ComfyUI offloads the weights, drop the device-side KV caches and captured graphs too; the engine
    # re-creates them on use.
    engine.release_caches()


# ------------------------------------------------------------------------------------------------- cache

@dataclass
class LoadedEngine:
    key: tuple  # (folder, device, dtype)
    engine: Engine
    managed: comfy.ManagedModel

    def apply_lora(self, lora: tuple | None) -> None:
        """Put exactly this LoRA ((path, strength)) or none on the engine; nothing happens if it is already so."""
        current = self.engine.lora
        if lora is None and current is None:
            return
        if lora is not None and current is not None and current.strength == lora[1] \
                and Path(current.path).resolve() == Path(lora[0]).resolve():
            return
        if lora is None:
            self.engine.set_lora(None)
            comfy.log.info("VoxCPM: LoRA removed")
        else:
            info = self.engine.set_lora(lora[0], strength=lora[1])
            comfy.log.info("VoxCPM: LoRA %s applied (rank %d, alpha %g from %s, strength %g, %d layers)",
                           info.path, info.rank, info.alpha, info.alpha_source, info.strength, info.modules)
        self.managed.set_size(model_bytes(self.engine))

    def apply_low_vram(self, enabled: bool) -> None:
        if self.engine.low_vram == enabled:
            return
        self.engine.set_low_vram(enabled)
        self.managed.module.manage_vae(self.engine)
        self.managed.set_size(model_bytes(self.engine))
        comfy.log.info("VoxCPM: low-VRAM mode %s (AudioVAE on %s)", "on" if enabled else "off",
                       self.engine.vae_device)


class VoxCPMModel:
    """The VOXCPM_MODEL value: a shared loaded engine plus the LoRA this loader asked for."""

    def __init__(self, name: str, base: LoadedEngine, lora: tuple | None, low_vram: bool = False):
        self.name, self.base, self.lora, self.low_vram = name, base, lora, low_vram

    @property
    def key(self) -> tuple:
        return (*self.base.key, self.lora, self.low_vram)

    @property
    def engine(self) -> Engine:
        return self.base.engine

    @property
    def version(self) -> int:
        return self.base.engine.version

    @property
    def sample_rate(self) -> int:
        return self.base.engine.sample_rate

    def activate(self) -> Engine:
        """Make sure the weights are on the device and exactly this handle's LoRA and low-VRAM setting are
        applied; return the engine."""
        self.base.apply_low_vram(self.low_vram)
        self.base.managed.ensure_loaded()
        self.base.apply_lora(self.lora)
        return self.base.engine

    def __repr__(self) -> str:
        lora = "none" if self.lora is None else f"{os.path.basename(self.lora[0])}@{self.lora[1]:g}"
        e = self.base.engine
        return f"VoxCPMModel({self.name}, v{e.version}, {e.sample_rate} Hz, {e.device}, " \
               f"{str(e.dtype).replace('torch.', '')}, lora={lora}{', low VRAM' if self.low_vram else ''})"


class ModelCache:
    """Loaded engines keyed by (folder, device, dtype); handles keyed by that plus (LoRA path, strength)."""

    def __init__(self, max_engines: int = MAX_ENGINES):
        self.max_engines = max_engines
        self.engines: OrderedDict[tuple, LoadedEngine] = OrderedDict()
        self.handles: dict[tuple, VoxCPMModel] = {}
        self.loads = 0  # Engine.load calls so far (tests check that nothing is reloaded)

    def get(self, name: str, folder: Path, device: str, dtype: str, lora: tuple | None,
            low_vram: bool = False) -> VoxCPMModel:
        config = load_config(Path(folder) / "config.json")
        device = resolve_device(device, config.device)
        dtype = _auto_dtype(dtype, device, config.dtype)
        base_key = (str(Path(folder).resolve()), device, str(dtype).replace("torch.", ""))
        key = (*base_key, lora, bool(low_vram))
        handle = self.handles.get(key)
        if handle is not None and self.engines.get(base_key) is handle.base:
            self.engines.move_to_end(base_key)
            comfy.log.info("VoxCPM: reusing loaded %s", handle)
            return handle
        base = self.engines.get(base_key)
        if base is None:
            base = self._load(base_key, Path(folder), device, dtype)
        self.engines.move_to_end(base_key)
        handle = VoxCPMModel(name, base, lora, bool(low_vram))
        self.handles[key] = handle
        return handle

    def _load(self, base_key: tuple, folder: Path, device: str, dtype: torch.dtype) -> LoadedEngine:
        comfy.free_memory(_estimate_before_load(folder, dtype), device)
        comfy.log.info("VoxCPM: loading %s (%s, %s)", folder, device, base_key[2])
        engine = Engine.load(folder, device=device, dtype=dtype)
        self.loads += 1
        managed = comfy.ManagedModel(_Modules(engine), engine.device, model_bytes(engine),
                                     on_offload=lambda: _release_kv_caches(engine))
        base = LoadedEngine(base_key, engine, managed)
        self.engines[base_key] = base
        while len(self.engines) > self.max_engines:
            old_key, _ = self.engines.popitem(last=False)
            self.handles = {k: h for k, h in self.handles.items() if h.base.key != old_key}
        managed.ensure_loaded()
        return base

    def clear(self) -> None:
        self.engines.clear()
        self.handles.clear()


def _auto_dtype(choice: str, device: str, configured: str) -> torch.dtype:
    """"auto" = the checkpoint's dtype, except float16 on CUDA GPUs without bfloat16 (pre-Ampere)."""
    dtype = resolve_dtype(choice, device, configured)
    if (choice or "auto") == "auto" and dtype == torch.bfloat16 and device.startswith("cuda") \
            and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return dtype


MODEL_CACHE = ModelCache()


# ------------------------------------------------------------------------------------------------- node

class LoadVoxCPM:
    DESCRIPTION = ("Load a VoxCPM text-to-speech model (VoxCPM-0.5B 16 kHz, VoxCPM1.5 44.1 kHz, VoxCPM2 48 kHz). "
                   "Official models are downloaded into models/voxcpm/<name>/ on first use. Loaded models are kept "
                   "and reused across runs and workflows.")
    RETURN_TYPES = ("VOXCPM_MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded VoxCPM model.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (list_models(), {"default": "VoxCPM2", "tooltip": (
                "A folder in models/voxcpm/ (with config.json), or an official model: VoxCPM2 (voice design, "
                "30 languages, 48 kHz), VoxCPM1.5 (44.1 kHz), VoxCPM-0.5B (16 kHz). Official models are "
                "downloaded on first use.")}),
            "device": (DEVICES, {"default": "auto", "tooltip": "auto follows ComfyUI's device (GPU if present)."}),
            "dtype": (DTYPES, {"default": "auto", "tooltip": (
                "auto: the checkpoint's precision (bfloat16), float16 on GPUs without bfloat16 (before RTX 30xx). "
                "float32 is the most exact and needs twice the memory.")}),
            "download_source": (list(checkpoint.SOURCES), {"default": "huggingface", "tooltip": (
                "Where official models are downloaded from when they are missing (modelscope needs the "
                "modelscope package). Honours HF_ENDPOINT and HF_HUB_OFFLINE.")}),
            "lora": ([NO_LORA] + comfy.lora_files(), {"default": NO_LORA, "tooltip": (
                "A VoxCPM LoRA from models/loras/voxcpm/. Rank and alpha are read from lora_config.json, the "
                "file's metadata or the tensor shapes.")}),
            "lora_strength": ("FLOAT", {"default": 1.0, "min": -2.0, "max": 2.0, "step": 0.05,
                                        "tooltip": "Scale of the LoRA update (0 = off, 1 = as trained)."}),
        }, "optional": {
            "low_vram": ("BOOLEAN", {"default": False, "tooltip": (
                "Keep the audio decoder (AudioVAE) on the CPU and decode in 10-second pieces: saves its GPU memory "
                "(about 0.3-0.36 GB of fp32 weights, plus the decoding activations of long clips) for slower decoding. "
                "Same audio either way.")}),
        }}

    def load(self, model, device="auto", dtype="auto", download_source="huggingface", lora=NO_LORA,
             lora_strength=1.0, low_vram=False):
        folder = resolve_model(model, download_source)
        lora_key = None
        if lora and lora != NO_LORA:
            lora_key = (comfy.lora_path(lora), float(lora_strength))
        handle = MODEL_CACHE.get(model, folder, comfy.torch_device(device), dtype, lora_key, low_vram)
        handle.activate()  # load onto the device now and fail here (not in synthesis) on a bad LoRA
        return (handle,)


comfy.register_model_folder()
