"""Shared fixtures: tiny random checkpoints (built once per session) and the reference implementation."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import tiny` from any test module

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_checkpoints")


@pytest.fixture(scope="session")
def tiny_v1(tiny_root) -> Path:
    return tiny.build_tiny_checkpoint(tiny_root / "v1", "v1")


@pytest.fixture(scope="session")
def tiny_v1_5(tiny_root) -> Path:
    return tiny.build_tiny_checkpoint(tiny_root / "v1_5", "v1_5")


@pytest.fixture(scope="session")
def tiny_v2(tiny_root) -> Path:
    return tiny.build_tiny_checkpoint(tiny_root / "v2", "v2")



def _aux_model(module: str, build: str, folder: Path) -> Path:
    """A tiny front-end model; skipped where the optional package is missing, unless VOXCPM_REQUIRE_FRONTENDS=1
    (CI sets it, so the real loading code can never be skipped silently there)."""
    import importlib
    import os

    if os.environ.get("VOXCPM_REQUIRE_FRONTENDS") != "1":
        pytest.importorskip(module)
    else:
        importlib.import_module(module)
    import aux_models

    return getattr(aux_models, build)(folder)


@pytest.fixture(scope="session")
def tiny_sensevoice(tiny_root) -> Path:
    """A tiny random SenseVoice Small in the official layout (folder named like the official one)."""
    return _aux_model("funasr", "build_tiny_sensevoice", tiny_root / "sensevoice" / "SenseVoiceSmall")


@pytest.fixture(scope="session")
def tiny_zipenhancer(tiny_root) -> Path:
    """A tiny random ZipEnhancer in the official layout (folder named like the official one)."""
    return _aux_model("modelscope.pipelines", "build_tiny_zipenhancer",
                      tiny_root / "zipenhancer" / "speech_zipenhancer_ans_multiloss_16k_base")

@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_root) -> Path:
    """A folder with only the synthetic tokenizer files."""
    folder = tiny_root / "tokenizer"
    folder.mkdir()
    tiny.write_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def reference_model():
    """reference_model(folder) -> the reference `voxcpm.core.VoxCPM` on that folder (one instance per folder)."""
    loaded = {}

    def load(folder):
        key = str(Path(folder).resolve())
        if key not in loaded:
            loaded[key] = tiny.reference_model(folder)
        return loaded[key]

    return load


@pytest.fixture
def patched_torchaudio_load():
    """The reference reads v1 prompt audio with torchaudio.load (needs torchcodec): read with soundfile instead."""
    with tiny.soundfile_torchaudio_load():
        yield
