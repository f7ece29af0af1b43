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
