"""The sentence chunker (QWEN_TTS_CHUNK_SIZE), table-driven, batch and streamed."""

from __future__ import annotations

import pytest

from wyoming_opentalker.chunking import SentenceStream, chunk_text, split_long, split_sentences

SENTENCE_CASES = [
    (
        "english",
        "Hello there. How are you? I am fine!",
        ["Hello there.", "How are you?", "I am fine!"],
    ),
    (
        "chinese",
        "你好。今天天气很好！你要去哪里？我去北京；你呢",
        ["你好。", "今天天气很好！", "你要去哪里？", "我去北京；", "你呢"],
    ),
    (
        "mixed",
        "打开 kitchen light。Then close the door.好的！",
        ["打开 kitchen light。", "Then close the door.", "好的！"],
    ),
    (
        "decimal",
        "It costs 3.5 dollars. Pi is 3.14159.",
        ["It costs 3.5 dollars.", "Pi is 3.14159."],
    ),
    (
        "abbreviations",
        "Mr. Smith met Dr. Who, e.g. at 5 p.m. today. Done.",
        ["Mr. Smith met Dr. Who, e.g. at 5 p.m. today.", "Done."],
    ),
    (
        "initials and urls",
        "J. R. R. Tolkien lives at example.com. Bye.",
        ["J. R. R. Tolkien lives at example.com.", "Bye."],
    ),
    (
        "quotes",
        'He said "Stop." Then left. 他说：“走吧。”然后走了。',
        ['He said "Stop."', "Then left.", "他说：“走吧。”", "然后走了。"],
    ),
    (
        "ellipsis and repeats",
        "Wait... what?! Really。。。好",
        ["Wait...", "what?!", "Really。。。", "好"],
    ),
    ("newlines", "Title\n\nFirst line\nsecond line.", ["Title", "First line", "second line."]),
    ("semicolon", "Lights on; fans off.", ["Lights on;", "fans off."]),
    ("whitespace and empties", "  Hello.   \n\n  .  !  World.  ", ["Hello.", "World."]),
    ("no terminator", "turn on the lights", ["turn on the lights"]),
    ("ascii end before cjk", "OK.我们走吧!好", ["OK.", "我们走吧!", "好"]),
]


@pytest.mark.parametrize(
    ("label", "text", "expected"), SENTENCE_CASES, ids=[c[0] for c in SENTENCE_CASES]
)
def test_sentences(label: str, text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    ("label", "text", "expected"), SENTENCE_CASES, ids=[c[0] for c in SENTENCE_CASES]
)
def test_streamed_deltas_split_at_every_position_give_the_same_sentences(
    label: str, text: str, expected: list[str]
) -> None:
    for cut in range(len(text) + 1):
        stream = SentenceStream()
        got = stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.finish()
        assert got == expected, (label, cut)
    stream = SentenceStream()
    got = [s for char in text for s in stream.feed(char)] + stream.finish()
    assert got == expected


def test_sentences_are_released_as_soon_as_they_are_complete() -> None:
    stream = SentenceStream()
    assert stream.feed("The lights are on") == []
    assert stream.feed(".") == []  # could still be 3.5 or e.g.
    assert stream.feed(" The") == ["The lights are on."]
    # a closing quote may still follow, so the next character decides
    assert stream.feed(" door。") == []
    assert stream.feed("好") == ["The door。"]
    assert stream.finish() == ["好"]


def test_over_long_sentences_split_at_commas_then_spaces_then_hard() -> None:
    chinese = "这是第一部分，这是第二部分、这是第三部分，这是第四部分。"
    assert split_long(chinese, 12) == [
        "这是第一部分，",
        "这是第二部分、",
        "这是第三部分，",
        "这是第四部分。",
    ]
    english = "one two three four five six seven eight nine ten eleven twelve"
    pieces = split_long(english, 20)
    assert all(len(p) <= 20 for p in pieces) and " ".join(pieces) == english
    assert all(not p.startswith(" ") for p in pieces)
    hard = "一" * 45
    assert split_long(hard, 20) == ["一" * 20, "一" * 20, "一" * 5]
    assert split_long("It cost 1,000,000 dollars, they said", 22) == [
        "It cost 1,000,000",
        "dollars, they said",
    ]


def test_streaming_a_long_sentence_matches_batch_and_does_not_wait_for_its_end() -> None:
    text = "这是一个非常长的句子，" * 30 + "结束。" + "Short one. " + "word " * 80 + "end."
    expected = split_sentences(text, 50)
    assert all(len(s) <= 50 for s in expected)
    for step in (1, 3, 7, 50):
        stream = SentenceStream(50)
        got: list[str] = []
        released_before_end = 0
        for i in range(0, len(text), step):
            out = stream.feed(text[i : i + step])
            if i + step < text.index("结束"):
                released_before_end += len(out)
            got += out
        got += stream.finish()
        assert got == expected, step
        assert released_before_end > 0


@pytest.mark.parametrize(
    ("size", "text", "expected"),
    [
        (0, "One. Two. 三。", ["One. Two. 三。"]),
        (20, "One. Two. Three. Four.", ["One. Two. Three.", "Four."]),
        (9, "你好。今天天气很好！", ["你好。", "今天天气很好！"]),
        (12, "你好。我好。He is.", ["你好。我好。He is."]),
        (200, "", []),
        (200, " ... !! 。", []),
        (0, "  ?? ", []),
    ],
)
def test_chunk_packing(size: int, text: str, expected: list[str]) -> None:
    assert chunk_text(text, size) == expected


def test_chunks_respect_the_limit_and_keep_every_word() -> None:
    text = ("The quick brown fox jumps over the lazy dog. " * 40) + (
        "天气很好，我们去公园散步吧。" * 40
    )
    for size in (50, 150, 200):
        chunks = chunk_text(text, size)
        assert all(len(chunk) <= size for chunk in chunks)
        assert "".join(chunks).replace(" ", "") == text.replace(" ", "")


def test_control_characters_are_dropped() -> None:
    assert split_sentences("Lights\x00 on\x07. Done\x1b.") == ["Lights on .", "Done ."]
