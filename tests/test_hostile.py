"""Hostile input over real TCP: after every case the same server still answers
``describe`` and a real request correctly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeVoice,
)

from wyoming_opentalker.client import Connection, describe, synthesize, transcribe

from .conftest import Server, start_server
from .speech import POCKETSPHINX, normalize

GOFORWARD = (POCKETSPHINX / "goforward.raw").read_bytes()


@pytest.fixture(scope="module", params=["cpu", "qwen"])
def strict(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Both servers with tight limits, so limit cases run in seconds: once with the CPU
    defaults, once with (tiny, random) Qwen3-ASR and Qwen3-TTS checkpoints."""
    engines: list[str] = []
    if request.param == "qwen":
        from tests.qwen_models import build_qwen3_asr, build_qwen3_tts

        models = tmp_path_factory.mktemp("hostile-qwen")
        engines = [
            "--asr-engine=qwen3-asr",
            "--qwen-asr-runtime=torch",
            f"--asr-model={build_qwen3_asr(models / 'asr')}",
            "--qwen-asr-max-new-tokens=8",
            "--tts-engine=qwen3-tts",
            f"--tts-model={build_qwen3_tts(models / 'tts', max_new_tokens=24)}",
            "--qwen-tts-stream-window=4",
        ]
    limits = [
        "--idle-timeout=2",
        "--max-connections=8",
        "--max-event-bytes=1048576",
        "--max-audio-seconds=60",
        "--max-text-chars=5000",
    ]
    server = start_server(tmp_path_factory.mktemp("hostile"), ("asr", "tts"), *engines, *limits)
    server.engines = request.param
    yield server
    assert server.stop() == 0, server.log_text()


def _header(event_type: str, **fields: object) -> bytes:
    return json.dumps({"type": event_type, **fields}).encode() + b"\n"


async def _raw(port: int, data: bytes, *, half_close: bool = False, wait: float = 5.0) -> bytes:
    """Send raw bytes; return whatever the server answers before closing or ``wait``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        chunks = []
        try:
            async with asyncio.timeout(wait):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        except (TimeoutError, ConnectionError):
            pass
        return b"".join(chunks)
    finally:
        writer.close()


def _heard_right(server: Server, text: str) -> bool:
    """Real speech must be understood; a random-weight Qwen model only has to answer."""
    return server.engines == "qwen" or normalize(text) == "go forward ten meters"


async def _still_healthy(server: Server) -> None:
    info = await describe(server.asr)
    assert info.asr
    assert (await describe(server.tts)).tts
    text = (await transcribe(server.asr, GOFORWARD, language="en")).text
    assert _heard_right(server, text)
    speech = await synthesize(server.tts, "The door is locked.")
    # random-weight Qwen may sample its stop frame early: it only has to speak at all
    shortest = 0.5 if server.engines == "cpu" else 0.05
    assert speech.types == ["audio-start", "audio-stop"] and speech.seconds > shortest


async def _one_error(conn: Connection, *codes: str) -> None:
    """A failed request ends with exactly one error, then the server closes."""
    event = await conn.read(10)
    assert event is not None and event.type == "error", event
    assert event.data["code"] in codes, event
    assert await conn.read(5) is None


def _audio(seconds: float, rate: int = 16000) -> bytes:
    return np.zeros(int(seconds * rate), dtype="<i2").tobytes()


Case = Callable[[Server], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(func: Case) -> Case:
        CASES[name] = func
        return func

    return register


@case("garbage bytes")
async def _garbage(s: Server) -> None:
    answer = await _raw(s.asr, bytes(range(256)) * 40 + b"\n")
    assert b'"error"' in answer


@case("header is not JSON")
async def _not_json(s: Server) -> None:
    assert b"not valid JSON" in await _raw(s.tts, b"{this is not json}\n")


@case("header is a JSON list")
async def _json_list(s: Server) -> None:
    assert b"JSON object" in await _raw(s.asr, b'["describe"]\n')


@case("header without a type")
async def _no_type(s: Server) -> None:
    assert b"string 'type'" in await _raw(s.asr, b'{"data": {}}\n')


@case("empty line")
async def _empty_line(s: Server) -> None:
    assert b"empty event header" in await _raw(s.asr, b"\n")


@case("header announcing a 4 GB payload")
async def _huge_payload(s: Server) -> None:
    header = _header(
        "audio-chunk", data={"rate": 16000, "width": 2, "channels": 1}, payload_length=4 * 1024**3
    )
    answer = await _raw(s.asr, header + b"\0" * 100_000)
    assert b"too-large" in answer


@case("negative payload length")
async def _negative(s: Server) -> None:
    assert b"non-negative" in await _raw(s.asr, _header("audio-chunk", payload_length=-5))


@case("string data length")
async def _string_length(s: Server) -> None:
    assert b"non-negative" in await _raw(s.tts, _header("synthesize", data_length="12"))


@case("header longer than the limit")
async def _long_header(s: Server) -> None:
    answer = await _raw(s.tts, b'{"type": "synthesize", "x": "' + b"a" * 1_200_000 + b'"}\n')
    assert b"too-large" in answer


@case("truncated payload then close")
async def _truncated(s: Server) -> None:
    header = _header(
        "audio-chunk", data={"rate": 16000, "width": 2, "channels": 1}, payload_length=32000
    )
    await _raw(s.asr, header + b"\0" * 1000, half_close=True, wait=2)


@case("truncated data section")
async def _truncated_data(s: Server) -> None:
    await _raw(s.tts, _header("synthesize", data_length=100) + b'{"text": "he', half_close=True)


@case("data section is not JSON")
async def _bad_data(s: Server) -> None:
    body = b"\xff\xfe not json"
    answer = await _raw(s.tts, _header("synthesize", data_length=len(body)) + body)
    assert b"not valid UTF-8 JSON" in answer


@case("invalid UTF-8 inside the header")
async def _bad_utf8(s: Server) -> None:
    assert b'"error"' in await _raw(s.tts, b'{"type": "synth\xff\xfe"}\n')


@case("data: null")
async def _data_null(s: Server) -> None:
    async with Connection(s.tts) as conn:
        await conn.send_raw(b'{"type": "describe", "data": null}\n')
        event = await conn.read(5)
        assert event is not None and event.type == "info"


@case("unknown event types")
async def _unknown(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(Event("run-pipeline", {"x": 1}), Event("ping"), Event("detect"))
        await conn.send(Event("describe"))
        event = await conn.read(5)
        assert event is not None and event.type == "info"  # ignored, then answered


@case("audio events out of order")
async def _out_of_order(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(AudioStop().event(), AudioChunk(16000, 2, 1, b"\0\0").event())
        await _one_error(conn, "out-of-order")


@case("sample rate 0")
async def _rate_zero(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(AudioStart(rate=0, width=2, channels=1).event())
        await _one_error(conn, "bad-audio-format")


@case("bad audio-start then ten seconds of chunks")
async def _bad_start_flood(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(Transcribe(language="en").event(), AudioStart(0, 2, 1).event())
        with contextlib.suppress(ConnectionError):  # one error, not one per chunk
            for _ in range(156):
                await conn.send(AudioChunk(16000, 2, 1, _audio(0.064)).event())
            await conn.send(AudioStop().event())
        await _one_error(conn, "bad-audio-format")


@case("unsupported language then audio")
async def _language_then_audio(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(Transcribe(language="xx").event(), AudioStart(16000, 2, 1).event())
        await conn.send(AudioChunk(16000, 2, 1, GOFORWARD).event(), AudioStop().event())
        await _one_error(conn, "unsupported-language")  # and no transcript


@case("width 3 odd-sized chunks and 64 channels")
async def _widths(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(AudioStart(rate=16000, width=2, channels=64).event())
        await _one_error(conn, "bad-audio-format")
    async with Connection(s.asr) as conn:
        # 24-bit is legal; 7 bytes is not a whole frame and must not break anything
        await conn.send(Transcribe(language="en").event(), AudioStart(16000, 3, 1).event())
        await conn.send(AudioChunk(16000, 3, 1, b"\1" * 7).event(), AudioStop().event())
        event = await conn.read(30)
        assert event is not None and event.type in ("transcript", "error")


@case("rate as a string and missing fields")
async def _bad_fields(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(Event("audio-start", {"rate": "16000", "width": 2, "channels": 1}))
        await conn.send(Event("audio-start", {"width": 2}))
        await _one_error(conn, "bad-audio-format")
    async with Connection(s.asr) as conn:
        await conn.send(Event("audio-start", {"width": 2}))
        await _one_error(conn, "bad-audio-format")


@case("odd-length PCM")
async def _odd_pcm(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(Transcribe(language="en").event(), AudioStart(16000, 2, 1).event())
        for i in range(0, len(GOFORWARD), 333):
            await conn.send(AudioChunk(16000, 2, 1, GOFORWARD[i : i + 333]).event())
        await conn.send(AudioStop().event())
        event = await conn.read(30)
        assert event is not None and event.type == "transcript"
        assert _heard_right(s, event.data["text"])


@case("ten minutes of audio")
async def _ten_minutes(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(AudioStart(16000, 2, 1).event())
        ten_seconds = _audio(10)
        try:
            for _ in range(60):
                await conn.send(AudioChunk(16000, 2, 1, ten_seconds).event())
        except ConnectionError:
            pass
        event = await conn.read(10)
        assert event is not None and event.data["code"] == "too-long"


@case("audio chunk with no payload")
async def _no_payload(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(Transcribe().event(), AudioStart(16000, 2, 1).event())
        await conn.send(Event("audio-chunk", {"rate": 16000, "width": 2, "channels": 1}))
        await conn.send(AudioStop().event())
        event = await conn.read(10)
        assert event is not None and event.data["code"] == "no-audio"


@case("a million-character text")
async def _million(s: Server) -> None:
    async with Connection(s.tts) as conn:
        await conn.send(Synthesize(text="a" * 1_000_000).event())
        event = await conn.read(10)
        assert event is not None and event.data["code"] in ("too-large", "too-long")


@case("text over the character limit")
async def _long_text(s: Server) -> None:
    async with Connection(s.tts) as conn:
        await conn.send(Synthesize(text="Hello there. " * 500).event())
        event = await conn.read(10)
        assert event is not None and event.data["code"] == "too-long"


@case("text that is not a string")
async def _text_type(s: Server) -> None:
    async with Connection(s.tts) as conn:
        await conn.send(Event("synthesize", {"text": ["a", "b"]}), Event("synthesize", {}))
        await _one_error(conn, "bad-text")
    async with Connection(s.tts) as conn:
        await conn.send(Event("synthesize", {}))
        await _one_error(conn, "bad-text")


@case("voice of the wrong shape")
async def _voice_shape(s: Server) -> None:
    for voice in ("joe", 5, [1], {"name": 7}, {"name": ""}):
        async with Connection(s.tts) as conn:
            await conn.send(Event("synthesize", {"text": "Hi.", "voice": voice}))
            event = await conn.read(30)
            assert event is not None and event.type in ("audio-start", "error"), voice


@case("control characters and invalid surrogates")
async def _controls(s: Server) -> None:
    text = "Lights\x00\x01\x02 on.\u202e\ud800 Done\u200b."
    async with Connection(s.tts) as conn:
        body = json.dumps({"text": text}).encode()
        await conn.send_raw(_header("synthesize", data_length=len(body)) + body)
        event = await conn.read(30)
        assert event is not None and event.type in ("audio-start", "error")


@case("synthesize-chunk without synthesize-start")
async def _orphan_chunk(s: Server) -> None:
    async with Connection(s.tts) as conn:
        await conn.send(SynthesizeChunk(text="hello").event())
        await _one_error(conn, "out-of-order")


@case("failed synthesize-start then its chunks")
async def _failed_start(s: Server) -> None:
    async with Connection(s.tts) as conn:
        await conn.send(SynthesizeStart(voice=SynthesizeVoice(language="xx")).event())
        with contextlib.suppress(ConnectionError):
            for _ in range(20):
                await conn.send(SynthesizeChunk(text="More text. ").event())
            await conn.send(SynthesizeStop().event())
        await _one_error(conn, "unsupported-language")  # not one error per chunk


@case("two streams on one connection")
async def _two_streams(s: Server) -> None:
    async with Connection(s.tts) as conn:
        await conn.send(SynthesizeStart().event(), SynthesizeStart().event())
        await _one_error(conn, "out-of-order")


@case("stream over the character limit")
async def _stream_limit(s: Server) -> None:
    async with Connection(s.tts) as conn:
        await conn.send(SynthesizeStart().event())
        for _ in range(6):
            await conn.send(SynthesizeChunk(text="x" * 999).event())
        await _one_error(conn, "too-long")


@case("slowloris header")
async def _slowloris(s: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", s.asr)
    try:
        for char in b'{"type": "desc':
            writer.write(bytes([char]))
            await writer.drain()
            await asyncio.sleep(0.1)
        answer = b""
        async with asyncio.timeout(10):  # the error's header and data may come apart
            while b"timeout" not in answer and (part := await reader.read(65536)):
                answer += part
        assert b"timeout" in answer  # cut off by the 2 s idle limit, not left hanging
    finally:
        writer.close()


@case("client stalls mid-upload")
async def _stall(s: Server) -> None:
    async with Connection(s.asr) as conn:
        await conn.send(Transcribe().event(), AudioStart(16000, 2, 1).event())
        await conn.send(AudioChunk(16000, 2, 1, _audio(1)).event())
        event = await conn.read(10)
        assert event is not None and event.data["code"] == "timeout"


@case("half-closed socket after a request")
async def _half_close(s: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", s.tts)
    try:
        body = json.dumps({"text": "Half closed."}).encode()
        writer.write(_header("synthesize", data_length=len(body)) + body)
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 30)
        assert b"audio-stop" in data  # answered in full before the server closed
    finally:
        writer.close()


@case("client that never reads its audio")
async def _never_reads(s: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", s.tts))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"text": "The kitchen lights are on. " * 30}).encode()
    sock.sendall(_header("synthesize", data_length=len(body)) + body)
    await asyncio.sleep(4)  # server's writes stall; it must drop us after the idle limit
    sock.close()


@case("many connections at once")
async def _many(s: Server) -> None:
    conns = []
    try:
        for _ in range(12):
            reader, writer = await asyncio.open_connection("127.0.0.1", s.asr)
            conns.append((reader, writer))
        answers = []
        for reader, _ in conns[8:]:
            answers.append(await asyncio.wait_for(reader.read(), 5))  # until it closes
        assert all(b"busy" in answer for answer in answers), answers
    finally:
        for _, writer in conns:
            writer.close()
    await asyncio.sleep(0.2)


@case("disconnect mid-request on both servers")
async def _disconnects(s: Server) -> None:
    for _ in range(3):
        async with Connection(s.asr) as conn:
            await conn.send(Transcribe().event(), AudioStart(16000, 2, 1).event())
            await conn.send(AudioChunk(16000, 2, 1, GOFORWARD).event(), AudioStop().event())
        async with Connection(s.tts) as conn:
            await conn.send(Synthesize(text="A long answer. " * 20).event())
            await conn.read(30)


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
async def test_hostile_case_then_still_serving(strict: Server, name: str) -> None:
    await CASES[name](strict)
    await _still_healthy(strict)


def test_sigterm_finishes_in_flight_work_and_exits_zero(tmp_path: Path) -> None:
    server = start_server(tmp_path, ("tts",), "--shutdown-grace", "20")

    async def scenario() -> list[str]:
        async with Connection(server.tts) as conn:
            await conn.send(Synthesize(text="The kitchen lights are now on. " * 8).event())
            first = await conn.read(30)
            assert first is not None and first.type == "audio-start"
            server.process.terminate()  # mid-answer
            types = [first.type]
            while (event := await conn.read(30)) is not None:
                if event.type != "audio-chunk":
                    types.append(event.type)
            return types

    types = asyncio.run(scenario())
    assert types == ["audio-start", "audio-stop"]  # the answer was completed
    assert server.process.wait(30) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.tts), timeout=1)
