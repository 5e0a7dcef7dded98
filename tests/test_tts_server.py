"""The TTS server over real TCP with the embedded Piper voice, checked by real audio."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from wyoming.audio import AudioChunk, AudioStart
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

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
    assert program.attribution.url == "https://github.com/wyoming-opentalker/wyoming-opentalker"


async def test_info_is_well_under_a_mebibyte(server: Server) -> None:
    for port in (server.asr, server.tts):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b'{"type": "describe"}\n')
            header = json.loads(await asyncio.wait_for(reader.readline(), 5))
            assert header["type"] == "info"
            size = len(json.dumps(header)) + header.get("data_length", 0)
            size += header.get("payload_length") or 0
        finally:
            writer.close()
        assert size < 1024 * 1024, size


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


async def _fails_once(port: int, events: list[Event], code: str) -> Error:
    """A failed request: exactly one error, then the server closes the connection."""
    started = time.monotonic()
    async with Connection(port) as conn:
        with contextlib.suppress(ConnectionError):  # it may close while we still send
            await conn.send(*events)
        event = await conn.read(10)
        assert event is not None and Error.is_type(event.type), event
        error = Error.from_event(event)
        assert error.code == code, error
        assert await conn.read(5) is None  # and nothing more for this request
    assert time.monotonic() - started < 5
    return error


async def test_voice_selection(server: Server) -> None:
    for voice in (None, SynthesizeVoice(language="en"), SynthesizeVoice(language="en_US")):
        _assert_one_response(await synthesize(server.tts, "Hello there.", voice))
    # `voice: {}` and other shapes some clients send: the default voice
    for raw in ({}, {"speaker": "nobody"}):
        _assert_one_response(await synthesize(server.tts, "Hello there.", raw_voice=raw))
    german = SynthesizeVoice(language="de")
    await _fails_once(server.tts, [Synthesize("Hallo.", german).event()], "unsupported-language")


@pytest.mark.parametrize(
    "voice",
    [
        SynthesizeVoice(name="en_US-amy-medium"),  # yakyak's default, a wyoming-piper voice
        SynthesizeVoice(name="en_US-lessac-medium"),
        SynthesizeVoice(name="de_DE-thorsten-low"),  # no German voice: the default one
        SynthesizeVoice(name="nobody"),
        SynthesizeVoice(name="EN_us-JOE-medium"),  # our own voice in another case
    ],
    ids=lambda voice: voice.name,
)
async def test_unknown_voice_names_get_the_default_voice(
    server: Server, voice: SynthesizeVoice
) -> None:
    result = await synthesize(server.tts, "The front door is locked.", voice)
    _assert_one_response(result)
    heard = await _transcribe_back(server, result)
    assert wer(["The front door is locked."], [heard]) <= 0.2, heard
    if voice.name != "EN_us-JOE-medium":
        assert f"Voice {voice.name!r} is not installed; using {VOICE} instead" in (
            server.log_text()
        )


async def test_unknown_voice_name_with_a_language(server: Server) -> None:
    # the wyoming library drops `language` beside a name; other clients send both
    english = {"text": "Hello there.", "voice": {"name": "nobody", "language": "en"}}
    _assert_one_response(await synthesize(server.tts, "Hello there.", raw_voice=english["voice"]))
    german = {"text": "Hallo.", "voice": {"name": "de_DE-thorsten-low", "language": "de"}}
    await _fails_once(server.tts, [Event("synthesize", german)], "unsupported-language")


async def test_strict_voice_setting_keeps_the_error(tmp_path: Path) -> None:
    strict = start_server(tmp_path, ("tts",), TTS_STRICT_VOICE="true")
    try:
        unknown = [Synthesize("Hello.", SynthesizeVoice(name="en_US-amy-medium")).event()]
        error = await _fails_once(strict.tts, unknown, "unknown-voice")
        assert VOICE in error.text
        streamed = [
            SynthesizeStart(voice=SynthesizeVoice(name="nobody")).event(),
            SynthesizeChunk(text="Hello there. ").event(),
            SynthesizeChunk(text="And more. ").event(),
            SynthesizeStop().event(),
        ]
        await _fails_once(strict.tts, streamed, "unknown-voice")  # no chunk errors after it
        _assert_one_response(await synthesize(strict.tts, "Still here.", SynthesizeVoice(VOICE)))
        info = await describe(strict.tts)
        assert [voice.name for voice in info.tts[0].voices] == [VOICE]
    finally:
        assert strict.stop() == 0, strict.log_text()


def _assert_silence(result: SpeechResult, closing: str = "audio-stop") -> None:
    """Nothing to speak: a well-formed, short, silent answer."""
    assert result.types[0] == "audio-start" and result.types[-1] == closing, result.types
    assert result.types.count("audio-start") == result.types.count("audio-stop") == 1
    assert "error" not in result.types
    assert result.rate == 22050 and 0 < result.seconds <= 0.5
    assert float(np.abs(result.samples).max()) == 0.0


@pytest.mark.parametrize(
    ("label", "text"),
    [
        ("empty", ""),
        ("white space", " \n\t "),
        ("an ellipsis", "..."),
        ("only punctuation", " ... ?! 。，"),
        ("emoji", "👍🎉 🙂"),
    ],
)
async def test_nothing_to_speak_gets_a_short_silence(server: Server, label: str, text: str) -> None:
    _assert_silence(await synthesize(server.tts, text))
    streamed = await synthesize_streaming(
        server.tts, [text[: len(text) // 2], text[len(text) // 2 :]]
    )
    _assert_silence(streamed, closing="synthesize-stopped")


async def test_text_over_the_limit_is_one_error(server: Server) -> None:
    await _fails_once(server.tts, [Synthesize(text="word " * 200_000).event()], "too-long")
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


async def test_stream_misuse_is_one_error_then_a_close(server: Server) -> None:
    chunk, stop = SynthesizeChunk(text="orphan").event(), SynthesizeStop().event()
    await _fails_once(server.tts, [chunk, chunk, stop], "out-of-order")
    await _fails_once(server.tts, [stop], "out-of-order")
    await _fails_once(
        server.tts, [SynthesizeStart().event(), SynthesizeStart().event()], "out-of-order"
    )
    # a failed synthesize-start: its chunks get no "without synthesize-start" errors
    german = SynthesizeStart(voice=SynthesizeVoice(language="de")).event()
    await _fails_once(server.tts, [german, chunk, chunk, stop], "unsupported-language")
    result = await synthesize_streaming(server.tts, ["The stream ", "still works."])
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


async def test_audio_chunks_are_at_most_4096_bytes(server: Server) -> None:
    """Some clients read audio into fixed 4 KiB buffers."""
    sizes: list[int] = []
    async with Connection(server.tts) as conn:
        await conn.send(Synthesize(text=" ".join(SENTENCES[:2])).event())
        while (event := await conn.read(60)) is not None and event.type != "audio-stop":
            if event.type == "audio-chunk":
                sizes.append(len(AudioChunk.from_event(event).audio))
    assert event is not None and event.type == "audio-stop"
    assert len(sizes) > 10 and max(sizes) <= 4096, sizes
