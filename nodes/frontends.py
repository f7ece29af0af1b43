"""What the Denoise and ASR Transcribe nodes share: model folders, devices, and the load-use-release cycle.

Front-end models live in their own folders under ComfyUI's models dir (models/zipenhancer/<name>/,
models/sensevoice/<name>/). A model is loaded when its node runs and dropped right after, unless the node's
keep_loaded is on; then it stays in `FRONTEND_CACHE` (keyed by folder and device) for the next run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..voxcpm_engine.frontends import ModelSpec, offline_requested
from ..voxcpm_engine.runtime import resolve_device
from . import comfy

DEVICES = ["cpu", "gpu"]


def list_models(folder_key: str, spec: ModelSpec) -> list[str]:
    """The official model's name first (downloaded on first use), then every other folder holding its manifest."""
    local = set()
    for root in comfy.folder_paths_for(folder_key):
        if os.path.isdir(root):
            for entry in sorted(os.listdir(root)):
                if not entry.startswith(".") and os.path.isfile(os.path.join(root, entry, spec.files[0])):
                    local.add(entry)
    return [spec.name] + sorted(local - {spec.name})


def model_folder(folder_key: str, spec: ModelSpec, name: str) -> Path:
    """The folder for a listed name: the first root that has it, else (for the official name) where to download."""
    roots = comfy.folder_paths_for(folder_key)
    for root in roots:
        folder = Path(root, name)
        if (folder / spec.files[0]).is_file():
            return folder
    if name != spec.name:
        raise FileNotFoundError(f"{spec.what}: no folder {name!r} with {spec.files[0]} in "
                                f"{', '.join(roots) or f'models/{folder_key}'}; refresh the page and pick another")
    if not roots:
        raise FileNotFoundError(f"no models/{folder_key} folder is configured for {spec.what}")
    return Path(roots[0], name)


def device_for(choice: str) -> str:
    """"cpu", or "gpu" = ComfyUI's device (the GPU unless ComfyUI runs with --cpu; outside ComfyUI cuda/mps/cpu)."""
    if choice == "cpu":
        return "cpu"
    if choice != "gpu":
        raise ValueError(f"device must be one of {DEVICES}, got {choice!r}")
    device = comfy.torch_device("auto")
    return resolve_device("auto") if device == "auto" else device


class FrontendCache:
    """Front-end models kept between runs (only those whose node asked for keep_loaded)."""

    def __init__(self):
        self.items: dict[tuple, object] = {}
        self.loads = 0  # load calls so far (tests check what is reused)

    def use(self, key: tuple, load: Callable[[], object], keep_loaded: bool, run: Callable[[object], object]):
        """run(model) with the cached model or a fresh one; afterwards the model stays only if keep_loaded."""
        model = self.items.get(key)
        if model is None:
            model = load()
            self.loads += 1
        self.items[key] = model
        try:
            return run(model)
        finally:
            if not keep_loaded:
                self.items.pop(key, None)
                del model
                comfy.release_device_memory(key[-1])

    def clear(self) -> None:
        self.items.clear()


FRONTEND_CACHE = FrontendCache()


def load_with_progress(spec: ModelSpec, folder: Path, source: str, load: Callable[[], object]) -> object:
    """load(); when the files still have to be downloaded, the node's bar marks the download (per-file progress is
    printed to the console by the hub client)."""
    if not spec.missing_files(folder) or source == "offline" or offline_requested():
        return load()
    comfy.log.info("VoxCPM: %s is not in %s yet, downloading it (%s)", spec.what, folder, source)
    progress = comfy.Progress(2)
    progress.update(0)
    model = load()
    progress.update(2)
    return model


def progress_callback(bar: comfy.Progress) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        comfy.check_interrupt()
        bar.update(done, total)
    return update
