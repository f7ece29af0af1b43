"""ZipEnhancer denoising and SenseVoice transcription: the real loading and inference code of modelscope and funasr,
run on tiny random models in the official file layout (tests/aux_models.py), engine and nodes, fully offline."""
from __future__ import annotations

import importlib
import math
import shutil
import socket
import sys

import numpy as np
import pytest
import torch

from package import load_package

pkg = load_package()
N = pkg.NODE_CLASS_MAPPINGS
frontends = importlib.import_module(pkg.__name__ + ".voxcpm_engine.frontends")
denoise = importlib.import_module(pkg.__name__ + ".voxcpm_engine.frontends.denoise")
asr = importlib.import_module(pkg.__name__ + ".voxcpm_engine.frontends.asr")
comfy = sys.modules[pkg.__name__ + ".nodes.comfy"]
node_frontends = sys.modules[pkg.__name__ + ".nodes.frontends"]
CACHE = node_frontends.FRONTEND_CACHE


# ------------------------------------------------------------------------------------------------- network guard

_NET = {"on": False, "attempts": []}


def _audit(event, args):
    if _NET["on"] and event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname"):
        _NET["attempts"].append((event, args[1:] if event == "socket.connect" else args))
        raise OSError(f"network use blocked by the test ({event})")


sys.addaudithook(_audit)  # audit hooks cannot be removed: it only acts while a test switches it on


@pytest.fixture
def no_network(monkeypatch):
    """Any DNS lookup or connect fails and is recorded; the test asserts that none happened."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _NET["attempts"].clear()
    _NET["on"] = True
    yield _NET["attempts"]
    _NET["on"] = False


def test_network_guard_blocks():
    _NET["on"] = True
    try:
        with pytest.raises(OSError, match="blocked"):
            socket.getaddrinfo("modelscope.cn", 443)
    finally:
        _NET["on"] = False
        _NET["attempts"].clear()


def noise(channels, seconds, rate, seed=0, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(channels, int(round(seconds * rate)), generator=g)


# ------------------------------------------------------------------------------------------------- pure parts

def test_strip_rich_tags_on_a_controlled_text():
    raw = "<|en|><|NEUTRAL|><|Speech|><|withitn|>Hello, world.  <|BGM|>See you <|Laughter|>soon!"
    assert asr.strip_rich_tags(raw) == "Hello, world. See you soon!"
    assert asr.strip_rich_tags("<|zh|><|HAPPY|><|Speech|><|woitn|>你好世界") == "你好世界"
    assert asr.strip_rich_tags("<|nospeech|><|Event_UNK|>") == ""
    assert asr.strip_rich_tags("a<b>c | d <|not closed") == "a<b>c | d <|not closed"  # only whole <|...|> tags


@pytest.mark.parametrize("length", [1, 799, 800, 801, 1399, 1400, 5000, 5123])
def test_window_plan_covers_every_sample_and_reconstructs(length):
    window, overlap = 800, 200
    starts = denoise.window_starts(length, window, window - overlap)
    assert starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:]))
    assert starts[-1] + window == max(length, window)  # the last window ends at the end: no padding past it
    assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:]))  # neighbours overlap
    signal = torch.randn(length, dtype=torch.float32)
    calls = []
    out = denoise.overlap_add(length, window, overlap, lambda piece: piece, signal,
                              progress=lambda i, total: calls.append((i, total)))
    assert out.shape == (length,)  # output length == input length
    assert torch.allclose(out, signal, atol=1e-6)  # the cross-fade weights sum to one everywhere
    assert calls == [(i + 1, len(starts)) for i in range(len(starts))]


def test_window_weights_fade_only_where_a_neighbour_is():
    w = denoise.window_weights(100, 20, first=True, last=False)
    assert w[:80].eq(1).all() and (w[80:] < 1).all() and (w[80:] > 0).all()
    both = denoise.window_weights(100, 20, first=False, last=False)
    assert torch.allclose(both[:20] + both[-20:], torch.ones(20, dtype=torch.float64))  # complementary ramps


def test_loudness_normalisation_reaches_the_target():
    import torchaudio.functional as AF

    quiet = noise(2, 1.5, 22050, scale=0.01)
    out = denoise.normalize_loudness(quiet, 22050)
    assert out.shape == quiet.shape
    assert abs(float(AF.loudness(out, 22050)) - denoise.TARGET_LUFS) < 0.1
    loud = noise(1, 1.0, 16000, scale=0.9)
    assert float(denoise.normalize_loudness(loud, 16000).abs().max()) <= 0.999 + 1e-6  # never clips
    short = noise(1, 0.2, 16000)
    assert torch.equal(denoise.normalize_loudness(short, 16000), short)  # too short to measure: unchanged
    silent = torch.zeros(1, 16000)
    assert torch.equal(denoise.normalize_loudness(silent, 16000), silent)


# ------------------------------------------------------------------------------------------------- errors

def test_offline_without_files_fails_fast_naming_folder_and_files(tmp_path, no_network):
    folder = tmp_path / "zipenhancer" / "speech_zipenhancer_ans_multiloss_16k_base"
    with pytest.raises(frontends.ModelFilesError) as e:
        denoise.ZipEnhancer.load(folder, source="modelscope")  # HF_HUB_OFFLINE=1 forbids the download
    assert str(folder) in str(e.value) and "does not exist" in str(e.value)
    assert "configuration.json" in str(e.value) and "pytorch_model.bin" in str(e.value)
    with pytest.raises(frontends.ModelFilesError) as e:
        asr.SenseVoice.load(tmp_path / "SenseVoiceSmall", source="offline")
    for name in asr.SENSEVOICE.files:
        assert name in str(e.value)
    assert "iic/SenseVoiceSmall" in str(e.value)
    assert no_network == []


def test_zipenhancer_is_not_downloaded_from_hugging_face(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VOXCPM_OFFLINE", raising=False)
    with pytest.raises(frontends.ModelFilesError, match="not published on huggingface.*modelscope"):
        frontends.ensure_model(denoise.ZIPENHANCER, tmp_path / "ze", "huggingface")
    with pytest.raises(ValueError, match="download source"):
        frontends.ensure_model(denoise.ZIPENHANCER, tmp_path / "ze", "somewhere")


@pytest.mark.parametrize("kind", ["sensevoice", "zipenhancer"])
def test_a_missing_weight_file_is_an_error_not_random_weights(kind, request, tmp_path, no_network):
    """Both libraries silently run randomly initialised weights when the weight file is missing; we refuse."""
    source = request.getfixturevalue(f"tiny_{kind}")
    folder = tmp_path / source.name
    shutil.copytree(source, folder)
    weights = "model.pt" if kind == "sensevoice" else "pytorch_model.bin"
    (folder / weights).unlink()
    load = asr.SenseVoice.load if kind == "sensevoice" else denoise.ZipEnhancer.load
    with pytest.raises(frontends.ModelFilesError) as e:
        load(folder, source="modelscope")
    assert f"{folder} is incomplete: missing {weights}" in str(e.value)
    assert no_network == []


def test_missing_packages_say_what_to_install(tiny_sensevoice, tiny_zipenhancer, monkeypatch):
    monkeypatch.setitem(sys.modules, "funasr", None)  # `import funasr` now raises ImportError
    with pytest.raises(frontends.MissingPackageError, match="pip install funasr$"):
        asr.SenseVoice.load(tiny_sensevoice)
    monkeypatch.setitem(sys.modules, "modelscope.pipelines", None)
    with pytest.raises(frontends.MissingPackageError, match=r'pip install "modelscope\[framework\]"$'):
        denoise.ZipEnhancer.load(tiny_zipenhancer)
    monkeypatch.setitem(sys.modules, "datasets", None)  # core modelscope without the [framework] extra
    with pytest.raises(frontends.MissingPackageError, match=r"needs the \"modelscope\[framework\]\" package"):
        denoise.ZipEnhancer.load(tiny_zipenhancer)


# ------------------------------------------------------------------------------------------------- ZipEnhancer

@pytest.fixture(scope="module")
def enhancer(tiny_zipenhancer):
    return denoise.ZipEnhancer.load(tiny_zipenhancer)


def test_zipenhancer_loads_offline(tiny_zipenhancer, no_network):
    model = denoise.ZipEnhancer.load(tiny_zipenhancer, source="modelscope")
    assert type(model.network).__name__ == "ZipenhancerDecorator" and model.parameter_bytes() > 0
    out = model.enhance(noise(1, 0.1, 16000), 16000)
    assert out.shape == (1, 1600) and bool(torch.isfinite(out).all())
    assert no_network == []


@pytest.mark.parametrize("rate,channels,seconds", [(16000, 1, 0.5), (44100, 2, 0.3), (22050, 1, 0.213)])
def test_denoise_keeps_rate_channels_and_length(enhancer, rate, channels, seconds):
    x = noise(channels, seconds, rate)
    y = enhancer.enhance(x, rate)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert bool(torch.isfinite(y).all()) and float(y.abs().max()) > 0
    if channels == 1:
        assert torch.allclose(enhancer.enhance(x[0], rate), y[0])  # a 1-D clip comes back 1-D


def test_denoise_treats_channels_independently(enhancer):
    left = noise(1, 0.25, 16000, seed=3)[0]
    stereo = torch.stack([left, torch.zeros_like(left)])
    y = enhancer.enhance(stereo, 16000)
    assert float(y[0].abs().max()) > 0 and float(y[1].abs().max()) == 0  # silence stays silence, no NaN
    assert torch.allclose(y[0], enhancer.enhance(left[None], 16000)[0], atol=1e-6)


def test_long_audio_is_windowed_and_keeps_its_length(enhancer):
    """1.03 s at 22.05 kHz in 0.3 s windows (0.1 s overlap): 5 windows, flat memory, the length kept, and the
    tail not zeroed (the official pipeline leaves up to 0.25 s of zeros at the end of some lengths)."""
    x = noise(1, 1.03, 22050, seed=5)
    seen = []
    y = enhancer.enhance(x, 22050, window_seconds=0.3, overlap_seconds=0.1,
                         progress=lambda done, total: seen.append((done, total)))
    assert y.shape == x.shape
    assert seen == [(i, 5) for i in range(1, 6)]
    assert bool(torch.isfinite(y).all()) and float(y[0, -1000:].abs().max()) > 0


def test_one_window_equals_the_official_pipeline(tiny_zipenhancer, enhancer, capsys):
    """A 2 s 16 kHz clip is one window in both: our output is the official pipeline's forward() output (which
    writes 16-bit samples). Compared after the pipeline's input scaling, which a random network does not undo
    exactly (the phase of near-silent bins is arbitrarily sensitive)."""
    from modelscope.outputs import OutputKeys
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks

    x = noise(1, 2.0, 16000, seed=7)
    official = pipeline(Tasks.acoustic_noise_suppression, model=str(tiny_zipenhancer), device="cpu")
    pcm = official.forward({"ndarray": x.numpy(), "nsamples": x.shape[1]})[OutputKeys.OUTPUT_PCM]
    ref = np.frombuffer(pcm, dtype=np.int16).astype(np.float64)
    ours = enhancer.enhance(x, 16000)[0].double().numpy() * 32768
    assert ref.shape == ours.shape == (32000,)
    assert np.abs(ref - ours).max() <= 1.0 + 1e-6  # the pipeline truncates to int16
    assert np.abs(ref).max() > 2  # not trivially zero
    capsys.readouterr()


def test_denoise_rejects_bad_input(enhancer):
    with pytest.raises(ValueError, match="NaN"):
        enhancer.enhance(torch.tensor([[0.0, float("nan")]]), 16000)
    with pytest.raises(ValueError, match="empty"):
        enhancer.enhance(torch.zeros(1, 0), 16000)
    with pytest.raises(ValueError, match="sample rate"):
        enhancer.enhance(torch.zeros(1, 10), 0)


# ------------------------------------------------------------------------------------------------- SenseVoice

@pytest.fixture(scope="module")
def recognizer(tiny_sensevoice):
    return asr.SenseVoice.load(tiny_sensevoice)


def test_sensevoice_loads_and_runs_offline(tiny_sensevoice, no_network):
    threads = torch.get_num_threads()
    model = asr.SenseVoice.load(tiny_sensevoice, source="modelscope")
    assert type(model.network).__name__ == "SenseVoiceSmall"
    assert torch.get_num_threads() == threads  # funasr would set 4 threads for the whole process
    assert isinstance(model.transcribe(noise(1, 1.0, 16000), 16000), str)
    assert no_network == []


def test_transcript_tags_and_determinism(recognizer):
    x = noise(1, 1.2, 16000, seed=11)
    raw = recognizer.raw_transcribe(x, 16000)
    assert isinstance(raw, str) and raw
    assert recognizer.raw_transcribe(x, 16000) == raw  # dither off: the same clip gives the same text
    assert recognizer.transcribe(x, 16000, tags="keep") == raw
    stripped = recognizer.transcribe(x, 16000)
    assert stripped == asr.strip_rich_tags(raw) and "<|" not in stripped
    assert "<|" not in recognizer.transcribe(x, 16000, tags="emoji")


def test_transcribe_mixes_channels_and_resamples(recognizer):
    stereo = noise(2, 1.0, 16000, seed=12)
    mono = stereo.mean(dim=0, keepdim=True)
    assert recognizer.raw_transcribe(stereo, 16000) == recognizer.raw_transcribe(mono, 16000)
    for rate in (8000, 44100, 48000):
        assert isinstance(recognizer.transcribe(noise(2, 0.8, rate), rate), str)
    for language in asr.LANGUAGES:
        assert isinstance(recognizer.transcribe(mono, 16000, language=language, use_itn=False), str)
    with pytest.raises(ValueError, match="language"):
        recognizer.transcribe(mono, 16000, language="fr")
    with pytest.raises(ValueError, match="tags"):
        recognizer.transcribe(mono, 16000, tags="html")


# ------------------------------------------------------------------------------------------------- nodes

@pytest.fixture
def aux_folders(tiny_sensevoice, tiny_zipenhancer):
    comfy.set_fallback_folders("sensevoice", [str(tiny_sensevoice.parent)])
    comfy.set_fallback_folders("zipenhancer", [str(tiny_zipenhancer.parent)])
    CACHE.clear()
    yield
    CACHE.clear()
    comfy.set_fallback_folders("sensevoice", [])
    comfy.set_fallback_folders("zipenhancer", [])
    comfy.request_interrupt(False)


def test_node_definitions(aux_folders):
    den, tr = N["VoxCPMDenoise"], N["VoxCPMASRTranscribe"]
    assert pkg.NODE_DISPLAY_NAME_MAPPINGS["VoxCPMDenoise"] == "VoxCPM Denoise"
    assert pkg.NODE_DISPLAY_NAME_MAPPINGS["VoxCPMASRTranscribe"] == "VoxCPM ASR Transcribe"
    assert den.RETURN_TYPES == ("AUDIO",) and tr.RETURN_TYPES == ("STRING",)
    d, t = den.INPUT_TYPES()["required"], tr.INPUT_TYPES()["required"]
    assert d["model"][0][0] == "speech_zipenhancer_ans_multiloss_16k_base"
    assert t["model"][0][0] == "SenseVoiceSmall"
    assert t["language"][0] == ["auto", "zh", "en", "yue", "ja", "ko"]
    assert d["device"][1]["default"] == t["device"][1]["default"] == "cpu"
    assert d["keep_loaded"][1]["default"] is False and t["keep_loaded"][1]["default"] is False
    assert t["rich_tags"][1]["default"] == "strip"
    assert "huggingface" in t["download_source"][0] and "offline" in d["download_source"][0]


def test_denoise_node_keeps_the_audio_layout_and_frees_the_model(aux_folders):
    node = N["VoxCPMDenoise"]()
    g = torch.Generator().manual_seed(0)
    audio = {"waveform": 0.1 * torch.randn(1, 2, 5000, generator=g), "sample_rate": 22050}
    seen = []
    comfy.set_fallback_progress_hook(lambda v, t: seen.append((v, t)))
    try:
        (out,) = node.denoise(audio, "speech_zipenhancer_ans_multiloss_16k_base", False, "cpu", "offline", False)
    finally:
        comfy.set_fallback_progress_hook(None)
    assert out["sample_rate"] == 22050 and out["waveform"].shape == (1, 2, 5000)
    assert bool(torch.isfinite(out["waveform"]).all())
    assert seen and seen[-1][0] == seen[-1][1]
    assert CACHE.items == {}  # keep_loaded off: nothing stays in memory


def test_keep_loaded_reuses_the_model(aux_folders):
    node = N["VoxCPMASRTranscribe"]()
    audio = {"waveform": 0.1 * torch.randn(1, 1, 16000), "sample_rate": 16000}
    loads = CACHE.loads
    (first,) = node.transcribe(audio, "SenseVoiceSmall", "auto", True, "strip", "cpu", "offline", True)
    assert isinstance(first, str) and "<|" not in first and len(CACHE.items) == 1
    (second,) = node.transcribe(audio, "SenseVoiceSmall", "auto", True, "strip", "cpu", "offline", False)
    assert second == first and CACHE.loads == loads + 1  # loaded once, then dropped after the second run
    assert CACHE.items == {}


def test_cancel_stops_denoising_and_frees_the_model(aux_folders):
    comfy.request_interrupt(True)
    audio = {"waveform": 0.1 * torch.randn(1, 1, 4000), "sample_rate": 16000}
    with pytest.raises(comfy.Interrupted):
        N["VoxCPMDenoise"]().denoise(audio, "speech_zipenhancer_ans_multiloss_16k_base", False, "cpu", "offline",
                                     False)
    assert CACHE.items == {}


def test_node_errors_name_the_folder(aux_folders, tmp_path, monkeypatch):
    comfy.set_fallback_folders("sensevoice", [str(tmp_path / "empty")])
    audio = {"waveform": torch.zeros(1, 1, 1600), "sample_rate": 16000}
    with pytest.raises(frontends.ModelFilesError, match=str(tmp_path / "empty" / "SenseVoiceSmall")):
        N["VoxCPMASRTranscribe"]().transcribe(audio, "SenseVoiceSmall", "auto", True, "strip", "cpu", "offline")
    with pytest.raises(FileNotFoundError, match="no folder 'mine'"):
        N["VoxCPMASRTranscribe"]().transcribe(audio, "mine", "auto", True, "strip", "cpu", "offline")


def test_local_folders_are_listed(aux_folders, tiny_zipenhancer, tmp_path):
    root = tmp_path / "ze"
    shutil.copytree(tiny_zipenhancer, root / "my_enhancer")
    (root / "not_a_model").mkdir()
    comfy.set_fallback_folders("zipenhancer", [str(root)])
    names = N["VoxCPMDenoise"].INPUT_TYPES()["required"]["model"][0]
    assert names == ["speech_zipenhancer_ans_multiloss_16k_base", "my_enhancer"]
    audio = {"waveform": 0.1 * torch.randn(1, 1, 4000), "sample_rate": 16000}
    (out,) = N["VoxCPMDenoise"]().denoise(audio, "my_enhancer", True, "cpu", "offline", False)
    assert out["waveform"].shape == (1, 1, 4000) and math.isfinite(float(out["waveform"].abs().max()))
