"""Checkpoint folders: find the files of the official layout, read state dicts safely, load them strictly.

Layout (the released repos and fine-tuned checkpoints):
    config.json
    model.safetensors      | pytorch_model.bin   the network minus the AudioVAE
    audiovae.safetensors   | audiovae.pth        the AudioVAE (keys without the "audio_vae." prefix)
    tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)
Pickled files are only ever read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import pickle
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .layers.linear import part_names

CONFIG = "config.json"
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
VAE = ("audiovae.safetensors", "audiovae.pth")
TOKENIZER = "tokenizer.json"
TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json")
ALL_FILES = (CONFIG, *WEIGHTS, *VAE, TOKENIZER, *TOKENIZER_EXTRAS)
SOURCES = ("huggingface", "modelscope")
_MAX_LISTED = 10
_LFS_POINTER = b"version https://git-lfs"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or does not match the model built from config.json."""


class DownloadError(RuntimeError):
    """A model could not be fetched from the hub."""


@dataclass(frozen=True)
class CheckpointFiles:
    folder: Path
    config: Path
    weights: Path  # model.safetensors or pytorch_model.bin
    vae: Path  # audiovae.safetensors or audiovae.pth
    tokenizer: Path  # tokenizer.json
    tokenizer_config: Path | None = None
    special_tokens_map: Path | None = None


def _expected_files_text() -> str:
    return (f"{CONFIG}, {WEIGHTS[0]} (or {WEIGHTS[1]}), {VAE[1]} (or {VAE[0]}), {TOKENIZER}, "
            f"{TOKENIZER_EXTRAS[0]} and {TOKENIZER_EXTRAS[1]}")


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def find_checkpoint_files(folder: str | Path) -> CheckpointFiles:
    """The files of a checkpoint folder; safetensors is preferred over the pickled alternative."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"Model folder {folder} does not exist; download the model (e.g. openbmb/VoxCPM2) "
                                f"into it: {_expected_files_text()}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is a file; give the model folder that contains {CONFIG}")
    groups = {"config": (CONFIG,), "weights": WEIGHTS, "vae": VAE, "tokenizer": (TOKENIZER,)}
    found = {key: _first_existing(folder, names) for key, names in groups.items()}
    missing = [" or ".join(groups[key]) for key, path in found.items() if path is None]
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"Model folder {folder} is incomplete: missing {'; '.join(missing)}. "
                                f"Expected {_expected_files_text()}. Present: {', '.join(present) or 'nothing'}")
    extras = [_first_existing(folder, (name,)) for name in TOKENIZER_EXTRAS]
    return CheckpointFiles(folder, found["config"], found["weights"], found["vae"], found["tokenizer"], *extras)


# ------------------------------------------------------------------------------------------------- reading

def _corrupt(path: Path, e: Exception) -> CheckpointError:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    detail = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")[:200]
    return CheckpointError(f"Cannot read {path}: the file is corrupt or truncated ({type(e).__name__}: {detail}). "
                           "Delete it and download it again.")


def safe_torch_load(path: str | Path):
    """torch.load with weights_only=True (tensors and plain containers only), memory-mapped when possible."""
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # the weights_only unpickler met a class / function: never executed
            detail = next(line for line in str(e).splitlines() if "GLOBAL" in line)
            raise CheckpointError(f"Refusing to load {path}: it contains pickled objects other than tensors, which "
                                  "could run code when loaded. Use the official file, or convert it to safetensors "
                                  f"in an environment you trust. ({detail.strip()})") from None
        raise _corrupt(path, e) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise _corrupt(path, e) from None


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


class SafetensorsFile(Mapping):
    """The tensors of a .safetensors file as zero-copy views of a private (copy-on-write) memory map.

    A tensor the loader keeps in the file's dtype is never copied: the mapped pages are the model's memory. When the
    loader casts a tensor (an fp32 file for a bf16 model), `release(key)` drops its mapped pages right away, so the
    whole fp32 file is never resident next to the bf16 model."""

    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise ValueError(f"header of {header_len} bytes does not fit in a {size}-byte file")
            header = json.loads(f.read(header_len))
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start, self.entries = 8 + header_len, header
        for key, entry in header.items():
            begin, end = entry["data_offsets"]
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise ValueError(f"tensor {key!r} has unsupported dtype {entry['dtype']}")
            if end - begin != math.prod(entry["shape"]) * dtype.itemsize or self.data_start + end > size:
                raise ValueError(f"tensor {key!r} lies outside the file (truncated download?)")

    def shape_of(self, key: str) -> torch.Size:
        return torch.Size(self.entries[key]["shape"])

    def __getitem__(self, key: str) -> torch.Tensor:
        entry = self.entries[key]
        begin, end = entry["data_offsets"]
        if end == begin:
            return torch.empty(entry["shape"], dtype=self.dtype_of(key))
        return self._mapped(begin, end, self.dtype_of(key), entry["shape"])

    def _mapped(self, begin: int, end: int, dtype: torch.dtype, shape) -> torch.Tensor:
        """Bytes [begin, end) of the data section as a zero-copy tensor of `dtype` and `shape`."""
        data = torch.frombuffer(self._map, dtype=torch.uint8, count=end - begin, offset=self.data_start + begin)
        return data.view(dtype).reshape(shape)

    def dtype_of(self, key: str) -> torch.dtype:
        return _SAFETENSORS_DTYPES[self.entries[key]["dtype"]]

    def read_into(self, key: str, out: torch.Tensor) -> None:
        """Read a tensor's bytes from the file into `out` (contiguous, same dtype and size): one read call, without
        touching the map (used where the loader copies anyway: the parts of fused layers)."""
        begin, end = self.entries[key]["data_offsets"]
        target = out.view(torch.uint8).reshape(-1)
        if target.numel() != end - begin or not out.is_contiguous():
            raise ValueError(f"cannot read tensor {key!r} ({end - begin} bytes) into a buffer of {target.numel()}")
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            if f.readinto(memoryview(target.numpy())) != end - begin:
                raise ValueError(f"tensor {key!r} lies outside the file (truncated download?)")

    def stacked_view(self, keys: list[str]) -> torch.Tensor | None:
        """The tensors `keys` stacked along their first dim as one zero-copy view, if the file stores them back to
        back in this order with one dtype and the same trailing shape; else None."""
        entries = [self.entries[k] for k in keys]
        first = entries[0]
        if any(e["dtype"] != first["dtype"] or e["shape"][1:] != first["shape"][1:] for e in entries):
            return None
        if any(a["data_offsets"][1] != b["data_offsets"][0] for a, b in zip(entries, entries[1:])):
            return None
        begin, end = first["data_offsets"][0], entries[-1]["data_offsets"][1]
        if end == begin:
            return None
        rows = sum(e["shape"][0] for e in entries)
        return self._mapped(begin, end, self.dtype_of(keys[0]), (rows, *first["shape"][1:]))

    def release(self, key: str) -> None:
        """Drop the mapped pages lying wholly inside this tensor's bytes (after the loader copied it)."""
        begin, end = self.entries[key]["data_offsets"]
        first = -(-(self.data_start + begin) // mmap.PAGESIZE) * mmap.PAGESIZE
        last = (self.data_start + end) // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def __contains__(self, key) -> bool:  # Mapping's default would read the tensor
        return key in self.entries

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _shape(state_dict, key: str) -> torch.Size:
    shape_of = getattr(state_dict, "shape_of", None)
    return shape_of(key) if shape_of is not None else state_dict[key].shape


def _check_tensors(path: Path, state: object) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a state dict (name -> tensor)")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {_listing(map(str, bad))}")
    return state


def read_state_dict(path: str | Path) -> Mapping[str, torch.Tensor]:
    """A flat name -> tensor mapping (CPU) from .safetensors (read lazily, see SafetensorsFile) or a pickled torch
    file (unwrapping {"state_dict": ...})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file {path} does not exist")
    with open(path, "rb") as f:
        if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
            raise CheckpointError(f"{path} is a Git LFS pointer, not the weights: run `git lfs pull` in the model "
                                  "folder, or download the files with huggingface-cli / the download node")
    if path.suffix == ".safetensors":
        try:
            return SafetensorsFile(path)
        except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:  # bad header / sizes
            raise _corrupt(path, e) from None
    state = safe_torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return _check_tensors(path, state)


# ------------------------------------------------------------------------------------------------- loading

def _listing(items, limit: int = _MAX_LISTED) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def _owner(module: nn.Module, key: str) -> tuple[nn.Module, str]:
    prefix, _, name = key.rpartition(".")
    return (module.get_submodule(prefix) if prefix else module), name


def _mismatches(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    expected = module.state_dict(keep_vars=True)
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} (file {list(_shape(state_dict, k))}, model {list(t.shape)})"
              for k, t in expected.items() if k in state_dict and _shape(state_dict, k) != t.shape]
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_listing(shapes)}")
    return problems


def load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], *, dtype: torch.dtype | None = None,
                what: str = "model.safetensors") -> nn.Module:
    """Assign `state_dict` to `module` (built on the meta device): every key must match by name and shape.

    Floating tensors are cast to `dtype` (default: the dtype the module declares) one at a time; integer tensors
    keep their dtype. Only non-persistent buffers may stay on meta afterwards (the caller re-initialises them).
    The keys are the official ones: the parts of a fused layer (q/k/v, gate/up) are read into its rows.
    """
    problems = _mismatches(module, state_dict)
    if problems:
        raise CheckpointError(f"{what} does not match the model built from config.json: " + "; ".join(problems)
                              + ". Check that the weights and config.json come from the same model (re-download "
                              "the folder if in doubt).")
    release = getattr(state_dict, "release", lambda key: None)
    fused = _fused_parts(module)
    filling: dict[str, list] = {}  # fused weight key -> [its tensor, part keys still to read, copying?]
    for key, current in module.state_dict(keep_vars=True).items():
        if key in fused:
            _load_part(module, state_dict, release, key, fused[key], dtype or current.dtype, current.requires_grad,
                       filling)
            continue
        tensor = source = state_dict[key]
        if tensor.is_floating_point():
            tensor = tensor.to(dtype or current.dtype)
        if tensor is not source:
            release(key)  # the file's copy is no longer needed
        _assign(module, key, tensor, current.requires_grad)
    _check_materialized(module, what)
    return module


def _load_part(module, state_dict, release, key, layout, dtype, requires_grad, filling) -> None:
    """One part of a fused layer: read into the layer's rows; the layer is assigned once all its parts are read.
    Parts stored back to back in the file, in order and in the target dtype, are used in place instead (safetensors
    files keep keys sorted, so gate_proj is followed by up_proj)."""
    fused_key, rows, shape, part_keys = layout
    if fused_key not in filling:
        stored = getattr(state_dict, "stacked_view", lambda keys: None)(part_keys)
        in_place = stored is not None and stored.dtype == dtype
        filling[fused_key] = [stored if in_place else torch.empty(shape, dtype=dtype), set(part_keys), not in_place]
    tensor, left, copying = filling[fused_key]
    if copying:
        _read_into(state_dict, key, tensor[rows])
        release(key)
    left.discard(key)
    if not left:
        _assign(module, fused_key, filling.pop(fused_key)[0], requires_grad)


def _fused_parts(module: nn.Module) -> dict[str, tuple[str, slice, torch.Size, list[str]]]:
    """Part key -> (fused weight key, the part's rows, the fused shape, all its part keys) for every fused layer."""
    out = {}
    for name, layer in module.named_modules():
        if getattr(layer, "parts", None):
            parts = {f"{part}.weight": rows for part, rows in part_names(name, layer).items()}
            for key, rows in parts.items():
                out[key] = (f"{name}.weight", rows, layer.weight.shape, list(parts))
    return out


def _read_into(state_dict, key: str, out: torch.Tensor) -> None:
    """Copy (and cast) one file tensor into `out`; straight from the file when it already has out's dtype."""
    read_into = getattr(state_dict, "read_into", None)
    if read_into is not None and state_dict.dtype_of(key) == out.dtype:
        read_into(key, out)
    else:
        out.copy_(state_dict[key])


def _assign(module: nn.Module, key: str, tensor: torch.Tensor, requires_grad: bool) -> None:
    owner, name = _owner(module, key)
    if name in owner._parameters:
        owner._parameters[name] = nn.Parameter(tensor, requires_grad=requires_grad)
    else:
        owner._buffers[name] = tensor


def _check_materialized(module: nn.Module, what: str) -> None:
    left = []
    for mod_name, mod in module.named_modules():
        for name, t in [*mod._parameters.items(), *mod._buffers.items()]:
            if t is not None and t.is_meta and name not in mod._non_persistent_buffers_set:
                left.append(f"{mod_name}.{name}" if mod_name else name)
    if left:
        raise CheckpointError(f"after loading {what}, these tensors were never assigned (still on the meta "
                              f"device): {_listing(left)}")


# ------------------------------------------------------------------------------------------------- hub

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and not text.startswith((".", "~"))


def _offline_help(repo_id: str, target: Path | None) -> str:
    where = target if target is not None else "a local folder"
    return (f"To work offline, download the files of {repo_id} on another machine and put them in {where}: "
            f"{_expected_files_text()}; then pass that folder instead of the hub id.")


def _download_hf(repo_id, target_dir, cache_dir, progress, local_files_only) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:  # HF_ENDPOINT / HF_HUB_OFFLINE / HF_TOKEN are honoured by huggingface_hub itself
        return snapshot_download(repo_id, local_dir=target_dir, cache_dir=cache_dir, allow_patterns=list(ALL_FILES),
                                 local_files_only=local_files_only)
    finally:
        if not progress and not was_disabled:
            enable_progress_bars()


def _download_modelscope(repo_id, target_dir, cache_dir) -> str:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise DownloadError(f"Downloading {repo_id} from ModelScope needs the modelscope package: "
                            "pip install modelscope (or use source='huggingface')") from None
    kwargs = {k: str(v) for k, v in (("local_dir", target_dir), ("cache_dir", cache_dir)) if v is not None}
    return snapshot_download(repo_id, **kwargs)


def download(repo_id: str, target_dir: str | Path | None = None, source: str = "huggingface", progress: bool = True,
             *, cache_dir: str | Path | None = None, local_files_only: bool = False) -> Path:
    """Fetch a model repository; files go to `target_dir`, or to the hub cache when it is None. Returns the folder."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    target = Path(target_dir).expanduser() if target_dir is not None else None
    try:
        if source == "huggingface":
            folder = _download_hf(repo_id, target, cache_dir, progress, local_files_only)
        else:
            folder = _download_modelscope(repo_id, target, cache_dir)
    except DownloadError:
        raise
    except Exception as e:  # network, auth, missing repo, offline cache miss
        raise DownloadError(f"Could not download {repo_id!r} from {source} ({type(e).__name__}: {e}). "
                            + _offline_help(repo_id, target)) from e
    files = find_checkpoint_files(folder)
    return files.folder


def resolve_model_path(path_or_id: str | Path, cache_dir: str | Path | None = None, source: str = "huggingface",
                       *, local_files_only: bool = False, progress: bool = True) -> Path:
    """An existing local folder is used as is; a hub id ("owner/name") is downloaded; anything else is an error."""
    text = os.fspath(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{path} is a file; give the model folder that contains {CONFIG}, or a hub id "
                                "such as openbmb/VoxCPM2")
    if isinstance(path_or_id, str) and looks_like_hub_id(text):
        try:
            return download(text, None, source, progress, cache_dir=cache_dir, local_files_only=local_files_only)
        except DownloadError as e:
            raise DownloadError(f"{text!r} is not a local folder, and as a hub id: {e}") from e.__cause__
    raise FileNotFoundError(f"Model folder {text} does not exist (and it is not a hub id like openbmb/VoxCPM2). "
                            f"Expected a folder with {_expected_files_text()}")
