"""Tiny random SenseVoice Small and ZipEnhancer models in the official on-disk layout of each release.

The files are exactly the ones the real downloads contain (same names, same formats, same config keys), only with
small layer sizes and random weights, so the code that loads the real models (funasr's AutoModel, modelscope's
acoustic-noise-suppression pipeline) runs unchanged on them:

    SenseVoiceSmall/                          (iic/SenseVoiceSmall == FunAudioLLM/SenseVoiceSmall)
        configuration.json                    modelscope manifest; file_path_metas names the other files
        config.yaml                           encoder/model/tokenizer/frontend classes and their settings
        model.pt                              state dict of funasr's SenseVoiceSmall
        chn_jpn_yue_eng_ko_spectok.bpe.model  sentencepiece BPE with the rich tags as single pieces
        am.mvn                                global CMVN, Kaldi nnet1 text format, 80 mels x LFR 7 = 560
    speech_zipenhancer_ans_multiloss_16k_base/
        configuration.json                    task, pipeline/model type, the network's hyper-parameters
        pytorch_model.bin                     {"generator": state dict of modelscope's ZipEnhancer}

Building imports funasr / modelscope (several seconds each); the tests build each folder once per session.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

SENSEVOICE_BPE = "chn_jpn_yue_eng_ko_spectok.bpe.model"

# The rich tags SenseVoice emits (languages, events, emotions, ITN markers): single pieces in its vocabulary.
LANGUAGE_TAGS = ["zh", "en", "yue", "ja", "ko", "nospeech"]
EVENT_TAGS = ["Speech", "BGM", "Applause", "Laughter", "Cry", "Sneeze", "Breath", "Cough", "Sing", "Speech_Noise",
              "Event_UNK", "GBG"]
EMOTION_TAGS = ["HAPPY", "SAD", "ANGRY", "NEUTRAL", "FEARFUL", "DISGUSTED", "SURPRISED", "EMO_UNKNOWN"]
ITN_TAGS = ["withitn", "woitn"]
RICH_TAGS = [f"<|{t}|>" for t in LANGUAGE_TAGS + EVENT_TAGS + EMOTION_TAGS + ITN_TAGS]

_TRAINING_LINES = [
    "hello world this is a short test sentence",
    "the quick brown fox jumps over the lazy dog",
    "yes we can speak several languages here",
    "你好世界这是一个测试",
    "今天天气很好我们去公园",
    "こんにちは世界これはテストです",
    "안녕하세요 세계 이것은 시험입니다",
    "早晨你食咗飯未呀",
]

# The published config.yaml of SenseVoiceSmall; only encoder_conf's sizes are made small by the builder.
_SENSEVOICE_CONFIG = """\
encoder: SenseVoiceEncoderSmall
encoder_conf:
    output_size: {dim}
    attention_heads: {heads}
    linear_units: {ffn}
    num_blocks: {blocks}
    tp_blocks: {tp_blocks}
    dropout_rate: 0.1
    positional_dropout_rate: 0.1
    attention_dropout_rate: 0.1
    input_layer: pe
    pos_enc_class: SinusoidalPositionEncoder
    normalize_before: true
    kernel_size: 11
    sanm_shfit: 0
    selfattention_layer_type: sanm

model: SenseVoiceSmall
model_conf:
    length_normalized_loss: true
    sos: 1
    eos: 2
    ignore_id: -1

tokenizer: SentencepiecesTokenizer
tokenizer_conf:
  bpemodel: null
  unk_symbol: <unk>
  split_with_space: true

frontend: WavFrontend
frontend_conf:
    fs: 16000
    window: hamming
    n_mels: 80
    frame_length: 25
    frame_shift: 10
    lfr_m: 7
    lfr_n: 6
    cmvn_file: null

dataset: SenseVoiceCTCDataset
dataset_conf:
  index_ds: IndexDSJsonl
  batch_sampler: EspnetStyleBatchSampler
  data_split_num: 32
  batch_type: token
  batch_size: 14000
  max_token_length: 2000
  min_token_length: 60
  max_source_length: 2000
  min_source_length: 60
  max_target_length: 200
  min_target_length: 0
  shuffle: true
  num_workers: 4
  sos: ${{model_conf.sos}}
  eos: ${{model_conf.eos}}
  IndexDSJsonl: IndexDSJsonl
  retry: 20

train_conf:
  accum_grad: 1
  grad_clip: 5
  max_epoch: 20
  keep_nbest_models: 10
  avg_nbest_model: 10
  log_interval: 100
  resume: true
  validate_interval: 10000
  save_checkpoint_interval: 10000

optim: adamw
optim_conf:
  lr: 0.00002
scheduler: warmuplr
scheduler_conf:
  warmup_steps: 25000

"""

_SENSEVOICE_MANIFEST = {
    "framework": "pytorch",
    "task": "auto-speech-recognition",
    "model": {"type": "funasr"},
    "pipeline": {"type": "funasr-pipeline"},
    "model_name_in_hub": {"ms": "", "hf": ""},
    "file_path_metas": {
        "init_param": "model.pt",
        "config": "config.yaml",
        "tokenizer_conf": {"bpemodel": SENSEVOICE_BPE},
        "frontend_conf": {"cmvn_file": "am.mvn"},
    },
}


def _train_bpe(vocab_size: int = 160) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TRAINING_LINES * 4), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=1.0, user_defined_symbols=RICH_TAGS,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return model.getvalue()


def _write_cmvn(path: Path, dim: int = 560, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    shifts = -10.0 + 2.0 * rng.standard_normal(dim)  # the negated log-mel means
    scales = 0.25 + 0.02 * rng.standard_normal(dim)  # 1 / std
    fmt = " ".join
    path.write_text(
        "<Nnet>\n"
        f"<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {fmt(f'{v:.6f}' for v in shifts)} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {fmt(f'{v:.6f}' for v in scales)} ]\n"
        "</Nnet>\n", encoding="utf-8")


def build_tiny_sensevoice(folder: str | Path, *, dim: int = 32, heads: int = 2, ffn: int = 64, blocks: int = 2,
                          tp_blocks: int = 1, seed: int = 0) -> Path:
    """A random SenseVoice Small with the official five files (about 0.7 MB)."""
    import sentencepiece as spm
    from funasr.models.sense_voice.model import SenseVoiceSmall

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = _train_bpe()
    (folder / SENSEVOICE_BPE).write_bytes(bpe)
    vocab = spm.SentencePieceProcessor(model_proto=bpe).get_piece_size()
    (folder / "config.yaml").write_text(_SENSEVOICE_CONFIG.format(dim=dim, heads=heads, ffn=ffn, blocks=blocks,
                                                                  tp_blocks=tp_blocks), encoding="utf-8")
    (folder / "configuration.json").write_text(json.dumps(_SENSEVOICE_MANIFEST, indent=2), encoding="utf-8")
    _write_cmvn(folder / "am.mvn", seed=seed)
    torch.manual_seed(seed)
    encoder_conf = dict(output_size=dim, attention_heads=heads, linear_units=ffn, num_blocks=blocks,
                        tp_blocks=tp_blocks, dropout_rate=0.1, positional_dropout_rate=0.1,
                        attention_dropout_rate=0.1, input_layer="pe", pos_enc_class="SinusoidalPositionEncoder",
                        normalize_before=True, kernel_size=11, sanm_shfit=0, selfattention_layer_type="sanm")
    model = SenseVoiceSmall(encoder="SenseVoiceEncoderSmall", encoder_conf=encoder_conf, input_size=560,
                            vocab_size=vocab, sos=1, eos=2, ignore_id=-1, length_normalized_loss=True)
    torch.save(model.state_dict(), folder / "model.pt")
    return folder


# ------------------------------------------------------------------------------------------------- ZipEnhancer

def zipenhancer_manifest(dim: int = 8, heads: int = 1) -> dict:
    """configuration.json of iic/speech_zipenhancer_ans_multiloss_16k_base with small layer sizes."""
    kind = "speech_zipenhancer_ans_multiloss_16k_base"
    return {
        "framework": "pytorch",
        "task": "acoustic-noise-suppression",
        "pipeline": {"type": kind},
        "model": {
            "type": kind,
            "dense_channel": dim,
            "num_tsconformers": 4,
            "former_name": "Zipformer2DualPathEncoder",
            "former_conf": {
                "num_encoder_layers": [1, 1, 1, 1],
                "downsampling_factor": [1, 2, 2, 1],
                "f_downsampling_factor": [1, 2, 2, 1],
                "encoder_dim": [dim] * 4,
                "pos_dim": 8,
                "num_heads": heads,
                "query_head_dim": 4,
                "pos_head_dim": 4,
                "value_head_dim": 4,
                "feedforward_dim": [2 * dim] * 4,
                "cnn_module_kernel": 3,
                "causal": False,
                "encoder_unmasked_dim": dim,
                "warmup_batches": 4000.0,
            },
            "batch_first": True,
            "model_num_spks": 1,
        },
        "preprocessor": {},
    }


def build_tiny_zipenhancer(folder: str | Path, *, dim: int = 8, heads: int = 1, seed: int = 0) -> Path:
    """A random ZipEnhancer with the official two files (about 0.2 MB; dim 8 keeps CPU inference cheap)."""
    from modelscope.models.audio.ans.zipenhancer import AttrDict, ZipEnhancer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = zipenhancer_manifest(dim, heads)
    (folder / "configuration.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    conf = manifest["model"]
    torch.manual_seed(seed)
    net = ZipEnhancer(AttrDict(num_tsconformers=conf["num_tsconformers"], dense_channel=conf["dense_channel"],
                               former_conf=conf["former_conf"], batch_first=conf["batch_first"],
                               model_num_spks=conf["model_num_spks"]))
    torch.save({"generator": net.state_dict()}, folder / "pytorch_model.bin")
    return folder
