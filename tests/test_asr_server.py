"""The ASR server over real TCP with the embedded tiny.en model and real human speech."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe

from wyoming_opentalker.client import Connection, audio_events, describe, transcribe

from .conftest import Server
from .speech import POCKETSPHINX, corpus, normalize, wer

GOFORWARD = POCKETSPHINX / "goforward.raw"


async def _text(
    port: int, pcm: bytes, rate: int = 16000, width: int = 2, channels: int = 1, **kwargs: object
) -> str:
    result = await transcribe(port, pcm, rate, width, channels, **kwargs)  # type: ignore[arg-type]
    return result.text


async def test_info_advertises_exactly_the_installed_model(server: Server) -> None:
    info = await describe(server.asr)
    assert len(info.asr) == 1 and not info.tts
    program = info.asr[0]
    assert program.installed and not program.supports_transcript_streaming
    assert [model.name for model in program.models] == ["tiny.en"]
    assert program.models[0].installed
    assert program.models[0].languages == ["en"]


async def test_home_assistant_flow_describe_then_new_connection(server: Server) -> None:
    # Home Assistant describes on one connection, then opens another per request.
    await describe(server.asr)
    await describe(server.asr)
    text = await _text(server.asr, GOFORWARD.read_bytes(), language="en")
    assert normalize(text) == "go forward ten meters"


async def test_corpus_wer(server: Server) -> None:
    clips = corpus()
    assert len(clips) >= 18
    by_set: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for clip in clips:
        pcm, rate, width, channels = clip.pcm()
        text = await _text(server.asr, pcm, rate, width, channels, language="en")
        by_set[clip.set][0].append(clip.reference)
        by_set[clip.set][1].append(text)
    refs = [ref for refs, _ in by_set.values() for ref in refs]
    hyps = [hyp for _, hyps in by_set.values() for hyp in hyps]
    report = {name: round(wer(r, h), 3) for name, (r, h) in by_set.items()}
    total = wer(refs, hyps)
    print(f"WER per set: {report}; corpus: {total:.3f} over {len(refs)} clips")
    assert total <= 0.06, (report, list(zip(refs, hyps, strict=True)))


def _sox(args: list[str], pcm: bytes) -> bytes:
    """Convert 16 kHz mono s16 PCM with Debian's sox (an independent converter)."""
    out = subprocess.run(
        ["sox", "-t", "raw", "-r", "16000", "-e", "signed", "-b", "16", "-c", "1", "-", *args],
        input=pcm,
        capture_output=True,
        check=True,
    )
    return out.stdout


@pytest.mark.parametrize(
    ("label", "rate", "bits", "channels", "encoding"),
    [
        ("8 kHz", 8000, 16, 1, "signed"),
        ("22.05 kHz", 22050, 16, 1, "signed"),
        ("48 kHz", 48000, 16, 1, "signed"),
        ("stereo", 16000, 16, 2, "signed"),
        ("8-bit", 16000, 8, 1, "unsigned"),
        ("24-bit 44.1 kHz stereo", 44100, 24, 2, "signed"),
        ("32-bit", 16000, 32, 1, "signed"),
    ],
)
async def test_any_input_format_gives_the_same_text(
    server: Server, label: str, rate: int, bits: int, channels: int, encoding: str
) -> None:
    pcm = GOFORWARD.read_bytes()
    reference = await _text(server.asr, pcm, language="en")
    converted = _sox(
        ["-t", "raw", "-r", str(rate), "-e", encoding, "-b", str(bits), "-c", str(channels), "-"],
        pcm,
    )
    text = await _text(server.asr, converted, rate, bits // 8, channels, language="en")
    assert normalize(text) == normalize(reference), label


async def test_language_auto_and_regional_codes(server: Server) -> None:
    pcm = GOFORWARD.read_bytes()
    for language in (None, "auto", "en-US", "en_GB", "EN"):
        assert normalize(await _text(server.asr, pcm, language=language)) == (
            "go forward ten meters"
        ), language


async def test_hints_reach_the_engine(server: Server) -> None:
    # "eight of spades four of clubs seven of hearts": tiny.en hears "four of close"
    # without help, and "4 of clubs" with it, however much silence follows the speech.
    # ("four queen of clubs", clip 002, flips with 0.05 s more or less of it.)
    clip = next(c for c in corpus() if c.name == "005")
    pcm, rate, width, channels = clip.pcm()
    plain = await _text(server.asr, pcm, rate, width, channels, language="en")
    hinted = await _text(
        server.asr,
        pcm,
        rate,
        width,
        channels,
        language="en",
        names=["Queen of Clubs"],
        terms=["clubs", "spades", "hearts", "diamonds"],
    )
    assert "clubs" not in normalize(plain)
    assert "clubs" in normalize(hinted)


async def test_describe_is_prompt_during_a_long_transcription(server: Server) -> None:
    clips = [c for c in corpus() if c.set in ("librivox", "cards")]
    audio = b"".join(c.pcm()[0] for c in clips)
    assert len(audio) / 32000 >= 30
    audio = audio[: 30 * 32000]
    async with Connection(server.asr) as conn:
        await conn.send(Transcribe(language="en").event(), *audio_events(audio, 16000, 2, 1))
        await asyncio.sleep(0.3)  # decoding has started
        latencies = []
        for _ in range(5):
            started = time.monotonic()
            await describe(server.asr)
            latencies.append(time.monotonic() - started)
        result = await conn.read()
        assert result is not None and Transcript.is_type(result.type)
        # The transcription was still running when describe was answered.
        assert len(Transcript.from_event(result).text.split()) > 40
    assert max(latencies) < 0.25, latencies


async def _expect_error(conn: Connection, code: str) -> Error:
    event = await conn.read(30)
    assert event is not None and Error.is_type(event.type), event
    error = Error.from_event(event)
    assert error.code == code, error
    return error


async def _fails_once(port: int, events: list[Event], code: str) -> Error:
    """A failed request: exactly one error, then the server closes the connection."""
    started = time.monotonic()
    async with Connection(port) as conn:
        # closed while we were still sending: the error is still there to be read
        with contextlib.suppress(ConnectionError):
            await conn.send(*events)
        error = await _expect_error(conn, code)
        assert await conn.read(5) is None  # nothing more: no transcript, no more errors
    assert time.monotonic() - started < 5
    return error


async def test_bad_requests_get_one_error_then_a_close(server: Server) -> None:
    pcm = GOFORWARD.read_bytes()
    start = AudioStart(rate=16000, width=2, channels=1).event()
    chunk = AudioChunk(rate=16000, width=2, channels=1, audio=pcm[:3200]).event()
    await _fails_once(server.asr, [chunk, chunk, AudioStop().event()], "out-of-order")
    await _fails_once(server.asr, [AudioStop().event()], "out-of-order")
    await _fails_once(server.asr, [start, AudioStop().event()], "no-audio")
    request = [Transcribe(language="zh").event(), *audio_events(pcm, 16000, 2, 1)]
    error = await _fails_once(server.asr, request, "unsupported-language")
    assert "zh" in error.text and "en" in error.text
    for rate, width, channels in ((0, 2, 1), (16000, 3 * 7, 1), (16000, 2, 64)):
        bad = AudioStart(rate=rate, width=width, channels=channels).event()
        await _fails_once(server.asr, [bad, chunk, chunk, chunk, chunk, chunk], "bad-audio-format")
    assert normalize(await _text(server.asr, pcm)) == "go forward ten meters"


async def test_describe_is_not_a_request_and_keeps_the_connection(server: Server) -> None:
    async with Connection(server.asr) as conn:
        for _ in range(3):
            await conn.send(Describe().event())
            event = await conn.read(5)
            assert event is not None and event.type == "info"
        await conn.send(
            Transcribe(language="en").event(), *audio_events(GOFORWARD.read_bytes(), 16000, 2, 1)
        )
        event = await conn.read()
        assert event is not None and Transcript.is_type(event.type)


async def test_transcript_is_the_first_event_after_audio_stop(server: Server) -> None:
    async with Connection(server.asr) as conn:
        await conn.send(
            Transcribe(language="en").event(), *audio_events(GOFORWARD.read_bytes(), 16000, 2, 1)
        )
        event = await conn.read()
        assert event is not None and event.type == "transcript", event
        await conn.send(Describe().event())  # and nothing else was queued behind it
        event = await conn.read(5)
        assert event is not None and event.type == "info", event


async def test_odd_length_pcm_is_accepted(server: Server) -> None:
    pcm = GOFORWARD.read_bytes()
    async with Connection(server.asr) as conn:
        await conn.send(Transcribe(language="en").event())
        await conn.send(AudioStart(rate=16000, width=2, channels=1).event())
        for i in range(0, len(pcm), 1001):  # chunks that split samples in half
            await conn.send(
                AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + 1001]).event()
            )
        await conn.send(AudioStop().event())
        event = await conn.read()
    assert event is not None and Transcript.is_type(event.type)
    assert normalize(Transcript.from_event(event).text) == "go forward ten meters"


async def test_ten_minute_upload_is_refused_cleanly(server: Server) -> None:
    second = np.zeros(16000, dtype="<i2").tobytes()
    async with Connection(server.asr) as conn:
        await conn.send(AudioStart(rate=16000, width=2, channels=1).event())
        error = None
        for _ in range(600):
            try:
                await conn.send(AudioChunk(rate=16000, width=2, channels=1, audio=second).event())
            except ConnectionError:
                break
        event = await conn.read(30)
        assert event is not None and Error.is_type(event.type), event
        error = Error.from_event(event)
        assert error.code == "too-long" and "300" in error.text
        assert await conn.read(30) is None  # then a clean close
    assert normalize(await _text(server.asr, GOFORWARD.read_bytes())) == "go forward ten meters"


async def test_client_disconnecting_mid_upload(server: Server) -> None:
    pcm = GOFORWARD.read_bytes()
    for _ in range(3):
        async with Connection(server.asr) as conn:
            await conn.send(
                Transcribe().event(), AudioStart(rate=16000, width=2, channels=1).event()
            )
            await conn.send(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[:8000]).event())
        # and one that leaves right after audio-stop, before the transcript
        async with Connection(server.asr) as conn:
            await conn.send(*audio_events(pcm, 16000, 2, 1))
    assert normalize(await _text(server.asr, pcm)) == "go forward ten meters"
    async with Connection(server.asr) as conn:
        await conn.send(Describe().event())
        assert (await conn.read(5)) is not None


async def test_several_requests_on_one_connection(server: Server) -> None:
    pcm = GOFORWARD.read_bytes()
    async with Connection(server.asr) as conn:
        for _ in range(2):
            await conn.send(Transcribe(language="en").event(), *audio_events(pcm, 16000, 2, 1))
            event = await conn.read()
            assert event is not None and Transcript.is_type(event.type)
            assert normalize(Transcript.from_event(event).text) == "go forward ten meters"


def test_model_path_missing_is_a_one_line_startup_error(tmp_path: Path) -> None:
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wyoming_opentalker",
            "asr",
            "--asr-model",
            str(tmp_path / "nope"),
            "--uri",
            "tcp://127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("wyoming-opentalker: error: model path") and "does not exist" in last


async def test_unix_socket_single_service(tmp_path: Path) -> None:
    import sys

    from wyoming.event import async_read_event, async_write_event

    sock = tmp_path / "asr.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "wyoming_opentalker", "asr", "--uri", f"unix://{sock}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if sock.exists():
                break
            await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_unix_connection(str(sock))
        await async_write_event(Describe().event(), writer)
        event = await asyncio.wait_for(async_read_event(reader), 5)
        assert event is not None and event.type == "info" and event.data["asr"]
        assert not event.data["tts"]  # single-service mode: no TTS here
        writer.close()
    finally:
        process.terminate()
        assert process.wait(30) == 0
    assert not sock.exists()
