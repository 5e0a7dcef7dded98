"""Wyoming ASR connection: ``transcribe`` + ``audio-start/-chunk/-stop`` -> ``transcript``."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event

from ..audio import AudioFormatError, PcmFormat, PcmToFloat
from ..engine import AsrRequest, EngineError
from ..server import Handler
from .service import AsrService

_LOGGER = logging.getLogger(__name__)


def _hint_list(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [item.strip() for item in value if isinstance(item, str) and item.strip()]


class AsrHandler(Handler):
    """One client. Audio is converted as it arrives, so ``audio-stop`` goes straight to decode.

    Anything wrong with a request (an unsupported language, a bad format, events out of
    order, too much audio) raises ``EngineError``: one ``error``, then the connection
    closes, so the audio that follows is neither transcribed nor answered chunk by chunk.

    Streaming transcript events are never sent: Home Assistant ignores them and some
    clients expect ``transcript`` to be the very next event after the audio.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, service: AsrService
    ) -> None:
        super().__init__(reader, writer, service.info_event, service.settings)
        self.service = service
        self._language: str | None = None
        self._hints: tuple[str, ...] = ()
        self._converter: PcmToFloat | None = None
        self._pieces: list[np.ndarray] = []

    def _reset(self) -> None:
        self._language = None
        self._hints = ()
        self._converter = None
        self._pieces = []

    async def handle_event(self, event: Event) -> bool:
        if Transcribe.is_type(event.type):
            return await self._on_transcribe(event)
        if AudioStart.is_type(event.type):
            return await self._on_audio_start(event)
        if AudioChunk.is_type(event.type):
            return await self._on_audio_chunk(event)
        if AudioStop.is_type(event.type):
            return await self._on_audio_stop()
        _LOGGER.debug("Ignoring %s from %s", event.type, self.peer)
        return True

    async def _on_transcribe(self, event: Event) -> bool:
        transcribe = Transcribe.from_event(event)
        language = transcribe.language if isinstance(transcribe.language, str) else None
        self._language = self.service.resolve_language(language)  # unsupported: fails
        names = _hint_list(event.data.get("transcript_names"))
        terms = _hint_list(event.data.get("transcript_terms"))
        self._hints = tuple(dict.fromkeys(names + terms))  # names first: they matter more
        return True

    async def _on_audio_start(self, event: Event) -> bool:
        try:
            start = AudioStart.from_event(event)
            fmt = PcmFormat(start.rate, start.width, start.channels).validate()
        except (KeyError, TypeError, AudioFormatError) as err:
            raise EngineError(f"bad audio-start: {_reason(err)}", "bad-audio-format") from None
        self._converter = PcmToFloat(self.service.engine.sample_rate)
        self._converter.feed(b"", fmt)
        self._pieces = []
        return True

    async def _on_audio_chunk(self, event: Event) -> bool:
        if self._converter is None:
            raise EngineError("audio-chunk before audio-start", "out-of-order")
        try:
            chunk = AudioChunk.from_event(event)
            fmt = PcmFormat(chunk.rate, chunk.width, chunk.channels)
            self._pieces.append(self._converter.feed(chunk.audio or b"", fmt))
        except (KeyError, TypeError, AudioFormatError) as err:
            raise EngineError(f"bad audio-chunk: {_reason(err)}", "bad-audio-format") from None
        self.service.check_audio_seconds(self._converter.input_seconds)
        return True

    async def _on_audio_stop(self) -> bool:
        converter, pieces = self._converter, self._pieces
        language, hints = self._language, self._hints
        self._reset()
        if converter is None:
            raise EngineError("audio-stop before audio-start", "out-of-order")
        pieces.append(converter.flush())
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        if audio.size == 0:
            raise EngineError("no audio was received before audio-stop", "no-audio")
        started = time.monotonic()
        result = await self.unless_client_leaves(
            self.service.transcribe(AsrRequest(audio, language, hints))
        )
        _LOGGER.info(
            "Transcribed %.1f s of audio in %.3f s: %s",
            audio.size / self.service.engine.sample_rate,
            time.monotonic() - started,
            result.text,
        )
        await self.write_event(Transcript(text=result.text, language=result.language).event())
        return True


def _reason(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing field {err.args[0]!r}"
    return str(err)
