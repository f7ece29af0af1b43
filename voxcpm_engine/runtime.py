"""Device and dtype resolution (same rules as the reference, with clearer errors)."""
from __future__ import annotations

import os

import torch

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32}


def _has_mps() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(device: str | None, preferred: str = "cuda") -> str:
    """None/"auto" picks the preferred device if present, else cuda -> mps -> cpu; explicit choices are checked."""
    choice = (device or "auto").strip().lower()
    if choice == "auto":
        preferred = (preferred or "cuda").strip().lower()
        if preferred.startswith("cuda") and torch.cuda.is_available():
            return preferred
        if preferred in ("mps", "cpu") and (preferred == "cpu" or _has_mps()):
            return preferred
        return "cuda" if torch.cuda.is_available() else "mps" if _has_mps() else "cpu"
    if choice.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{device}' was requested but CUDA is not available; use 'auto' or 'cpu'")
        return choice
    if choice == "mps":
        if not _has_mps():
            raise ValueError("device 'mps' was requested but MPS is not available; use 'auto' or 'cpu'")
        return choice
    if choice == "cpu":
        return choice
    raise ValueError(f"Unsupported device '{device}': use 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")


def resolve_dtype(dtype: str | torch.dtype | None, device: str, configured: str = "bfloat16") -> torch.dtype:
    """Runtime dtype of everything but the VAE (always fp32).

    None/"auto" uses the checkpoint's configured dtype, except on MPS where low precision falls back to float32
    unless VOXCPM_MPS_DTYPE overrides it (the reference's rule: bf16/fp16 drift makes MPS output glitch)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"Unsupported dtype {dtype}: use bfloat16, float16 or float32")
        return dtype
    name = (dtype or "auto").strip().lower()
    if name == "auto":
        name = configured.strip().lower()
        if device == "mps":
            override = os.environ.get("VOXCPM_MPS_DTYPE", "").strip().lower()
            if override and override not in DTYPES:
                raise ValueError(f"VOXCPM_MPS_DTYPE={override!r} is not one of {sorted(DTYPES)}")
            name = override or ("float32" if DTYPES.get(name) in (torch.bfloat16, torch.float16) else name)
    if name not in DTYPES:
        raise ValueError(f"Unsupported dtype {dtype!r}: use 'auto', 'bfloat16', 'float16' or 'float32'")
    return DTYPES[name]
