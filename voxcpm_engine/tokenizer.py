"""Text tokenizer: the checkpoint's BPE vocabulary with VoxCPM's character-level treatment of Chinese.

The reference loads `LlamaTokenizerFast.from_pretrained(folder)` (transformers 5), which keeps only the vocabulary and
merges of tokenizer.json and rebuilds the Llama pipeline around them: no normalizer, a non-splitting Metaspace
pre-tokenizer, BPE with byte fallback and no unk token (characters with no piece and no byte tokens vanish). Added /
special tokens come from tokenizer_config.json (or tokenizer.json and special_tokens_map.json). VoxCPM then splits
every multi-character pure-CJK token into single characters, dropping its "▁" prefix, and never adds BOS/EOS.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import Metaspace

SPACE = "▁"
# Named special tokens of a transformers tokenizer, in the order transformers registers them.
_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_LLAMA_DEFAULTS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
_ADDED_TOKEN_FIELDS = ("single_word", "lstrip", "rstrip", "normalized", "special")


def _is_cjk_word(token: str) -> bool:
    return len(token) >= 2 and all("\u4e00" <= c <= "\u9fff" for c in token)


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download the {what} of the checkpoint") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object; re-download the {what} of the checkpoint")
    return data


def _added_token(value, *, special: bool | None = None) -> AddedToken | None:
    """A str or serialized AddedToken dict (tokenizer.json / tokenizer_config.json) -> AddedToken."""
    if isinstance(value, AddedToken):
        return value
    if isinstance(value, str):
        return AddedToken(value, special=True if special is None else special)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        kw = {k: bool(value[k]) for k in _ADDED_TOKEN_FIELDS if k in value}
        if special is not None:
            kw["special"] = special
        return AddedToken(value["content"], **kw)
    return None


def _is_token_value(value) -> bool:
    return isinstance(value, (str, AddedToken)) or (isinstance(value, dict) and value.get("__type") == "AddedToken")


def _listed_tokens(folder: Path, tokenizer_json: dict, cfg: dict) -> list[AddedToken]:
    """The added tokens, in id order: tokenizer_config.json's added_tokens_decoder, else tokenizer.json's list
    (and then special_tokens_map.json overrides the named special tokens in `cfg`)."""
    decoder = cfg.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        tokens = [_added_token(v) for _, v in sorted(decoder.items(), key=lambda kv: int(kv[0]))]
    else:
        smap_path = folder / "special_tokens_map.json"
        if smap_path.is_file():
            for key, value in _read_json(smap_path, "tokenizer files").items():
                cfg[key] = _added_token(value, special=True) if isinstance(value, dict) else value
        listed = sorted(tokenizer_json.get("added_tokens") or [], key=lambda t: t.get("id", 0))
        tokens = [_added_token(t) for t in listed]
    return [t for t in tokens if t is not None]


class _Specs:
    """Added tokens and options of a folder, resolved the way transformers 5 `from_pretrained` does."""

    def __init__(self, folder: Path, tokenizer_json: dict):
        cfg_path = folder / "tokenizer_config.json"
        cfg = _read_json(cfg_path, "tokenizer files") if cfg_path.is_file() else {}
        self.added = _listed_tokens(folder, tokenizer_json, cfg)
        named = {k: cfg.get(k, _LLAMA_DEFAULTS.get(k)) for k in _NAMED_SPECIALS}
        named.update({k: v for k, v in cfg.items() if k.endswith("_token") and k not in named and _is_token_value(v)})
        extra = cfg.get("extra_special_tokens") or cfg.get("additional_special_tokens") or []
        if isinstance(extra, dict):  # dict form = more named tokens
            named.update(extra)
            extra = []
        by_content = {t.content: t for t in self.added}
        self.specials = [by_content.get(_content(v), v) for v in [*named.values(), *extra] if _content(v)]
        self.unk_token = _content(named["unk_token"])
        self.split_special_tokens = bool(cfg.get("split_special_tokens", False))
        # LlamaTokenizer: add_prefix_space (None -> True) and legacy (default False) pick the Metaspace scheme
        add_prefix_space = cfg.get("add_prefix_space")
        add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
        legacy = bool(cfg.get("legacy", False))
        self.prepend_scheme = ("always" if legacy else "first") if add_prefix_space else "never"

    def tokens_to_add(self) -> list[AddedToken]:
        """The listed added tokens, then every special token not among them (as transformers registers them)."""
        tokens = list(self.added)
        seen = {t.content for t in tokens}
        for value in self.specials:
            if _content(value) not in seen:
                seen.add(_content(value))
                tok = _added_token(value, special=True)
                if tok is not None:
                    tokens.append(tok)
        return tokens


def _content(value) -> str | None:
    if isinstance(value, AddedToken):
        return value.content
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _bpe_parts(folder: Path, data: dict) -> tuple[dict[str, int], list[tuple[str, ...]]]:
    model = data.get("model")
    where = folder / "tokenizer.json"
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise ValueError(f"{where}: expected a BPE model (field 'model.type'), got {kind!r}; VoxCPM checkpoints ship a "
                         "BPE tokenizer.json, re-download it")
    vocab = model.get("vocab")
    if isinstance(vocab, list):
        vocab = {(t[0] if isinstance(t, list) else t): i for i, t in enumerate(vocab)}
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{where}: field 'model.vocab' is missing or empty; re-download tokenizer.json")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    return vocab, merges


class TextTokenizer:
    """`tokenize(text)` -> pieces and `encode(text)` / `tokenizer(text)` -> ids, exactly like the reference wrapper."""

    def __init__(self, backend: Tokenizer, unk_token: str | None):
        self.backend = backend
        self.vocab = backend.get_vocab(with_added_tokens=True)
        self.multichar_tokens = frozenset(t for t in self.vocab if _is_cjk_word(t))
        self.unk_token = unk_token
        self.unk_id = self.vocab.get(unk_token) if unk_token is not None else None

    @classmethod
    def from_folder(cls, path: str | Path) -> "TextTokenizer":
        folder = Path(path)
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"No tokenizer.json in {folder}: the checkpoint folder must contain tokenizer.json "
                                    "(and tokenizer_config.json) from the model repository")
        data = _read_json(file, "tokenizer.json")
        vocab, merges = _bpe_parts(folder, data)
        specs = _Specs(folder, data)
        try:
            backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True, dropout=None))
        except Exception as e:
            raise ValueError(f"{file}: cannot build the BPE model from its vocab/merges ({e}); re-download it") from e
        backend.normalizer = None
        backend.pre_tokenizer = Metaspace(replacement=SPACE, prepend_scheme=specs.prepend_scheme, split=False)
        backend.add_tokens(specs.tokens_to_add())
        backend.encode_special_tokens = specs.split_special_tokens
        return cls(backend, specs.unk_token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def tokenize(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        pieces: list[str] = []
        for token in self.backend.encode(text, add_special_tokens=False).tokens:
            word = token.replace(SPACE, "")
            if word in self.multichar_tokens:
                pieces.extend(word)  # one piece per character, the "▁" prefix is dropped
            else:
                pieces.append(token)
        return pieces

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self.tokenize(text):
            index = self.vocab.get(piece, self.unk_id)
            if index is None:
                raise ValueError(f"token {piece!r} of {text!r} is not in the vocabulary and the tokenizer has no "
                                 "unk token")
            ids.append(index)
        return ids

    __call__ = encode
