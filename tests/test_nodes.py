"""The ComfyUI nodes, run without ComfyUI on tiny checkpoints: every mode, the caches, progress, interrupts, errors."""
from __future__ import annotations

import inspect
import math
import shutil
import sys

import pytest
import torch

from package import load_package

pkg = load_package()
N = pkg.NODE_CLASS_MAPPINGS
comfy = sys.modules[pkg.__name__ + ".nodes.comfy"]
loader = sys.modules[pkg.__name__ + ".nodes.loader"]
voice_mod = sys.modules[pkg.__name__ + ".nodes.voice"]
synth = sys.modules[pkg.__name__ + ".nodes.synthesize"]
audio_io = sys.modules[pkg.__name__ + ".nodes.audio"]
CheckpointError = sys.modules[pkg.__name__ + ".voxcpm_engine.checkpoint"].CheckpointError
DownloadError = sys.modules[pkg.__name__ + ".voxcpm_engine.checkpoint"].DownloadError
DEFAULT_ALPHA = sys.modules[pkg.__name__ + ".voxcpm_engine.lora"].DEFAULT_ALPHA

RATES = {"v1": 16000, "v1_5": 44100, "v2": 48000}
# Tiny models hold 256 positions: clips stay short (v1 encodes 400 patches/s, v1.5 175/s, v2 200/s).
SECONDS = {"v1": 0.52, "v1_5": 0.6, "v2": 0.5}


@pytest.fixture(scope="module")
def models(tiny_root, tiny_v1, tiny_v1_5, tiny_v2):
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(tiny_root)])
    yield tiny_root
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [])


@pytest.fixture
def progress():
    seen = []
    comfy.set_fallback_progress_hook(lambda value, total: seen.append((value, total)))
    yield seen
    comfy.set_fallback_progress_hook(None)
    comfy.request_interrupt(False)


def load(name, device="cpu", dtype="auto", lora="none", strength=1.0, source="huggingface", low_vram=False):
    return N["LoadVoxCPM"]().load(name, device, dtype, source, lora, strength, low_vram=low_vram)[0]


def clip(seconds=0.5, rate=22050, channels=2, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    n = int(round(seconds * rate))
    wav = torch.randn(1, channels, n, generator=g) * scale
    return {"waveform": wav, "sample_rate": rate}


def encode(model, prompt_audio=None, prompt_text="", reference_audio=None, trim=True, max_seconds=30.0):
    return N["VoxCPMPromptAudio"]().encode(model, prompt_text, trim, max_seconds, prompt_audio, reference_audio)[0]


def speak(model, text="hello world", voice=None, style="", seed=1, **kw):
    args = dict(cfg=2.0, steps=4, normalize=False, max_seconds=0.0, retry_badcase=False, retry_max_times=3,
                retry_ratio=6.0)
    args.update(kw)
    # (audio, seed); the outputs appended later (subtitles, voice) are tested in test_longform.py
    return N["VoxCPMSynthesize"]().synthesize(model, text, style=style, seed=seed, voice=voice, **args)[:2]


# ------------------------------------------------------------------------------------------------- registration

def test_mappings_and_node_definitions():
    assert {"LoadVoxCPM", "VoxCPMPromptAudio", "VoxCPMSynthesize"} <= set(N)  # other modules add more nodes
    assert set(pkg.NODE_DISPLAY_NAME_MAPPINGS) == set(N)
    assert {"LoadVoxCPM": "Load VoxCPM", "VoxCPMPromptAudio": "VoxCPM Prompt Audio",
            "VoxCPMSynthesize": "VoxCPM Synthesize"}.items() <= pkg.NODE_DISPLAY_NAME_MAPPINGS.items()
    assert pkg.WEB_DIRECTORY == "./web/js"
    for cls in N.values():
        assert cls.CATEGORY == "audio/VoxCPM"
        spec = cls.INPUT_TYPES()
        names = [n for section in ("required", "optional") for n in spec.get(section, {})]
        params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert takes_any or set(names) <= set(params), cls  # every input reaches the function
        for section_name, section in spec.items():
            if section_name == "hidden":  # e.g. {"unique_id": "UNIQUE_ID"}: plain strings
                continue
            for name, entry in section.items():
                assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, name
                assert isinstance(entry[0], (str, list)), name
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    assert N["VoxCPMSynthesize"].RETURN_TYPES[:2] == ("AUDIO", "INT")  # later outputs are appended after these
    seed = N["VoxCPMSynthesize"].INPUT_TYPES()["required"]["seed"][1]
    assert seed["control_after_generate"] is True and seed["max"] == 2 ** 64 - 1
    defaults = N["VoxCPMSynthesize"].INPUT_TYPES()["required"]
    assert defaults["cfg"][1]["default"] == 2.0 and defaults["steps"][1]["default"] == 10
    assert N["VoxCPMSynthesize"].INPUT_TYPES()["optional"]["voice"][0] == "VOXCPM_VOICE"


def test_not_running_in_comfyui():
    assert not comfy.in_comfyui()
    assert "comfy.model_management" not in sys.modules  # nothing imported ComfyUI behind our back


# ------------------------------------------------------------------------------------------------- loader

def test_model_list(models):
    names = loader.list_models()
    assert names[:3] == ["VoxCPM2", "VoxCPM1.5", "VoxCPM-0.5B"]
    assert {"v1", "v1_5", "v2"} <= set(names)
    assert "tokenizer" not in names  # a folder without config.json is not a model
    assert N["LoadVoxCPM"].INPUT_TYPES()["required"]["model"][0] == names


@pytest.mark.parametrize("kind", ["v1", "v1_5", "v2"])
def test_load_each_generation(models, kind):
    model = load(kind)
    assert model.sample_rate == RATES[kind]
    assert model.version == (2 if kind == "v2" else 1)
    assert repr(model).startswith(f"VoxCPMModel({kind}, ") and "lora=none" in repr(model)


def test_model_cache_reuses_and_dtype_loads_anew(models):
    first = load("v1")
    loads = loader.MODEL_CACHE.loads
    assert load("v1") is first  # re-run: same object, nothing loaded
    assert load("v1", device="auto") is first  # "auto" resolves to the same device here
    assert loader.MODEL_CACHE.loads == loads
    bf16 = load("v1", dtype="bfloat16")
    assert bf16 is not first and bf16.engine is not first.engine
    assert bf16.engine.dtype == torch.bfloat16 and first.engine.dtype == torch.float32
    assert loader.MODEL_CACHE.loads == loads + 1
    assert load("v1", dtype="bfloat16") is bf16 and loader.MODEL_CACHE.loads == loads + 1


def test_model_memory_size(models):
    model = load("v2")
    engine = model.engine
    cfg = engine.config
    weights = sum(p.numel() * p.element_size() for m in (engine.model, engine.vae) for p in m.parameters())
    kv = loader.kv_cache_bytes(engine)
    per_layer = 2 * cfg.lm.num_key_value_heads * cfg.max_length * cfg.lm.head_dim * 4
    assert kv >= per_layer * cfg.lm.num_hidden_layers
    assert loader.model_bytes(engine) >= weights + kv
    assert model.base.managed.size == loader.model_bytes(engine)
    assert model.base.managed.is_loaded()  # outside ComfyUI the model is simply resident


def test_low_vram_shares_the_model_and_leaves_the_vae_unmanaged(models):
    """Low-VRAM is a per-loader setting on the shared engine: the AudioVAE leaves ComfyUI's managed module and
    size (it stays on the CPU), decoding goes piecewise, the audio is the same, nothing is reloaded."""
    normal = load("v2")
    expected, _ = speak(normal, seed=8)
    normal_size = normal.base.managed.size
    loads = loader.MODEL_CACHE.loads
    low = load("v2", low_vram=True)
    assert low is not normal and low.engine is normal.engine and "low VRAM" in repr(low)
    got, _ = speak(low, seed=8)
    engine, managed = low.engine, low.base.managed
    assert engine.low_vram and engine.decode_chunk_frames > 0 and engine.vae_device.type == "cpu"
    assert "vae" not in dict(managed.module.named_children())
    vae_bytes = sum(t.numel() * t.element_size() for t in (*engine.vae.parameters(), *engine.vae.buffers()))
    assert vae_bytes > 0 and managed.size == loader.model_bytes(engine) == normal_size - vae_bytes
    torch.testing.assert_close(got["waveform"], expected["waveform"], rtol=0, atol=1e-6)
    assert got["sample_rate"] == expected["sample_rate"]
    again, _ = speak(normal, seed=8)  # the other loader switches it back
    assert not engine.low_vram and "vae" in dict(managed.module.named_children())
    assert managed.size == loader.model_bytes(engine) == normal_size
    assert torch.equal(again["waveform"], expected["waveform"])
    assert loader.MODEL_CACHE.loads == loads


def test_missing_model_folder(models):
    with pytest.raises(FileNotFoundError, match=r"'no-such-model' was not found.*Put the checkpoint folder there"):
        load("no-such-model")


def test_official_model_is_downloaded_into_the_models_folder(models, tmp_path, monkeypatch):
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(tmp_path)])
    try:
        calls = []
        real = loader.checkpoint.download

        def record(repo_id, target, source="huggingface", progress=True):
            calls.append((repo_id, target, source))
            return real(repo_id, target, source=source, progress=progress)

        monkeypatch.setattr(loader.checkpoint, "download", record)
        monkeypatch.setitem(sys.modules, "modelscope", None)  # as if not installed (and never touch the network)
        with pytest.raises(DownloadError, match="modelscope"):  # not installed: a clear message, no crash
            load("VoxCPM1.5", source="modelscope")
        assert calls == [("openbmb/VoxCPM1.5", tmp_path / "VoxCPM1.5", "modelscope")]
    finally:
        comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(models)])


def test_incomplete_official_folder_is_downloaded_again(models, tmp_path, monkeypatch):
    (tmp_path / "VoxCPM-0.5B").mkdir()
    (tmp_path / "VoxCPM-0.5B" / "config.json").write_text("{}")  # an interrupted download
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(tmp_path)])
    try:
        calls = []
        monkeypatch.setattr(loader.checkpoint, "download",
                            lambda repo_id, target, source="huggingface", progress=True: calls.append(target) or
                            loader.checkpoint.find_checkpoint_files(target))
        with pytest.raises(FileNotFoundError, match="incomplete"):
            load("VoxCPM-0.5B")
        assert calls == [tmp_path / "VoxCPM-0.5B"]
    finally:
        comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(models)])


def test_local_folder_named_like_an_official_model_is_not_downloaded(models, tmp_path, tiny_v2):
    shutil.copytree(tiny_v2, tmp_path / "VoxCPM2")
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(tmp_path)])
    try:
        assert loader.resolve_model("VoxCPM2") == tmp_path / "VoxCPM2"
        assert load("VoxCPM2").sample_rate == 48000
    finally:
        comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(models)])


def test_corrupt_weights(models, tmp_path, tiny_v1):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_v1, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(tmp_path)])
    try:
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            load("broken")
        (broken / "model.safetensors").unlink()
        with pytest.raises(FileNotFoundError, match="incomplete: missing model.safetensors"):
            load("broken")
    finally:
        comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(models)])


def test_bad_device_and_dtype(models):
    with pytest.raises(ValueError, match="dtype"):
        load("v1", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load("v1", device="cuda")


def test_missing_lora_file(models):
    with pytest.raises(FileNotFoundError, match="models/loras/voxcpm"):
        load("v1", lora="voxcpm/missing.safetensors")


# ------------------------------------------------------------------------------------------------- voices

def test_choose_mode_table():
    cm = voice_mod.choose_mode
    assert cm(1, True, True, False) == "continuation"
    assert cm(2, True, True, False) == "continuation"
    assert cm(2, True, False, False) == "reference"
    assert cm(2, False, False, True) == "reference"
    assert cm(2, True, True, True) == "ref_continuation"
    bad = [((1, False, True, False), "no prompt audio"), ((2, False, True, True), "no prompt audio"),
           ((1, False, False, False), "connect prompt_audio"), ((2, False, False, False), "or reference_audio"),
           ((1, True, True, True), "needs a VoxCPM2"), ((1, False, False, True), "needs a VoxCPM2"),
           ((1, True, False, False), "need the transcript"), ((2, True, False, True), "cannot be combined")]
    for args, message in bad:
        with pytest.raises(ValueError, match=message):
            cm(*args)


@pytest.mark.parametrize("kind", ["v1", "v1_5", "v2"])
def test_continuation_voice_and_synthesis(models, kind):
    model = load(kind)
    voice = encode(model, clip(SECONDS[kind]), "hello world")
    assert voice.mode == "continuation" and voice.voice.prompt_text == "hello world"
    assert "continuation" in repr(voice) and "tensor" not in repr(voice)
    audio, seed = speak(model, "hello world", voice, seed=5)
    wav = audio["waveform"]
    assert audio["sample_rate"] == RATES[kind] and seed == 5
    assert wav.dtype == torch.float32 and wav.device.type == "cpu" and wav.dim() == 3 and wav.shape[:2] == (1, 1)
    assert wav.shape[2] > 0 and torch.isfinite(wav).all()


def test_v2_reference_modes(models):
    model = load("v2")
    by_prompt = encode(model, clip(0.5, seed=1))  # a clip without transcript is used as the reference
    assert by_prompt.mode == "reference" and by_prompt.voice.prompt_feat is None
    by_ref = encode(model, reference_audio=clip(0.5, seed=1))
    assert by_ref.mode == "reference"
    assert torch.equal(by_prompt.voice.ref_feat, by_ref.voice.ref_feat)
    both = encode(model, clip(0.5, seed=2), "hello world", clip(0.5, seed=3))
    assert both.mode == "ref_continuation"
    for voice in (by_prompt, both):
        audio, _ = speak(model, "hello world", voice)
        assert audio["sample_rate"] == 48000 and audio["waveform"].shape[2] > 0


def test_voice_cache(models):
    model = load("v2")
    a = clip(0.5, seed=7)
    first = encode(model, a)
    encodes = voice_mod.VOICE_CACHE.encodes
    same_clip_new_tensor = {"waveform": a["waveform"].clone(), "sample_rate": a["sample_rate"]}
    assert encode(model, same_clip_new_tensor) is first  # same content: not encoded again
    assert voice_mod.VOICE_CACHE.encodes == encodes
    assert encode(model, a, "hello world") is not first  # transcript is part of the key
    assert encode(model, clip(0.5, seed=8)) is not first  # other audio
    assert encode(model, a, trim=False) is not first  # trimming changes the clip
    assert voice_mod.VOICE_CACHE.encodes == encodes + 3
    assert encode(load("v2", dtype="bfloat16"), a) is not first  # other model


def test_prompt_audio_is_not_modified(models):
    a = clip(0.5, seed=9)
    before = a["waveform"].clone()
    encode(load("v2"), a)
    assert torch.equal(a["waveform"], before)


def test_bad_prompt_audio(models):
    v1, v2 = load("v1"), load("v2")
    silent = {"waveform": torch.zeros(1, 1, 16000), "sample_rate": 16000}
    nan = clip(0.5)
    nan["waveform"][0, 0, 100] = float("nan")
    cases = [
        (v1, dict(prompt_text="hello world"), "no prompt audio"),
        (v1, dict(prompt_audio=clip(0.5)), "need the transcript"),
        (v1, dict(prompt_audio=clip(0.52), prompt_text="hi", reference_audio=clip(0.5)), "needs a VoxCPM2"),
        (v2, dict(), "connect prompt_audio"),
        (v2, dict(prompt_audio=silent), "silent"),
        (v2, dict(prompt_audio={"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}), "empty"),
        (v2, dict(prompt_audio=nan), "NaN"),
        (v2, dict(prompt_audio=clip(0.2)), r"0\.20 s long.*5-30 s"),
        (v2, dict(prompt_audio=clip(2.0), max_seconds=1.0), r"2\.0 s long, more than max_seconds=1"),
        (v2, dict(prompt_audio={"waveform": torch.randn(2, 1, 8000), "sample_rate": 16000}), "batch of 2"),
        (v2, dict(prompt_audio="file.wav"), "expected an AUDIO value"),
    ]
    for model, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            encode(model, **kwargs)


def test_silence_trim(models):
    rate = 16000
    speech = torch.randn(1, rate // 2) * 0.3
    padded = torch.cat([torch.zeros(1, rate), speech, torch.zeros(1, rate)], dim=1)
    trimmed = audio_io.trim_silence(padded, rate)
    assert rate // 2 <= trimmed.shape[1] <= rate // 2 + int(0.25 * rate)
    assert torch.equal(audio_io.trim_silence(torch.zeros(1, rate), rate), torch.zeros(1, rate))
    # a 1.5 s clip of which 1 s is silence fits the tiny model only after trimming
    model = load("v2")
    voice = encode(model, {"waveform": padded[None, :, rate // 2:], "sample_rate": rate})
    assert voice.voice.ref_feat.shape[0] < 150


# ------------------------------------------------------------------------------------------------- synthesis

@pytest.mark.parametrize("kind", ["v1", "v1_5", "v2"])
def test_zero_shot_sample_rates_and_seed(models, kind):
    model = load(kind)
    a, seed_a = speak(model, "hello world", seed=11)
    b, _ = speak(model, "hello world", seed=11)
    c, _ = speak(model, "hello world", seed=12)
    assert a["sample_rate"] == RATES[kind] and seed_a == 11
    assert torch.equal(a["waveform"], b["waveform"])  # same seed, same audio
    assert a["waveform"] is not b["waveform"]  # always a new tensor
    assert a["waveform"].shape != c["waveform"].shape or not torch.equal(a["waveform"], c["waveform"])
    assert a["waveform"].shape[2] % model.engine.config.samples_per_patch == 0


def test_style_voice_design(models):
    v2 = load("v2")
    request = synth.build_request(v2, "hello world", None, " (a calm [old] voice)（slow） ")
    assert request.text == "(a calm old voice slow)hello world"
    audio, _ = speak(v2, "hello world", style="a calm voice")
    assert audio["waveform"].shape[2] > 0
    reference = encode(v2, clip(0.5, seed=4))
    assert synth.build_request(v2, "hello", reference, "calm").text == "(calm)hello"
    speak(v2, "hello world", reference, style="calm")  # controllable cloning runs


def test_style_rejected_where_it_would_be_read_aloud(models):
    v1, v2 = load("v1"), load("v2")
    with pytest.raises(ValueError, match="needs a VoxCPM2"):
        speak(v1, "hello world", style="calm")
    continuation = encode(v2, clip(0.5, seed=5), "hello world")
    with pytest.raises(ValueError, match="cannot steer a continuation voice"):
        speak(v2, "hello world", continuation, style="calm")
    both = encode(v2, clip(0.5, seed=5), "hello world", clip(0.5, seed=6))
    with pytest.raises(ValueError, match="cannot steer a ref_continuation voice"):
        speak(v2, "hello world", both, style="calm")
    with pytest.raises(ValueError, match="only brackets"):
        speak(v2, "hello world", style="( )")
    assert synth.build_request(v1, "hello", None, "   \n").text == "hello"  # blank style = none


def test_empty_text(models):
    model = load("v2")
    for text in ("", "   \n "):
        with pytest.raises(ValueError, match="text is empty"):
            speak(model, text)
    with pytest.raises(ValueError, match="empty after normalize"):
        speak(model, "**  **\n---", normalize=True)
    validate = N["VoxCPMSynthesize"].VALIDATE_INPUTS
    assert validate(text="") == "text is empty: type the words to speak"
    assert validate(text=None) is True and validate(text="hi") is True  # None = linked input


def test_voice_from_another_model(models):
    voice = encode(load("v1"), clip(0.52), "hello world")
    with pytest.raises(ValueError, match="different model generation"):
        speak(load("v2"), "hello world", voice)
    voice_15 = encode(load("v1_5"), clip(0.6), "hello world")
    with pytest.raises(ValueError, match="different model generation"):
        speak(load("v1"), "hello world", voice_15)


def test_wrong_socket_values(models):
    with pytest.raises(ValueError, match="Load VoxCPM"):
        speak("not a model")
    with pytest.raises(ValueError, match="VoxCPM Prompt Audio"):
        speak(load("v2"), voice="not a voice")


def test_normalize_text():
    nt = synth.normalize_text
    assert nt("# Title\n\nSome **bold** and *italic* and `code`.\n- item one\n- item two") == \
        "Title. Some bold and italic and code. item one. item two."
    assert nt("See [the docs](http://x.y/z) ![pic](a.png) now!") == "See the docs pic now!"
    assert nt("x * y = 3 and snake_case_name stay") == "x * y = 3 and snake_case_name stay."
    assert nt("你好\n世界！") == "你好。 世界！"
    assert nt("[laughing] ha,\n   ha  ") == "[laughing] ha, ha."
    assert nt("> quoted\n***\n<b>tag</b> text") == "quoted. tag text."


def test_normalize_changes_what_is_spoken(models):
    model = load("v2")
    plain, _ = speak(model, "hello world.", seed=3)
    marked, _ = speak(model, "**hello** _world_", seed=3, normalize=True)
    assert torch.equal(plain["waveform"], marked["waveform"])


def test_progress_has_true_total(models, progress):
    model = load("v2")
    request = synth.build_request(model, "hello world", None, "", False, 2.0, 4, 0.0, False)
    total = synth.patch_budget(request)
    engine = model.engine
    seq = engine.build_sequence("hello world", None)
    assert total == engine.max_patches(seq, request.options)
    audio, _ = speak(model, "hello world")
    patches = audio["waveform"].shape[2] // engine.config.samples_per_patch
    assert progress[0] == (0, total)
    assert all(t == total for _, t in progress)
    assert [v for v, _ in progress[1:]] == list(range(1, patches + 1))


def test_max_seconds_caps_length(models, progress):
    model = load("v2")
    per_patch = model.engine.config.samples_per_patch / model.sample_rate
    audio, _ = speak(model, "hello world", max_seconds=2 * per_patch)
    assert progress[0][1] == 2
    assert audio["waveform"].shape[2] <= 2 * model.engine.config.samples_per_patch
    assert synth.max_patches_for(model.engine, 0) == 4096
    assert synth.max_patches_for(model.engine, 1.0) == math.ceil(1.0 / per_patch)


def test_interrupt_mid_generation_then_normal_run(models, progress):
    model = load("v2")
    voice = encode(model, clip(0.5, seed=12))
    expected, _ = speak(model, "hello world", voice, seed=21)

    def interrupt_at_two(value, total):
        progress.append((value, total))
        if value == 2:
            comfy.request_interrupt()

    comfy.set_fallback_progress_hook(interrupt_at_two)
    progress.clear()
    with pytest.raises(comfy.Interrupted):
        speak(model, "hello world", voice, seed=21)
    assert progress[-1][0] == 2  # stopped right after the second patch
    comfy.set_fallback_progress_hook(None)
    again, _ = speak(model, "hello world", voice, seed=21)
    assert torch.equal(again["waveform"], expected["waveform"])  # the model is intact


def test_error_leaves_model_usable(models):
    model = load("v2")
    expected, _ = speak(model, "hello world", seed=2)
    with pytest.raises(ValueError):
        # too long for the tiny model's 256 positions in one pass (long_text would split it)
        speak(model, "hello world " * 200, seed=2, long_text=False)
    with pytest.raises(ValueError):
        speak(model, "hello world", seed=2, steps=0)
    again, _ = speak(model, "hello world", seed=2)
    assert torch.equal(again["waveform"], expected["waveform"])


def test_retry_settings_reach_the_engine(models):
    model = load("v2")
    request = synth.build_request(model, "hello", None, "", False, 1.5, 7, 0.0, True, 5, 3.5, seed=9)
    o = request.options
    assert (o.cfg_value, o.inference_timesteps, o.retry_badcase, o.retry_badcase_max_times,
            o.retry_badcase_ratio_threshold) == (1.5, 7, True, 5, 3.5)
    assert synth.build_request(model, "hello", None, stream=True).options.retry_badcase is False
    with pytest.raises(ValueError, match="seed"):
        synth.build_request(model, "hello", None, seed=-1)
    audio, _ = speak(model, "hello world", retry_badcase=True, retry_max_times=2, retry_ratio=2.0)
    assert audio["waveform"].shape[2] > 0


# ------------------------------------------------------------------------------------------------- LoRA

def write_lora(engine, folder, seed=0, rank=2, alpha=None, config_alpha=None, bad_shape=False):
    """A LoRA in the official layout for a loaded tiny engine: lora_A/lora_B for every attention q/v projection."""
    from safetensors.torch import save_file

    from voxcpm_engine.lora import adaptable_layers

    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, layer in adaptable_layers(engine.model).items():
        if name.endswith(("q_proj", "v_proj")):
            fan_in = layer.in_features + (1 if bad_shape else 0)
            state[f"{name}.lora_A"] = 0.5 * torch.randn(rank, fan_in, generator=g)
            state[f"{name}.lora_B"] = 0.5 * torch.randn(layer.out_features, rank, generator=g)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = {"lora_alpha": str(alpha)} if alpha is not None else None
    save_file(state, str(folder / "lora_weights.safetensors"), metadata=metadata)
    if config_alpha is not None:
        (folder / "lora_config.json").write_text(
            '{"base_model": "tiny", "lora_config": {"r": %d, "alpha": %s}}' % (rank, config_alpha))
    return folder


@pytest.fixture(scope="module")
def loras(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    engine = load("v2").engine
    write_lora(engine, root / "voxcpm" / "styled", seed=1, rank=2, config_alpha=4)  # lora_config.json
    write_lora(engine, root / "voxcpm" / "meta", seed=2, rank=2, alpha=1)  # safetensors metadata only
    write_lora(engine, root / "voxcpm" / "plain", seed=3, rank=4)  # rank from the shapes, the default alpha
    write_lora(engine, root / "voxcpm" / "broken", seed=4, bad_shape=True)
    (root / "voxcpm" / "styled" / "optimizer.pth").write_bytes(b"not a lora")  # trainer leftovers are not listed
    write_lora(engine, root / "not_voxcpm", seed=5)  # other models' LoRAs are not listed
    comfy.set_fallback_folders(comfy.LORA_FOLDER, [str(root)])
    yield root
    comfy.set_fallback_folders(comfy.LORA_FOLDER, [])


STYLED = "voxcpm/styled/lora_weights.safetensors"


def test_lora_list(loras):
    assert comfy.lora_files() == ["voxcpm/broken/lora_weights.safetensors", "voxcpm/meta/lora_weights.safetensors",
                                  "voxcpm/plain/lora_weights.safetensors", STYLED]
    assert N["LoadVoxCPM"].INPUT_TYPES()["required"]["lora"][0] == ["none"] + comfy.lora_files()


def test_lora_rank_and_alpha_sources(loras):
    for name, rank, alpha, source in [("styled", 2, 4.0, "lora_config.json"),
                                      ("meta", 2, 1.0, "metadata"), ("plain", 4, DEFAULT_ALPHA, "default")]:
        model = load("v2", lora=f"voxcpm/{name}/lora_weights.safetensors", strength=0.5)
        info = model.engine.lora
        assert (info.rank, info.alpha, info.strength) == (rank, alpha, 0.5) and source in info.alpha_source
        assert f"lora=lora_weights.safetensors@0.5" in repr(model)


def test_lora_on_off_strength_without_reloading(loras, models):
    base = load("v2")
    base_audio, _ = speak(base, seed=4)
    loads = loader.MODEL_CACHE.loads
    styled = load("v2", lora=STYLED)
    assert styled is not base and styled.engine is base.engine  # the base model is shared, not reloaded
    assert load("v2", lora=STYLED) is styled
    styled_audio, _ = speak(styled, seed=4)
    assert not torch.equal(styled_audio["waveform"], base_audio["waveform"]) or \
        styled_audio["waveform"].shape != base_audio["waveform"].shape
    half, _ = speak(load("v2", lora=STYLED, strength=0.5), seed=4)
    assert half["waveform"].shape != styled_audio["waveform"].shape or \
        not torch.equal(half["waveform"], styled_audio["waveform"])
    zero, _ = speak(load("v2", lora=STYLED, strength=0.0), seed=4)
    assert torch.equal(zero["waveform"], base_audio["waveform"])  # strength 0 is exactly the base model
    # switching back to "none" leaves no LoRA behind
    back = load("v2")
    assert back is base and back.engine.lora is None
    again, _ = speak(back, seed=4)
    assert torch.equal(again["waveform"], base_audio["waveform"])
    # two loaders on one base in one graph: each use gets its own LoRA state
    assert torch.equal(speak(styled, seed=4)[0]["waveform"], styled_audio["waveform"])
    assert torch.equal(speak(base, seed=4)[0]["waveform"], base_audio["waveform"])
    assert loader.MODEL_CACHE.loads == loads
    assert base.base.managed.size == loader.model_bytes(base.engine)


def test_bad_lora_is_refused_and_model_stays_clean(loras):
    base = load("v2")
    expected, _ = speak(base, seed=6)
    with pytest.raises(ValueError, match="lora_A"):
        load("v2", lora="voxcpm/broken/lora_weights.safetensors")
    assert base.engine.lora is None
    assert torch.equal(speak(base, seed=6)[0]["waveform"], expected["waveform"])


# ------------------------------------------------------------------------------------------------- batch

@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_batch_synthesize_gives_each_line_its_single_run_audio(models, progress, kind):
    model = load(kind)
    voice = encode(model, clip(SECONDS[kind]), "你好") if kind == "v1" else None
    lines = ["hello world", "你好世界", "the quick brown fox"]
    clips, seeds = N["VoxCPMBatchSynthesize"]().synthesize(
        model, "\n".join(lines) + "\n\n", seed=40, steps=4, retry_badcase=False, batch_size=2, voice=voice)
    assert seeds == [40, 41, 42] and len(clips) == 3
    assert progress and progress[-1][0] == progress[-1][1]  # the bar ends full
    for line, seed, got in zip(lines, seeds, clips):
        alone = speak(model, line, voice=voice, seed=seed, steps=4)[0]
        assert got["sample_rate"] == RATES[kind] and got["waveform"].shape == alone["waveform"].shape
        torch.testing.assert_close(got["waveform"], alone["waveform"], rtol=0, atol=1e-5)


def test_batch_synthesize_errors(models):
    model = load("v2")
    with pytest.raises(ValueError, match="texts is empty"):
        N["VoxCPMBatchSynthesize"]().synthesize(model, " \n \n")
    assert N["VoxCPMBatchSynthesize"].VALIDATE_INPUTS(texts="  ") == "texts is empty: write one text per line"
    assert N["VoxCPMBatchSynthesize"].OUTPUT_IS_LIST == (True, True)
