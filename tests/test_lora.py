"""LoRA at inference: parity with the reference `voxcpm==2.0.3` on LoRA files written like the official trainer,
exact removal, strength, replacement, alpha resolution, and every error path leaving the model untouched."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from voxcpm_engine import Engine, GenerationOptions
from voxcpm_engine.checkpoint import CheckpointError
from voxcpm_engine.lora import DEFAULT_ALPHA_SOURCE, LoraError, LoraLinear, adaptable_layers

TEXT = "hello world"
SEED = 1234
TOL_FP32 = 1e-5
OPTIONS = GenerationOptions(inference_timesteps=5, max_len=6, retry_badcase=False)
RANK, ALPHA = 4, 8
LORA_SCALE = 0.1  # std of the random lora_A / lora_B values


# ------------------------------------------------------------------------------------------------- helpers

def reference_lora_config(version: int, **targets):
    from voxcpm.model.voxcpm import LoRAConfig

    projections = ["enc_to_lm_proj", "lm_to_dit_proj", "res_to_dit_proj"] + (["fusion_concat_proj"] * (version == 2))
    return LoRAConfig(enable_lm=True, enable_dit=True, enable_proj=True, r=RANK, alpha=ALPHA,
                      target_proj_modules=projections, **targets)


def reference_voxcpm(folder, lora_config, lora_dir=None):
    from voxcpm.core import VoxCPM

    return VoxCPM(str(folder), enable_denoiser=False, optimize=False, device="cpu", lora_config=lora_config,
                  lora_weights_path=None if lora_dir is None else str(lora_dir))


def write_official_lora(folder, out: Path, version: int, seed: int = 0, config=None) -> Path:
    """A LoRA folder as the official trainer saves it: the reference model's lora_A/lora_B (random, non-zero)."""
    config = config or reference_lora_config(version)
    model = reference_voxcpm(folder, config).tts_model
    g = torch.Generator().manual_seed(seed)
    state = {name: LORA_SCALE * torch.randn(p.shape, generator=g) for name, p in model.state_dict().items()
             if "lora_" in name}
    out.mkdir(parents=True)
    save_file(state, str(out / "lora_weights.safetensors"))
    (out / "lora_config.json").write_text(json.dumps({"base_model": str(folder), "lora_config": config.model_dump()}))
    return out


def adapted(model: nn.Module) -> int:
    """How many official layers (fused q/k/v, gate/up counted by part) run through a LoraLinear."""
    return sum(isinstance(layer.module, LoraLinear) for layer in adaptable_layers(model).values())


def wave(engine: Engine, seed: int = SEED) -> torch.Tensor:
    return engine.generate(TEXT, None, OPTIONS, seed=seed).waveform


def reference_wave(ref, seed: int = SEED) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.from_numpy(ref.generate(text=TEXT, inference_timesteps=OPTIONS.inference_timesteps,
                                         max_len=OPTIONS.max_len, retry_badcase=False))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"length differs: {a.shape} vs {b.shape}"
    return float((a - b).abs().max())


def snapshot(model: nn.Module) -> list:
    """Module identities and the identity/value of every LoRA tensor: equal snapshots = untouched model."""
    out = []
    for name, m in model.named_modules():
        out.append((name, type(m), id(m), id(getattr(m, "weight", None))))
        if isinstance(m, LoraLinear):
            out.append((name, m.scaling, id(m.lora_A), id(m.lora_B), m.lora_A.sum().item()))
    return out


def copy_lora(src: Path, dst: Path, state=None, config=True) -> Path:
    dst.mkdir(parents=True)
    state = load_file(src / "lora_weights.safetensors") if state is None else state
    save_file(state, str(dst / "lora_weights.safetensors"))
    if config:
        shutil.copy(src / "lora_config.json", dst / "lora_config.json")
    return dst


# ------------------------------------------------------------------------------------------------- fixtures

class Case:
    def __init__(self, folder, version, tmp):
        self.version = version
        self.lora_dir = write_official_lora(folder, tmp / "lora", version)
        self.engine = Engine.load(folder, device="cpu")
        self.base = wave(self.engine)
        self.info = self.engine.set_lora(self.lora_dir)
        self.with_lora = wave(self.engine)
        self.reference = reference_wave(reference_voxcpm(folder, reference_lora_config(version), self.lora_dir))
        self.engine.set_lora(None)


@pytest.fixture(scope="module")
def case_v1(tiny_v1, tmp_path_factory):
    return Case(tiny_v1, 1, tmp_path_factory.mktemp("lora_v1"))


@pytest.fixture(scope="module")
def case_v2(tiny_v2, tmp_path_factory):
    return Case(tiny_v2, 2, tmp_path_factory.mktemp("lora_v2"))


@pytest.fixture
def v1(case_v1):
    """The v1 case with no LoRA applied before and after the test."""
    assert case_v1.engine.lora is None
    yield case_v1
    case_v1.engine.set_lora(None)


# ------------------------------------------------------------------------------------------------- parity

@pytest.mark.parametrize("name", ["case_v1", "case_v2"])
def test_parity_with_reference(name, request):
    case = request.getfixturevalue(name)
    assert case.with_lora.numel() >= 2 * case.engine.config.samples_per_patch
    diff = max_diff(case.with_lora, case.reference)
    print(f"{name}: max abs diff vs reference {diff:.3g}")
    assert diff <= TOL_FP32
    # the LoRA really changes the output (otherwise the comparison proves nothing)
    assert case.base.shape != case.with_lora.shape or max_diff(case.base, case.with_lora) > 1e-3


@pytest.mark.parametrize("tiny", ["tiny_v1", "tiny_v2"])
def test_parity_with_some_parts_of_fused_projections(tiny, request, tmp_path):
    """Our q/k/v and gate/up are fused products: a LoRA on only some of the parts (q and gate in the LMs, v and up in
    the DiT) must still change just those parts' outputs, as the reference's separate layers do."""
    folder, version = request.getfixturevalue(tiny), int(tiny[-1])
    config = reference_lora_config(version, target_modules_lm=["q_proj", "gate_proj"],
                                   target_modules_dit=["v_proj", "up_proj"])
    lora_dir = write_official_lora(folder, tmp_path / "lora", version, config=config)
    names = {k.rsplit(".", 1)[0] for k in load_file(lora_dir / "lora_weights.safetensors")}
    assert {n.rpartition(".")[2] for n in names} >= {"q_proj", "gate_proj", "v_proj", "up_proj"}
    assert not any(n.endswith(("k_proj", "down_proj")) for n in names)
    engine = Engine.load(folder, device="cpu")
    base = wave(engine)
    info = engine.set_lora(lora_dir)
    ours = wave(engine)
    reference = reference_wave(reference_voxcpm(folder, config, lora_dir))
    assert info.modules == len(names)
    diff = max_diff(ours, reference)
    print(f"{tiny}: max abs diff vs reference {diff:.3g}")
    assert diff <= TOL_FP32
    assert base.shape != ours.shape or max_diff(base, ours) > 1e-3


@pytest.mark.parametrize("name", ["case_v1", "case_v2"])
def test_info(name, request):
    case = request.getfixturevalue(name)
    pairs = len(load_file(case.lora_dir / "lora_weights.safetensors")) // 2
    info = case.info
    assert (info.path, info.strength, info.rank, info.alpha) == (
        case.lora_dir / "lora_weights.safetensors", 1.0, RANK, ALPHA)
    assert (info.alpha_source, info.modules, info.scaling) == ("lora_config.json", pairs, ALPHA / RANK)
    expected_modules = 19 if case.version == 1 else 20  # LM q/k/v/o, DiT q/k/v/o, projections (+ fusion on v2)
    assert info.modules == expected_modules and info.base_model is not None


def test_layer_matches_reference_lora_linear():
    from voxcpm.modules.layers.lora import LoRALinear as Reference

    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    ref = Reference(base, r=RANK, alpha=ALPHA)
    nn.init.normal_(ref.lora_B)
    ours = LoraLinear(base, ref.lora_A.detach(), ref.lora_B.detach(), ALPHA / RANK)
    x = torch.randn(3, 5, 12)
    assert ours.weight is base.weight and ours.bias is base.bias
    assert torch.equal(ours(x), ref(x).detach())
    assert isinstance(ours.base_linear(), nn.Linear) and not isinstance(ours.base_linear(), LoraLinear)
    assert torch.equal(ours.base_linear()(x), base(x))


# ------------------------------------------------------------------------------------------------- apply / remove

def test_strength_zero_is_exactly_base(v1):
    v1.engine.set_lora(v1.lora_dir, strength=0.0)
    assert torch.equal(wave(v1.engine), v1.base)


def test_strength_scales_the_low_rank_path(v1):
    info = v1.engine.set_lora(v1.lora_dir, strength=0.5)
    scalings = {m.scaling for m in v1.engine.model.modules() if isinstance(m, LoraLinear)}
    assert info.strength == 0.5 and scalings == {ALPHA / RANK * 0.5} == {info.scaling}
    with pytest.raises(LoraError, match="strength"):
        v1.engine.set_lora(v1.lora_dir, strength=float("nan"))


def test_remove_restores_exact_base(v1):
    model = v1.engine.model
    params = {name: p for name, p in model.named_parameters()}
    keys = list(model.state_dict())
    rng = torch.get_rng_state()
    v1.engine.set_lora(v1.lora_dir)
    assert torch.equal(rng, torch.get_rng_state())  # no random init: seed=None generations are unaffected
    assert list(model.state_dict()) == keys  # LoRA tensors are not checkpoint entries
    assert all(p is params[name] for name, p in model.named_parameters())  # base weights shared, never copied
    assert adapted(model) == v1.engine.lora.modules
    assert v1.engine.set_lora(None) is None and v1.engine.lora is None
    assert not any(isinstance(m, LoraLinear) for m in model.modules())
    assert all(p is params[name] for name, p in model.named_parameters())
    assert torch.equal(wave(v1.engine), v1.base)


def test_switching_replaces(v1, tmp_path):
    other = copy_lora(v1.lora_dir, tmp_path / "other",
                      {k: 2 * v for k, v in load_file(v1.lora_dir / "lora_weights.safetensors").items()})
    v1.engine.set_lora(v1.lora_dir)
    info = v1.engine.set_lora(other)
    assert v1.engine.lora == info and info.path.parent == other
    assert adapted(v1.engine.model) == info.modules
    switched = wave(v1.engine)
    v1.engine.set_lora(None)
    v1.engine.set_lora(other)
    assert torch.equal(switched, wave(v1.engine))
    assert switched.shape != v1.with_lora.shape or not torch.equal(switched, v1.with_lora)
    v1.engine.set_lora(v1.lora_dir)  # and back: the first LoRA alone
    assert torch.equal(wave(v1.engine), v1.with_lora)


def test_bfloat16_runtime_dtype(tiny_v1, case_v1):
    engine = Engine.load(tiny_v1, device="cpu", dtype="bfloat16")
    base = wave(engine)
    engine.set_lora(case_v1.lora_dir)
    layers = [m for m in engine.model.modules() if isinstance(m, LoraLinear)]
    assert layers and all(m.lora_A.dtype == m.lora_B.dtype == torch.bfloat16 for m in layers)
    assert torch.isfinite(wave(engine)).all()
    engine.set_lora(None)
    assert torch.equal(wave(engine), base)


# ------------------------------------------------------------------------------------------------- file formats

def test_ckpt_is_read_with_weights_only(v1, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    state = load_file(v1.lora_dir / "lora_weights.safetensors")
    torch.save({"state_dict": state}, folder / "lora_weights.ckpt")
    shutil.copy(v1.lora_dir / "lora_config.json", folder)
    calls = []
    original = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    info = v1.engine.set_lora(folder)
    assert calls and all(kw.get("weights_only") is True for kw in calls)
    assert info.path.name == "lora_weights.ckpt" and info.alpha_source == "lora_config.json"
    assert torch.equal(wave(v1.engine), v1.with_lora)


def test_ckpt_with_objects_is_refused(v1, tmp_path):
    path = tmp_path / "lora_weights.ckpt"
    torch.save({"state_dict": {}, "args": argparse.Namespace(r=4)}, path)
    with pytest.raises(CheckpointError, match="Refusing"):
        v1.engine.set_lora(path)
    assert v1.engine.lora is None


def test_orig_mod_names_are_mapped(v1, tmp_path):
    state = load_file(v1.lora_dir / "lora_weights.safetensors")
    compiled = {k.replace("base_lm.", "base_lm._orig_mod."): v for k, v in state.items()}
    v1.engine.set_lora(copy_lora(v1.lora_dir, tmp_path / "compiled", compiled))
    assert torch.equal(wave(v1.engine), v1.with_lora)


# ------------------------------------------------------------------------------------------------- alpha

def test_alpha_default_is_the_official_default(v1, tmp_path):
    """No lora_config.json and no metadata: alpha 16, as the official package assumes (LoRAConfig default)."""
    file = copy_lora(v1.lora_dir, tmp_path / "bare", config=False) / "lora_weights.safetensors"
    info = v1.engine.set_lora(file)  # a file path works as well as the folder
    assert (info.alpha, info.alpha_source, info.scaling, info.base_model) == (16.0, DEFAULT_ALPHA_SOURCE,
                                                                              16.0 / RANK, None)


@pytest.mark.parametrize("key", ["lora_alpha", "alpha"])
def test_alpha_from_safetensors_metadata(v1, tmp_path, key):
    folder = tmp_path / "meta"
    folder.mkdir()
    save_file(load_file(v1.lora_dir / "lora_weights.safetensors"), str(folder / "lora_weights.safetensors"),
              metadata={key: "16"})
    info = v1.engine.set_lora(folder)
    assert (info.alpha, info.alpha_source, info.scaling) == (16.0, f"safetensors metadata {key!r}", 4.0)
    shutil.copy(v1.lora_dir / "lora_config.json", folder)  # lora_config.json wins over metadata
    assert v1.engine.set_lora(folder).alpha_source == "lora_config.json"


# ------------------------------------------------------------------------------------------------- errors

def _bad_state(state: dict, kind: str) -> tuple[dict, str]:
    """A broken copy of a valid LoRA state and the key the error must name."""
    state = dict(state)
    a = "res_to_dit_proj.lora_A"
    if kind == "unknown_module":
        key = "base_lm.layers.7.self_attn.q_proj.lora_A"
        state[key], state[key[:-1] + "B"] = state[a].clone(), state[a[:-1] + "B"].clone()
    elif kind == "not_linear":
        key = "base_lm.layers.0.input_layernorm.lora_A"
        state[key], state[key[:-1] + "B"] = state[a].clone(), state[a[:-1] + "B"].clone()
    elif kind == "shape":
        key = a
        state[key] = torch.randn(RANK, state[a].shape[1] + 1)
    elif kind == "a_without_b":
        key = a
        del state[a[:-1] + "B"]
    else:  # not a LoRA tensor at all
        key = "base_lm.norm.weight"
        state[key] = torch.ones(4)
    return state, key


@pytest.mark.parametrize("kind", ["unknown_module", "not_linear", "shape", "a_without_b", "not_lora_key"])
def test_bad_file_leaves_model_unchanged(case_v1, tmp_path, kind):
    engine = case_v1.engine
    info = engine.set_lora(case_v1.lora_dir)
    try:
        before = snapshot(engine.model)
        state, key = _bad_state(load_file(case_v1.lora_dir / "lora_weights.safetensors"), kind)
        folder = copy_lora(case_v1.lora_dir, tmp_path / kind, state)
        with pytest.raises(LoraError) as err:
            engine.set_lora(folder)
        assert key in str(err.value) and "lora_weights.safetensors" in str(err.value), str(err.value)
        assert snapshot(engine.model) == before and engine.lora == info
    finally:
        engine.set_lora(None)


def test_other_errors_leave_model_unchanged(v1, tmp_path):
    engine = v1.engine
    info = engine.set_lora(v1.lora_dir)
    before = snapshot(engine.model)
    empty = tmp_path / "empty"
    empty.mkdir()
    save_file({}, str(empty / "lora_weights.safetensors"))
    with pytest.raises(LoraError, match="holds no tensors"):
        engine.set_lora(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        engine.set_lora(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="lora_weights.safetensors or lora_weights.ckpt"):
        engine.set_lora(tmp_path)  # a folder without weights
    wrong_rank = copy_lora(v1.lora_dir, tmp_path / "rank")
    (wrong_rank / "lora_config.json").write_text(json.dumps({"lora_config": {"r": 8, "alpha": 16}}))
    with pytest.raises(LoraError, match="r=8 but the tensors"):
        engine.set_lora(wrong_rank)
    assert snapshot(engine.model) == before and engine.lora == info
    assert torch.equal(wave(engine), v1.with_lora)  # still usable, same LoRA output


def test_lora_of_another_model_is_refused(case_v1, case_v2):
    """A v1 LoRA on a v2 model: layers exist but shapes differ -> refused, nothing applied."""
    with pytest.raises(LoraError, match="do not fit"):
        case_v2.engine.set_lora(case_v1.lora_dir)
    assert case_v2.engine.lora is None
    assert not any(isinstance(m, LoraLinear) for m in case_v2.engine.model.modules())


def test_strength_must_be_a_number(v1):
    for bad in (True, "1.0x", float("inf")):
        with pytest.raises(LoraError, match="strength"):
            v1.engine.set_lora(v1.lora_dir, strength=bad)
    assert v1.engine.lora is None
