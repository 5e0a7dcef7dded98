"""Home Assistant's Assist pipeline driven the way a satellite's microphone drives it.

``run_realtime_pipeline`` feeds 16 kHz 16-bit mono PCM through Home Assistant's real
pipeline code (``async_pipeline_from_audio_stream``, its audio processing and, unless
told otherwise, its own VAD) at the pace of a microphone — one 10 ms chunk (320 bytes)
every 10 ms — and records every pipeline event with the monotonic time it arrived. The
servers it talks to come from the ``start_servers`` fixture (any extra flags) in
conftest.py; ``add_wyoming``/``setup_engines``/``create_pipeline`` are what a user does in
the UI.
"""

from __future__ import annotations

import asyncio
import random
import re
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homeassistant import config_entries
from homeassistant.components import stt
from homeassistant.components.assist_pipeline import (
    AudioSettings,
    PipelineEvent,
    PipelineEventType,
    PipelineStage,
    async_pipeline_from_audio_stream,
)
from homeassistant.components.assist_pipeline.pipeline import (
    Pipeline,
    async_create_default_pipeline,
)
from homeassistant.core import Context, HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import entity_registry as er
from homeassistant.setup import async_setup_component

from .conftest import Servers

SAMPLE_RATE = 16000
SAMPLE_BYTES = 2
CHUNK_BYTES = 320  # 10 ms, what Home Assistant's audio processing works in
# "go forward ten meters", a human recording, 16 kHz s16le mono, 2.79 s (speech ends
# near 2.4 s).
GO_FORWARD_RAW = Path("/usr/share/pocketsphinx/test/data/goforward.raw")


def words(text: str) -> list[str]:
    numbers = {"10": "ten"}
    return [numbers.get(w, w) for w in re.sub(r"[^\w\s]", " ", text.lower()).split()]


def low_noise(seconds: float, amplitude: int = 70, seed: int = 0) -> bytes:
    """Room noise at the recording's own floor (RMS about 40), the same every run."""
    rng = random.Random(seed)
    count = int(seconds * SAMPLE_RATE)
    return struct.pack(f"<{count}h", *(rng.randint(-amplitude, amplitude) for _ in range(count)))


def speech_then_silence(pcm: bytes, silence_seconds: float = 1.5) -> bytes:
    return pcm + low_noise(silence_seconds)


def pcm_16k_metadata(language: str = "") -> stt.SpeechMetadata:
    """16 kHz 16-bit mono PCM, what satellites send ("" lets the pipeline fill it in)."""
    return stt.SpeechMetadata(
        language=language,
        format=stt.AudioFormats.WAV,
        codec=stt.AudioCodecs.PCM,
        bit_rate=stt.AudioBitRates.BITRATE_16,
        sample_rate=stt.AudioSampleRates.SAMPLERATE_16000,
        channel=stt.AudioChannels.CHANNEL_MONO,
    )


async def add_wyoming(hass: HomeAssistant, port: int) -> config_entries.ConfigEntry:
    """What a user does: Add integration -> Wyoming Protocol -> host and port."""
    result = await hass.config_entries.flow.async_init(
        "wyoming", context={"source": config_entries.SOURCE_USER}
    )
    assert result["type"] is FlowResultType.FORM and result["step_id"] == "user"
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"host": "127.0.0.1", "port": port}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    assert result["title"] == "wyoming-opentalker"
    await hass.async_block_till_done()
    return result["result"]


async def setup_engines(hass: HomeAssistant, servers: Servers) -> tuple[str, str]:
    """Both of our servers added as a user adds them; their stt. and tts. entity ids."""
    assert await async_setup_component(hass, "homeassistant", {})
    stt_entry = await add_wyoming(hass, servers.asr)
    tts_entry = await add_wyoming(hass, servers.tts)
    registry = er.async_get(hass)
    stt_ids = [e.entity_id for e in er.async_entries_for_config_entry(registry, stt_entry.entry_id)]
    tts_ids = [e.entity_id for e in er.async_entries_for_config_entry(registry, tts_entry.entry_id)]
    return (
        next(i for i in stt_ids if i.startswith("stt.")),
        next(i for i in tts_ids if i.startswith("tts.")),
    )


async def create_pipeline(
    hass: HomeAssistant, stt_id: str, tts_id: str, name: str = "OpenTalker"
) -> Pipeline:
    assert await async_setup_component(hass, "assist_pipeline", {})
    pipeline = await async_create_default_pipeline(hass, stt_id, tts_id, name)
    assert pipeline is not None, "the pipeline did not accept our engines for English"
    return pipeline


@dataclass(frozen=True)
class TimedEvent:
    type: PipelineEventType
    data: dict[str, Any]
    at: float  # time.monotonic() when Home Assistant reported it


@dataclass
class RealtimeRun:
    """One pipeline run fed in real time: its events and when the audio was sent."""

    events: list[TimedEvent] = field(default_factory=list)
    started: float = 0.0  # monotonic time the first chunk was handed over
    speech_sent: float | None = None  # ... the last chunk of the speech part
    last_sent: float | None = None  # ... the last chunk Home Assistant took
    chunks_sent: int = 0
    chunks_total: int = 0
    finished: float = 0.0  # async_pipeline_from_audio_stream returned

    def first(self, kind: PipelineEventType) -> TimedEvent | None:
        return next((e for e in self.events if e.type == kind), None)

    def at(self, kind: PipelineEventType) -> float | None:
        event = self.first(kind)
        return None if event is None else event.at

    def data(self, kind: PipelineEventType) -> dict[str, Any]:
        event = self.first(kind)
        return {} if event is None else event.data

    @property
    def types(self) -> list[PipelineEventType]:
        return [e.type for e in self.events]

    @property
    def error(self) -> dict[str, Any] | None:
        event = self.first(PipelineEventType.ERROR)
        return None if event is None else event.data

    @property
    def transcript(self) -> str | None:
        output = self.data(PipelineEventType.STT_END).get("stt_output") or {}
        return output.get("text")

    @property
    def requires_external_vad(self) -> bool | None:
        """What the STT entity told the pipeline (stt-start's ``audio_processing``)."""
        processing = self.data(PipelineEventType.STT_START).get("audio_processing") or {}
        return processing.get("requires_external_vad")

    def since(self, start: float | None, end: float | None) -> float | None:
        return None if start is None or end is None else end - start

    def timings(self) -> dict[str, float | None]:
        """Seconds between the moments that matter to a user waiting for an answer."""
        e = PipelineEventType
        return {
            "stt-start after first chunk": self.since(self.started, self.at(e.STT_START)),
            "stt-vad-start after first chunk": self.since(self.started, self.at(e.STT_VAD_START)),
            "stt-vad-end after speech sent": self.since(self.speech_sent, self.at(e.STT_VAD_END)),
            "stt-end after stt-vad-end": self.since(self.at(e.STT_VAD_END), self.at(e.STT_END)),
            "stt-end after speech sent": self.since(self.speech_sent, self.at(e.STT_END)),
            "stt-end after last chunk taken": self.since(self.last_sent, self.at(e.STT_END)),
        }

    def summary(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f} s"

        lines = [f"{name}: {fmt(value)}" for name, value in self.timings().items()]
        lines.append(f"chunks taken: {self.chunks_sent}/{self.chunks_total}")
        events = (f"{e.type.value}@{e.at - self.started:.3f}" for e in self.events)
        lines.append("events (s after the first chunk): " + ", ".join(events))
        return "\n".join(lines)


async def run_realtime_pipeline(
    hass: HomeAssistant,
    pipeline_id: str,
    pcm: bytes,
    *,
    speech_bytes: int | None = None,
    start_stage: PipelineStage = PipelineStage.STT,
    end_stage: PipelineStage = PipelineStage.STT,
    audio_settings: AudioSettings | None = None,
    tts_audio_output: str | dict[str, Any] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    timeout: float = 60.0,
) -> RealtimeRun:
    """Run the pipeline on ``pcm`` sent like a microphone: chunk *i* is handed over at
    ``start + i * 10 ms`` (an absolute schedule, so a late chunk does not delay the
    rest), until Home Assistant stops taking audio or the audio runs out.
    ``speech_bytes`` marks where the speech ends (``speech_sent``); by default all of
    ``pcm`` is speech. ``audio_settings`` defaults to Home Assistant's own (its VAD on,
    0.7 s of silence ends the command)."""
    run = RealtimeRun()
    chunk_seconds = chunk_bytes / (SAMPLE_RATE * SAMPLE_BYTES)
    speech_end = len(pcm) if speech_bytes is None else speech_bytes
    offsets = range(0, len(pcm), chunk_bytes)
    run.chunks_total = len(offsets)

    async def microphone() -> AsyncIterator[bytes]:
        run.started = time.monotonic()
        for index, offset in enumerate(offsets):
            delay = run.started + index * chunk_seconds - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            run.last_sent = now
            run.chunks_sent = index + 1
            if run.speech_sent is None and offset + chunk_bytes >= speech_end:
                run.speech_sent = now
            yield pcm[offset : offset + chunk_bytes]

    def on_event(event: PipelineEvent) -> None:
        run.events.append(TimedEvent(event.type, dict(event.data or {}), time.monotonic()))

    async with asyncio.timeout(timeout):
        await async_pipeline_from_audio_stream(
            hass,
            context=Context(),
            event_callback=on_event,
            stt_metadata=pcm_16k_metadata(),
            stt_stream=microphone(),
            pipeline_id=pipeline_id,
            start_stage=start_stage,
            end_stage=end_stage,
            audio_settings=audio_settings or AudioSettings(),
            tts_audio_output=tts_audio_output,
        )
    run.finished = time.monotonic()
    return run
