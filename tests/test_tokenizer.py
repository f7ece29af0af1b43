"""TextTokenizer == the reference: transformers-5 LlamaTokenizerFast.from_pretrained + mask_multichar_chinese_tokens."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from transformers import LlamaTokenizerFast

import tiny
from voxcpm_engine.tokenizer import TextTokenizer


def _reference_utils():
    # Load the single file: importing the `voxcpm` package would pull in its whole runtime (slow).
    root = Path(importlib.util.find_spec("voxcpm").submodule_search_locations[0])
    spec = importlib.util.spec_from_file_location("ref_model_utils", root / "model" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mask_multichar_chinese_tokens = _reference_utils().mask_multichar_chinese_tokens

TEXTS = tiny.CORPUS + [
    "Hello world, 你好世界！",  # mixed scripts
    "佢哋话今日好热，我哋去饮茶啦。",  # Cantonese, partly outside the vocabulary
    "巴适得板，要得，安逸惨了！",  # Sichuanese, partly outside the vocabulary
    "今天是2024年3月15日，气温23.5°C。",
    "AB:DE=1:2，△ABC∽△DEF，x≈3.14，y≠0",
    " hello", "hello ", "  hello  world  ", " ", "", "\t", "a\nb\tc",
    "€uro ™ 😀 é ü ß",  # € has byte pieces; ™ only some of them; the others none
    "(soft", "[laughing]hello", "(calm voice)hello world",
    "<s>hello</s>", "a<s>b", "a <s> b", "你好<unk>世界", "▁你好", "，你好", "中国人", "飯㗎",
    "x<|im_start|>你好 <|im_start|> y", "嗰啲嘢", "你们嗰啲",
]

_TOKEN = dict(lstrip=False, normalized=False, rstrip=False, single_word=False)


def _added(content, special=True, **over):
    return dict(_TOKEN, content=content, special=special, **over)


def _decoder(*extra):
    base = {"0": _added("<unk>"), "1": _added("<s>"), "2": _added("</s>")}
    base.update({str(400 + i): tok for i, tok in enumerate(extra)})
    return base


def _legacy_normalizer(j):
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    j["pre_tokenizer"] = None


def _more_added_tokens(j):
    j["added_tokens"] += [dict(_added("<|im_start|>"), id=1000), dict(_added("嗰啲", special=False), id=1001)]


# name -> (tokenizer_config.json update, tokenizer.json edit, drop special_tokens_map.json)
VARIANTS = {
    "save_pretrained": (None, None, False),
    "legacy_true": ({"legacy": True}, None, False),  # the released VoxCPM configs carry legacy: true
    "no_prefix_space": ({"add_prefix_space": False}, None, False),
    "added_tokens_decoder": ({"legacy": True, "added_tokens_decoder": _decoder(
        _added("<|im_start|>"), _added("嗰啲", special=False), _added("你们", special=False))}, None, False),
    "strip_added_token": ({"added_tokens_decoder": _decoder(_added("<|im_start|>", lstrip=True, rstrip=True))},
                          None, False),
    "split_special_tokens": ({"split_special_tokens": True}, None, False),
    "tokenizer_json_added_tokens": (None, _more_added_tokens, False),
    "ignored_legacy_normalizer": (None, _legacy_normalizer, False),
    "ignored_whitespace_pretokenizer": (None, lambda j: j.__setitem__("pre_tokenizer", {"type": "Whitespace"}),
                                        False),
    "additional_special_tokens": ({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}, None, False),
    "no_special_tokens_map": ({"bos_token": None, "eos_token": None, "unk_token": None}, None, True),
    "merges_as_lists": (None, lambda j: j["model"].__setitem__(
        "merges", [m.split(" ") if isinstance(m, str) else m for m in j["model"]["merges"]]), False),
}


def _edit_json(path: Path, edit):
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture(scope="module", params=list(VARIANTS))
def tokenizer_pair(request, tiny_tokenizer_dir, tmp_path_factory):
    config_update, json_edit, drop_map = VARIANTS[request.param]
    folder = tmp_path_factory.mktemp("tok") / request.param
    shutil.copytree(tiny_tokenizer_dir, folder)
    if config_update:
        _edit_json(folder / "tokenizer_config.json", lambda c: c.update(config_update))
    if json_edit:
        _edit_json(folder / "tokenizer.json", json_edit)
    if drop_map:
        (folder / "special_tokens_map.json").unlink()
    reference = mask_multichar_chinese_tokens(LlamaTokenizerFast.from_pretrained(str(folder)))
    return TextTokenizer.from_folder(folder), reference


@pytest.fixture(scope="module")
def ours(tiny_tokenizer_dir):
    return TextTokenizer.from_folder(tiny_tokenizer_dir)


def test_ids_match_reference(tokenizer_pair):
    ours, reference = tokenizer_pair
    for text in TEXTS:
        assert ours.tokenize(text) == reference.tokenize(text), text
        assert ours.encode(text) == reference(text) == ours(text), text


def test_multichar_chinese_tokens_are_split_without_space_prefix(ours):
    assert ours.backend.encode("你好世界", add_special_tokens=False).tokens == ["▁你好", "世界"]
    assert ours.tokenize("你好世界") == ["你", "好", "世", "界"]
    assert ours.tokenize("hello 你好") == ["▁hello", "你", "好"]  # the space goes with the "▁" of "▁你好"
    assert ours.tokenize("hello，你好") == ["▁hello", "，", "你", "好"]
    assert ours.tokenize("飯㗎") == ["▁", "飯㗎"]  # "㗎" (U+35CE) is outside U+4E00..U+9FFF: kept whole
    assert "▁你好" not in ours.multichar_tokens and {"你好", "世界", "中国人"} <= ours.multichar_tokens
    ids = ours("你好世界")
    assert ids == [ours.vocab[c] for c in "你好世界"]
    assert 1 not in ids and 2 not in ids  # never BOS / EOS


def test_transformers5_behaviour(ours):
    """What transformers 5 really does (the reference agrees: test_ids_match_reference)."""
    assert ours.tokenize(" hello") == ["▁hello"]  # a leading space is the Metaspace prefix, not an extra "▁"
    assert ours.tokenize("hello ") == ["▁hello", "▁"]
    assert ours.tokenize("€") == ["▁", "<0xE2>", "<0x82>", "<0xAC>"]  # byte fallback when every byte has a piece
    assert ours.tokenize("™😀é") == ["▁"]  # otherwise the character silently vanishes (no <unk>)
    assert ours.tokenize("a<s>b") == ["▁a", "<s>", "b"]  # special tokens are matched inside the text


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"No tokenizer.json in {tmp_path}"):
        TextTokenizer.from_folder(tmp_path)


def test_invalid_tokenizer_json(tmp_path, tiny_tokenizer_dir):
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json is not valid JSON"):
        TextTokenizer.from_folder(tmp_path)
    data = json.loads((tiny_tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"] = {"type": "Unigram", "vocab": [["a", 0.0]]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match="expected a BPE model"):
        TextTokenizer.from_folder(tmp_path)


@pytest.mark.parametrize("bad", [None, 3, b"hello", ["hello"]])
def test_non_string_input(ours, bad):
    with pytest.raises(TypeError, match="text must be a str"):
        ours.encode(bad)
