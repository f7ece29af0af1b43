"""One autoregressive decode step, eager or replayed from a captured CUDA graph.

A step samples the next patch from the current state, evaluates the stop head on that state and feeds the patch
back through both LMs. On CUDA the whole step (~1,500 small kernels: 9 DiT calls, LocEnc, two LM steps) is captured
once per (n_timesteps, cfg) and replayed, so the GPU no longer waits on Python to launch each kernel. The only
host-device sync per step is reading the stop flag.
"""
from __future__ import annotations

import logging

import torch

from .model import Caches, DecodeState, VoxCPMModel

log = logging.getLogger("voxcpm_engine")

ATTENTION_BLOCK = 512  # keys per block of the CPU flash-attention kernel


class EagerStep:
    def __init__(self, model: VoxCPMModel, caches: Caches, n_timesteps: int, cfg_value: float):
        self.model, self.caches = model, caches
        self.n_timesteps, self.cfg_value = n_timesteps, cfg_value
        self.state: DecodeState | None = None

    def start(self, state: DecodeState, max_position: int) -> None:
        """max_position: the largest of state.positions, known on the host (no sync)."""
        self.state = state
        self.filled = max_position + 1  # KV slots [0, filled) are written after this step's advance

    @property
    def limit(self) -> int:
        """KV slots attended: the filled prefix rounded up to whole attention blocks, not the static buffer.

        The masked tail weighs exactly zero, and the CPU attention kernel walks the keys in blocks of 512: ending
        the window on a block boundary keeps every sum in the same order as over the full buffer, so the output
        is bit-identical to the reference's (a window ending mid-block rounds differently in bf16)."""
        return min(-(-self.filled // ATTENTION_BLOCK) * ATTENTION_BLOCK, self.caches.base.max_length)

    def sample(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (patch [B,P,D], stop requested [B]) for the current state."""
        patch = self.model.sample_patch(self.state, noise, self.n_timesteps, self.cfg_value)
        return patch, self.model.stop_requested(self.state.lm_hidden)

    def advance(self, patch: torch.Tensor) -> None:
        self.state = self.model.advance(self.state, patch, self.caches, self.limit)
        self.filled += 1


class GraphStep(EagerStep):
    """The same step captured as a CUDA graph over static input/output buffers."""

    def __init__(self, model: VoxCPMModel, caches: Caches, n_timesteps: int, cfg_value: float,
                 example: DecodeState, noise_shape: tuple[int, ...]):
        super().__init__(model, caches, n_timesteps, cfg_value)
        self.static = DecodeState(*(t.clone() for t in (example.lm_hidden, example.residual_hidden,
                                                         example.prev_patch, example.positions)))
        self.noise = torch.zeros(noise_shape, dtype=example.lm_hidden.dtype, device=example.lm_hidden.device)
        saved = [t.clone() for t in self._state_tensors()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lets kernels pick algorithms and allocate workspaces
            for _ in range(2):
                self._body()
                self._set_state(saved)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self._body()
        self._set_state(saved)
        # the graph reads the cached time embeddings by address: keep them alive even if the cache drops them
        self.time_table = model.feat_decoder.time_table(n_timesteps, 2 * noise_shape[0], example.lm_hidden.dtype,
                                                        example.lm_hidden.device)

    def _state_tensors(self):
        s = self.static
        return s.lm_hidden, s.residual_hidden, s.prev_patch, s.positions

    def _set_state(self, values) -> None:
        for dst, src in zip(self._state_tensors(), values):
            dst.copy_(src)

    def _body(self) -> None:
        # The KV slots written during warm-up are rewritten with real values before they are ever attended.
        patch = self.model.sample_patch(self.static, self.noise, self.n_timesteps, self.cfg_value)
        self.out_stop = self.model.stop_requested(self.static.lm_hidden)
        self.out_patch = patch
        nxt = self.model.advance(self.static, patch, self.caches)
        self._set_state((nxt.lm_hidden, nxt.residual_hidden, patch, nxt.positions))

    def start(self, state: DecodeState, max_position: int) -> None:
        self._set_state((state.lm_hidden, state.residual_hidden, state.prev_patch, state.positions))

    def sample(self, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.noise.copy_(noise)
        self.graph.replay()  # samples the patch and already advances both LMs
        return self.out_patch.clone(), self.out_stop.clone()

    def advance(self, patch: torch.Tensor) -> None:
        pass  # done inside the replay


def weights_fingerprint(model: VoxCPMModel) -> tuple:
    """Changes when the weights move (offload/reload) or modules are swapped (LoRA): captured graphs hold pointers."""
    return tuple((id(m), m.weight.data_ptr()) for m in model.modules() if isinstance(m, torch.nn.Linear))


class StepFactory:
    """Hands out a decode step: captured graphs on CUDA (cached), eager elsewhere or when capture fails."""

    def __init__(self, use_cuda_graphs: bool = True):
        self.use_cuda_graphs = use_cuda_graphs
        self._graphs: dict[tuple, GraphStep] = {}
        self._fingerprint: tuple | None = None

    def clear(self) -> None:
        self._graphs.clear()
        self._fingerprint = None

    def make(self, model: VoxCPMModel, caches: Caches, n_timesteps: int, cfg_value: float, state: DecodeState,
             noise_shape: tuple[int, ...]) -> EagerStep:
        if not (self.use_cuda_graphs and state.lm_hidden.is_cuda):
            return EagerStep(model, caches, n_timesteps, cfg_value)
        fingerprint = weights_fingerprint(model)
        if fingerprint != self._fingerprint:
            self.clear()
            self._fingerprint = fingerprint
        key = (id(caches), noise_shape, n_timesteps, float(cfg_value))
        if key not in self._graphs:
            try:
                self._graphs[key] = GraphStep(model, caches, n_timesteps, cfg_value, state, noise_shape)
            except Exception as e:  # e.g. a driver/platform without graph support: stay correct, run eager
                log.warning("CUDA graph capture failed (%s); decoding eagerly", e)
                self.use_cuda_graphs = False
                return EagerStep(model, caches, n_timesteps, cfg_value)
        return self._graphs[key]
