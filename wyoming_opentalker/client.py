"""A small async Wyoming client with timings: used by the tests, the benchmark and the
container's health check. Real TCP, the ``wyoming`` library's own framing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Describe, Info
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

TIMEOUT = 300.0


class ClientError(RuntimeError):
    """The server closed or answered something unexpected."""


class Connection:
    """One TCP connection to a Wyoming server."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def __aenter__(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def send(self, *events: Event) -> None:
        for event in events:
            await async_write_event(event, self.writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, timeout: float = TIMEOUT) -> Event | None:
        return await asyncio.wait_for(async_read_event(self.reader), timeout)


async def describe(port: int, host: str = "127.0.0.1") -> Info:
    async with Connection(port, host) as conn:
        await conn.send(Describe().event())
        event = await conn.read(5.0)
        if event is None or not Info.is_type(event.type):
            raise ClientError(f"expected info, got {event}")
        return Info.from_event(event)


def audio_events(
    pcm: bytes, rate: int, width: int, channels: int, samples_per_chunk: int = 1024
) -> list[Event]:
    step = samples_per_chunk * width * channels
    events = [AudioStart(rate=rate, width=width, channels=channels).event()]
    events += [
        AudioChunk(rate=rate, width=width, channels=channels, audio=pcm[i : i + step]).event()
        for i in range(0, len(pcm), step)
    ]
    events.append(AudioStop().event())
    return events


@dataclass
class TranscriptResult:
    event: Event
    latency: float  # seconds from sending audio-stop to the answer

    @property
    def text(self) -> str:
        if not Transcript.is_type(self.event.type):
            raise ClientError(f"expected transcript, got {self.event}")
        return Transcript.from_event(self.event).text


async def transcribe(
    port: int,
    pcm: bytes,
    rate: int = 16000,
    width: int = 2,
    channels: int = 1,
    language: str | None = None,
    names: Sequence[str] | None = None,
    terms: Sequence[str] | None = None,
) -> TranscriptResult:
    """Send one utterance the way Home Assistant does; return the answer and its latency."""
    async with Connection(port) as conn:
        transcribe_event = Transcribe(
            language=language,
            transcript_names=list(names) if names else None,
            transcript_terms=list(terms) if terms else None,
        ).event()
        *audio, stop = audio_events(pcm, rate, width, channels)
        await conn.send(transcribe_event, *audio)
        stopped = time.monotonic()
        await conn.send(stop)
        event = await conn.read()
        if event is None:
            raise ClientError("connection closed before an answer")
        return TranscriptResult(event, time.monotonic() - stopped)


@dataclass
class LiveResult:
    """What a real-time stream got back, with monotonic times."""

    started_at: float  # audio-start sent
    events: list[tuple[float, Event]] = field(default_factory=list)  # everything received
    stop_at: float | None = None  # audio-stop sent (None: never, the server ended it)
    sent_seconds: float = 0.0  # audio sent

    @property
    def answers(self) -> list[tuple[float, Event]]:
        return [(at, e) for at, e in self.events if e.type in ("transcript", "error")]

    @property
    def answer_at(self) -> float:
        if not self.answers:
            raise ClientError("no transcript or error came back")
        return self.answers[0][0]

    @property
    def text(self) -> str:
        event = self.answers[0][1] if self.answers else None
        if event is None or not Transcript.is_type(event.type):
            raise ClientError(f"expected transcript, got {event}")
        return Transcript.from_event(event).text


async def transcribe_live(port: int, pcm: bytes, **options: Any) -> LiveResult:
    """``stream_live`` on a new connection to ``port`` on 127.0.0.1."""
    async with Connection(port) as conn:
        return await stream_live(conn, pcm, **options)


async def stream_live(
    conn: Connection,
    pcm: bytes,
    *,
    stop_after: float | None = None,
    until_answer: bool = False,
    send_stop: bool = True,
    chunk_seconds: float = 0.01,
    language: str | None = None,
    vad_sensitivity: str | None = None,
    linger: float = 0.5,
) -> LiveResult:
    """Stream 16 kHz 16-bit mono ``pcm`` in real time, one ``chunk_seconds`` chunk at a
    time (Home Assistant's microphone: 10 ms), reading answers while sending.

    ``stop_after``: send ``audio-stop`` after this many seconds of audio (Home Assistant's
    VAD); None sends all of ``pcm`` first. ``until_answer``: stop sending at the first
    answer, without ``audio-stop`` (Home Assistant 2026.10 with a server that ends
    commands itself). ``send_stop=False``: never send ``audio-stop``, just wait for an
    answer. After the last event sent, answers are read for ``linger`` more seconds, so a
    second answer to the same request would be seen."""
    step = int(16000 * chunk_seconds) * 2
    total = len(pcm) if stop_after is None else min(len(pcm), int(stop_after * 16000) * 2)
    result = LiveResult(started_at=time.monotonic())
    answered = asyncio.Event()

    async def read() -> None:
        while True:
            event = await async_read_event(conn.reader)
            if event is None:
                return
            result.events.append((time.monotonic(), event))
            if event.type in ("transcript", "error"):
                answered.set()

    reader = asyncio.create_task(read())
    try:
        await conn.send(
            Transcribe(language=language, vad_sensitivity=vad_sensitivity).event(),
            AudioStart(rate=16000, width=2, channels=1).event(),
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, offset in enumerate(range(0, total, step)):
            if until_answer and answered.is_set():
                break
            delay = start + index * chunk_seconds - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = pcm[offset : min(offset + step, total)]
            await conn.send(AudioChunk(rate=16000, width=2, channels=1, audio=chunk).event())
            result.sent_seconds += len(chunk) / 32000
        if send_stop and not (until_answer and answered.is_set()):
            result.stop_at = time.monotonic()
            await conn.send(AudioStop().event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), TIMEOUT)
        await asyncio.sleep(linger)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return result


@dataclass
class SpeechResult:
    events: list[Event] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    rate: int = 0
    first_chunk_at: float | None = None
    done_at: float = 0.0
    started_at: float = 0.0
    format_changes: int = 0

    @property
    def types(self) -> list[str]:
        return [event.type for event in self.events if event.type != "audio-chunk"]

    @property
    def samples(self) -> np.ndarray:
        return np.frombuffer(bytes(self.audio), dtype="<i2").astype(np.float32) / 32768.0

    @property
    def seconds(self) -> float:
        return len(self.audio) / 2 / self.rate if self.rate else 0.0


async def collect_audio(conn: Connection, result: SpeechResult, until: str) -> SpeechResult:
    while True:
        event = await conn.read()
        if event is None:
            break
        if event.type == "audio-chunk":
            chunk = AudioChunk.from_event(event)
            if result.first_chunk_at is None:
                result.first_chunk_at = time.monotonic() - result.started_at
            if not result.rate:
                result.rate = chunk.rate
            if (chunk.rate, chunk.width, chunk.channels) != (result.rate, 2, 1):
                result.format_changes += 1
            result.audio += chunk.audio
            result.events.append(Event("audio-chunk"))  # payload not kept twice
            continue
        result.events.append(event)
        if event.type == "audio-start":
            result.rate = AudioStart.from_event(event).rate
        if event.type in (until, "error"):
            break
    result.done_at = time.monotonic() - result.started_at
    return result


async def synthesize(
    port: int, text: str, voice: SynthesizeVoice | None = None, raw_voice: object = None
) -> SpeechResult:
    async with Connection(port) as conn:
        event = Synthesize(text=text, voice=voice).event()
        if raw_voice is not None:
            event.data["voice"] = raw_voice
        result = SpeechResult(started_at=time.monotonic())
        await conn.send(event)
        return await collect_audio(conn, result, "audio-stop")


async def synthesize_streaming(
    port: int, deltas: Iterable[str], voice: SynthesizeVoice | None = None
) -> SpeechResult:
    """Home Assistant's order: start, deltas, the full text again, stop."""
    deltas = list(deltas)
    async with Connection(port) as conn:
        result = SpeechResult(started_at=time.monotonic())
        await conn.send(SynthesizeStart(voice=voice).event())
        await conn.send(*(SynthesizeChunk(text=delta).event() for delta in deltas))
        await conn.send(Synthesize(text="".join(deltas), voice=voice).event())
        await conn.send(SynthesizeStop().event())
        return await collect_audio(conn, result, "synthesize-stopped")
