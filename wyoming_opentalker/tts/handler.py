"""Wyoming TTS connection: plain ``synthesize`` and streaming ``synthesize-start/-chunk/-stop``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import numpy as np
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
)

from ..audio import float_to_pcm16
from ..chunking import SentenceStream
from ..engine import EngineError
from ..server import Handler
from .service import TtsService, VoiceChoice

_LOGGER = logging.getLogger(__name__)

SAMPLES_PER_CHUNK = 1024  # 2,048-byte chunks: some clients read into 4 KiB buffers
# Text with nothing to speak ("...", emoji) is answered with this much silence rather
# than an error or an empty pair: clients take the format from the first chunk, and
# some treat an answer without audio as a failure.
SILENCE_SECONDS = 0.1


async def _drain(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (item := await queue.get()) is not None:
        yield item


class _Stream:
    """An open ``synthesize-start`` stream: sentences go to a queue the speaker reads."""

    def __init__(self, choice: VoiceChoice, sentences: SentenceStream) -> None:
        self.choice = choice
        self.sentences = sentences
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.chars = 0
        self.task: asyncio.Task[None] | None = None

    def push(self, sentences: list[str]) -> None:
        for sentence in sentences:
            self.queue.put_nowait(sentence)


class TtsHandler(Handler):
    """One client. Exactly one ``audio-start``/``audio-stop`` pair per response, one format.

    A request that fails (bad text, a stream misused, synthesis failing) gets one
    ``error`` and the connection closes; a failed ``synthesize-start`` is not followed by
    an error for each of its chunks.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, service: TtsService
    ) -> None:
        super().__init__(reader, writer, service.info_event, service.settings)
        self.service = service
        self._stream: _Stream | None = None

    async def handle_event(self, event: Event) -> bool:
        if Synthesize.is_type(event.type):
            if self._stream is not None:
                # Home Assistant repeats the whole text mid-stream for old servers.
                _LOGGER.debug("Ignoring synthesize sent during a stream")
                return True
            await self._on_synthesize(event)
            return True
        if SynthesizeStart.is_type(event.type):
            await self._on_stream_start(event)
        elif SynthesizeChunk.is_type(event.type):
            await self._on_stream_chunk(event)
        elif SynthesizeStop.is_type(event.type):
            await self._on_stream_stop()
        else:
            _LOGGER.debug("Ignoring %s from %s", event.type, self.peer)
        return True

    def _text_of(self, event: Event) -> str:
        text = event.data.get("text")
        if not isinstance(text, str):
            raise EngineError(f"{event.type} needs a 'text' string", "bad-text")
        return text

    async def _on_synthesize(self, event: Event) -> None:
        text = self._text_of(event)
        chunks = self.service.text_chunks(text)
        choice = self.service.resolve_voice(event.data.get("voice"))
        if not chunks:
            await self._silence(choice, time.monotonic())
            return
        _LOGGER.info(
            "Synthesizing %d characters in %d chunk(s) with %s",
            len(text),
            len(chunks),
            choice.voice,
        )
        await self._speak(chunks, choice)

    async def _on_stream_start(self, event: Event) -> None:
        if self._stream is not None:
            raise EngineError("a synthesize stream is already open", "out-of-order")
        choice = self.service.resolve_voice(event.data.get("voice"))
        stream = _Stream(choice, self.service.sentence_stream())
        stream.task = asyncio.create_task(self._run_stream(stream))
        self._stream = stream

    async def _on_stream_chunk(self, event: Event) -> None:
        stream = self._stream
        if stream is None:
            raise EngineError("synthesize-chunk without synthesize-start", "out-of-order")
        text = self._text_of(event)
        stream.chars += len(text)
        try:
            self.service.check_length(stream.chars)
        except EngineError:
            await self._abort_stream()
            raise
        stream.push(stream.sentences.feed(text))

    async def _on_stream_stop(self) -> None:
        stream = self._stream
        if stream is None:
            raise EngineError("synthesize-stop without synthesize-start", "out-of-order")
        stream.push(stream.sentences.finish())
        stream.queue.put_nowait(None)
        assert stream.task is not None
        try:
            await stream.task
        finally:
            self._stream = None

    async def _run_stream(self, stream: _Stream) -> None:
        """Speak a stream's sentences as they come. A failure ends the request here, while
        the client may still be sending text: one error, then the connection closes."""
        try:
            await self._speak(_drain(stream.queue), stream.choice)
        except ConnectionError:
            return
        except EngineError as err:
            _LOGGER.warning("Streaming synthesis for %s failed: %s", self.peer, err)
            await self.fail(str(err), err.code)
            return
        except Exception as err:
            _LOGGER.exception("Streaming synthesis failed for %s", self.peer)
            await self.fail(f"internal error: {type(err).__name__}: {err}", "internal")
            return
        with contextlib.suppress(ConnectionError):
            await self.write_event(SynthesizeStopped().event())

    async def _abort_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and stream.task is not None:
            stream.task.cancel()
            await asyncio.gather(stream.task, return_exceptions=True)

    async def disconnected(self) -> None:
        await self._abort_stream()

    async def _speak(self, texts: AsyncIterator[str] | list[str], choice: VoiceChoice) -> None:
        """Send the audio of ``texts`` as one audio-start, chunks, one audio-stop (a short
        silence if nothing was spoken). A failure raises without an audio-stop: the error
        ends the answer, so it never looks complete when it was cut short."""
        rate = self.service.engine.sample_rate
        started = time.monotonic()
        first_audio: float | None = None
        samples = 0
        audio = self.service.synthesize(texts, choice)
        try:
            while True:
                try:  # waiting for a chunk can be long: notice a client that leaves
                    piece = await self.unless_client_leaves(anext(audio))
                except StopAsyncIteration:
                    break
                if first_audio is None:
                    first_audio = time.monotonic() - started
                    await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                await self._send_pcm(piece, rate)
                samples += piece.size
        finally:
            await audio.aclose()
        if first_audio is None:
            await self._silence(choice, started)
            return
        await self.write_event(AudioStop().event())
        _LOGGER.info(
            "Spoke %.1f s of audio with %s: first audio after %.3f s, done in %.3f s",
            samples / rate,
            choice.voice,
            first_audio,
            time.monotonic() - started,
        )

    async def _silence(self, choice: VoiceChoice, started: float) -> None:
        """A well-formed answer for text with nothing to speak."""
        rate = self.service.engine.sample_rate
        await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        await self._send_pcm(np.zeros(int(rate * SILENCE_SECONDS), dtype=np.float32), rate)
        await self.write_event(AudioStop().event())
        _LOGGER.info(
            "Nothing to speak with %s: answered %.1f s of silence in %.3f s",
            choice.voice,
            SILENCE_SECONDS,
            time.monotonic() - started,
        )

    async def _send_pcm(self, piece: np.ndarray, rate: int) -> None:
        pcm = float_to_pcm16(piece)
        step = SAMPLES_PER_CHUNK * 2
        for offset in range(0, len(pcm), step):
            await self.write_event(
                AudioChunk(
                    rate=rate, width=2, channels=1, audio=pcm[offset : offset + step]
                ).event()
            )
