"""Speech-to-text: engine selection and the service the Wyoming handler talks to."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from .. import __version__
from ..engine import (
    AsrEngine,
    AsrRequest,
    AsrResult,
    EngineError,
    InferenceWorker,
    normalize_language,
)
from ..settings import Settings

_LOGGER = logging.getLogger(__name__)


def load_asr_engine(settings: Settings, device: str) -> AsrEngine:
    """Import and load the configured backend (imports stay lazy: extras are optional)."""
    if settings.asr_engine == "faster-whisper":
        from .faster_whisper import FasterWhisperEngine

        return FasterWhisperEngine(settings, device)
    raise EngineError(f"unknown ASR engine {settings.asr_engine!r}")


@dataclass
class AsrService:
    """A loaded engine, its worker thread, and what ``info`` says about it."""

    engine: AsrEngine
    settings: Settings
    worker: InferenceWorker = field(default_factory=lambda: InferenceWorker("asr"))
    requests_served: int = 0

    def __post_init__(self) -> None:
        self.info_event: Event = self._build_info().event()

    def _build_info(self) -> Info:
        info = self.engine.info
        author, url = info.attribution
        model = AsrModel(
            name=info.model,
            attribution=Attribution(name=author, url=url),
            installed=True,
            description=info.description,
            version=info.version,
            languages=list(self.engine.languages),
        )
        program = AsrProgram(
            name="wyoming-opentalker",
            attribution=Attribution(
                name="wyoming-opentalker", url="https://github.com/wyoming-opentalker"
            ),
            installed=True,
            description=f"Speech to text with {info.engine}",
            version=__version__,
            models=[model],
            supports_transcript_streaming=False,
        )
        return Info(asr=[program])

    def resolve_language(self, requested: str | None) -> str | None:
        """The language to decode in, or ``None`` to detect; unsupported -> ``EngineError``."""
        language = normalize_language(requested)
        if language is None:
            language = normalize_language(self.settings.asr_language)
        if language is None:
            return None
        if language not in self.engine.languages:
            supported = ", ".join(self.engine.languages[:40])
            raise EngineError(
                f"language {requested!r} is not supported by model {self.engine.info.model} "
                f"(supported: {supported})",
                "unsupported-language",
            )
        return language

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        results = await self.worker.run(self.engine.transcribe, [request])
        self.requests_served += 1
        return results[0]
