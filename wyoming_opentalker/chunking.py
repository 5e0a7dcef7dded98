"""Sentence splitting and chunk packing for TTS.

Long text is synthesised chunk by chunk so memory stays flat and audio starts early.
Sentences end at Chinese ``。！？；``, English ``.!?;`` and newlines; English marks end a
sentence only when followed by white space, CJK text or the end of the text, so ``3.5``,
``example.com`` and ``e.g.`` stay whole. Sentences are packed into chunks of at most
``max_chars``; an over-long sentence is split at commas, then at spaces, then hard.

``SentenceStream`` is the incremental form used for streamed LLM text: it takes deltas
split anywhere and releases each sentence as soon as its end is certain. Batch splitting
is the stream fed everything at once, so both give identical sentences by construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

CJK_ENDS = "。！？；"
ASCII_ENDS = ".!?;"
CLOSERS = "\"'”’」』）)]】》"
SOFT_BREAKS = "，、,：:"
# Titles and shortenings whose final '.' never ends a sentence.
ABBREVIATIONS = frozenset(
    (
        "mr mrs ms dr prof sr jr st mt vs approx dept est fig gen gov inc ltd no vol"
        " jan feb mar apr jun jul aug sep sept oct nov dec"
    ).split()
)
_WS = re.compile(r"\s+")


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x3000 <= code <= 0x9FFF
        or 0xAC00 <= code <= 0xD7AF
        or 0xF900 <= code <= 0xFAFF
        or 0xFF00 <= code <= 0xFFEF
    )


def is_speakable(text: str) -> bool:
    """True if the text has a letter or digit in any script (not just punctuation)."""
    return any(char.isalnum() for char in text)


def _printable(text: str) -> str:
    """Control and format characters become spaces before any splitting decision."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in text)


def _clean(text: str) -> str:
    """Fold white space (newlines are sentence ends, handled before this)."""
    return _WS.sub(" ", text).strip()


def _join(left: str, right: str) -> str:
    if not left:
        return right
    if _is_cjk(left[-1]) or _is_cjk(right[0]):
        return left + right
    return f"{left} {right}"


def _abbreviation_before(text: str, dot: int) -> bool:
    """Whether the word ending at ``text[dot] == '.'`` is an abbreviation."""
    start = dot
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    word = text[start:dot].lstrip("\"'(“‘[")
    if "." in word:  # e.g. / i.e. / U.S. / a.m. — but not example.com
        return all(0 < len(part) <= 2 and part.isalpha() for part in word.split("."))
    if len(word) == 1 and word.isalpha() and word.isupper():  # an initial: J. Smith
        return True
    return word.lower() in ABBREVIATIONS


class SentenceStream:
    """Incremental sentence splitter; ``feed`` deltas, then ``finish``."""

    def __init__(self, max_chars: int = 0) -> None:
        self.max_chars = max_chars
        self._buffer = ""
        self._scan = 0  # everything before this index holds no sentence end

    def feed(self, delta: str) -> list[str]:
        """Add text; return the sentences that are now complete."""
        self._buffer += _printable(delta)
        return self._drain(final=False)

    def finish(self) -> list[str]:
        """End of text: everything left is the last sentence(s)."""
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            end = self._find_end(final)
            if end is None:
                break
            sentence, self._buffer, self._scan = self._buffer[:end], self._buffer[end:], 0
            out.extend(self._emit(sentence))
        if final:
            rest, self._buffer, self._scan = self._buffer, "", 0
            out.extend(self._emit(rest))
        elif self.max_chars and len(pending := _clean(self._buffer)) > self.max_chars:
            # A sentence longer than a chunk need not wait for its end. ``split_long`` is
            # greedy from the left and each cut depends only on the next max_chars + 1
            # characters, so the pieces released now are the ones batch mode makes.
            *released, tail = split_long(pending, self.max_chars)
            out.extend(piece for piece in released if is_speakable(piece))
            self._buffer = tail + (" " if self._buffer[-1].isspace() else "")
            self._scan = 0
        return out

    def _emit(self, sentence: str) -> list[str]:
        sentence = _clean(sentence)
        if not is_speakable(sentence):
            return []
        if self.max_chars and len(sentence) > self.max_chars:
            return [piece for piece in split_long(sentence, self.max_chars) if is_speakable(piece)]
        return [sentence]

    def _find_end(self, final: bool) -> int | None:
        """Index just past the first certain sentence end in the buffer, if any."""
        text = self._buffer
        i = self._scan
        while i < len(text):
            char = text[i]
            if char == "\n":
                return i + 1
            if char in CJK_ENDS or char in ASCII_ENDS:
                end = i + 1
                while end < len(text) and (text[end] in CJK_ENDS + ASCII_ENDS + CLOSERS):
                    end += 1
                if end == len(text) and not final:
                    self._scan = i  # the next delta decides
                    return None
                if char in CJK_ENDS or any(c in CJK_ENDS for c in text[i:end]):
                    return end
                following = text[end] if end < len(text) else " "
                if following.isspace() or _is_cjk(following):
                    if char == "." and end == i + 1 and _abbreviation_before(text, i):
                        i = end
                        continue
                    return end
                i = end
                continue
            i += 1
        self._scan = max(0, len(text) - 1) if not final else len(text)
        return None


def split_sentences(text: str, max_chars: int = 0) -> list[str]:
    """All sentences of ``text`` (each at most ``max_chars`` when that is set)."""
    stream = SentenceStream(max_chars)
    return stream.feed(text) + stream.finish()


def split_long(sentence: str, max_chars: int) -> list[str]:
    """Split one over-long sentence: at soft breaks, else at spaces, else hard."""
    pieces: list[str] = []
    rest = sentence.strip()
    while len(rest) > max_chars:
        window = rest[: max_chars + 1]
        cut = _last_break(window[:max_chars], SOFT_BREAKS)
        if cut <= 0:
            space = window.rfind(" ")
            cut = space if space > 0 else max_chars
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        pieces.append(rest)
    return [piece for piece in pieces if piece]


def _last_break(window: str, marks: str) -> int:
    """Index just past the last soft break that is not inside a number like 1,000."""
    for index in range(len(window) - 1, 0, -1):
        char = window[index]
        if char in marks:
            in_number = (
                char in ",:"
                and index + 1 < len(window)
                and window[index - 1].isdigit()
                and window[index + 1].isdigit()
            )
            if in_number:
                continue
            return index + 1
    return 0


def pack(sentences: Iterable[str], max_chars: int) -> list[str]:
    """Greedily pack consecutive sentences into chunks of at most ``max_chars``."""
    chunks: list[str] = []
    current = ""
    for sentence in sentences:
        candidate = _join(current, sentence)
        if current and len(candidate) > max_chars:
            chunks.append(current)
            current = sentence
        else:
            current = candidate
    if current:
        chunks.append(current)
    return chunks


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Text to synthesis chunks; ``max_chars == 0`` keeps the whole text as one chunk."""
    if max_chars <= 0:
        whole = _clean(_printable(text))
        return [whole] if is_speakable(whole) else []
    return pack(split_sentences(text, max_chars), max_chars)
