"""The only module that talks to ComfyUI: model folders, devices, memory management, progress and interrupts.

Every service has a plain fallback, so the nodes run (and are tested) without ComfyUI. ComfyUI's modules are
imported lazily, and only when ComfyUI itself is running (its `folder_paths` and `comfy.model_management` are
already imported by then); importing them in any other process could touch the GPU or fail.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import tempfile
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
    register_extra_model_folder(MODEL_FOLDER, {".json", ".safetensors", ".bin", ".pth"})


def register_extra_model_folder(name: str, extensions: set[str] | None = None) -> None:
    """Add models/<name> to ComfyUI's folder list (key `name`), keeping entries extra_model_paths.yaml made."""
    fp = _comfy_module("folder_paths")
    if fp is None:
        return
    default = os.path.join(fp.models_dir, name)
    if name in fp.folder_names_and_paths:
        paths, known = fp.folder_names_and_paths[name]
        if default not in paths:
            paths.append(default)
        fp.folder_names_and_paths[name] = (paths, known)
    else:
        fp.folder_names_and_paths[name] = ([default], set(extensions or ()))


def release_device_memory(device) -> None:
    """After dropping a model from a GPU: give the freed cache back (ComfyUI's soft_empty_cache inside ComfyUI)."""
    if torch.device(device).type == "cpu":
        return
    mm = _comfy_module("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


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


# ------------------------------------------------------------------------------------------------- browser messages

_fallback_message_hook: Callable[[str, dict], None] | None = None


def set_fallback_message_hook(hook: Callable[[str, dict], None] | None) -> None:
    """Outside ComfyUI: receive every message meant for the browser as hook(event, data) (tests, scripts)."""
    global _fallback_message_hook
    _fallback_message_hook = hook


def _prompt_server():
    server = _comfy_module("server")
    return getattr(getattr(server, "PromptServer", None), "instance", None) if server is not None else None


def current_prompt_id() -> str | None:
    """The id of the prompt being executed (None outside ComfyUI)."""
    context = _comfy_module("comfy_execution.utils")
    get = getattr(context, "get_executing_context", None) if context is not None else None
    found = get() if get is not None else None
    if found is not None and getattr(found, "prompt_id", None):
        return found.prompt_id
    ps = _prompt_server()
    return getattr(ps, "last_prompt_id", None) if ps is not None else None


def send_to_client(event: str, data: dict) -> None:
    """Send a JSON message {"type": event, "data": data} to the browser tab that queued the running prompt
    (ComfyUI's client_id; a prompt queued without one reaches no tab). Thread-safe."""
    ps = _prompt_server()
    if ps is not None:
        sid = getattr(ps, "client_id", None)
        if sid is not None:  # sid=None would broadcast to every open tab
            ps.send_sync(event, data, sid)
    elif _fallback_message_hook is not None:
        _fallback_message_hook(event, data)


# ------------------------------------------------------------------------------------------------- temp files

TEMP_FOLDER = "temp"


def temp_file(prefix: str, extension: str) -> tuple[str, dict]:
    """A new file in ComfyUI's temp folder (shown by the UI, deleted at restart): (path, the ui entry
    {"filename", "subfolder", "type": "temp"} that the frontend turns into a /view URL)."""
    fp = _comfy_module("folder_paths")
    if fp is not None:
        folder = fp.get_temp_directory()
    else:
        folder = (_fallback_folders.get(TEMP_FOLDER) or [os.path.join(tempfile.gettempdir(), "voxcpm_temp")])[0]
    os.makedirs(folder, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix=prefix, suffix=extension, dir=folder)
    os.close(handle)
    return path, {"filename": os.path.basename(path), "subfolder": "", "type": "temp"}


# ------------------------------------------------------------------------------------------------- voice library

VOICE_FOLDER = "voxcpm_voices"  # models/voxcpm/voices/<name>.safetensors
VOICE_SUBDIR = os.path.join(MODEL_FOLDER, "voices")
VOICE_EXTENSION = ".safetensors"


def register_voice_folder() -> None:
    """Add models/voxcpm/voices to ComfyUI's folder list (key "voxcpm_voices"), keeping extra_model_paths.yaml
    entries; the first folder is where voices are saved."""
    fp = _comfy_module("folder_paths")
    if fp is None:
        return
    default = os.path.join(fp.models_dir, VOICE_SUBDIR)
    paths = list(fp.folder_names_and_paths.get(VOICE_FOLDER, ([], None))[0])
    if default not in paths:
        paths.append(default)
    fp.folder_names_and_paths[VOICE_FOLDER] = (paths, {VOICE_EXTENSION})


def voice_folders() -> list[str]:
    return folder_paths_for(VOICE_FOLDER)


def voice_files() -> list[str]:
    """Saved voices, as names without the extension ("narrator", "team/alice"), sorted."""
    fp = _comfy_module("folder_paths")
    if fp is not None and VOICE_FOLDER in fp.folder_names_and_paths:
        names = fp.get_filename_list(VOICE_FOLDER)
    else:
        names = []
        for root in voice_folders():
            for dirpath, _, files in os.walk(root):
                names += [os.path.relpath(os.path.join(dirpath, f), root) for f in files]
    return sorted({n.replace(os.sep, "/")[: -len(VOICE_EXTENSION)] for n in names
                   if n.lower().endswith(VOICE_EXTENSION) and not os.path.basename(n).startswith(".")})


def voice_path(name: str) -> str | None:
    """The file of a listed voice name, or None."""
    for root in voice_folders():
        path = os.path.join(root, *name.split("/")) + VOICE_EXTENSION
        if os.path.isfile(path):
            return path
    return None


def voice_save_folder() -> str:
    folders = voice_folders()
    if not folders:
        raise FileNotFoundError("no voices folder is configured (models/voxcpm/voices)")
    return folders[0]


# ------------------------------------------------------------------------------------------------- output files

OUTPUT_FOLDER = "output"


def output_file(filename_prefix: str, extension: str) -> tuple[str, dict]:
    """A new numbered file in ComfyUI's output folder, like SaveAudio names them (<prefix>_00001_<ext>); the
    prefix may hold sub-folders but cannot leave the output folder. Returns (path, ui entry).

    The number counts only files with this extension, so subtitles saved with the same prefix as the audio get the
    audio file's number (VoxCPM_00003_.flac and VoxCPM_00003_.srt)."""
    fp = _comfy_module("folder_paths")
    if fp is not None:
        folder = fp.get_output_directory()
        full, name, counter, subfolder, _ = fp.get_save_image_path(filename_prefix, folder)
    else:
        folder = os.path.abspath((_fallback_folders.get(OUTPUT_FOLDER) or
                                  [os.path.join(tempfile.gettempdir(), "voxcpm_output")])[0])
        subfolder = os.path.dirname(os.path.normpath(filename_prefix))
        name = os.path.basename(os.path.normpath(filename_prefix))
        full = os.path.join(folder, subfolder)
        if os.path.commonpath((folder, os.path.abspath(full))) != folder:
            raise ValueError(f"filename_prefix {filename_prefix!r} points outside the output folder")
        os.makedirs(full, exist_ok=True)
    os.makedirs(full, exist_ok=True)
    numbered = re.compile(re.escape(name) + r"_(\d{5,})_" + re.escape(extension) + "$")
    counter = 1 + max((int(m.group(1)) for m in map(numbered.match, os.listdir(full)) if m), default=0)
    while True:
        filename = f"{name}_{counter:05}_{extension}"
        path = os.path.join(full, filename)
        if not os.path.exists(path):
            break
        counter += 1
    return path, {"filename": filename, "subfolder": subfolder, "type": "output"}
