"""VoxCPM Stream Preview without ComfyUI: the browser messages (captured through nodes/comfy.py's fallback hook),
their agreement with the node's AUDIO output, Cancel after chunk k, and what streaming equals in each mode."""
from __future__ import annotations

import base64
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from package import load_package

pkg = load_package()
N = pkg.NODE_CLASS_MAPPINGS
comfy = sys.modules[pkg.__name__ + ".nodes.comfy"]
stream_mod = sys.modules[pkg.__name__ + ".nodes.stream"]

RATES = {"v1": 16000, "v1_5": 44100, "v2": 48000}
ARGS = dict(style="", cfg=2.0, steps=4, normalize=False, max_seconds=0.0, retry_badcase=False, retry_max_times=3,
            retry_ratio=6.0)


@pytest.fixture(scope="module")
def models(tiny_root, tiny_v1, tiny_v1_5, tiny_v2, tmp_path_factory):
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(tiny_root)])
    comfy.set_fallback_folders(comfy.TEMP_FOLDER, [str(tmp_path_factory.mktemp("comfy_temp"))])
    yield tiny_root
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [])
    comfy.set_fallback_folders(comfy.TEMP_FOLDER, [])


@pytest.fixture
def messages():
    seen = []
    comfy.set_fallback_message_hook(lambda event, data: seen.append((event, data)))
    yield seen
    comfy.set_fallback_message_hook(None)
    comfy.set_fallback_progress_hook(None)
    comfy.request_interrupt(False)


def load(kind):
    return N["LoadVoxCPM"]().load(kind, "cpu", "auto", "huggingface", "none", 1.0)[0]


def clip(seconds=0.5, rate=22050, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"waveform": 0.3 * torch.randn(1, 1, int(seconds * rate), generator=g), "sample_rate": rate}


def encode(model, prompt_audio=None, prompt_text="", reference_audio=None):
    return N["VoxCPMPromptAudio"]().encode(model, prompt_text, True, 30.0, prompt_audio, reference_audio)[0]


def stream(model, text="hello world", voice=None, seed=1, node_id="7", **kw):
    return N["VoxCPMStreamPreview"]().stream(model, text, voice=voice, seed=seed, unique_id=node_id, **{**ARGS, **kw})


def synthesize(model, text="hello world", voice=None, seed=1, **kw):
    """VoxCPM Synthesize's AUDIO output (a short text: one pass)."""
    return N["VoxCPMSynthesize"]().synthesize(model, text, voice=voice, seed=seed, **{**ARGS, **kw})[0]


def decode_pcm(chunks) -> np.ndarray:
    return np.concatenate([np.frombuffer(base64.b64decode(c["data"]), dtype="<i2") for c in chunks])


def expected_pcm(waveform: torch.Tensor) -> np.ndarray:
    return (waveform.reshape(-1).clamp(-1, 1) * 32767).round().to(torch.int16).numpy()


# ------------------------------------------------------------------------------------------------- definition

def test_same_inputs_as_synthesize_and_an_output_node():
    stream_spec, synth_spec = N["VoxCPMStreamPreview"].INPUT_TYPES(), N["VoxCPMSynthesize"].INPUT_TYPES()
    assert list(stream_spec["required"]) == list(synth_spec["required"])  # same widgets, same order
    for name, entry in synth_spec["required"].items():
        assert stream_spec["required"][name][0] == entry[0]
    assert stream_spec["optional"] == {"voice": synth_spec["optional"]["voice"]}  # no long-text options
    assert "while streaming" in stream_spec["required"]["retry_badcase"][1]["tooltip"]
    assert "while streaming" not in synth_spec["required"]["retry_badcase"][1].get("tooltip", "")  # not mutated
    assert stream_spec["hidden"] == {"unique_id": "UNIQUE_ID"}
    cls = N["VoxCPMStreamPreview"]
    assert cls.OUTPUT_NODE is True and cls.RETURN_TYPES == ("AUDIO", "INT")
    assert pkg.NODE_DISPLAY_NAME_MAPPINGS["VoxCPMStreamPreview"] == "VoxCPM Stream Preview"
    assert cls.VALIDATE_INPUTS(text="  ") != True and cls.VALIDATE_INPUTS(text="hi") is True  # noqa: E712


# ------------------------------------------------------------------------------------------------- messages

@pytest.mark.parametrize("kind", ["v1", "v1_5", "v2"])
def test_chunk_messages_match_the_audio_output(models, messages, kind):
    model = load(kind)
    out = stream(model, "hello world", seed=5, node_id="12")
    audio, seed = out["result"]
    wav = audio["waveform"]
    assert seed == 5 and audio["sample_rate"] == RATES[kind] and wav.shape[:2] == (1, 1) and wav.dtype == torch.float32

    events = [e for e, _ in messages]
    assert events[0] == "voxcpm.stream_start" and set(events[1:]) == {"voxcpm.chunk"}
    start, chunks = messages[0][1], [d for _, d in messages[1:]]
    per_patch = model.engine.config.samples_per_patch
    assert start == {"node": "12", "prompt_id": None, "sample_rate": RATES[kind], "channels": 1,
                     "format": "pcm_s16le", "max_chunks": start["max_chunks"], "samples_per_chunk": per_patch}
    assert [c["index"] for c in chunks] == list(range(len(chunks)))  # in order, none missing
    assert [c["final"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["samples"] == 0 and chunks[-1]["data"] == ""
    assert 2 <= len(chunks) - 1 <= start["max_chunks"]
    for c in chunks:
        assert (c["node"], c["prompt_id"], c["sample_rate"], c["channels"], c["format"]) == \
            ("12", None, RATES[kind], 1, "pcm_s16le")
        assert len(base64.b64decode(c["data"])) == 2 * c["samples"]
    assert all(c["samples"] == per_patch for c in chunks[:-1])  # one patch per message

    pcm = decode_pcm(chunks)
    assert pcm.shape[0] == wav.shape[2] == (len(chunks) - 1) * per_patch
    assert np.array_equal(pcm, expected_pcm(wav))  # the concatenated chunks are the AUDIO output, 16-bit
    error = np.abs(pcm / 32767.0 - wav.reshape(-1).clamp(-1, 1).numpy()).max()
    assert error <= 0.5 / 32767 + 1e-7

    entry = out["ui"]["audio"][0]
    assert entry["type"] == "temp" and entry["subfolder"] == ""
    path = comfy.folder_paths_for(comfy.TEMP_FOLDER)[0] + "/" + entry["filename"]
    data, rate = sf.read(path, dtype="float32")
    assert rate == RATES[kind] and data.shape == (wav.shape[2],)
    assert np.abs(data - wav.reshape(-1).clamp(-1, 1).numpy()).max() < 1e-6 + 1 / 2 ** 23  # 24-bit FLAC


def test_each_run_has_its_own_temp_file(models, messages):
    model = load("v2")
    first = stream(model, seed=1)["ui"]["audio"][0]["filename"]
    second = stream(model, seed=1)["ui"]["audio"][0]["filename"]
    assert first != second


def test_without_a_listener_nothing_breaks(models):
    comfy.set_fallback_message_hook(None)
    audio, _ = stream(load("v2"))["result"]
    assert audio["waveform"].shape[2] > 0


def test_bad_inputs_fail_before_any_message(models, messages):
    model = load("v2")
    with pytest.raises(ValueError, match="inference_timesteps"):
        stream(model, steps=0)
    with pytest.raises(ValueError, match="needs a VoxCPM2 model"):
        stream(load("v1"), style="a calm voice")  # VoxCPM-0.5B/1.5 would read the description aloud
    assert messages == []


# ------------------------------------------------------------------------------------------------- what streaming equals

@pytest.mark.parametrize("mode", ["zero_shot", "reference"])
def test_v2_stream_equals_synthesize_exactly(models, messages, mode):
    model = load("v2")
    voice = encode(model, reference_audio=clip(0.5, seed=3)) if mode == "reference" else None
    streamed, _ = stream(model, "hello world", voice, seed=9)["result"]
    whole = synthesize(model, "hello world", voice, seed=9)
    assert torch.equal(streamed["waveform"], whole["waveform"])


@pytest.mark.parametrize("kind,mode", [("v1", "continuation"), ("v1_5", "continuation"), ("v1", "zero_shot"),
                                       ("v2", "continuation"), ("v2", "ref_continuation")])
def test_other_modes_have_the_same_length_but_other_samples(models, messages, kind, mode):
    """v1 decodes a 3-patch window per chunk and v2 continuation streams without the prompt's context patches,
    so the samples differ from Synthesize (same patches, same length); measured here, stated in the README."""
    model = load(kind)
    rate = {"v1": 16000, "v1_5": 44100, "v2": 16000}[kind]
    seconds = {"v1": 0.52, "v1_5": 0.6, "v2": 0.5}[kind]
    if mode == "zero_shot":
        voice = None
    elif mode == "continuation":
        voice = encode(model, clip(seconds, rate, seed=4), "hello world")
    else:
        voice = encode(model, clip(seconds, rate, seed=4), "hello world", reference_audio=clip(0.5, seed=5))
    streamed, _ = stream(model, "hello", voice, seed=9)["result"]
    whole = synthesize(model, "hello", voice, seed=9)
    assert streamed["waveform"].shape == whole["waveform"].shape
    assert not torch.equal(streamed["waveform"], whole["waveform"])


# ------------------------------------------------------------------------------------------------- cancel

@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_cancel_after_chunk_k_then_the_model_still_works(models, messages, kind):
    model = load(kind)
    expected, _ = stream(model, "hello world", seed=21)["result"]
    patches = expected["waveform"].shape[2] // model.engine.config.samples_per_patch
    k = 2
    assert patches > k + 1  # the uninterrupted run is longer, so the cancel really cut it
    messages.clear()

    steps = []

    def cancel_at_k(value, total):
        steps.append(value)
        if value == k:
            comfy.request_interrupt()  # what the Cancel button does

    comfy.set_fallback_progress_hook(cancel_at_k)
    with pytest.raises(comfy.Interrupted):
        stream(model, "hello world", seed=21)
    assert steps[-1] == k  # stopped in the step it was pressed in
    chunks = [d for e, d in messages if e == "voxcpm.chunk"]
    assert [c["index"] for c in chunks] == list(range(k)) and not any(c["final"] for c in chunks)
    assert np.array_equal(decode_pcm(chunks), expected_pcm(expected["waveform"])[:k * chunks[0]["samples"]])

    comfy.set_fallback_progress_hook(None)
    messages.clear()
    again, _ = stream(model, "hello world", seed=21)["result"]
    assert torch.equal(again["waveform"], expected["waveform"])  # the model is intact
    assert messages[-1][1]["final"] is True


def test_long_text_streams_chunk_after_chunk_and_equals_synthesize(models, messages):
    """Text longer than one long-text chunk: one message per text chunk, in order, and the whole equals
    Synthesize's long-text output (same chunks, seeds, voice freezing and joins)."""
    model = load("v2")
    text = "hello world. the quick brown fox. this is a test. hello again world. " * 12
    assert len(stream_mod.longform_texts(text)) > 1
    audio = stream(model, text, seed=5)["result"][0]
    chunks = [d for e, d in messages if e == stream_mod.CHUNK_EVENT]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert chunks[-1]["final"] and len(chunks) - 1 == len(stream_mod.longform_texts(text))
    np.testing.assert_array_equal(decode_pcm(chunks[:-1]), expected_pcm(audio["waveform"].reshape(-1)))
    expected = synthesize(model, text, seed=5)
    torch.testing.assert_close(audio["waveform"], expected["waveform"], rtol=0, atol=0)
