"""Every engine the product serves, one line each: a new backend is one new module (an
``AsrEngine`` or ``TtsEngine`` subclass with its ``plan``, and its memory fixes and
``auto`` choices where it has any) and one line here.

Plain names only, so the settings can list the engine choices without importing any
engine code; ``engine.engine_class`` imports a backend's module when it is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    """One engine: its name (the ``ASR_ENGINE``/``TTS_ENGINE`` value), the module holding
    it (imported on first use, so an optional extra matters only when its engine is
    chosen), its engine class there, and the backend that runs the same model better
    without a GPU (Qwen3-ASR: ONNX), chosen by ``runtime``."""

    name: str
    module: str
    engine: str
    cpu: str | None = None  # the backend serving this model on the CPU, where it has one


_ASR = (
    Backend("faster-whisper", "wyoming_opentalker.asr.faster_whisper", "FasterWhisperEngine"),
    Backend("qwen3-asr", "wyoming_opentalker.asr.qwen3_asr", "Qwen3AsrEngine", "qwen3-asr-onnx"),
    Backend("qwen3-asr-onnx", "wyoming_opentalker.asr.qwen3_asr_onnx", "Qwen3AsrOnnxEngine"),
)
_TTS = (
    Backend("piper", "wyoming_opentalker.tts.piper", "PiperEngine"),
    Backend("qwen3-tts", "wyoming_opentalker.tts.qwen3_tts", "Qwen3TtsEngine"),
)
ASR_BACKENDS = {backend.name: backend for backend in _ASR}
TTS_BACKENDS = {backend.name: backend for backend in _TTS}


def runtime_backend(backend: Backend, runtime: str, on_gpu: bool) -> str:
    """The backend that serves ``backend``'s model: its CPU sibling when ``runtime`` is
    ``onnx``, or ``auto`` without a GPU; else itself."""
    if backend.cpu is not None and (runtime == "onnx" or (runtime == "auto" and not on_gpu)):
        return backend.cpu
    return backend.name
