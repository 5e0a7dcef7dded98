"""Wyoming ASR connection: ``transcribe`` + ``audio-start/-chunk/-stop`` -> ``transcript``."""

from __future__ import annotations

import asyncio
import logging
import time

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event

from ..audio import AudioFormatError, PcmFormat, PcmToFloat
from ..engine import EngineError
from ..server import Handler
from ..stats import AsrTiming
from .service import AsrService
from .utterance import Utterance, end_silence

_LOGGER = logging.getLogger(__name__)


def _hint_list(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [item.strip() for item in value if isinstance(item, str) and item.strip()]


class AsrHandler(Handler):
    """One client. Audio is converted and judged (speech or not) as it arrives, so a
    pause after speech starts the decode and ``audio-stop`` usually finds it done.

    Anything wrong with a request (an unsupported language, a bad format, events out of
    order, too much audio) raises ``EngineError``: one ``error``, then the connection
    closes, so the audio that follows is neither transcribed nor answered chunk by chunk.

    With endpointing the server may end the command itself: the ``transcript`` is sent
    then, and the rest of that request's audio, and its ``audio-stop``, are ignored; each
    request has exactly one outcome.

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
        self._sensitivity: object = None
        self._converter: PcmToFloat | None = None
        self._utterance: Utterance | None = None
        self._answering: asyncio.Task[None] | None = None  # an answer the server decided
        self._answered = False  # that answer's request is still sending audio: ignore it

    def _reset(self) -> None:
        self._language = None
        self._hints = ()
        self._sensitivity = None
        self._converter = None
        self._utterance = None

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

    async def _next_request(self) -> None:
        """A new request begins: the server's own answer to the last one goes out first."""
        if self._answering is not None:
            await self._answering
        self._answered = False

    async def _on_transcribe(self, event: Event) -> bool:
        await self._next_request()
        transcribe = Transcribe.from_event(event)
        language = transcribe.language if isinstance(transcribe.language, str) else None
        self._language = self.service.resolve_language(language)  # unsupported: fails
        names = _hint_list(event.data.get("transcript_names"))
        terms = _hint_list(event.data.get("transcript_terms"))
        self._hints = tuple(dict.fromkeys(names + terms))  # names first: they matter more
        self._sensitivity = transcribe.vad_sensitivity
        return True

    async def _on_audio_start(self, event: Event) -> bool:
        await self._next_request()
        try:
            start = AudioStart.from_event(event)
            fmt = PcmFormat(start.rate, start.width, start.channels).validate()
        except (KeyError, TypeError, AudioFormatError) as err:
            raise EngineError(f"bad audio-start: {_reason(err)}", "bad-audio-format") from None
        if self._utterance is not None:
            self._utterance.close()
        self._converter = PcmToFloat(self.service.engine.sample_rate)
        self._converter.feed(b"", fmt)
        silence = end_silence(self._sensitivity, self.settings.asr_vad_sensitivity)
        self._utterance = Utterance(
            self.service,
            self._language,
            self._hints,
            silence_seconds=silence,
            on_end=self._on_command_end,
        )
        return True

    async def _on_audio_chunk(self, event: Event) -> bool:
        if self._answered:
            return True  # the server already ended this command
        if self._converter is None or self._utterance is None:
            raise EngineError("audio-chunk before audio-start", "out-of-order")
        try:
            chunk = AudioChunk.from_event(event)
            fmt = PcmFormat(chunk.rate, chunk.width, chunk.channels)
            samples = self._converter.feed(chunk.audio or b"", fmt)
        except (KeyError, TypeError, AudioFormatError) as err:
            raise EngineError(f"bad audio-chunk: {_reason(err)}", "bad-audio-format") from None
        self.service.check_audio_seconds(self._converter.input_seconds)
        self._utterance.feed(samples)
        return True

    async def _on_audio_stop(self) -> bool:
        if self._answered:
            await self._next_request()  # the end of the request already answered
            return True
        converter, utterance = self._converter, self._utterance
        self._reset()
        if converter is None or utterance is None:
            raise EngineError("audio-stop before audio-start", "out-of-order")
        utterance.feed(converter.flush())
        utterance.stop()
        try:
            await self._answer(utterance)
        finally:
            utterance.close()
        return True

    def _on_command_end(self, reason: str) -> None:
        """The server decided the command is over: answer now, from a task, while the
        client may go on sending (and its audio is ignored)."""
        utterance = self._utterance
        assert utterance is not None
        self._reset()
        self._answered = True
        _LOGGER.debug("Command from %s ended (%s)", self.peer, reason)
        self._answering = asyncio.create_task(self._answer_in_background(utterance))

    async def _answer_in_background(self, utterance: Utterance) -> None:
        try:
            await self._answer(utterance)
        except EngineError as err:
            _LOGGER.warning("Request from %s failed: %s", self.peer, err)
            await self.fail(str(err), err.code)
        except (ConnectionError, asyncio.CancelledError):
            _LOGGER.debug("Client %s went away before its answer", self.peer)
        except Exception as err:
            _LOGGER.exception("Unexpected error answering %s", self.peer)
            await self.fail(f"internal error: {type(err).__name__}: {err}", "internal")
        finally:
            utterance.close()

    async def _answer(self, utterance: Utterance) -> None:
        try:
            result, speculative = await self.unless_client_leaves(utterance.answer())
        except EngineError as err:
            self.service.record(utterance.timing(time.monotonic(), error=err.code))
            raise
        # Recorded and logged just before the transcript goes out, so anyone who has the
        # transcript finds the request in the log and on the status page.
        timing = utterance.timing(time.monotonic(), speculative=speculative)
        self.service.record(timing)
        _LOGGER.info("%s: %s", _describe(timing), result.text)
        await self.write_event(Transcript(text=result.text, language=result.language).event())

    async def disconnected(self) -> None:
        if self._utterance is not None:
            self._utterance.close()  # nothing more is decoded for a client that left
        task = self._answering
        if task is not None and not task.done():
            if self.client_gone():
                task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _describe(timing: AsrTiming) -> str:
    """The request's timings for the log."""
    parts = [f"{timing.audio_seconds:.1f} s of audio (decoded {timing.decoded_seconds:.2f} s)"]
    if timing.speech_end_to_transcript is not None:
        parts.append(f"speech end -> transcript {timing.speech_end_to_transcript:.3f} s")
    if timing.stop_to_transcript is not None:
        parts.append(f"audio-stop -> transcript {timing.stop_to_transcript:.3f} s")
    else:
        parts.append(f"ended here ({timing.ended_by})")
    if timing.speculative:
        parts.append("decoded during the pause")
    return "Transcribed " + ", ".join(parts)


def _reason(err: Exception) -> str:
    if isinstance(err, KeyError):
        return f"missing field {err.args[0]!r}"
    return str(err)
