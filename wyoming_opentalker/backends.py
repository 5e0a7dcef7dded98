"""Every engine the product serves, one line each: a new backend is one new module (an
``AsrEngine`` or ``TtsEngine`` subclass with its ``plan``, and its memory fixes and
``auto`` choices where it has any) and one line here."""

from __future__ import annotations

from .engine import AsrEngine, Backend, TtsEngine

_ASR: tuple[Backend[AsrEngine], ...] = (
    Backend("faster-whisper", "wyoming_opentalker.asr.faster_whisper", "FasterWhisperEngine"),
    Backend("qwen3-asr", "wyoming_opentalker.asr.qwen3_asr", "Qwen3AsrEngine"),
)
_TTS: tuple[Backend[TtsEngine], ...] = (
    Backend("piper", "wyoming_opentalker.tts.piper", "PiperEngine"),
    Backend("qwen3-tts", "wyoming_opentalker.tts.qwen3_tts", "Qwen3TtsEngine"),
)
ASR_BACKENDS = {backend.name: backend for backend in _ASR}
TTS_BACKENDS = {backend.name: backend for backend in _TTS}
