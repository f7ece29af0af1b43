"""VoxCPM Stream Preview: VoxCPM Synthesize that plays the speech in the browser while it is being generated.

Each generated patch is sent at once to the tab that queued the prompt as a JSON websocket message (16-bit PCM,
base64); web/js/stream_player.js schedules the chunks gap-free with Web Audio. At the end the node returns the whole
clip as AUDIO (for SaveAudio, video graphs, ...) and as a temp file for the node's ordinary audio player.

Messages (type, data), all with node (the node id), prompt_id and sample_rate:
  voxcpm.stream_start  {channels: 1, format: "pcm_s16le", max_chunks, samples_per_chunk}
  voxcpm.chunk         {index, channels, format, samples, data (base64), final}
The last voxcpm.chunk of a run has final=true and no samples (whether a patch is the last one is only known after
it was sent); index counts 0, 1, 2, ... up to it. An interrupted or failed run ends with ComfyUI's own
execution_interrupted / execution_error message instead.
"""
from __future__ import annotations

import copy
import dataclasses
import time

import torch

from . import audio as audio_io
from . import comfy
from ..voxcpm_engine.longform import JoinOptions
from .synthesize import VoxCPMSynthesize, build_request, longform_texts, run_longform, run_stream, style_prefix

START_EVENT = "voxcpm.stream_start"
CHUNK_EVENT = "voxcpm.chunk"
PCM_FORMAT = "pcm_s16le"
NOT_WHILE_STREAMING = ("Not used while streaming: a retry would replace audio you have already heard. "
                       "retry_ratio still caps the length.")


class ChunkSender:
    """Sends one run's chunks to the browser in order."""

    def __init__(self, node_id, prompt_id, sample_rate: int):
        self.base = {"node": None if node_id is None else str(node_id), "prompt_id": prompt_id,
                     "sample_rate": int(sample_rate)}
        self.index = 0

    def start(self, max_chunks: int, samples_per_chunk: int) -> None:
        comfy.send_to_client(START_EVENT, {**self.base, "channels": 1, "format": PCM_FORMAT,
                                           "max_chunks": int(max_chunks),
                                           "samples_per_chunk": int(samples_per_chunk)})

    def chunk(self, samples: torch.Tensor, final: bool = False) -> None:
        comfy.send_to_client(CHUNK_EVENT, {**self.base, "index": self.index, "channels": 1, "format": PCM_FORMAT,
                                           "samples": int(samples.numel()), "data": audio_io.pcm16_base64(samples),
                                           "final": bool(final)})
        self.index += 1


class VoxCPMStreamPreview:
    DESCRIPTION = ("VoxCPM Synthesize that you hear while it is generated: the node's player starts with the first "
                   "patch (80-160 ms of audio per step) and shows time to first audio and the realtime factor; "
                   "Cancel stops it after the current step. Outputs the whole clip as AUDIO when done.")
    RETURN_TYPES = ("AUDIO", "INT")
    RETURN_NAMES = ("audio", "seed")
    OUTPUT_TOOLTIPS = ("The whole clip, mono, at the model's sample rate (16 / 44.1 / 48 kHz).",
                       "The seed that produced it.")
    FUNCTION = "stream"
    CATEGORY = VoxCPMSynthesize.CATEGORY
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        spec = copy.deepcopy(VoxCPMSynthesize.INPUT_TYPES())
        # Synthesize's widgets and its voice; its long-text options (chunking, pauses, subtitles) are not offered:
        # a stream speaks the text in one pass.
        spec["optional"] = {"voice": spec["optional"]["voice"]}
        for name in ("retry_badcase", "retry_max_times"):
            if name in spec["required"]:
                spec["required"][name][1]["tooltip"] = NOT_WHILE_STREAMING
        spec["hidden"] = {**spec.get("hidden", {}), "unique_id": "UNIQUE_ID"}
        return spec

    VALIDATE_INPUTS = VoxCPMSynthesize.__dict__["VALIDATE_INPUTS"]  # the classmethod itself

    def stream(self, model, text, voice=None, unique_id=None, **inputs):
        request = build_request(model, text, voice, stream=True, **inputs)
        engine = request.model.engine
        sender = ChunkSender(unique_id, comfy.current_prompt_id(), request.model.sample_rate)
        chunks = []
        started = time.perf_counter()
        for chunk in self._chunks(request, text, inputs, sender):
            sender.chunk(chunk)
            chunks.append(chunk)
        sender.chunk(torch.zeros(0), final=True)
        waveform = torch.cat(chunks) if chunks else torch.zeros(0)
        seconds = waveform.numel() / request.model.sample_rate
        comfy.log.info("VoxCPM: streamed %d chunks, %.2f s of audio in %.2f s", len(chunks), seconds,
                       time.perf_counter() - started)
        path, entry = comfy.temp_file("voxcpm_stream_", ".flac")
        audio_io.write_flac(path, waveform, request.model.sample_rate)
        return {"ui": {"audio": [entry]},
                "result": (audio_io.to_audio(waveform, request.model.sample_rate), request.seed)}

    @staticmethod
    def _chunks(request, text: str, inputs: dict, sender: ChunkSender):
        """One chunk per patch; a text longer than one long-text chunk (Synthesize's defaults) is spoken chunk
        after chunk instead, each sent when done, giving exactly Synthesize's long-text audio."""
        engine = request.model.engine
        texts = longform_texts(text, bool(inputs.get("normalize", False)))
        if len(texts) == 1:
            yield from run_stream(request, on_start=lambda budget: sender.start(budget,
                                                                               engine.config.samples_per_patch))
            return
        sender.start(len(texts), 0)
        whole_chunks = dataclasses.replace(request.options, retry_badcase=bool(inputs.get("retry_badcase", True)))
        longform = run_longform(dataclasses.replace(request, options=whole_chunks), texts,
                                style_prefix(inputs.get("style", "")), JoinOptions())
        for _, piece, _ in longform:
            yield piece
