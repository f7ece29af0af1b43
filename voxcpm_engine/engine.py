"""Engine: a loaded checkpoint (network, AudioVAE, tokenizer) and the generation algorithm around it.

Tensors in, tensors out: audio arrives as waveforms with their sample rate, voices are encoded once into a `Voice`
and reused; `generate` returns the waveform at `sample_rate`, `stream` yields one chunk per generated patch.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import checkpoint
from .audio import AudioError, prepare_audio
from .config import ModelConfig, load_config
from .decode_step import StepFactory
from .layers.audiovae import AudioVAE
from .lora import LoraInfo, apply_lora, load_lora, remove_lora
from .model import AUDIO_START_TOKEN, REF_AUDIO_END_TOKEN, REF_AUDIO_START_TOKEN, Caches, VoxCPMModel
from .runtime import resolve_device, resolve_dtype
from .tokenizer import TextTokenizer
from .voice import Voice

# Patches of prompt audio decoded together with the output for a smooth join (then trimmed):
# prefix length 3 in v1, 4 in v2, minus the patch being generated.
CONTEXT_PATCHES = {1: 2, 2: 3}


@dataclass(frozen=True)
class GenerationOptions:
    cfg_value: float = 2.0
    inference_timesteps: int = 10
    min_len: int = 2
    max_len: int = 4096
    retry_badcase: bool = True
    retry_badcase_max_times: int = 3
    retry_badcase_ratio_threshold: float = 6.0

    def check(self) -> None:
        if not self.inference_timesteps >= 1:
            raise ValueError(f"inference_timesteps must be >= 1, got {self.inference_timesteps}")
        if not self.max_len >= 1:
            raise ValueError(f"max_len must be >= 1, got {self.max_len}")
        if self.min_len < 0:
            raise ValueError(f"min_len must be >= 0, got {self.min_len}")
        if self.retry_badcase and self.retry_badcase_max_times < 1:
            raise ValueError("retry_badcase_max_times must be >= 1 when retry_badcase is on")
        if self.retry_badcase_ratio_threshold <= 0:
            raise ValueError("retry_badcase_ratio_threshold must be > 0")


@dataclass
class Sequence:
    """The prefill sequence of one request (spec layout), batch dimension included, on the model device."""

    tokens: torch.Tensor  # [1, S] int
    text_mask: torch.Tensor  # [1, S] int32
    feat: torch.Tensor  # [1, S, P, D] model dtype
    audio_mask: torch.Tensor  # [1, S] int32
    context: torch.Tensor  # [1, C, P, D] prompt patches decoded with the output, then trimmed
    target_tokens: int  # tokens of the target text alone (length rules)


@dataclass
class Result:
    waveform: torch.Tensor  # [T] float32 CPU at the model's output rate
    patches: torch.Tensor  # [N, P, D] generated latents (fp32 CPU)
    attempts: int
    seed: int | None


def clean_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string (it is empty or only whitespace)")
    return re.sub(r"\s+", " ", text.replace("\n", " "))


class Engine:
    def __init__(self, config: ModelConfig, model: VoxCPMModel, vae: AudioVAE, tokenizer: TextTokenizer,
                 device: str, dtype: torch.dtype, path: Path | None = None):
        self.config, self.model, self.vae, self.tokenizer = config, model, vae, tokenizer
        self.device, self.dtype, self.path = torch.device(device), dtype, path
        self._caches: dict[int, Caches] = {}
        self.steps = StepFactory(use_cuda_graphs=True)
        self.decode_chunk_frames: int | None = None  # low-VRAM: decode long outputs this many frames at a time

    @property
    def vae_device(self) -> torch.device:
        """Where the AudioVAE lives: the model's device, or the CPU in low-VRAM mode."""
        return next(self.vae.parameters()).device

    def release_caches(self) -> None:
        """Free the KV caches and captured graphs (call after moving the weights; they are rebuilt on demand)."""
        self._caches.clear()
        self.steps.clear()

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, folder: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
             low_vram: bool = False) -> "Engine":
        """Load an official checkpoint folder strictly: built on the meta device, weights assigned, no random init.

        low_vram: keep the AudioVAE on the CPU and decode in 10-second pieces (exactly the same audio: every VAE
        layer is causal, so a stateful piecewise decode equals the whole decode)."""
        files = checkpoint.find_checkpoint_files(folder)
        config = load_config(files.config)
        device = resolve_device(device, config.device)
        dtype = resolve_dtype(dtype, device, config.dtype)
        tokenizer = TextTokenizer.from_folder(files.folder)
        with torch.device("meta"):
            model, vae = VoxCPMModel(config), AudioVAE(config.audio_vae)
        checkpoint.load_strict(vae, checkpoint.read_state_dict(files.vae), dtype=torch.float32,
                               what=files.vae.name)
        checkpoint.load_strict(model, checkpoint.read_state_dict(files.weights), dtype=dtype,
                               what=files.weights.name)
        for module in model.modules():  # derived tables (RoPE) are not in the files: compute them now
            if hasattr(module, "init_buffers"):
                module.init_buffers(device, dtype)
        engine = cls(config, model.to(device).eval(), vae.eval(), tokenizer, device, dtype, files.folder)
        engine.set_low_vram(low_vram)  # puts the AudioVAE on its device
        vae.fold_weight_norm()
        return engine

    @property
    def low_vram(self) -> bool:
        return self.decode_chunk_frames is not None

    def set_low_vram(self, enabled: bool) -> None:
        """Low-VRAM mode on/off: the AudioVAE moves to the CPU (decoding in 10-second pieces) or back to the
        model's device. The audio is the same either way."""
        vae_cfg = self.config.audio_vae
        self.vae.to("cpu" if enabled else self.device)
        self.decode_chunk_frames = 10 * vae_cfg.sample_rate // vae_cfg.hop_length if enabled else None

    # ------------------------------------------------------------------------------------------- LoRA
    _lora: LoraInfo | None = None

    def set_lora(self, path: str | Path | None, strength: float = 1.0) -> LoraInfo | None:
        """Apply a LoRA of the official fine-tuning (its folder or weights file), replacing any previous one;
        None removes it. The file is checked completely first: on any error the model is left as it was.
        Base weights are never modified, so removal restores the exact base output (see lora.py)."""
        self.steps.clear()  # captured graphs point at the replaced modules
        if path is None:
            remove_lora(self.model)
            self._lora = None
            return None
        adapter = load_lora(path, self.model, strength)
        apply_lora(self.model, adapter)
        self._lora = adapter.info
        return adapter.info

    @property
    def lora(self) -> LoraInfo | None:
        """The applied LoRA (path, strength, rank, alpha and its source, adapted layers), or None."""
        return self._lora

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def version(self) -> int:
        return self.config.version

    # ------------------------------------------------------------------------------------------- voices
    @torch.inference_mode()
    def encode_audio(self, wav, sample_rate: int, *, pad_left: bool, name: str = "audio") -> torch.Tensor:
        """Waveform (any rate, mono or multi-channel) -> latent patches [N, P, D], fp32 on CPU."""
        patch_samples = self.config.input_samples_per_patch
        wav = prepare_audio(wav, sample_rate, self.config.encode_sample_rate, min_samples=patch_samples, name=name)
        pad = -wav.shape[1] % patch_samples
        wav = torch.nn.functional.pad(wav, (pad, 0) if pad_left else (0, pad))
        latents = self.vae.encode(wav.to(self.vae_device)).float().cpu()  # [1, D, frames]
        return latents.view(self.config.feat_dim, -1, self.config.patch_size).permute(1, 2, 0).contiguous()

    def make_voice(self, prompt_audio=None, prompt_sample_rate: int | None = None, prompt_text: str | None = None,
                   reference_audio=None, reference_sample_rate: int | None = None, *,
                   prompt_name: str = "prompt audio", reference_name: str = "reference audio") -> Voice:
        """Encode prompt audio (+ its transcript) and/or, on VoxCPM2, reference audio into a reusable Voice.

        prompt_name / reference_name say in error messages which input was wrong (e.g. a file path)."""
        if (prompt_audio is None) != (prompt_text is None):
            missing = "prompt_text (the transcript of the prompt audio)" if prompt_text is None else "prompt audio"
            raise ValueError(f"prompt audio and prompt_text go together: {missing} is missing")
        if reference_audio is not None and self.version != 2:
            raise ValueError("reference audio is only supported by VoxCPM2 models; this is a "
                             f"{self.config.architecture} model (use prompt audio + prompt_text instead)")
        if prompt_audio is None and reference_audio is None:
            raise ValueError("give prompt audio with its transcript, or (VoxCPM2) reference audio")
        if prompt_text is not None and not isinstance(prompt_text, str):
            raise ValueError(f"prompt_text must be a string, got {type(prompt_text).__name__}")
        if prompt_text is not None and self.version == 1 and not prompt_text.strip():
            raise ValueError("prompt_text is empty: VoxCPM-0.5B/1.5 need the exact transcript of the prompt audio")
        ref = (self.encode_audio(reference_audio, reference_sample_rate, pad_left=False, name=reference_name)
               if reference_audio is not None else None)
        prompt = (self.encode_audio(prompt_audio, prompt_sample_rate, pad_left=True, name=prompt_name)
                  if prompt_audio is not None else None)
        return Voice(self.version, self.sample_rate, prompt, prompt_text, ref)

    def check_voice(self, voice: Voice) -> None:
        if voice.version != self.version or voice.sample_rate != self.sample_rate:
            raise ValueError(f"this voice was encoded by a different model generation ({voice.sample_rate} Hz "
                             f"v{voice.version}); encode the audio again with this model ({self.sample_rate} Hz)")

    # ------------------------------------------------------------------------------------------- sequence
    def build_sequence(self, text: str, voice: Voice | None) -> Sequence:
        P, D = self.config.patch_size, self.config.feat_dim
        target = self.tokenizer.encode(text)
        if not target:
            raise ValueError(f"text {text!r} produced no tokens this model knows; check the language/characters")
        continuation = voice is not None and voice.prompt_feat is not None
        full_text = (voice.prompt_text + text) if continuation else text
        text_tokens = self.tokenizer.encode(full_text) + [AUDIO_START_TOKEN]
        # segments: (token ids, patches, is_audio)
        segments: list[tuple[list[int], torch.Tensor, bool]] = []
        if voice is not None and voice.ref_feat is not None:
            n = voice.ref_feat.shape[0]
            segments += [([REF_AUDIO_START_TOKEN], torch.zeros(1, P, D), False), ([0] * n, voice.ref_feat, True),
                         ([REF_AUDIO_END_TOKEN], torch.zeros(1, P, D), False)]
        segments.append((text_tokens, torch.zeros(len(text_tokens), P, D), False))
        if continuation:
            segments.append(([0] * voice.prompt_feat.shape[0], voice.prompt_feat, True))
        tokens = [t for ids, _, _ in segments for t in ids]
        feat = torch.cat([f for _, f, _ in segments])
        audio = [int(a) for ids, _, a in segments for _ in ids]
        limit = min(self.config.max_length, self.config.lm.max_position_embeddings)
        if len(tokens) >= limit:
            raise ValueError(f"text and prompt audio need {len(tokens)} positions but this model holds at most "
                             f"{limit} (max_length); shorten the text ({len(target)} tokens) or the prompt audio "
                             f"({0 if voice is None else voice.num_patches} patches)")
        context = self._context_patches(feat, audio)
        dev = self.device
        audio_mask = torch.tensor(audio, dtype=torch.int32, device=dev)[None]
        return Sequence(tokens=torch.tensor(tokens, dtype=torch.long, device=dev)[None],
                        text_mask=1 - audio_mask, feat=feat.to(dev, self.dtype)[None], audio_mask=audio_mask,
                        context=context.to(dev, self.dtype)[None], target_tokens=len(target))

    def _context_patches(self, feat: torch.Tensor, audio: list[int]) -> torch.Tensor:
        audio_positions = [i for i, a in enumerate(audio) if a]
        wanted = CONTEXT_PATCHES[self.version]
        # v1 takes context whenever any audio is present; v2 only when the sequence ends with prompt audio.
        has_context = bool(audio_positions) and (self.version == 1 or audio[-1] == 1)
        count = min(wanted, len(audio_positions)) if has_context else 0
        return feat[audio_positions[len(audio_positions) - count:]] if count else feat[:0]

    # ------------------------------------------------------------------------------------------- generation
    def _caches_for(self, batch_size: int) -> Caches:
        if batch_size not in self._caches:
            self._caches[batch_size] = self.model.new_caches(batch_size, self.config.max_length, self.device,
                                                             self.dtype)
        return self._caches[batch_size]

    def max_patches(self, seq: Sequence, options: GenerationOptions) -> int:
        """Patch budget: the reference's length rule, capped so the KV cache and RoPE table never overflow."""
        by_text = int(seq.target_tokens * options.retry_badcase_ratio_threshold + 10)
        # every patch but the last is fed back (a captured step feeds the last one too): one KV slot each
        room = min(self.config.max_length, self.config.lm.max_position_embeddings) - seq.tokens.shape[1]
        return max(1, min(by_text, options.max_len, room))

    def _noise_generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None  # torch's global generator, exactly like the reference
        return torch.Generator(device=self.device).manual_seed(int(seed))

    def _pad(self, seqs: list[Sequence]):
        """Right-pad a batch of sequences (masks 0 on padding) -> tokens, text_mask, feat, audio_mask, lengths."""
        lengths = [s.tokens.shape[1] for s in seqs]
        width = max(lengths)

        def pad(t, value=0):
            extra = width - t.shape[1]
            return torch.cat([t, t.new_full((1, extra, *t.shape[2:]), value)], dim=1) if extra else t

        stacked = [torch.cat([pad(getattr(s, name)) for s in seqs]) for name in ("tokens", "text_mask", "feat",
                                                                                   "audio_mask")]
        return (*stacked, torch.tensor(lengths, dtype=torch.long, device=self.device))

    @torch.inference_mode()
    def decode_steps(self, seqs: list[Sequence], options: GenerationOptions,
                     generators: list[torch.Generator | None],
                     on_patch: Callable[[int, int], None] | None = None) -> Iterator[tuple[torch.Tensor, list[bool]]]:
        """The AR loop over a batch: yield (patches [B, P, D] of this step, which samples produced one).

        Each sample draws its noise from its own generator, one [1, D, P] draw per generated patch, so a sample
        gets the same patches in a batch as alone. It stops at its stop token (after min_len) or its budget."""
        model, B = self.model, len(seqs)
        budgets = [self.max_patches(s, options) for s in seqs]
        tokens, text_mask, feat, audio_mask, lengths = self._pad(seqs)
        caches = self._caches_for(B)
        state = model.prefill(tokens, text_mask, feat, audio_mask, caches, lengths)
        D, P = self.config.feat_dim, self.config.patch_size
        step = self.steps.make(model, caches, options.inference_timesteps, options.cfg_value, state, (B, D, P))
        step.start(state, max(s.tokens.shape[1] for s in seqs))
        active = [True] * B
        for i in range(max(budgets)):
            noise = torch.cat([torch.randn((1, D, P), generator=g, device=self.device, dtype=self.dtype) if a
                               else torch.zeros((1, D, P), device=self.device, dtype=self.dtype)
                               for g, a in zip(generators, active)])
            patch, stop = step.sample(noise)
            yield patch, list(active)
            if on_patch is not None:
                on_patch(i + 1, max(budgets))
            stops = stop.tolist()  # the one host-device sync of a step
            active = [a and not (i == budgets[b] - 1 or (i > options.min_len and stops[b]))
                      for b, a in enumerate(active)]
            if not any(active):
                return
            step.advance(patch)

    def patches(self, seq: Sequence, options: GenerationOptions, generator: torch.Generator | None,
                on_patch: Callable[[int, int], None] | None = None) -> Iterator[torch.Tensor]:
        """One sequence: yield each generated patch [1, P, D] (model dtype) until stop or the length budget."""
        for patch, _ in self.decode_steps([seq], options, [generator], on_patch):
            yield patch

    def _generate_latents(self, seqs: list[Sequence], options: GenerationOptions,
                          generators: list[torch.Generator | None], on_patch=None) -> tuple[list[torch.Tensor], list[int]]:
        """Generated patches [N_i, P, D] per sequence, with badcase retry (bad samples re-run together, each
        continuing its own generator, as the reference's retry does) -> (patches, attempts)."""
        results: list[torch.Tensor | None] = [None] * len(seqs)
        attempts = [0] * len(seqs)
        todo = list(range(len(seqs)))
        while todo:
            collected: list[list[torch.Tensor]] = [[] for _ in todo]
            for patch, active in self.decode_steps([seqs[j] for j in todo], options, [generators[j] for j in todo],
                                                   on_patch):
                for k, a in enumerate(active):
                    if a:
                        collected[k].append(patch[k:k + 1])
            retry = []
            for k, j in enumerate(todo):
                attempts[j] += 1
                results[j] = torch.cat(collected[k], dim=0)
                counted = results[j].shape[0] + (seqs[j].context.shape[1] if self.version == 1 else 0)
                bad = counted >= seqs[j].target_tokens * options.retry_badcase_ratio_threshold
                if options.retry_badcase and bad and attempts[j] < options.retry_badcase_max_times:
                    print(f"Badcase detected, audio/text ratio {counted / seqs[j].target_tokens:.2f}, retrying...",
                          file=sys.stderr)
                    retry.append(j)
            todo = retry
        return results, attempts

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[1, N, P, D] patches -> [T] float32 CPU waveform."""
        z = latents.float().flatten(1, 2).transpose(1, 2).to(self.vae_device)  # [1, D, N*P]
        if not self.decode_chunk_frames or z.shape[-1] <= self.decode_chunk_frames:
            return self.vae.decode(z).reshape(-1).cpu()
        decoder = self.vae.stream_decoder()
        return torch.cat([decoder.decode(piece).reshape(-1).cpu() for piece in z.split(self.decode_chunk_frames, -1)])

    def _trim(self, seq: Sequence) -> int:
        """Samples of re-synthesised prompt context at the start of the decoded output."""
        if self.version == 1:  # v1 always drops 2 patches when any audio was in the input
            return CONTEXT_PATCHES[1] * self.config.samples_per_patch if int(seq.audio_mask.sum()) else 0
        return seq.context.shape[1] * self.config.samples_per_patch

    def _waveform(self, seq: Sequence, generated: torch.Tensor) -> torch.Tensor:
        latents = torch.cat([seq.context[0], generated], dim=0)[None]
        return self.decode(latents)[self._trim(seq):]

    @torch.inference_mode()
    def generate(self, text: str, voice: Voice | None = None, options: GenerationOptions = GenerationOptions(),
                 seed: int | None = None, on_patch: Callable[[int, int], None] | None = None) -> Result:
        return self.generate_batch([text], voice, options, [seed], on_patch)[0]

    @torch.inference_mode()
    def generate_batch(self, texts: list[str], voice: Voice | None = None,
                       options: GenerationOptions = GenerationOptions(), seeds: list[int | None] | None = None,
                       on_patch: Callable[[int, int], None] | None = None) -> list[Result]:
        """Several texts in the same voice, generated together as one batch (one Result per text).

        With seeds given, each text gets exactly the audio generate(text, seed=...) gives alone (up to kernel
        rounding); seeds=None draws every sample's noise from torch's global generator."""
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty list of strings")
        seeds = [None] * len(texts) if seeds is None else list(seeds)
        if len(seeds) != len(texts):
            raise ValueError(f"got {len(seeds)} seeds for {len(texts)} texts")
        seqs = [self._prepare(text, voice, options)[1] for text in texts]
        generated, attempts = self._generate_latents(seqs, options, [self._noise_generator(s) for s in seeds],
                                                     on_patch)
        return [Result(self._waveform(seq, g), g.float().cpu(), n, seed)
                for seq, g, n, seed in zip(seqs, generated, attempts, seeds)]

    @torch.inference_mode()
    def stream(self, text: str, voice: Voice | None = None, options: GenerationOptions = GenerationOptions(),
               seed: int | None = None, on_patch: Callable[[int, int], None] | None = None) -> Iterator[torch.Tensor]:
        """Yield one float32 CPU chunk per generated patch (no badcase retry while streaming, like the reference).

        v2 decodes statefully (chunks concatenate to the non-streaming output in zero-shot/reference modes);
        v1 decodes a window of the last 3 patches and keeps the newest patch's samples, as the reference does."""
        text, seq = self._prepare(text, voice, options)
        generator = self._noise_generator(seed)
        if self.version == 2:
            decoder = self.vae.stream_decoder()
            for patch in self.patches(seq, options, generator, on_patch):
                yield decoder.decode(patch.float().transpose(1, 2).to(self.vae_device)).reshape(-1).cpu()
            return
        window = list(seq.context[0].split(1))
        keep = self.config.samples_per_patch
        for patch in self.patches(seq, options, generator, on_patch):
            window = (window + [patch])[-(CONTEXT_PATCHES[1] + 1):]
            yield self.decode(torch.cat(window)[None])[-keep:]

    def _prepare(self, text: str, voice: Voice | None, options: GenerationOptions) -> tuple[str, Sequence]:
        options.check()
        text = clean_text(text)
        if voice is not None:
            self.check_voice(voice)
        return text, self.build_sequence(text, voice)
