"""The long-text splitter on a corpus of tricky lines: budgets, no broken words/numbers/abbreviations/quotes, and
nothing lost or duplicated."""
from __future__ import annotations

import re
import sys

import pytest

from package import load_package

pkg = load_package()
ts = sys.modules[pkg.__name__ + ".voxcpm_engine.text_split"]
split_text = ts.split_text

LONG_LATIN = ", ".join(["the committee reviewed version 3.14 of the plan and approved 1,250 changes"] * 40)
LONG_LATIN = (LONG_LATIN + " and then everyone went home")[:2000]
LONG_LATIN = LONG_LATIN[: LONG_LATIN.rfind(" ")] + "."
LONG_CJK = ("我们在二零二四年三月十五日讨论了这个计划并且决定把价格定为3.14元同时所有人都同意继续推进项目" * 40)[:2000] + "。"

CORPUS = [
    "Dr. Smith paid $3.14 for 1,000 apples in the U.S. yesterday. Then he left! Did he? Yes... he did.",
    "The value rose from 2.5% to 12.75% at 12:30 p.m. on 2024-03-15, i.e. a big jump, e.g. in Q1.",
    'He said, "Stop. Right now." Then he left (see Fig. 3. It shows the U.K. data). Next sentence here.',
    "Mr. and Mrs. J. K. Rowling met Prof. Li at St. James's Park vs. the Jr. team, etc. Then they ate.",
    "Wait... what? No! It can't be…… Really?! Well, okay; fine: let's go — now.",
    "今天天气很好。我们去公园玩吧！价格是3.14元，约合0.5美元。“你好，世界。”他说。",
    "他问：“你去哪儿？”我说：“去北京（首都）。”然后我们走了……结束了！",
    "VoxCPM是一个TTS模型。It speaks English and 中文 quite well, 2024年3月15日发布，版本1.5。",
    "no punctuation at all just words going on and on without any stop whatsoever really and it keeps going",
    "没有任何标点符号的一段中文文本它一直持续下去没有停下来的意思我们看看会怎么样分割这段文字",
    "Line one without a stop\nLine two also without\n\nA new paragraph. With two sentences.",
    "「日本語の文です。」『引用』もあります。次の文！",
    "Call 555-0199 or visit example.com/v1.5 for file.txt; the ratio is 3:2, not 1,000:1.",
    "(A bracketed aside that is quite long, with commas, and more words.) After it comes the rest.",
    "“Curly quotes. Inside here.” And ‘single ones’ don’t break apostrophes.",
    LONG_LATIN,
    LONG_CJK,
]
BUDGETS = [12, 25, 40, 80, 200]
ABBREVIATIONS = ["Dr.", "Mr.", "Mrs.", "Prof.", "St.", "U.S.", "U.K.", "e.g.", "i.e.", "p.m.", "vs.", "Jr.", "J.",
                 "K."]
NUMBER = re.compile(r"\d+(?:[.,:\-/]\d+)*%?")
WORD = re.compile(r"[A-Za-z]+(?:['’][A-Za-z]+)*")


def squeeze(s: str) -> str:
    return "".join(s.split())


def boundaries(text: str, chunks: list[str]) -> list[int]:
    """Offsets in text where one chunk ends and the next begins (chunks are in-order substrings)."""
    cursor, ends = 0, []
    for chunk in chunks:
        at = text.find(chunk, cursor)
        assert at >= 0, f"chunk not found in order: {chunk!r}"
        assert not text[cursor:at].strip(), f"text skipped before {chunk!r}: {text[cursor:at]!r}"
        cursor = at + len(chunk)
        ends.append(cursor)
    assert not text[cursor:].strip()
    return ends[:-1]


def inside(spans, offset: int) -> bool:
    return any(s < offset < e for s, e in spans)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("text", CORPUS, ids=lambda t: t[:24])
def test_budget_and_nothing_lost(text, budget):
    chunks = split_text(text, budget)
    assert chunks and all(c == c.strip() and c for c in chunks)
    assert all(len(c) <= budget for c in chunks), [c for c in chunks if len(c) > budget]
    assert squeeze("".join(chunks)) == squeeze(text)  # nothing lost, nothing duplicated, order kept
    cuts = boundaries(text, chunks)
    numbers = [m.span() for m in NUMBER.finditer(text)]
    words = [m.span() for m in WORD.finditer(text)]
    for cut in cuts:
        longest = max((e - s for s, e in words if s < cut < e), default=0)
        assert not inside(numbers, cut), f"number broken at {text[cut - 10:cut]!r}|{text[cut:cut + 10]!r}"
        assert not inside(words, cut) or longest > budget, f"word broken: {text[cut - 10:cut]!r}|{text[cut:cut + 10]!r}"


@pytest.mark.parametrize("text", CORPUS[:-2], ids=lambda t: t[:24])
def test_no_chunk_ends_on_an_abbreviation_or_starts_with_punctuation(text):
    for budget in (25, 40, 80):
        chunks = split_text(text, budget)
        for chunk in chunks[:-1]:
            assert not any(chunk.endswith(" " + a) or chunk == a for a in ABBREVIATIONS), chunk
        for chunk in chunks[1:]:
            assert chunk[0] not in "，。！？、；：,.;:!?）」』”)]%", chunk


def test_sentences_and_packing():
    text = "First one. Second one. Third one is longer than the others."
    assert split_text(text, 200) == [text]  # fits: one chunk
    assert split_text(text, 40) == ["First one. Second one.", "Third one is longer than the others."]
    assert split_text("今天天气很好。我们去公园玩吧！好的。", 9) == ["今天天气很好。", "我们去公园玩吧！", "好的。"]


def test_quotes_and_brackets_stay_whole_when_possible():
    text = 'He said, "Stop here. Do not move." Then he left.'
    assert split_text(text, 40) == ['He said, "Stop here. Do not move."', "Then he left."]
    text = "We walked (it was late. Very late.) to the car."
    assert split_text(text, 30) == ["We walked", "(it was late. Very late.)", "to the car."]
    # a quote longer than the budget has to be cut inside; at its sentence end first
    assert split_text('"One sentence here. Another one there."', 25) == ['"One sentence here.', 'Another one there."']


def test_abbreviations_decimals_and_ellipses():
    assert split_text("Dr. Smith met Mr. Jones. They talked.", 30) == ["Dr. Smith met Mr. Jones.", "They talked."]
    assert split_text("It costs 3.14 dollars. That is cheap.", 25) == ["It costs 3.14 dollars.", "That is cheap."]
    assert split_text("See No. 5 today. I said no. Fine.", 16) == ["See No. 5 today.", "I said no. Fine."]
    assert split_text("Wait... what is that? Nothing... Go.", 22) == ["Wait... what is that?", "Nothing... Go."]
    assert split_text("We went to the U.S. and the U.K. last year.", 200) == ["We went to the U.S. and the U.K. last year."]


def test_long_sentences_without_sentence_ends():
    chunks = split_text(LONG_LATIN, 200)
    assert all(len(c) <= 200 for c in chunks) and len(chunks) >= 10
    assert all(c.endswith(",") for c in chunks[:-1])  # cut at the commas, not between words
    chunks = split_text(LONG_CJK, 80)
    assert all(len(c) <= 80 for c in chunks) and squeeze("".join(chunks)) == squeeze(LONG_CJK)
    # a single word longer than the budget is the only thing ever cut inside
    assert split_text("a" * 50, 20) == ["a" * 20, "a" * 20, "a" * 10]


def test_auto_budget_and_edge_cases():
    assert ts.auto_max_chars("hello world") == 200
    assert ts.auto_max_chars("你好世界") == 80
    assert 80 < ts.auto_max_chars("VoxCPM是模型 and more English words here") < 200
    assert split_text("   ") == []
    assert split_text("Hello.") == ["Hello."]
    with pytest.raises(ValueError):
        split_text(None)
