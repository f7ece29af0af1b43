"""The example workflows: UI files (template browser) and their API twins agree, and the API twins run on tiny models."""
from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from package import ROOT, load_package

pkg = load_package()
N = pkg.NODE_CLASS_MAPPINGS
comfy = sys.modules[pkg.__name__ + ".nodes.comfy"]

WORKFLOWS = ROOT / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
CORE_NODES = {"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus", "TrimAudioDuration",
              "AudioConcat", "AudioAdjustVolume"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def api_twin(path: Path) -> Path:
    return WORKFLOWS / "api" / path.name


def widget_names(cls) -> list[str]:
    """Widget inputs in the order the frontend stores them in widgets_values."""
    spec = cls.INPUT_TYPES()
    names = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            if (isinstance(entry[0], list) or entry[0] in WIDGET_TYPES) and \
                    not (len(entry) > 1 and entry[1].get("forceInput")):  # forceInput: a socket, not a widget
                names.append(name)
    return names


def test_there_are_three_workflows_with_api_twins():
    assert {p.stem for p in UI_FILES} == {"voxcpm2_voice_design", "voxcpm_voice_cloning",
                                          "voxcpm2_controllable_cloning", "voxcpm2_stream_preview",
                                          "voxcpm2_long_article", "voxcpm2_dialogue",
                                          "voxcpm2_denoise_transcribe_cloning"}
    assert {p.name for p in (WORKFLOWS / "api").glob("*.json")} == {p.name for p in UI_FILES}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_and_api_use_the_same_nodes_and_links(path):
    ui = json.loads(path.read_text(encoding="utf-8"))
    api = json.loads(api_twin(path).read_text(encoding="utf-8"))
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    types = Counter(n["type"] for n in ui["nodes"])
    assert types == Counter(n["class_type"] for n in api.values())
    assert set(types) <= set(N) | CORE_NODES  # only our nodes and ComfyUI core nodes
    assert set(N) & set(types)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert all(n["mode"] == 0 for n in nodes.values())  # nothing muted or bypassed
    ui_links = set()
    for link_id, src, slot, dst, dst_slot, link_type in ui["links"]:
        entry = nodes[dst]["inputs"][dst_slot]
        assert entry["link"] == link_id and entry["type"] == link_type
        assert link_id in nodes[src]["outputs"][slot]["links"] and nodes[src]["outputs"][slot]["type"] == link_type
        ui_links.add((str(src), slot, str(dst), entry["name"]))
    api_links = {(v[0], v[1], node_id, name) for node_id, node in api.items()
                 for name, v in node["inputs"].items() if isinstance(v, list)}
    assert ui_links == api_links


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_widget_values_match_the_api_twin(path):
    ui = json.loads(path.read_text(encoding="utf-8"))
    api = json.loads(api_twin(path).read_text(encoding="utf-8"))
    for node in ui["nodes"]:
        if node["type"] not in N:
            continue
        cls = N[node["type"]]
        spec = {**cls.INPUT_TYPES()["required"], **cls.INPUT_TYPES().get("optional", {})}
        values = list(node["widgets_values"])
        constants = {k: v for k, v in api[str(node["id"])]["inputs"].items() if not isinstance(v, list)}
        from_ui = {}
        for name in widget_names(cls):
            if not values and name in cls.INPUT_TYPES().get("optional", {}):
                break  # a workflow saved before this optional widget existed: it loads with the default
            from_ui[name] = values.pop(0)
            if spec[name][1].get("control_after_generate"):
                assert values.pop(0) in ("fixed", "increment", "decrement", "randomize")
        assert not values, f"{node['type']}: extra widget values {values}"
        linked = {k for k, v in api[str(node["id"])]["inputs"].items() if isinstance(v, list)}
        from_ui = {k: v for k, v in from_ui.items() if k not in linked}  # a widget fed by a link (e.g. a transcript)
        assert from_ui == constants, node["type"]
        for name, value in constants.items():  # every constant is valid for its input
            kind, options = spec[name][0], spec[name][1] if len(spec[name]) > 1 else {}
            if isinstance(kind, list):
                assert value in kind or (name == "model" and value in pkg.nodes.loader.OFFICIAL_MODELS), name
            elif kind in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), name


# ------------------------------------------------------------------------------------------------- running

def run_api_workflow(workflow: dict, input_dir: Path) -> dict:
    """Execute an API workflow in dependency order: our nodes for real, LoadAudio/SaveAudio as small stand-ins."""
    import soundfile as sf

    results, saved = {}, {}

    def value(v):
        return results[v[0]][v[1]] if isinstance(v, list) else v

    pending = dict(workflow)
    while pending:
        for node_id, node in list(pending.items()):
            links = [v[0] for v in node["inputs"].values() if isinstance(v, list)]
            if any(link not in results for link in links):
                continue
            inputs = {k: value(v) for k, v in node["inputs"].items()}
            kind = node["class_type"]
            if kind == "LoadAudio":
                data, rate = sf.read(str(input_dir / inputs["audio"]), dtype="float32", always_2d=True)
                results[node_id] = ({"waveform": torch.from_numpy(data.T.copy())[None], "sample_rate": rate},)
            elif kind == "SaveAudio":
                saved[node_id] = inputs["audio"]
                results[node_id] = ()
            else:
                cls = N[kind]
                out = getattr(cls(), cls.FUNCTION)(**inputs)
                results[node_id] = out["result"] if isinstance(out, dict) else out  # {"ui": ..., "result": ...}
            del pending[node_id]
    return saved


# tiny models hold 256 positions: shorter long-text chunks there
TINY_OVERRIDES = {"voxcpm2_long_article": {"4": {"max_chars": 40}}}


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_workflow_runs_on_a_tiny_model(path, tiny_v2, tmp_path, request):
    shutil.copytree(tiny_v2, tmp_path / "models" / "VoxCPM2")  # stands in for the official VoxCPM2
    import soundfile as sf

    (tmp_path / "input").mkdir()
    g = torch.Generator().manual_seed(0)
    sf.write(str(tmp_path / "input" / "voxcpm_prompt.wav"), (0.3 * torch.randn(11025, 2, generator=g)).numpy(), 22050)
    comfy.set_fallback_folders(comfy.MODEL_FOLDER, [str(tmp_path / "models")])
    comfy.set_fallback_folders(comfy.OUTPUT_FOLDER, [str(tmp_path / "output")])
    if path.stem == "voxcpm2_denoise_transcribe_cloning":  # tiny ZipEnhancer and SenseVoice as well
        comfy.set_fallback_folders("zipenhancer", [str(request.getfixturevalue("tiny_zipenhancer").parent)])
        comfy.set_fallback_folders("sensevoice", [str(request.getfixturevalue("tiny_sensevoice").parent)])
    try:
        workflow = json.loads(api_twin(path).read_text(encoding="utf-8"))
        for node_id, inputs in TINY_OVERRIDES.get(path.stem, {}).items():
            workflow[node_id]["inputs"].update(inputs)
        saved = run_api_workflow(workflow, tmp_path / "input")
    finally:
        comfy.set_fallback_folders(comfy.MODEL_FOLDER, [])
        comfy.set_fallback_folders(comfy.OUTPUT_FOLDER, [])
        comfy.set_fallback_folders("zipenhancer", [])
        comfy.set_fallback_folders("sensevoice", [])
    assert len(saved) == 1
    audio = next(iter(saved.values()))
    assert audio["sample_rate"] == 48000 and audio["waveform"].shape[:2] == (1, 1) and audio["waveform"].shape[2] > 0
