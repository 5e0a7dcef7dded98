"""Text-to-speech: engine selection, voice resolution and the chunked synthesis pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from wyoming.event import Event
from wyoming.info import Attribution, Info, TtsProgram, TtsVoice, TtsVoiceSpeaker

from .. import __version__
from ..backends import TTS_BACKENDS
from ..chunking import SentenceStream, chunk_text
from ..device import Device
from ..engine import (
    PROGRAM_NAME,
    PROGRAM_URL,
    EngineError,
    InferenceWorker,
    LoadPlan,
    TtsEngine,
    TtsRequest,
    Voice,
    engine_class,
    pick_backend,
)
from ..languages import language_code, reads
from ..settings import Settings
from ..stats import Recent, Tally, TtsTiming

_LOGGER = logging.getLogger(__name__)

# Unsent audio allowed to pile up before the next chunk is synthesised. It bounds memory
# for a long text (or a client that reads slowly) while keeping one chunk of look-ahead.
MAX_BUFFERED_SECONDS = 20.0


# A Piper-style voice name starts with its locale: en_US-amy-medium, de_DE-thorsten-low.
_NAME_LOCALE = re.compile(r"^([a-z]{2,3})[_-]([A-Za-z]{2})(?:[-_.]|$)")


def _engine_class(settings: Settings) -> type[TtsEngine]:
    engine = engine_class(pick_backend(TTS_BACKENDS, settings.tts_engine))
    if not issubclass(engine, TtsEngine):
        raise TypeError(f"{engine.__name__} is not a TtsEngine")
    return engine


def tts_plan(settings: Settings, device: Device) -> LoadPlan:
    """How the configured TTS engine will be loaded on ``device``: no weights read."""
    return _engine_class(settings).plan(settings, device)


def load_tts_engine(plan: LoadPlan) -> TtsEngine:
    """Build the planned engine (blocking: loads its model)."""
    return _engine_class(plan.settings)(plan)


async def _each(items: Iterable[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


@dataclass(frozen=True)
class VoiceChoice:
    voice: str
    speaker: str | None
    language: str | None
    named: bool = False  # the request named this voice: never swapped for another


class AudioPipe:
    """Audio pieces from the worker thread to the event loop, with a size gauge.

    The worker puts pieces without blocking (so one slow client never holds the engine);
    the producer instead waits before starting the next chunk while too much is unsent.
    """

    _DONE = object()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._samples = 0
        self._drained = asyncio.Event()

    def put_threadsafe(self, piece: np.ndarray) -> None:
        self._loop.call_soon_threadsafe(self._put, piece)

    def _put(self, piece: Any) -> None:
        if isinstance(piece, np.ndarray):
            self._samples += piece.size
        self._queue.put_nowait(piece)

    def close(self, error: BaseException | None = None) -> None:
        self._put(error if error is not None else self._DONE)

    async def wait_below(self, samples: int) -> None:
        while self._samples > samples:
            self._drained.clear()
            await self._drained.wait()

    async def pieces(self) -> AsyncIterator[np.ndarray]:
        while True:
            item = await self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            self._samples -= item.size
            self._drained.set()
            yield item


@dataclass
class _Meter:
    """One request's figures while it runs; ``timing`` makes its ``TtsTiming``."""

    voice: str
    via: str
    characters: int = 0
    started_at: float | None = None
    first_audio_at: float | None = None
    samples: int = 0
    synthesis_seconds: float = 0.0  # added on the worker thread, read once it is done

    def timing(self, rate: int, error: str | None) -> TtsTiming:
        now = time.monotonic()
        return TtsTiming(
            characters=self.characters,
            started_at=self.started_at if self.started_at is not None else now,
            finished_at=now,
            first_audio_at=self.first_audio_at,
            audio_seconds=self.samples / rate,
            synthesis_seconds=self.synthesis_seconds,
            voice=self.voice,
            error=error,
            via=self.via,
        )


@dataclass
class TtsService(Tally[TtsTiming]):
    """A loaded engine, its worker thread, and what ``info`` says about it. Every
    request's timings are taken here, in ``synthesize``, so Wyoming and HTTP requests are
    measured by the same code."""

    kind: ClassVar[str] = "tts"
    engine: TtsEngine
    settings: Settings
    worker: InferenceWorker = field(default_factory=lambda: InferenceWorker("tts"))
    active_requests: int = 0
    requests_served: int = 0
    requests_failed: int = 0
    recent: Recent[TtsTiming] = field(default_factory=Recent)

    def __post_init__(self) -> None:
        self.info_event: Event = self._build_info().event()
        self._voices = {voice.name: voice for voice in self.engine.voices}
        self._by_lower = {name.lower(): voice for name, voice in self._voices.items()}

    async def close(self) -> None:
        """Stop the worker thread (after the listeners have closed)."""
        self.worker.shutdown()

    # --- request policy: every protocol adapter asks these, none decides them itself

    def check_length(self, chars: int) -> None:
        """``MAX_TEXT_CHARS`` bounds one request's text (a stream: all its chunks)."""
        limit = self.settings.max_text_chars
        if chars > limit:
            raise EngineError(
                f"text is {chars} characters, more than the {limit} limit (MAX_TEXT_CHARS)",
                "too-long",
            )

    def text_chunks(self, text: str) -> list[str]:
        """One text as the chunks it is spoken in; empty when it has nothing to speak."""
        self.check_length(len(text))
        return chunk_text(text, self.settings.tts_chunk_size)

    def sentence_stream(self) -> SentenceStream:
        """Cuts streamed text into sentences, spoken as they complete."""
        return SentenceStream(self.settings.tts_chunk_size)

    def has_voice(self, name: str) -> bool:
        """Whether ``name`` (any case) is an installed voice."""
        return name.lower() in self._by_lower

    def _build_info(self) -> Info:
        info = self.engine.info
        author, url = info.attribution
        voices = [
            TtsVoice(
                name=voice.name,
                attribution=Attribution(name=author, url=url),
                installed=True,
                description=voice.description,
                version=info.version,
                languages=list(voice.languages),
                speakers=[TtsVoiceSpeaker(name=s) for s in voice.speakers] or None,
            )
            for voice in self._default_first(self.engine.voices)
        ]
        program = TtsProgram(
            name=PROGRAM_NAME,
            attribution=Attribution(name=PROGRAM_NAME, url=PROGRAM_URL),
            installed=True,
            description=f"Text to speech with {info.engine}",
            version=__version__,
            voices=voices,
            supports_synthesize_streaming=True,
        )
        return Info(tts=[program])

    def _default_first(self, voices: Iterable[Voice]) -> list[Voice]:
        """Home Assistant picks the first voice of a language as its default."""
        return sorted(voices, key=lambda voice: voice.name != self.engine.default_voice)

    def resolve_voice(self, requested: Any) -> VoiceChoice:
        """Map a request's ``voice`` to an installed voice (``{}``/none -> the default).

        Clients send other servers' voice names by default (``en_US-amy-medium``). An
        unknown name gets the voice of the requested language, else of the language its
        name starts with, else the default voice, with a warning; an unknown speaker gets
        the voice's default speaker. ``TTS_STRICT_VOICE`` makes both an error instead.
        """
        if not isinstance(requested, dict):
            requested = {}
        name = requested.get("name")
        speaker = requested.get("speaker")
        language = requested.get("language")
        speaker = speaker if isinstance(speaker, str) and speaker else None
        language = language if isinstance(language, str) and language else None
        if isinstance(name, str) and name:
            voice = self._voices.get(name) or self._by_lower.get(name.lower())
            if voice is None:
                voice = self._stand_in(name, language)
        elif language is not None:
            voice = self._voice_for_language(language)
        else:
            voice = self._voices[self.engine.default_voice]
        if speaker is not None and voice.speakers and speaker not in voice.speakers:
            if self.settings.tts_strict_voice:
                raise EngineError(
                    f"voice {voice.name!r} has no speaker {speaker!r} "
                    f"(speakers: {', '.join(voice.speakers)})",
                    "unknown-speaker",
                )
            _LOGGER.warning(
                "Voice %s has no speaker %r; using its default speaker %s",
                voice.name,
                speaker,
                voice.speakers[0],
            )
            speaker = None
        if not voice.speakers:
            speaker = None
        return VoiceChoice(
            voice.name, speaker, language, named=isinstance(name, str) and bool(name)
        )

    def _stand_in(self, name: str, language: str | None) -> Voice:
        """The installed voice used for an unknown voice ``name`` (or the strict error)."""
        if self.settings.tts_strict_voice:
            raise EngineError(
                f"voice {name!r} is not installed; installed voices: {', '.join(self._voices)}",
                "unknown-voice",
            )
        if language is not None:  # asked for explicitly: no voice for it is an error
            voice = self._voice_for_language(language)
        else:
            voice = self._voices[self.engine.default_voice]
            if match := _NAME_LOCALE.match(name):
                with contextlib.suppress(EngineError):  # only a guess from the name
                    voice = self._voice_for_language(f"{match[1]}_{match[2]}")
        _LOGGER.warning(
            "Voice %r is not installed; using %s instead (installed: %s; "
            "TTS_STRICT_VOICE=true makes this an error)",
            name,
            voice.name,
            ", ".join(self._voices),
        )
        return voice

    def _voice_for_language(self, language: str) -> Voice:
        """Best voice for a language: a native speaker (its first language) before one that
        merely speaks it; an exact tag (en_US) before the family (en); the default first."""
        wanted = language.replace("-", "_").lower()
        family = language_code(language)
        default = self._voices[self.engine.default_voice]
        candidates = [default, *(v for v in self._voices.values() if v is not default)]

        def rank(voice: Voice) -> int | None:
            exact = [code.replace("-", "_").lower() == wanted for code in voice.languages]
            same = [language_code(code) == family for code in voice.languages]
            for score, hits in enumerate((exact[:1], same[:1], exact, same)):
                if any(hits):
                    return score
            return None

        ranked = [(score, i) for i, v in enumerate(candidates) if (score := rank(v)) is not None]
        if ranked:
            return candidates[min(ranked)[1]]
        installed = ", ".join(
            f"{voice.name} ({'/'.join(voice.languages)})" for voice in self._voices.values()
        )
        raise EngineError(
            f"no installed voice speaks {language!r}; installed voices: {installed}",
            "unsupported-language",
        )

    async def synthesize(
        self,
        texts: AsyncIterable[str] | Iterable[str],
        choice: VoiceChoice,
        *,
        via: str = "wyoming",
    ) -> AsyncGenerator[np.ndarray, None]:
        """Audio for a sequence of chunks (a list, or a stream still being written),
        pipelined: chunk k+1 is synthesised while chunk k is being sent, and each piece is
        yielded the moment the engine makes it. The request's timings are recorded when it
        ends or fails (not when its client leaves)."""
        meter = _Meter(choice.voice, via)
        rate = self.engine.sample_rate
        if self.active_requests >= self.settings.max_queue:
            self.record(meter.timing(rate, "busy"))
            raise EngineError(
                f"text-to-speech is busy ({self.active_requests} requests in progress); try again",
                "busy",
            )
        self.active_requests += 1
        pipe = AudioPipe(asyncio.get_running_loop())
        source = texts if isinstance(texts, AsyncIterable) else _each(texts)
        producer = asyncio.create_task(self._produce(source, choice, pipe, meter))
        error: str | None = None
        done = False
        try:
            async for piece in pipe.pieces():
                if meter.first_audio_at is None:
                    meter.first_audio_at = time.monotonic()
                meter.samples += piece.size
                yield piece
            await producer
            done = True
        except EngineError as err:
            error = err.code
            raise
        except Exception:
            error = "internal"
            raise
        finally:
            self.active_requests -= 1
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
            if done or error is not None:
                if done:
                    self.requests_served += 1
                self.record(meter.timing(rate, error))

    def _reader(self, choice: VoiceChoice, text: str) -> tuple[str, str | None]:
        """The chosen voice, or, when the request named none and that voice cannot read
        this text's script, the first installed voice that can (Piper serves all its
        voices at one rate, so the audio format stays the same)."""
        if choice.named or reads(self._voices[choice.voice].languages, text):
            return choice.voice, choice.speaker
        other = next(
            (v for v in self._default_first(self._voices.values()) if reads(v.languages, text)),
            None,
        )
        return (other.name, None) if other is not None else (choice.voice, choice.speaker)

    async def _produce(
        self, texts: AsyncIterable[str], choice: VoiceChoice, pipe: AudioPipe, meter: _Meter
    ) -> None:
        limit = int(MAX_BUFFERED_SECONDS * self.engine.sample_rate)
        try:
            async for text in texts:
                if meter.started_at is None:  # a stream's clock starts with its first text
                    meter.started_at = time.monotonic()
                meter.characters += len(text)
                await pipe.wait_below(limit)
                voice, speaker = self._reader(choice, text)
                meter.voice = voice
                request = TtsRequest(text, voice, speaker, choice.language)
                await self.worker.run(self._synthesize_into, request, pipe, meter)
        except Exception as err:
            pipe.close(err)
        else:
            pipe.close()

    def _synthesize_into(self, request: TtsRequest, pipe: AudioPipe, meter: _Meter) -> None:
        """Runs on the worker thread; the engine's own time is what the real-time factor
        counts (not time queued behind another request)."""
        started = time.monotonic()
        try:
            for piece in self.engine.synthesize(request):
                if piece.size:
                    pipe.put_threadsafe(piece)
        finally:
            meter.synthesis_seconds += time.monotonic() - started
