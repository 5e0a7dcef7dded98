"""Language codes (what Wyoming and Home Assistant speak) and the English names Qwen uses.

Qwen3-ASR and Qwen3-TTS take English language names ("Chinese", "english"), Wyoming clients
send ISO codes ("zh", "en-US", "zh-HK"). One table serves both engines.
"""

from __future__ import annotations

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
