"""Mandarin test speech built from real human recordings, and the character error rate.

Debian and PyPI ship no recorded Mandarin sentences. Debian's ``gcin-voice`` does ship a
real human voice: every Mandarin syllable (in Zhuyin, with its tone) recorded on its own
by two speakers (``3.ogg``: Edward Der-Hua Liu; ``5.ogg``: the voice actor Chu Lo). A
sentence here is its syllables' recordings, trimmed and joined with short gaps: real
voices, but read syllable by syllable, without the tone changes and flow of connected
speech, so it is harder than natural speech for a recogniser. Say so wherever a number
measured on it is quoted.

CER: every character that is not a letter or digit (punctuation, spaces) is removed from
both sides; Arabic numerals in the transcript are not rewritten as characters, so
"二十五" heard as "25" counts as errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

GCIN = Path("/usr/share/gcin-voice/ogg")
SPEAKERS = {"3": "gcin-voice speaker 3 (E. Liu)", "5": "gcin-voice speaker 5 (Chu Lo)"}
RATE = 16000

# Sentence (Simplified) -> its syllables as gcin-voice names them: Zhuyin, then the tone
# (none = 1st, 2-4, "1" = neutral).
SENTENCES: tuple[tuple[str, str], ...] = (
    ("打开客厅的灯", "ㄉㄚ3 ㄎㄞ ㄎㄜ4 ㄊㄧㄥ ㄉㄜ1 ㄉㄥ"),
    ("关闭卧室的空调", "ㄍㄨㄢ ㄅㄧ4 ㄨㄛ4 ㄕ4 ㄉㄜ1 ㄎㄨㄥ ㄊㄧㄠ2"),
    ("把厨房的灯调暗一点", "ㄅㄚ3 ㄔㄨ2 ㄈㄤ2 ㄉㄜ1 ㄉㄥ ㄉㄧㄠ4 ㄢ4 ㄧ4 ㄉㄧㄢ3"),
    ("现在几点了", "ㄒㄧㄢ4 ㄗㄞ4 ㄐㄧ3 ㄉㄧㄢ3 ㄌㄜ1"),
    ("今天天气怎么样", "ㄐㄧㄣ ㄊㄧㄢ ㄊㄧㄢ ㄑㄧ4 ㄗㄣ3 ㄇㄜ1 ㄧㄤ4"),
    ("明天早上七点叫我起床", "ㄇㄧㄥ2 ㄊㄧㄢ ㄗㄠ3 ㄕㄤ4 ㄑㄧ ㄉㄧㄢ3 ㄐㄧㄠ4 ㄨㄛ3 ㄑㄧ3 ㄔㄨㄤ2"),
    ("播放一些轻松的音乐", "ㄅㄛ ㄈㄤ4 ㄧ ㄒㄧㄝ ㄑㄧㄥ ㄙㄨㄥ ㄉㄜ1 ㄧㄣ ㄩㄝ4"),
    ("把温度调到二十五度", "ㄅㄚ3 ㄨㄣ ㄉㄨ4 ㄉㄧㄠ4 ㄉㄠ4 ㄦ4 ㄕ2 ㄨ3 ㄉㄨ4"),
    ("车库门关好了吗", "ㄔㄜ ㄎㄨ4 ㄇㄣ2 ㄍㄨㄢ ㄏㄠ3 ㄌㄜ1 ㄇㄚ"),
    ("我们晚上去看电影吧", "ㄨㄛ3 ㄇㄣ ㄨㄢ3 ㄕㄤ4 ㄑㄩ4 ㄎㄢ4 ㄉㄧㄢ4 ㄧㄥ3 ㄅㄚ1"),
    (
        "请帮我设一个十分钟的定时器",
        "ㄑㄧㄥ3 ㄅㄤ ㄨㄛ3 ㄕㄜ4 ㄧ2 ㄍㄜ4 ㄕ2 ㄈㄣ ㄓㄨㄥ ㄉㄜ1 ㄉㄧㄥ4 ㄕ2 ㄑㄧ4",
    ),
    ("这个周末北京会下雨吗", "ㄓㄜ4 ㄍㄜ1 ㄓㄡ ㄇㄛ4 ㄅㄟ3 ㄐㄧㄥ ㄏㄨㄟ4 ㄒㄧㄚ4 ㄩ3 ㄇㄚ"),
    ("谢谢你的帮助", "ㄒㄧㄝ4 ㄒㄧㄝ4 ㄋㄧ3 ㄉㄜ1 ㄅㄤ ㄓㄨ4"),
    ("欢迎回家", "ㄏㄨㄢ ㄧㄥ2 ㄏㄨㄟ2 ㄐㄧㄚ"),
    ("关掉所有的灯", "ㄍㄨㄢ ㄉㄧㄠ4 ㄙㄨㄛ3 ㄧㄡ3 ㄉㄜ1 ㄉㄥ"),
    ("电视的声音太大了", "ㄉㄧㄢ4 ㄕ4 ㄉㄜ1 ㄕㄥ ㄧㄣ ㄊㄞ4 ㄉㄚ4 ㄌㄜ1"),
)


@dataclass(frozen=True)
class MandarinClip:
    reference: str
    speaker: str
    audio: np.ndarray  # float32 mono at 16 kHz

    def pcm(self) -> bytes:
        return (np.clip(self.audio, -1, 1) * 32767).astype("<i2").tobytes()

    def seconds(self) -> float:
        return self.audio.size / RATE


def _syllable(name: str, speaker: str) -> np.ndarray:
    import soundfile
    import soxr

    path = GCIN / name / f"{speaker}.ogg"
    if not path.exists():  # speaker 5 lacks a few syllables: use the other voice there
        path = next(GCIN.glob(f"{name}/*.ogg"))
    audio, rate = soundfile.read(str(path), dtype="float32")
    loud = np.nonzero(np.abs(audio) > 0.02 * np.abs(audio).max())[0]  # trim the silence
    audio = audio[loud[0] : loud[-1] + 1] if loud.size else audio
    return np.asarray(soxr.resample(audio, rate, RATE), dtype=np.float32)


def clip(reference: str, syllables: str, speaker: str = "3") -> MandarinClip:
    gap = np.zeros(int(0.04 * RATE), dtype=np.float32)
    edge = np.zeros(int(0.5 * RATE), dtype=np.float32)
    pieces = [edge]
    for name in syllables.split():
        pieces += [_syllable(name, speaker), gap]
    pieces.append(edge)
    return MandarinClip(reference, speaker, np.concatenate(pieces))


def clips(speaker: str = "3", count: int | None = None) -> list[MandarinClip]:
    return [clip(text, syllables, speaker) for text, syllables in SENTENCES[:count]]


def _characters(text: str) -> str:
    return re.sub(r"[\W_]", "", text)


def cer(references: list[str], hypotheses: list[str]) -> float:
    refs = [_characters(text) for text in references]
    hyps = [_characters(text) or "∅" for text in hypotheses]
    return float(jiwer.cer(refs, hyps))


def traditional_characters(text: str) -> list[str]:
    """Characters of ``text`` that OpenCC's t2s conversion changes (Traditional ones)."""
    import opencc

    simplified = opencc.OpenCC("t2s").convert(text)
    return [old for old, new in zip(text, simplified, strict=False) if old != new]
