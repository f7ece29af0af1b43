"""Long text, the voice library and dialogue on tiny checkpoints: chunking, exact joins, per-chunk seeds, voice files,
dialogue tracks and subtitles."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from package import load_package

pkg = load_package()
N = pkg.NODE_CLASS_MAPPINGS
comfy = sys.modules[pkg.__name__ + ".nodes.comfy"]
library = sys.modules[pkg.__name__ + ".nodes.library"]
synth = sys.modules[pkg.__name__ + ".nodes.synthesize"]
lf = sys.modules[pkg.__name__ + ".voxcpm_engine.longform"]
dlg = sys.modules[pkg.__name__ + ".voxcpm_engine.dialogue"]
vfile = sys.modules[pkg.__name__ + ".voxcpm_engine.voice"]
subs = sys.modules[pkg.__name__ + ".voxcpm_engine.subtitles"]
split_text = sys.modules[pkg.__name__ + ".voxcpm_engine.text_split"].split_text
GenerationOptions = sys.modules[pkg.__name__ + ".voxcpm_engine.engine"].GenerationOptions

OPTS = GenerationOptions(inference_timesteps=3, retry_badcase=False)
TEXT = "hello world. the quick brown fox. this is a test. hello world again."
EDITED = "hello world. the lazy dog jumps. this is a test. hello world again."


@pytest.fixture(scope="module")
def models(tiny_root, tiny_v1, tiny_v2, tmp_path_factory):
    voices = tmp_path_factory.mktemp("voices")
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(tiny_root)])
    comfy.set_fallback_folders(comfy.VOICE_FOLDER, [str(voices)])
    yield voices
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [])
    comfy.set_fallback_folders(comfy.VOICE_FOLDER, [])


def load(name):
    return N["LoadVoxCPM"]().load(name, "cpu", "auto", "huggingface", "none", 1.0)[0]


def clip(seconds=0.5, rate=22050, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"waveform": torch.randn(1, 1, int(seconds * rate), generator=g) * 0.3, "sample_rate": rate}


def encode(model, audio, text=""):
    return N["VoxCPMPromptAudio"]().encode(model, text, True, 30.0, audio, None)[0]


def speak(model, text, voice=None, seed=1, **kw):
    args = dict(style="", cfg=2.0, steps=3, seed=seed, normalize=False, max_seconds=0.0, retry_badcase=False,
                retry_max_times=3, retry_ratio=6.0, voice=voice)
    args.update(kw)
    return N["VoxCPMSynthesize"]().synthesize(model, text, **args)


# ------------------------------------------------------------------------------------------------- long form

def test_chunk_count_and_pauses_exact_to_the_sample(models):
    engine = load("v2").activate()
    texts = split_text(TEXT, 24)
    assert len(texts) == 4
    result = lf.Longform(engine, texts, None, OPTS, seed=5, join=lf.JoinOptions(120, 8)).run()
    pause = round(0.120 * engine.sample_rate)
    raw = result.chunk_waveforms
    assert len(result.chunks) == 4 and [c.text for c in result.chunks] == texts
    assert result.waveform.shape[0] == sum(w.shape[0] for w in raw) + 3 * pause
    for a, b in zip(result.chunks, result.chunks[1:]):
        assert b.start == a.end + pause
        assert torch.count_nonzero(result.waveform[a.end:b.start]) == 0
    assert result.chunks[0].start == 0 and result.chunks[-1].end == result.waveform.shape[0]
    for i, (c, w) in enumerate(zip(result.chunks, raw)):  # each chunk's samples, faded only next to a pause
        faded = lf.fade_edges(w, round(0.008 * engine.sample_rate), start=i > 0, end=i < 3)
        assert torch.equal(result.waveform[c.start:c.end], faded)
    # no pause: overlap by the crossfade; no pause and no crossfade: plain concatenation
    xf = lf.Longform(engine, texts, None, OPTS, seed=5, join=lf.JoinOptions(0, 8)).run()
    n = round(0.008 * engine.sample_rate)
    overlaps = [min(min(n, a.shape[0] // 2), b.shape[0] // 2) for a, b in zip(raw, raw[1:])]
    assert xf.waveform.shape[0] == sum(w.shape[0] for w in raw) - sum(overlaps)
    assert [b.start for b in xf.chunks[1:]] == [a.end - o for a, b, o in zip(xf.chunks, xf.chunks[1:], overlaps)]
    plain = lf.Longform(engine, texts, None, OPTS, seed=5, join=lf.JoinOptions(0, 0)).run()
    assert torch.equal(plain.waveform, torch.cat(raw))


def test_streaming_gives_the_same_samples(models):
    engine = load("v2").activate()
    for join in (lf.JoinOptions(100, 5), lf.JoinOptions(0, 5)):
        whole = lf.synthesize_longform(engine, TEXT, max_chars=24, options=OPTS, seed=2, join=join)
        pieces = list(lf.stream_longform(engine, TEXT, max_chars=24, options=OPTS, seed=2, join=join))
        assert [c.index for c, _ in pieces] == [0, 1, 2, 3]
        assert torch.equal(torch.cat([p for _, p in pieces]), whole.waveform)


@pytest.mark.parametrize("with_voice", [False, True], ids=["frozen_voice", "reference_voice"])
def test_editing_one_sentence_regenerates_only_that_chunk(models, with_voice):
    model = load("v2")
    engine = model.activate()
    voice = encode(model, clip()).voice if with_voice else None
    a = lf.Longform(engine, split_text(TEXT, 24), voice, OPTS, seed=9).run()
    b = lf.Longform(engine, split_text(EDITED, 24), voice, OPTS, seed=9).run()
    assert [c.seed for c in a.chunks][::2] == [c.seed for c in b.chunks][::2]
    assert a.chunks[1].seed != b.chunks[1].seed
    for i in (0, 2, 3):
        assert torch.equal(a.chunk_waveforms[i], b.chunk_waveforms[i]), i
    assert not torch.equal(a.chunk_waveforms[1], b.chunk_waveforms[1])
    if not with_voice:  # the first chunk's voice, frozen for the rest
        assert a.frozen and a.voice.mode == "continuation" and a.voice.prompt_text.startswith("hello world.")
        assert torch.equal(a.voice.prompt_feat, b.voice.prompt_feat)
    else:
        assert a.voice is voice and not a.frozen
    other = lf.Longform(engine, split_text(TEXT, 24), voice, OPTS, seed=10).run()
    assert not torch.equal(other.chunk_waveforms[2], a.chunk_waveforms[2])  # the node's seed matters


def test_badcase_retry_per_chunk(models):
    engine = load("v1").activate()
    stuck = GenerationOptions(inference_timesteps=2, retry_badcase=True, retry_badcase_max_times=2,
                              retry_badcase_ratio_threshold=0.05)  # every chunk counts as stuck
    result = lf.Longform(engine, ["hello world.", "the quick brown fox."], None, stuck, seed=1).run()
    assert [c.attempts for c in result.chunks] == [2, 2]


def test_synthesize_node_long_text_subtitles_and_old_behaviour(models):
    model = load("v2")
    audio, seed, srt, voice = speak(model, TEXT, max_chars=24, pause_ms=100)
    cues = subs.parse_srt(srt)
    assert len(cues) == 4 and seed == 1 and cues[0].start == 0.0
    duration = audio["waveform"].shape[-1] / audio["sample_rate"]
    assert abs(cues[-1].end - duration) <= 0.0005
    for a, b in zip(cues, cues[1:]):
        assert abs((b.start - a.end) - 0.1) <= 0.0011  # the pause, to the millisecond of the SRT
    assert voice.mode == "continuation" and voice.preview is not None
    # short text (or long_text off): exactly the single-pass output, one cue over the whole audio
    short = speak(model, "hello world.")
    request = synth.build_request(model, "hello world.", None, "", False, 2.0, 3, 0.0, False, 3, 6.0, 1)
    assert torch.equal(short[0]["waveform"][0, 0], synth.run(request).waveform)
    assert len(subs.parse_srt(short[2])) == 1
    single = speak(model, TEXT, long_text=False)
    assert len(subs.parse_srt(single[2])) == 1
    vtt = speak(model, TEXT, max_chars=24, subtitle_format="vtt")[2]
    assert vtt.startswith("WEBVTT") and vtt.count("-->") == 4


def test_long_text_with_style_keeps_the_designed_voice(models):
    model = load("v2")
    audio, _, srt, voice = speak(model, TEXT, style="calm voice", max_chars=24)
    assert voice.mode == "continuation" and "calm" not in voice.voice.prompt_text
    assert audio["waveform"].shape[-1] > 0 and srt.count("-->") == 4


# ------------------------------------------------------------------------------------------------- voice library

def test_voice_file_round_trip_equals_the_voice(models, tmp_path):
    for name, text in (("v1", "hello world"), ("v2", "")):
        model = load(name)
        voice = encode(model, clip(0.52 if name == "v1" else 0.5), text)
        path = vfile.save_voice(tmp_path / f"{name}.safetensors", voice.voice, source_hash=voice.source_hash,
                                preview=voice.preview[0], preview_sample_rate=voice.preview[1])
        loaded = vfile.load_voice(path, version=model.version, sample_rate=model.sample_rate)
        v, w = voice.voice, loaded.voice
        assert (w.version, w.sample_rate, w.prompt_text, w.mode) == (v.version, v.sample_rate, v.prompt_text, v.mode)
        for x, y in ((v.prompt_feat, w.prompt_feat), (v.ref_feat, w.ref_feat)):
            assert (x is None and y is None) or torch.equal(x, y)
        assert loaded.source_hash == voice.source_hash and len(loaded.source_hash) == 64
        assert loaded.preview_sample_rate == 22050 and loaded.preview.shape[0] > 0
        assert loaded.metadata["generation"] == ("VoxCPM-0.5B" if name == "v1" else "VoxCPM2")


def test_save_and_load_voice_nodes(models):
    model = load("v2")
    voice = encode(model, clip(seed=3))
    saved_voice, name = N["VoxCPMSaveVoice"]().save(voice, "Narrator One")["result"]
    assert saved_voice is voice and name == "Narrator One"
    assert os.path.isfile(models / "Narrator One.safetensors")
    assert "Narrator One" in N["VoxCPMLoadVoice"].INPUT_TYPES()["required"]["voice"][0]  # listed on refresh
    assert N["VoxCPMLoadVoice"].VALIDATE_INPUTS(voice="Narrator One") is True
    assert "not in models/voxcpm/voices" in N["VoxCPMLoadVoice"].VALIDATE_INPUTS(voice="nobody")
    loaded, preview = N["VoxCPMLoadVoice"]().load(model, "Narrator One")
    assert torch.equal(loaded.voice.ref_feat, voice.voice.ref_feat) and loaded.mode == "reference"
    assert preview["sample_rate"] == 22050 and preview["waveform"].shape[:2] == (1, 1)
    a = speak(model, "hello world.", voice=voice, seed=4)[0]["waveform"]
    b = speak(model, "hello world.", voice=loaded, seed=4)[0]["waveform"]
    assert torch.equal(a, b)  # the loaded voice speaks exactly like the encoded one


def test_designed_voice_can_be_saved_and_reused(models):
    model = load("v2")
    _, _, _, designed = speak(model, "hello world.", style="calm voice", seed=7)
    N["VoxCPMSaveVoice"]().save(designed, "designed")
    loaded, preview = N["VoxCPMLoadVoice"]().load(model, "designed")
    assert loaded.mode == "continuation" and preview["sample_rate"] == 48000
    audio = speak(model, "this is a test.", voice=loaded)[0]
    assert audio["waveform"].shape[-1] > 0


def test_voice_refused_by_another_model_generation(models):
    v2, v1 = load("v2"), load("v1")
    N["VoxCPMSaveVoice"]().save(encode(v2, clip(seed=5)), "v2 voice")
    with pytest.raises(ValueError, match="made with VoxCPM2 .*connected model is VoxCPM-0.5B"):
        N["VoxCPMLoadVoice"]().load(v1, "v2 voice")


def test_existing_voice_is_never_overwritten_silently(models):
    model = load("v2")
    first, second = encode(model, clip(seed=11)), encode(model, clip(seed=12))
    node = N["VoxCPMSaveVoice"]()
    node.save(first, "keeper")
    before = (models / "keeper.safetensors").read_bytes()
    assert node.save(first, "keeper")["ui"]["text"][0].startswith("unchanged")  # same voice again: fine
    with pytest.raises(ValueError, match="already exists"):
        node.save(second, "keeper")
    assert (models / "keeper.safetensors").read_bytes() == before
    assert node.save(second, "keeper", overwrite=True)["ui"]["text"][0].startswith("replaced")
    assert torch.equal(N["VoxCPMLoadVoice"]().load(model, "keeper")[0].voice.ref_feat, second.voice.ref_feat)


@pytest.mark.parametrize("name", ["../evil", "..\\evil", "a/b", "/tmp/evil", "C:evil", ".hidden", "sub/../x", "",
                                  "   ", "con", "x\x00y"])
def test_path_escaping_names_are_refused(models, name):
    voice = encode(load("v2"), clip(seed=13))
    before = set(os.listdir(models)), set(os.listdir(models.parent))
    with pytest.raises(ValueError):
        N["VoxCPMSaveVoice"]().save(voice, name)
    assert isinstance(N["VoxCPMSaveVoice"].VALIDATE_INPUTS(name=name), str)
    assert (set(os.listdir(models)), set(os.listdir(models.parent))) == before


def test_names_are_sanitised(models):
    assert library.voice_name("  my voice?*  ") == "my voice__"
    assert library.voice_name("老王.safetensors") == "老王"
    voice = encode(load("v2"), clip(seed=14))
    assert N["VoxCPMSaveVoice"]().save(voice, "odd<name>|")["result"][1] == "odd_name__"
    assert os.path.isfile(models / "odd_name__.safetensors")


def test_damaged_or_foreign_files_are_refused(models, tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(models / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a VoxCPM voice file"):
        N["VoxCPMLoadVoice"]().load(load("v2"), "foreign")
    (models / "foreign.safetensors").unlink()
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="damaged"):
        vfile.load_voice(tmp_path / "junk.safetensors")


# ------------------------------------------------------------------------------------------------- dialogue

SCRIPT = """[Alice] hello world.
[Bob] (calm voice) the quick brown fox.
[pause:700ms]
[alice] this is a test.
[2] hello world.
[pause:0.25s]"""


def test_dialogue_tracks_and_subtitles_match_the_audio(models):
    model = load("v2")
    alice = encode(model, clip(seed=21))
    mix, tracks, srt = N["VoxCPMDialogue"]().speak(model, SCRIPT, "Alice, Bob", gap_ms=300, cfg=2.0, steps=3, seed=3,
                                                   max_chars=0, subtitle_format="srt", voice_1=alice)
    rate, T = mix["sample_rate"], mix["waveform"].shape[-1]
    assert tracks["waveform"].shape == (2, 1, T) and tracks["sample_rate"] == rate
    assert torch.allclose(tracks["waveform"].sum(dim=0), mix["waveform"][0])
    cues = subs.parse_srt(srt)
    assert [c.text.split(":")[0] for c in cues] == ["Alice", "Bob", "Alice", "Bob"]
    gaps = [round(b.start - a.end, 3) for a, b in zip(cues, cues[1:])]
    assert gaps == [0.3, 0.7, 0.3]  # the gap, or exactly the [pause] in its place
    assert abs(cues[-1].end + 0.25 - T / rate) <= 0.0011  # trailing pause
    for cue in cues:
        s, e = round(cue.start * rate), round(cue.end * rate)
        me, other = (0, 1) if cue.text.startswith("Alice") else (1, 0)
        assert torch.count_nonzero(tracks["waveform"][me, 0, s + 48:e - 48]) > 0
        assert torch.count_nonzero(tracks["waveform"][other, 0, s:e]) == 0  # silence where the other speaks


def test_dialogue_engine_timeline_is_exact(models):
    engine = load("v1").activate()
    items = dlg.parse_script("[A] hello world.\n[B] this is a test.\n[A] hello world.", ["A", "B"])
    result = dlg.render_dialogue(engine, items, ["A", "B"], {}, OPTS, seed=1, gap_ms=250)
    rate, gap = result.sample_rate, round(0.25 * engine.sample_rate)
    starts = [round(c.start * rate) for c in result.cues]
    ends = [round(c.end * rate) for c in result.cues]
    assert [s - e for e, s in zip(ends, starts[1:])] == [gap, gap]
    assert ends[-1] == result.mix.shape[0] and starts[0] == 0
    assert result.voices["A"].mode == "continuation" and result.voices["B"].mode == "continuation"  # frozen (v1)


def test_script_parsing_and_errors(models):
    items = dlg.parse_script("[Alice] (whisper) Hi. [pause:1s] Still me.\ncontinued here\n\n[spk2] Yo [laughing]",
                             ["Alice", "Bob"])
    assert items == [dlg.Line("Alice", "Hi.", "whisper", 1), dlg.Pause(1000.0, 1),
                     dlg.Line("Alice", "Still me. continued here", "whisper", 1),  # an untagged line continues
                     dlg.Line("Bob", "Yo [laughing]", "", 4)]
    with pytest.raises(ValueError, match=r"\[Carol\] is not one of the speakers"):
        dlg.parse_script("[Carol] hi", ["Alice", "Bob"])
    with pytest.raises(ValueError, match="start with a speaker tag"):
        dlg.parse_script("hi there", ["Alice"])
    with pytest.raises(ValueError, match="more than once"):
        dlg.parse_speakers("Alice, alice")
    with pytest.raises(ValueError, match="needs a VoxCPM2 model"):
        N["VoxCPMDialogue"]().speak(load("v1"), "[A] (calm) hello world.", "A", 300, 2.0, 3, 0, 0, "srt")
    continuation = encode(load("v1"), clip(0.52), "hello world")
    with pytest.raises(ValueError, match="voice_2 connected"):
        N["VoxCPMDialogue"]().speak(load("v1"), "[A] hello world.", "A", 300, 2.0, 3, 0, 0, "srt",
                                    voice_2=continuation)
    assert isinstance(N["VoxCPMDialogue"].VALIDATE_INPUTS(script="[X] hi", speakers="A"), str)


def test_subtitle_formats():
    cues = [subs.Cue(0.0, 1.5, "Hello there.", "Alice"), subs.Cue(1.49, 3723.004, "a < b & c")]
    srt = subs.to_srt(cues)
    assert "00:00:00,000 --> 00:00:01,490\nAlice: Hello there." in srt  # ends where the next cue starts
    assert "01:02:03,004" in srt
    vtt = subs.to_vtt(cues)
    assert vtt.startswith("WEBVTT") and "<v Alice>Hello there." in vtt and "a &lt; b &amp; c" in vtt
    assert [round(c.start, 3) for c in subs.parse_srt(srt)] == [0.0, 1.49]
