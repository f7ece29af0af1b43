"""Front-end models that prepare a voice prompt: ZipEnhancer (denoise.py) and SenseVoice Small (asr.py).

Both are third-party models run through their own libraries (modelscope, funasr). Those libraries are heavy and
optional, so they are imported only inside the functions that need them; a missing one raises MissingPackageError
with the exact `pip install` line. Model folders are plain local folders in the official layout; `ensure_model`
checks the files (both libraries silently run randomly initialised weights when a weight file is missing),
downloads a missing official model when allowed, and otherwise fails at once naming the folder and the files.
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("voxcpm")

SOURCES = ("modelscope", "huggingface", "offline")


class MissingPackageError(ImportError):
    """An optional package needed by a front-end model is not installed."""


class ModelFilesError(FileNotFoundError):
    """A front-end model folder is missing or incomplete and cannot (or may not) be downloaded."""


class FrontendDownloadError(RuntimeError):
    """A front-end model could not be downloaded."""


def require(module: str, pip_line: str, what: str):
    """Import `module`, or raise MissingPackageError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPackageError(
            f"{what} needs the {pip_line.split()[0]} package, which is not installed ({e}). Install it into the "
            f"Python that runs ComfyUI: pip install {pip_line}") from None


@dataclass(frozen=True)
class ModelSpec:
    """An official front-end model: its folder name, hub ids per source and the files a complete folder holds."""
    name: str  # folder name under the models folder, e.g. "SenseVoiceSmall"
    what: str  # for messages, e.g. "SenseVoice Small (speech recognition)"
    repos: dict  # source -> repository id; a source that is absent does not publish the model
    files: tuple  # every file the loader reads

    def missing_files(self, folder: Path) -> list[str]:
        return [f for f in self.files if not (folder / f).is_file()]

    def describe(self, folder: Path) -> str:
        return f"{folder} with {', '.join(self.files)}"


def offline_requested() -> bool:
    """HF_HUB_OFFLINE=1 (the usual switch) or VOXCPM_OFFLINE=1 forbid downloads here too."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "VOXCPM_OFFLINE"))


def _download(spec: ModelSpec, target: Path, source: str) -> None:
    repo = spec.repos[source]
    log.info("VoxCPM: downloading %s from %s (%s) into %s", spec.what, source, repo, target)
    target.mkdir(parents=True, exist_ok=True)
    if source == "modelscope":
        hub = require("modelscope.hub.snapshot_download", "modelscope", f"Downloading {spec.what} from ModelScope")
        hub.snapshot_download(repo, local_dir=str(target), allow_patterns=list(spec.files))
    else:
        hub = require("huggingface_hub", "huggingface_hub", f"Downloading {spec.what} from Hugging Face")
        hub.snapshot_download(repo, local_dir=str(target), allow_patterns=list(spec.files))


def ensure_model(spec: ModelSpec, folder: str | Path, source: str = "modelscope") -> Path:
    """The absolute path of a complete model folder; downloads the official files into it when that is allowed.

    `source` is "modelscope", "huggingface" or "offline". Offline (also with HF_HUB_OFFLINE=1) nothing touches the
    network: a complete folder is used as is, an incomplete one is an error naming the folder and the files."""
    if source not in SOURCES:
        raise ValueError(f"download source must be one of {', '.join(SOURCES)}, got {source!r}")
    folder = Path(folder).expanduser().absolute()  # modelscope treats "a/b" as a hub id: always pass absolute
    if folder.exists() and not folder.is_dir():
        raise ModelFilesError(f"{folder} is a file; {spec.what} needs a folder: {spec.describe(folder)}")
    missing = spec.missing_files(folder)
    if not missing:
        return folder
    where = (f"{folder} is incomplete: missing {', '.join(missing)}" if folder.is_dir()
             else f"{folder} does not exist")
    place = f"Place the files of {spec.what} there: {', '.join(spec.files)}"
    hubs = " or ".join(f"{repo} on {src}" for src, repo in spec.repos.items())
    if source == "offline" or offline_requested():
        raise ModelFilesError(f"{where}, and downloads are off (offline). {place} (from {hubs}).")
    if source not in spec.repos:
        raise ModelFilesError(f"{where}. {spec.what} is not published on {source}: choose download_source "
                              f"{' or '.join(spec.repos)}, or place the files yourself. {place} (from {hubs}).")
    try:
        _download(spec, folder, source)
    except MissingPackageError:
        raise
    except Exception as e:  # network, DNS, missing repository, permissions
        raise FrontendDownloadError(f"Could not download {spec.what} ({spec.repos[source]}) from {source} into "
                                    f"{folder} ({type(e).__name__}: {e}). {place} (from {hubs}).") from e
    missing = spec.missing_files(folder)
    if missing:
        raise FrontendDownloadError(f"The download of {spec.repos[source]} into {folder} did not bring "
                                    f"{', '.join(missing)}. {place}.")
    return folder
