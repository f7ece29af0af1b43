"""The only module that talks to ComfyUI: model folders, devices, memory management, progress and interrupts.

Every service has a plain fallback, so the nodes run (and are tested) without ComfyUI. ComfyUI's modules are
imported lazily, and only when ComfyUI itself is running (its `folder_paths` and `comfy.model_management` are
already imported by then); importing them in any other process could touch the GPU or fail.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Callable

import torch

log = logging.getLogger("voxcpm")

MODEL_FOLDER = "voxcpm"  # models/voxcpm/<model name>/config.json ...
LORA_FOLDER = "loras"  # models/loras/voxcpm/*.safetensors
LORA_SUBFOLDER = "voxcpm"
LORA_WEIGHT_FILES = {"lora_weights.safetensors", "lora_weights.ckpt", "lora_weights.pth"}  # official trainer


def _comfy_module(name: str):
    """A ComfyUI module when running inside ComfyUI, else None."""
    if "folder_paths" not in sys.modules or "comfy.model_management" not in sys.modules:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def in_comfyui() -> bool:
    return _comfy_module("folder_paths") is not None


# ------------------------------------------------------------------------------------------------- folders

# Outside ComfyUI: folders set by tests or scripts with set_fallback_folders().
_fallback_folders: dict[str, list[str]] = {MODEL_FOLDER: [], LORA_FOLDER: []}


def set_fallback_folders(name: str, paths: list[str]) -> None:
    """Where models (name="voxcpm") or LoRAs (name="loras") live when ComfyUI is not running."""
    _fallback_folders[name] = [os.fspath(p) for p in paths]


def register_model_folder() -> None:
    """Add models/voxcpm to ComfyUI's folder list, keeping entries that extra_model_paths.yaml already made."""
    fp = _comfy_module("folder_paths")
    if fp is None:
        return
    default = os.path.join(fp.models_dir, MODEL_FOLDER)
    if MODEL_FOLDER in fp.folder_names_and_paths:
        paths, extensions = fp.folder_names_and_paths[MODEL_FOLDER]
        if default not in paths:
            paths.append(default)
        fp.folder_names_and_paths[MODEL_FOLDER] = (paths, extensions)
    else:
        fp.folder_names_and_paths[MODEL_FOLDER] = ([default], {".json", ".safetensors", ".bin", ".pth"})


def folder_paths_for(name: str) -> list[str]:
    fp = _comfy_module("folder_paths")
    if fp is None:
        return list(_fallback_folders.get(name, []))
    try:
        return list(fp.get_folder_paths(name))
    except KeyError:
        return []


def lora_files() -> list[str]:
    """LoRA weights below <loras>/voxcpm/, relative to the loras folder: "voxcpm/<name>/lora_weights.safetensors"
    (a folder saved by the official trainer, lora_config.json beside it) or "voxcpm/<name>.safetensors"."""
    fp = _comfy_module("folder_paths")
    if fp is not None:
        names = fp.get_filename_list(LORA_FOLDER)
    else:
        names = []
        for root in _fallback_folders.get(LORA_FOLDER, []):
            for dirpath, _, files in os.walk(root):
                names += [os.path.relpath(os.path.join(dirpath, f), root) for f in files]
    prefix = LORA_SUBFOLDER + "/"
    found = {n.replace(os.sep, "/") for n in names}
    return sorted(n for n in found if n.startswith(prefix)
                  and (n.rsplit("/", 1)[-1] in LORA_WEIGHT_FILES or n.lower().endswith(".safetensors")))


def lora_path(name: str) -> str:
    """Absolute path of a LoRA listed by lora_files()."""
    for root in folder_paths_for(LORA_FOLDER):
        path = os.path.join(root, *name.split("/"))
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"LoRA {name!r} was not found in {folder_paths_for(LORA_FOLDER) or 'any loras folder'}; "
                            f"put LoRA files in models/{LORA_FOLDER}/{LORA_SUBFOLDER}/ and refresh the page")


# ------------------------------------------------------------------------------------------------- devices

def torch_device(choice: str) -> str:
    """The device string for the loader's device choice; "auto" follows ComfyUI (--cpu, --gpu-only, ...)."""
    mm = _comfy_module("comfy.model_management")
    if choice == "auto":
        if mm is None:
            return "auto"  # the engine picks cuda -> mps -> cpu
        return str(mm.get_torch_device())
    if choice == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()}"  # same spelling as ComfyUI, so its accounting matches
    return choice


def offload_device() -> torch.device:
    mm = _comfy_module("comfy.model_management")
    return mm.unet_offload_device() if mm is not None else torch.device("cpu")


def free_memory(num_bytes: int, device) -> None:
    """Ask ComfyUI to offload its other models until num_bytes are free on device (no-op outside ComfyUI)."""
    mm = _comfy_module("comfy.model_management")
    device = torch.device(device)
    if mm is not None and device.type != "cpu":
        mm.free_memory(num_bytes, device)


class ManagedModel:
    """Registers a set of modules with ComfyUI's model management (a ModelPatcher, full load).

    ComfyUI may move the modules to the offload device when another model needs memory; `ensure_loaded()` moves
    them back before each use. `on_offload` runs after such an offload (to release device-side buffers)."""

    def __init__(self, module: torch.nn.Module, load_device, size: int, on_offload: Callable[[], None] | None = None):
        self.module, self.size = module, int(size)
        self.load_device = torch.device(load_device)
        self.patcher = None
        mm = _comfy_module("comfy.model_management")
        mp = _comfy_module("comfy.model_patcher")
        if mm is None:
            return
        if mp is None:
            log.warning("VoxCPM: comfy.model_patcher could not be imported; the model is not registered with "
                        "ComfyUI's memory management")
            return
        module.device = self.load_device  # the modules are already on the load device
        self.patcher = mp.ModelPatcher(module, load_device=self.load_device, offload_device=offload_device(),
                                       size=self.size)
        if on_offload is not None:
            self.patcher.add_callback(mp.CallbacksMP.ON_DETACH, lambda patcher, unpatch_all: on_offload())

    def set_size(self, size: int) -> None:
        self.size = int(size)
        if self.patcher is not None:
            self.patcher.size = self.size

    def ensure_loaded(self) -> None:
        mm = _comfy_module("comfy.model_management")
        if self.patcher is not None and mm is not None:
            mm.load_models_gpu([self.patcher], force_full_load=True)

    def is_loaded(self) -> bool:
        """Whether ComfyUI currently lists the model as loaded (always True outside ComfyUI)."""
        mm = _comfy_module("comfy.model_management")
        if self.patcher is None or mm is None:
            return True
        return any(m is self.patcher for m in mm.loaded_models())


# ------------------------------------------------------------------------------------------------- progress

class Interrupted(Exception):
    """Raised by check_interrupt() outside ComfyUI after request_interrupt() (ComfyUI raises its own)."""


_fallback_interrupt = False
_fallback_progress_hook: Callable[[int, int], None] | None = None


def set_fallback_progress_hook(hook: Callable[[int, int], None] | None) -> None:
    """Outside ComfyUI: receive every progress update as hook(value, total) (tests, scripts)."""
    global _fallback_progress_hook
    _fallback_progress_hook = hook


def request_interrupt(value: bool = True) -> None:
    """What the Cancel button does: the next check_interrupt() raises."""
    global _fallback_interrupt
    mm = _comfy_module("comfy.model_management")
    if mm is not None:
        mm.interrupt_current_processing(value)
    else:
        _fallback_interrupt = value


def check_interrupt() -> None:
    global _fallback_interrupt
    mm = _comfy_module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    elif _fallback_interrupt:
        _fallback_interrupt = False
        raise Interrupted("processing interrupted")


class Progress:
    """A node progress bar: ComfyUI's ProgressBar inside ComfyUI (which also checks for interrupts)."""

    def __init__(self, total: int):
        self.total = int(total)
        utils = _comfy_module("comfy.utils")
        self._bar = utils.ProgressBar(self.total) if utils is not None else None

    def update(self, value: int, total: int | None = None) -> None:
        if total is not None:
            self.total = int(total)
        if self._bar is not None:
            self._bar.update_absolute(int(value), self.total)
        elif _fallback_progress_hook is not None:
            _fallback_progress_hook(int(value), self.total)
