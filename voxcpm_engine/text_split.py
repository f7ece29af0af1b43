"""Split long text into chunks a TTS pass handles well: Chinese, English and mixed text.

Every position between two characters gets a rank: paragraph and sentence ends rank highest, then clause marks
(commas, semicolons, CJK 、), then line breaks, then word boundaries (spaces, and the gaps between CJK characters).
A position inside quotes or brackets ranks below every position outside them. A chunk that is over budget is cut at
its highest-ranked positions only, and the pieces are packed back together greedily up to the budget; pieces still
over budget are cut again one rank lower. So a chunk never ends inside a word or a number ("3.14", "1,000",
"12:30", "2024年"), after an abbreviation ("Dr.", "U.S.", "e.g."), or inside quotes or brackets, unless the text gives
no other way to stay within the budget (then the lowest-ranked cut that does is used; a single word longer than the
budget is the only thing ever cut inside).

Chunks are stripped substrings of the input, in order: joined, they give the input back up to whitespace.
"""
from __future__ import annotations

import re
import unicodedata

# Ranks of cut positions (outside quotes/brackets; inside, INSIDE is subtracted). WEAK: the space after an
# abbreviation or initial ("Dr. | Smith", "No. | 5"), used only when a run of words has no other boundary.
PARAGRAPH, SENTENCE, CLAUSE, LINE, WORD, WEAK = 6, 5, 4, 3, 2, 1
INSIDE = 10

DEFAULT_MAX_CHARS_LATIN = 200  # about 12-15 s of English speech
DEFAULT_MAX_CHARS_CJK = 80  # about 15-20 s of Chinese speech

_SENTENCE_END = set("。！？!?")
_ELLIPSIS = "…"
_CLAUSE_LATIN = set(",;:")
_CLAUSE_CJK = set("，；：、")
_DASHES = set("—–")
_OPEN_CLOSE = {"(": ")", "[": "]", "{": "}", "（": "）", "【": "】", "《": "》", "〈": "〉", "「": "」", "『": "』",
               "“": "”", "‘": "’", "«": "»"}
_CLOSE_OPEN = {v: k for k, v in _OPEN_CLOSE.items()}
_CLOSERS = set(_OPEN_CLOSE.values()) | {'"', "'"}
_OPENERS = set(_OPEN_CLOSE) | {'"'}
# Abbreviations after which a full stop does not end a sentence (compared lower-case, without the final dot).
ABBREVIATIONS = {
    "mr", "mrs", "ms", "mx", "dr", "prof", "sr", "jr", "st", "mt", "ft", "gen", "col", "lt", "sgt", "capt", "cmdr",
    "gov", "sen", "rep", "rev", "hon", "pres", "fr", "messrs", "mme", "mlle",
    "vs", "etc", "e.g", "i.e", "cf", "al", "approx", "dept", "inc", "ltd", "corp", "jan", "feb", "apr", "jun",
    "jul", "aug", "sep", "sept", "oct", "nov", "dec", "tue", "thu", "fri", "a.m", "p.m",
}
# ...and these only before a number ("No. 5", "Fig. 3", "p. 12"), since they also end sentences as words.
NUMBERED_ABBREVIATIONS = {"no", "nos", "fig", "figs", "p", "pp", "vol", "vols", "ch", "sec", "art", "op"}
_DOTTED = re.compile(r"(?:[A-Za-z]\.){2,}$")  # U.S. / e.g. / a.m. / U.K.


def is_cjk(ch: str) -> bool:
    """A character written without spaces between words (Han, kana, fullwidth forms)."""
    o = ord(ch)
    return (0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF
            or 0x20000 <= o <= 0x2FA1F or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9F)


def _is_word_char(ch: str) -> bool:
    """Letters and digits of space-separated scripts (and digits everywhere): never cut between two of them."""
    return ch.isalnum() and not is_cjk(ch)


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P") or ch in _ELLIPSIS


def auto_max_chars(text: str) -> int:
    """A budget that gives chunks of a similar duration: 200 characters for Latin text, 80 for Chinese/Japanese,
    in between for mixed text (by the share of CJK characters)."""
    letters = [c for c in text if not c.isspace()]
    if not letters:
        return DEFAULT_MAX_CHARS_LATIN
    share = sum(is_cjk(c) for c in letters) / len(letters)
    return int(round(DEFAULT_MAX_CHARS_LATIN - share * (DEFAULT_MAX_CHARS_LATIN - DEFAULT_MAX_CHARS_CJK)))


def _word_before(text: str, end: int) -> str:
    """The non-space run that ends at `end` (exclusive), without leading opening quotes/brackets."""
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:end].lstrip("".join(_OPENERS) + "'")


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the full stop at index `dot` belongs to an abbreviation or an initial ("J. K. Rowling")."""
    word = _word_before(text, dot + 1)  # includes the dot
    if _DOTTED.search(word):
        return True
    bare = word[:-1]
    if bare.lower() in ABBREVIATIONS:
        return True
    if bare.lower() in NUMBERED_ABBREVIATIONS:
        return _next_visible(text, dot + 1)[1].isdigit()
    return len(bare) == 1 and bare.isalpha() and bare.isupper()


def _next_visible(text: str, i: int) -> tuple[int, str]:
    """Index and character of the first non-space character at or after i ("" at the end)."""
    while i < len(text) and text[i].isspace():
        i += 1
    return i, (text[i] if i < len(text) else "")


def cut_ranks(text: str) -> list[int]:
    """ranks[p] for 0 < p < len(text): how good a chunk boundary between text[p-1] and text[p] is (0 = never)."""
    n = len(text)
    ranks = [0] * (n + 1)
    depth_after: list[int] = [0] * (n + 1)
    stack: list[str] = []
    for i, ch in enumerate(text):  # quote/bracket depth after each character
        if stack and (ch == _OPEN_CLOSE.get(stack[-1]) or (ch == '"' and stack[-1] == '"')):
            stack.pop()
        elif ch in _OPENERS:
            stack.append(ch)
        elif _CLOSE_OPEN.get(ch) in stack and ch != "’":  # closes something further out: unwind to it
            while stack and _OPEN_CLOSE.get(stack[-1]) != ch:
                stack.pop()
            stack.pop()
        depth_after[i + 1] = len(stack)

    def mark(p: int, rank: int) -> None:
        if 0 < p < n:
            ranks[p] = max(ranks[p], rank)

    weak: set[int] = set()
    i = 0
    while i < n:
        ch = text[i]
        if ch.isspace():  # a run of whitespace: a word boundary, a line break or a paragraph break
            j = i
            while j < n and text[j].isspace():
                j += 1
            breaks = text.count("\n", i, j)
            mark(j, PARAGRAPH if breaks >= 2 else LINE if breaks == 1 else WORD)
            i = j
            continue
        if ch in _SENTENCE_END or ch in _ELLIPSIS or ch == ".":
            j = i
            while j < n and (text[j] in _SENTENCE_END or text[j] in _ELLIPSIS or text[j] == "."):
                j += 1
            while j < n and text[j] in _CLOSERS:  # closing quotes/brackets stay with their sentence
                j += 1
            run = text[i:j]
            k, nxt = _next_visible(text, j)
            spaced = k > j or not nxt
            if run == "." and i > 0 and text[i - 1].isdigit() and j < n and text[j].isdigit():
                pass  # a decimal point ("3.14")
            elif run.rstrip("".join(_CLOSERS)) == "." and _is_abbreviation(text, i):
                if spaced:
                    weak.add(k)
            elif "." in run and not (_SENTENCE_END & set(run)) and not spaced and not is_cjk(nxt):
                pass  # "file.txt", "example.com", "v1.5": not a sentence end
            elif (_ELLIPSIS in run or ".." in run) and not (_SENTENCE_END & set(run)) and nxt[:1].islower():
                mark(k, CLAUSE)  # "wait... what": the sentence goes on
            elif spaced or is_cjk(nxt) or not _is_punct(nxt) or any(c in "。！？" for c in run):
                mark(k, SENTENCE)
            i = j
            continue
        if ch in _CLAUSE_CJK:
            j = i + 1
            while j < n and text[j] in _CLOSERS:
                j += 1
            mark(_next_visible(text, j)[0], CLAUSE)
        elif ch in _CLAUSE_LATIN or ch in _DASHES:
            nxt_i = i + 1
            if nxt_i < n and (text[nxt_i].isspace() or is_cjk(text[nxt_i])):
                mark(_next_visible(text, nxt_i)[0], CLAUSE)
        elif i > 0 and (is_cjk(ch) or is_cjk(text[i - 1])):
            # between CJK characters, or CJK next to a Latin word: a word boundary, unless it would leave a
            # punctuation mark or closing bracket at the start of a chunk, or an opening one at the end.
            prev = text[i - 1]
            if not (_is_punct(ch) and ch not in _OPENERS) and prev not in _OPENERS \
                    and not (_is_word_char(prev) and _is_word_char(ch)):
                mark(i, WORD)
        i += 1

    for p in weak:  # after an abbreviation, a plain space is a weaker boundary than between ordinary words
        if ranks[p] == WORD:
            ranks[p] = WEAK
    for p in range(1, n):  # cuts inside quotes/brackets rank below every cut outside them
        if ranks[p] and depth_after[p] > 0:
            ranks[p] -= INSIDE
    return ranks


def _stripped_len(text: str, a: int, b: int) -> int:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return b - a


def _hard_cuts(text: str, a: int, b: int, max_chars: int) -> list[int]:
    """Cut positions inside a span that offers no boundary at all (one enormous word): every max_chars."""
    cuts = []
    while _stripped_len(text, a, b) > max_chars:
        while text[a].isspace():
            a += 1
        a += max_chars
        cuts.append(a)
    return cuts


def _split_span(text: str, ranks: list[int], a: int, b: int, max_chars: int) -> list[tuple[int, int]]:
    if _stripped_len(text, a, b) <= max_chars:
        return [(a, b)]
    candidates = [p for p in range(a + 1, b) if ranks[p] != 0]
    if candidates:
        best = max(ranks[p] for p in candidates)
        cuts = [p for p in candidates if ranks[p] == best]
    else:
        cuts = _hard_cuts(text, a, b, max_chars)
    bounds = [a, *cuts, b]
    pieces = [(bounds[k], bounds[k + 1]) for k in range(len(bounds) - 1)]
    out: list[tuple[int, int]] = []
    open_end = False  # whether out[-1] is a piece of this level that may take its next neighbour
    for piece in pieces:  # greedy packing of neighbours that fit together; oversized pieces are cut further
        if _stripped_len(text, *piece) > max_chars:
            out.extend(_split_span(text, ranks, *piece, max_chars))
            open_end = False
        elif open_end and _stripped_len(text, out[-1][0], piece[1]) <= max_chars:
            out[-1] = (out[-1][0], piece[1])
        else:
            out.append(piece)
            open_end = True
    return out


def split_text(text: str, max_chars: int = 0) -> list[str]:
    """Split text into chunks of at most max_chars characters (0 = auto_max_chars(text)), each stripped of
    surrounding whitespace; empty input gives []."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    if max_chars is None or max_chars <= 0:
        max_chars = auto_max_chars(text)
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    ranks = cut_ranks(text)
    spans = _split_span(text, ranks, 0, len(text), int(max_chars))
    return [c for c in (text[a:b].strip() for a, b in spans) if c]
