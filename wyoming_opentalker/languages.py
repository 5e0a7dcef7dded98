"""Language codes (what Wyoming and Home Assistant speak) and the English names Qwen uses.

Qwen3-ASR and Qwen3-TTS take English language names ("Chinese", "english"), Wyoming clients
send ISO codes ("zh", "en-US", "zh-HK"). One table serves both engines.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# ISO 639 code -> English name, the 30 languages of Qwen3-ASR (a superset of Qwen3-TTS's).
NAMES: dict[str, str] = {
    "zh": "Chinese",
    "en": "English",
    "yue": "Cantonese",
    "ar": "Arabic",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "pt": "Portuguese",
    "id": "Indonesian",
    "it": "Italian",
    "ko": "Korean",
    "ru": "Russian",
    "th": "Thai",
    "vi": "Vietnamese",
    "ja": "Japanese",
    "tr": "Turkish",
    "hi": "Hindi",
    "ms": "Malay",
    "nl": "Dutch",
    "sv": "Swedish",
    "da": "Danish",
    "fi": "Finnish",
    "pl": "Polish",
    "cs": "Czech",
    "fil": "Filipino",
    "fa": "Persian",
    "el": "Greek",
    "ro": "Romanian",
    "hu": "Hungarian",
    "mk": "Macedonian",
}
CODES: dict[str, str] = {name.lower(): code for code, name in NAMES.items()}

# Whole tags that mean something other than their primary subtag.
_ALIASES = {"zh-hk": "yue", "zh-mo": "yue", "tl": "fil", "iw": "he", "in": "id"}


def language_code(tag: str | None) -> str | None:
    """A client's language tag -> our code: ``en-US`` -> ``en``, ``zh-HK`` -> ``yue``,
    ``Chinese`` -> ``zh``; ``auto`` or nothing -> ``None`` (detect)."""
    if tag is None:
        return None
    tag = tag.strip().replace("_", "-").lower()
    if not tag or tag == "auto":
        return None
    if tag in _ALIASES:
        return _ALIASES[tag]
    if tag in CODES:
        return CODES[tag]
    primary = tag.split("-", 1)[0]
    return _ALIASES.get(primary, primary)


def language_name(code: str) -> str | None:
    """Our code -> the English name Qwen expects, or None if Qwen has no such language."""
    return NAMES.get(code)


# --- which script a text is written in, and whether a voice can read it
#
# A Piper voice reads its own language's script only: the English voice spells Chinese
# text out as "Chinese letter" once per character, minutes of it. Text is checked before
# synthesis so such a request gets another voice or a clear error instead.

# Language code -> the scripts it is written in (Unicode character-name prefixes). A code
# not listed is written in Latin letters.
_SCRIPTS: dict[str, frozenset[str]] = {
    code: frozenset(scripts.split())
    for codes, scripts in (
        ("zh yue", "CJK"),
        ("ja", "CJK KANA"),
        ("ko", "HANGUL"),
        ("ru uk be bg mk kk ky mn tg tt ba cv", "CYRILLIC"),
        ("sr", "CYRILLIC LATIN"),
        ("el", "GREEK"),
        ("ar fa ur ps ug sd ckb", "ARABIC"),
        ("he yi", "HEBREW"),
        ("th", "THAI"),
        ("hi mr ne sa", "DEVANAGARI"),
        ("bn as", "BENGALI"),
        ("ta", "TAMIL"),
        ("te", "TELUGU"),
        ("kn", "KANNADA"),
        ("ml", "MALAYALAM"),
        ("gu", "GUJARATI"),
        ("pa", "GURMUKHI"),
        ("si", "SINHALA"),
        ("ka", "GEORGIAN"),
        ("hy", "ARMENIAN"),
        ("km", "KHMER"),
        ("lo", "LAO"),
        ("my", "MYANMAR"),
        ("am ti", "ETHIOPIC"),
        ("bo dz", "TIBETAN"),
    )
    for code in codes.split()
}
_LATIN = frozenset({"LATIN"})
# What a script is called in messages, and the language a text in it most likely is.
SCRIPT_NAMES: dict[str, tuple[str, str]] = {
    "CJK": ("Chinese characters", "zh"),
    "KANA": ("Japanese kana", "ja"),
    "HANGUL": ("Korean Hangul", "ko"),
    "CYRILLIC": ("Cyrillic letters", "ru"),
    "GREEK": ("Greek letters", "el"),
    "ARABIC": ("Arabic letters", "ar"),
    "HEBREW": ("Hebrew letters", "he"),
    "THAI": ("Thai letters", "th"),
    "DEVANAGARI": ("Devanagari letters", "hi"),
}


def scripts_of(language: str) -> frozenset[str]:
    """The scripts a language (any tag: ``zh_CN``, ``en-US``, ``Chinese``) is written in."""
    code = language_code(language)
    return _SCRIPTS.get(code, _LATIN) if code else _LATIN


def _script(char: str) -> str | None:
    """The script of one letter (the first word of its Unicode name, hiragana and
    katakana together as KANA), or None for anything that is not a letter."""
    if not unicodedata.category(char).startswith("L"):
        return None
    name = unicodedata.name(char, "")
    if not name:
        return None
    prefix = name.split(" ", 1)[0]
    if prefix in ("FULLWIDTH", "HALFWIDTH"):  # another width of Latin, katakana or Hangul
        prefix = next((s for s in ("LATIN", "KATAKANA", "HANGUL") if s in name), prefix)
    return "KANA" if prefix in ("HIRAGANA", "KATAKANA") else prefix


@dataclass(frozen=True)
class TextScript:
    """The script most of a text's letters are in, and its share of the letters."""

    script: str
    share: float

    @property
    def name(self) -> str:
        return SCRIPT_NAMES.get(self.script, (f"{self.script.title()} letters", ""))[0]

    @property
    def language(self) -> str | None:
        """The language a text in this script most likely is (``zh`` for Chinese)."""
        return SCRIPT_NAMES.get(self.script, ("", ""))[1] or None


def text_script(text: str) -> TextScript | None:
    """The dominant script of ``text``'s letters (digits, punctuation and spaces do not
    count), or None for text without letters. Japanese counts kana and kanji together."""
    counts: Counter[str] = Counter()
    for char in text:
        script = _script(char)
        if script is not None:
            counts[script] += 1
    if not counts:
        return None
    if counts["KANA"]:  # kanji between kana are Japanese, not Chinese
        counts["KANA"] += counts.pop("CJK", 0)
    script, count = counts.most_common(1)[0]
    return TextScript(script, count / sum(counts.values()))


def reads(languages: Iterable[str], text: str) -> bool:
    """Whether a voice speaking ``languages`` can read ``text``.

    Text whose letters are mostly Latin counts as readable by every voice: voices of
    other scripts spell Latin words in their own way, and mixed text ("打开 TV") is
    common. Any other script needs a voice of a language written in it.
    """
    found = text_script(text)
    if found is None or found.script == "LATIN":
        return True
    return any(found.script in scripts_of(language) for language in languages)
