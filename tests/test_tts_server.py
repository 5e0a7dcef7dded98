"""The TTS server over real TCP with the embedded Piper voice, checked by real audio."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.tts import SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

from wyoming_opentalker.chunking import chunk_text
from wyoming_opentalker.client import (
    Connection,
    SpeechResult,
    describe,
    synthesize,
    synthesize_streaming,
)

from .conftest import Server, start_server
from .speech import wer

VOICE = "en_US-joe-medium"
SENTENCES = [
    "The kitchen lights are now on.",
    "It is twenty degrees in the living room.",
    "Your timer for ten minutes has started.",
    "The front door is locked.",
    "Tomorrow will be sunny with a light breeze.",
    "The washing machine has finished its cycle.",
    "I turned off the bedroom fan.",
    "The garage door is open.",
    "Music is now playing in the office.",
    "Good night, sleep well.",
]


def _assert_one_response(result: SpeechResult, closing: str = "audio-stop") -> None:
    assert result.types[0] == "audio-start", result.types
    assert result.types.count("audio-start") == 1 and result.types.count("audio-stop") == 1
    assert result.types[-1] == closing, result.types
    assert result.rate == 22050 and result.seconds > 0.5
    assert result.format_changes == 0


def _speech_energy(result: SpeechResult) -> float:
    return float(np.sqrt(np.mean(result.samples**2)))


async def _transcribe_back(server: Server, result: SpeechResult) -> str:
    from wyoming_opentalker.client import transcribe

    answer = await transcribe(server.asr, bytes(result.audio), rate=result.rate, language="en")
    return answer.text


async def test_info_lists_only_installed_voices_and_streaming(server: Server) -> None:
    info = await describe(server.tts)
    assert len(info.tts) == 1 and not info.asr
    program = info.tts[0]
    assert program.supports_synthesize_streaming
    assert [voice.name for voice in program.voices] == [VOICE]
    voice = program.voices[0]
    assert voice.installed and "en" in voice.languages and "en_US" in voice.languages


async def test_three_sentences_one_start_stop_pair_and_intelligible(server: Server) -> None:
    text = " ".join(SENTENCES[:3])
    result = await synthesize(server.tts, text, SynthesizeVoice(name=VOICE))
    _assert_one_response(result)
    assert _speech_energy(result) > 0.02
    heard = await _transcribe_back(server, result)
    assert wer([text], [heard]) <= 0.1, heard


async def test_streaming_in_home_assistant_order(server: Server) -> None:
    text = " ".join(SENTENCES[:4])
    # LLM deltas split anywhere, even mid-word
    deltas = [text[i : i + 7] for i in range(0, len(text), 7)]
    result = await synthesize_streaming(server.tts, deltas, SynthesizeVoice(name=VOICE))
    _assert_one_response(result, closing="synthesize-stopped")
    assert result.types[-2] == "audio-stop"
    # the compatibility `synthesize` was ignored: the audio is the text once, not twice
    heard = await _transcribe_back(server, result)
    assert wer([text], [heard]) <= 0.1, heard


async def test_streaming_audio_starts_before_the_text_is_finished(server: Server) -> None:
    async with Connection(server.tts) as conn:
        await conn.send(SynthesizeStart(voice=SynthesizeVoice(name=VOICE)).event())
        await conn.send(SynthesizeChunk(text="The kitchen lights ").event())
        await conn.send(SynthesizeChunk(text="are now on. The front").event())
        first = await conn.read(60)  # no stop sent yet: the first sentence is spoken now
        assert first is not None and first.type == "audio-start", first
        await conn.send(SynthesizeChunk(text=" door is locked.").event(), SynthesizeStop().event())
        result = SpeechResult(started_at=time.monotonic())
        from wyoming_opentalker.client import collect_audio

        await collect_audio(conn, result, "synthesize-stopped")
    assert result.types[-2:] == ["audio-stop", "synthesize-stopped"]


async def test_first_audio_arrives_long_before_a_ten_sentence_text_is_done(
    server: Server,
) -> None:
    text = " ".join(SENTENCES)
    assert len(chunk_text(text, 200)) >= 2
    result = await synthesize(server.tts, text)
    _assert_one_response(result)
    assert result.first_chunk_at is not None
    # chunk 1 is sent while later chunks are still being synthesised
    assert result.first_chunk_at < 0.5 * result.done_at, (result.first_chunk_at, result.done_at)


async def test_voice_selection(server: Server) -> None:
    for voice in (None, SynthesizeVoice(language="en"), SynthesizeVoice(language="en_US")):
        _assert_one_response(await synthesize(server.tts, "Hello there.", voice))
    # `voice: {}` and other shapes some clients send: the default voice
    for raw in ({}, {"speaker": "nobody"}):
        _assert_one_response(await synthesize(server.tts, "Hello there.", raw_voice=raw))
    unknown = await synthesize(server.tts, "Hello there.", SynthesizeVoice(name="nobody"))
    assert unknown.types == ["error"]
    error = Error.from_event(unknown.events[-1])
    assert error.code == "unknown-voice" and VOICE in error.text
    german = await synthesize(server.tts, "Hallo.", SynthesizeVoice(language="de"))
    assert Error.from_event(german.events[-1]).code == "unsupported-language"


@pytest.mark.parametrize(
    ("label", "text", "code"),
    [
        ("empty", "", "no-text"),
        ("only punctuation", " ... ?! 。，", "no-text"),
        ("one megabyte", "word " * 200_000, "too-long"),
    ],
)
async def test_bad_text_gets_an_error(server: Server, label: str, text: str, code: str) -> None:
    result = await synthesize(server.tts, text)
    assert result.types == ["error"], label
    assert Error.from_event(result.events[-1]).code == code
    _assert_one_response(await synthesize(server.tts, "Still here."))


async def test_invalid_utf8_and_control_characters(server: Server) -> None:
    async with Connection(server.tts) as conn:
        body = b'{"text": "caf\xff\xfe"}'
        await conn.send_raw(b'{"type": "synthesize", "data_length": %d}\n' % len(body) + body)
        event = await conn.read(10)
        assert event is not None and Error.is_type(event.type)
    control = await synthesize(server.tts, "Lights\x00 on\x07.\x1b[31m Done\u200b.")
    _assert_one_response(control)
    _assert_one_response(await synthesize(server.tts, "Still here."))


async def test_stream_misuse(server: Server) -> None:
    async with Connection(server.tts) as conn:
        await conn.send(SynthesizeChunk(text="orphan").event())
        event = await conn.read(10)
        assert event is not None and Error.from_event(event).code == "out-of-order"
        await conn.send(SynthesizeStop().event())
        event = await conn.read(10)
        assert event is not None and Error.from_event(event).code == "out-of-order"
        await conn.send(SynthesizeStart().event(), SynthesizeStart().event())
        event = await conn.read(10)
        assert event is not None and Error.from_event(event).code == "out-of-order"
        await conn.send(SynthesizeChunk(text="The first stream still works.").event())
        await conn.send(SynthesizeStop().event())
        result = SpeechResult(started_at=time.monotonic())
        from wyoming_opentalker.client import collect_audio

        await collect_audio(conn, result, "synthesize-stopped")
        _assert_one_response(result, closing="synthesize-stopped")


async def test_client_disconnecting_mid_audio(server: Server) -> None:
    for _ in range(3):
        async with Connection(server.tts) as conn:
            await conn.send(Event("synthesize", {"text": " ".join(SENTENCES)}))
            event = await conn.read(60)
            assert event is not None and event.type == "audio-start"
        async with Connection(server.tts) as conn:  # mid-stream, too
            await conn.send(SynthesizeStart().event(), SynthesizeChunk(text="Hello. Bye").event())
            await conn.read(60)
    _assert_one_response(await synthesize(server.tts, "Still here."))
    async with Connection(server.tts) as conn:
        await conn.send(Describe().event())
        assert (await conn.read(5)) is not None


async def test_describe_is_prompt_during_a_long_synthesis(server: Server) -> None:
    text = " ".join(SENTENCES * 4)
    task = asyncio.create_task(synthesize(server.tts, text))
    await asyncio.sleep(0.5)
    latencies = []
    for _ in range(5):
        started = time.monotonic()
        await describe(server.tts)
        latencies.append(time.monotonic() - started)
    assert not task.done(), "synthesis finished too soon to prove anything"
    _assert_one_response(await task)
    assert max(latencies) < 0.25, latencies


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return int(psutil.Process(pid).memory_info().rss)


async def _drain(port: int, text: str) -> int:
    """Synthesise without keeping the audio; return the byte count."""
    total = 0
    async with Connection(port) as conn:
        await conn.send(Event("synthesize", {"text": text}))
        while True:
            event = await conn.read()
            assert event is not None
            if event.type == "audio-chunk":
                total += len(event.payload or b"")
            elif event.type in ("audio-stop", "error"):
                assert event.type == "audio-stop", event
                return total


@pytest.mark.slow
async def test_long_text_keeps_memory_flat(tmp_path: Path) -> None:
    server = start_server(tmp_path, ("tts",))
    try:
        short = " ".join(SENTENCES)[:200]
        long_text = (" ".join(SENTENCES) + " ") * 50
        long_text = long_text[:20_000]
        await _drain(server.tts, short)
        after_short = _peak_rss(server.process.pid)
        audio_bytes = await _drain(server.tts, long_text)
        after_long = _peak_rss(server.process.pid)
    finally:
        assert server.stop() == 0
    print(
        f"peak RSS: {after_short / 2**20:.0f} MiB after 200 chars, "
        f"{after_long / 2**20:.0f} MiB after 20,000 chars ({audio_bytes / 2**20:.0f} MiB audio)"
    )
    assert audio_bytes > 30 * 2**20  # about 15 minutes of speech
    assert after_long <= 1.10 * after_short


async def test_audio_format_is_constant_and_pcm_is_sane(server: Server) -> None:
    result = await synthesize(server.tts, " ".join(SENTENCES[:5]))
    _assert_one_response(result)
    peak = float(np.abs(result.samples).max())
    assert 0.3 < peak <= 1.0
    start = next(e for e in result.events if e.type == "audio-start")
    assert AudioStart.from_event(start).width == 2
    assert isinstance(AudioStop().event(), Event) and AudioChunk  # imported types in use
