"""The command line writes a wav at the model's rate; bad arguments exit with a clear message."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from voxcpm_engine.__main__ import main


def test_cli_zero_shot_and_reference(tiny_v2, tmp_path, capsys):
    out = tmp_path / "out.wav"
    assert main(["--model", str(tiny_v2), "--text", "hello world", "--seed", "3", "--device", "cpu",
                 "--output", str(out)]) == 0
    wav, rate = sf.read(str(out))
    assert rate == 48000 and wav.size > 0 and wav.size % 60 == 0  # 60 samples per patch in the tiny v2
    ref = tmp_path / "ref.wav"
    sf.write(str(ref), np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.2, 16000)
    streamed = tmp_path / "streamed.wav"
    assert main(["--model", str(tiny_v2), "--text", "hello world", "--reference-audio", str(ref), "--seed", "3",
                 "--stream", "--device", "cpu", "--output", str(streamed)]) == 0
    assert "wrote" in capsys.readouterr().err


def test_cli_errors(tiny_v1, tmp_path, capsys):
    out = tmp_path / "x.wav"
    assert main(["--model", str(tmp_path / "nowhere"), "--text", "hi", "--output", str(out)]) == 1
    assert "nowhere" in capsys.readouterr().err
    ref = tmp_path / "ref.wav"
    sf.write(str(ref), np.ones(8000, dtype=np.float32) * 0.1, 16000)
    assert main(["--model", str(tiny_v1), "--text", "hi", "--reference-audio", str(ref), "--device", "cpu",
                 "--output", str(out)]) == 1
    assert "only supported by VoxCPM2" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_v1), "--text", "hi", "--prompt-audio", str(ref), "--output", str(out)])
