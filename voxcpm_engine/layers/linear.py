"""nn.Linear with a CPU fast path for products of a few rows against a large fp32 weight.

The local transformers (LocDiT, LocEnc) multiply a handful of rows by large matrices: the DiT sees 10 rows per
sample (the CFG pair x [mu, previous patch, current patch] tokens) nine times per generated patch. For such
shapes MKL's plain sgemm reaches a third of the speed it reaches on the same weight once that weight is packed
into MKL's own GEMM layout (measured on a 2-core Xeon: 30 -> 17 ms per DiT call of VoxCPM-0.5B). A weight is
packed when a row count comes back (its second call in a row), and kept beside the Parameter (never in the state
dict); anything else (GPU, bf16/fp16, one row, many rows, small weights, autograd, builds without MKL) runs the
ordinary F.linear. The packed product sums in a different order: results agree with F.linear to float32 rounding.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("voxcpm_engine")

MIN_ROWS, MAX_ROWS = 4, 256  # below 4 rows plain sgemm is as fast; far above, it catches up
MIN_PACKED_WEIGHT = 1 << 18  # elements; MKL's packed buffer has a fixed overhead not worth it for small weights
KEPT_ROW_COUNTS = 2  # packed copies kept per weight (e.g. batch 1 and one batch size)
_packing_failed = False  # set when MKL refused to pack once: everything runs F.linear from then on


def _disable_packing() -> None:
    global _packing_failed
    _packing_failed = True


def packing_available() -> bool:
    return not _packing_failed and torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


class Linear(nn.Linear):
    """Same parameters and state-dict keys as nn.Linear; set `pack_small_batches` to use the CPU fast path.

    A fused layer (see `fused_linear`) stacks several projections of the same input as row blocks of one weight;
    `parts` then names them, in row order, with their output sizes."""

    parts: dict[str, int] | None = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.pack_small_batches = False
        self._packed: dict[int, tuple[tuple, torch.Tensor]] = {}
        self._last_rows: tuple | None = None  # (rows, weight key) of the last unpacked call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._packable_rows(x)
        packed = self._packed_weight(rows) if rows else None
        if packed is not None:
            return torch.ops.mkl._mkl_linear(x, packed, self.weight, self.bias, rows)
        return F.linear(x, self.weight, self.bias)

    def _packable_rows(self, x: torch.Tensor) -> int:
        w = self.weight
        if not (self.pack_small_batches and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32
                and w.device.type == "cpu" and w.numel() >= MIN_PACKED_WEIGHT and packing_available()):
            return 0
        if torch.is_grad_enabled() and (w.requires_grad or x.requires_grad):
            return 0  # the packed op has no backward
        rows = x.numel() // self.in_features
        return rows if MIN_ROWS <= rows <= MAX_ROWS else 0

    def _packed_weight(self, rows: int) -> torch.Tensor | None:
        """The weight packed for this row count, packing it on the second call with the same count (a count seen
        once, like a prompt's length, is not worth packing); None until then."""
        w = self.weight
        # a moved or rewritten weight is packed again (inference tensors carry no version counter)
        key = (w.data_ptr(), 0 if w.is_inference() else w._version)
        entry = self._packed.pop(rows, None)
        if entry is None or entry[0] != key:
            if self._last_rows != (rows, key):
                self._last_rows = (rows, key)
                return None
            try:
                with torch.no_grad():
                    entry = (key, torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows))
            except RuntimeError as e:  # an MKL build without packed GEMM: stay correct, run the plain product
                _disable_packing()
                log.warning("MKL weight packing is unavailable (%s); using plain matrix products", e)
                return None
        self._packed[rows] = entry  # most recently used last
        while len(self._packed) > KEPT_ROW_COUNTS:
            self._packed.pop(next(iter(self._packed)))
        return entry[1]

    def drop_packed(self) -> None:
        self._packed.clear()
        self._last_rows = None

    def _apply(self, fn, recurse=True):
        self.drop_packed()  # .to() / .cuda() / .half(): the packed copies describe the old weight
        return super()._apply(fn, recurse)


def pack_small_batches(module: nn.Module, enabled: bool = True) -> None:
    """Turn the CPU fast path on (or off) for every `Linear` inside `module`."""
    for m in module.modules():
        if isinstance(m, Linear):
            m.pack_small_batches = enabled
            if not enabled:
                m.drop_packed()


# ------------------------------------------------------------------------------------------ fused projections

def fused_linear(in_features: int, parts: dict[str, int]) -> Linear:
    """One bias-free Linear for several projections of the same input (q/k/v, gate/up): one product instead of
    several, each part's output a slice of the result. Its parent keeps the parts' own checkpoint keys
    ("q_proj.weight", ...) in state_dict() and load_state_dict(): call `keep_part_keys(parent)`."""
    layer = Linear(in_features, sum(parts.values()), bias=False)
    layer.parts = dict(parts)
    return layer


def fused_children(module: nn.Module) -> dict[str, Linear]:
    return {name: child for name, child in module.named_children() if getattr(child, "parts", None)}


def part_rows(layer: Linear) -> dict[str, slice]:
    """Each part's rows of the fused weight (= its columns of the fused output)."""
    rows, start = {}, 0
    for name, size in layer.parts.items():
        rows[name] = slice(start, start + size)
        start += size
    return rows


def part_names(name: str, layer: Linear) -> dict[str, slice]:
    """The official module name of each part of the fused layer `name` (a sibling of it) -> the part's rows."""
    parent = name.rpartition(".")[0]
    return {".".join(filter(None, (parent, part))): rows for part, rows in part_rows(layer).items()}


def _split_parts(module, state_dict, prefix, local_metadata) -> None:
    for name, layer in fused_children(module).items():
        fused = state_dict.pop(f"{prefix}{name}.weight")
        for part, rows in part_rows(layer).items():
            state_dict[f"{prefix}{part}.weight"] = fused[rows]  # views: state_dict() allocates nothing


def _join_parts(module, state_dict, prefix, *_) -> None:
    for name, layer in fused_children(module).items():
        keys = [f"{prefix}{part}.weight" for part in layer.parts]
        if all(k in state_dict for k in keys):
            state_dict[f"{prefix}{name}.weight"] = torch.cat([state_dict.pop(k) for k in keys])


def keep_part_keys(parent: nn.Module) -> None:
    """state_dict() of `parent` lists its fused layers by their parts' keys; load_state_dict() accepts those keys
    (and joins them). checkpoint.load_strict joins them itself, releasing each file tensor as it goes."""
    parent.register_state_dict_post_hook(_split_parts)
    parent.register_load_state_dict_pre_hook(_join_parts)
