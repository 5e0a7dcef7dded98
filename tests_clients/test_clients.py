"""Third-party Wyoming clients, installed from PyPI, against our CPU-default servers.

Each client is run the way its README tells a user to run it, on its happy path and on
its failure paths (an unknown voice, an unsupported language, text with nothing to
speak). Every run must end within 5 s with what a user would expect: audio that says
the text, a transcript, or a prompt failure. While a failed request left the connection
open, yakyak and wyoming-openai-gateway (which ignore ``error``) waited out the server's
60 s idle timeout, and the gateway answered a Chinese request with an English transcript.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import wave
from dataclasses import dataclass
from pathlib import Path

import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.info import Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

from .conftest import CLIENT_BIN, Services, clips, record

LIMIT = 5.0  # seconds a user waits for any answer, good or bad
WAIT = 90.0  # how long a run may take before it is killed (longer than the idle timeout)
TEXT = "The front door is locked."
KEYWORDS = {"front", "door", "locked"}
VOICE = "en_US-joe-medium"


def _words(text: str) -> set[str]:
    return set(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@dataclass
class Wav:
    rate: int
    width: int
    channels: int
    pcm: bytes

    @classmethod
    def parse(cls, data: bytes) -> Wav:
        with wave.open(io.BytesIO(data)) as wav:
            return cls(
                wav.getframerate(),
                wav.getsampwidth(),
                wav.getnchannels(),
                wav.readframes(wav.getnframes()),
            )

    @property
    def seconds(self) -> float:
        return len(self.pcm) / (self.rate * self.width * self.channels)

    @property
    def silent(self) -> bool:
        return not any(self.pcm)


async def _transcribe(port: int, wav: Wav) -> str:
    """What our ASR hears in some audio (the check that speech says the text)."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(wav.rate, wav.width, wav.channels).event())
        step = 1024 * wav.width * wav.channels
        for offset in range(0, len(wav.pcm), step):
            chunk = AudioChunk(wav.rate, wav.width, wav.channels, wav.pcm[offset : offset + step])
            await client.write_event(chunk.event())
        await client.write_event(AudioStop().event())
        event = await asyncio.wait_for(client.read_event(), 60)
    assert event is not None and Transcript.is_type(event.type), event
    return Transcript.from_event(event).text


def _assert_says_the_text(services: Services, wav: Wav) -> None:
    assert wav.rate == 22050 and wav.width == 2 and wav.channels == 1
    assert 0.8 < wav.seconds < 5 and not wav.silent
    heard = asyncio.run(_transcribe(services.asr, wav))
    # Piper's synthesis has random noise and tiny.en may mishear one word of it.
    assert len(KEYWORDS - _words(heard)) <= 1, heard


def _assert_silence(wav: Wav) -> None:
    assert wav.rate == 22050 and 0 < wav.seconds <= 0.5 and wav.silent


# --- running clients


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float


def _run(client: str, case: str, argv: list[str], stdin: str = "", requests: int = 1) -> Run:
    """Run a client's command-line program (``requests`` requests in one run); record and
    check how long it took."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            argv, input=stdin.encode(), capture_output=True, timeout=WAIT, check=False
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = -1, exc.stdout or b"", exc.stderr or b""
    seconds = time.monotonic() - started
    run = Run(code, out.decode(errors="replace"), err.decode(errors="replace"), seconds)
    record(client, case, seconds, f"exit {code}")
    assert seconds < LIMIT * requests, (case, seconds, run.stdout[-2000:], run.stderr[-2000:])
    return run


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def _http(
    client: str,
    case: str,
    url: str,
    body: bytes | None = None,
    content_type: str | None = None,
) -> Reply:
    """One HTTP request to a gateway; record and check how long the answer took."""
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            reply = Reply(response.status, response.headers.get_content_type(), response.read())
    except urllib.error.HTTPError as err:
        reply = Reply(err.code, err.headers.get_content_type(), err.read())
    except TimeoutError:
        reply = Reply(0, "", b"timed out")
    seconds = time.monotonic() - started
    record(client, case, seconds, f"HTTP {reply.status}")
    assert seconds < LIMIT, (case, seconds, reply)
    return reply


def _multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\n".encode()
        + file
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# --- yakyak 1.8.0 (text to speech, command line)


def _yakyak(
    services: Services, tmp_path: Path, case: str, text: str, *args: str, port: int = 0
) -> tuple[Run, Path]:
    out = tmp_path / "yakyak.wav"
    argv = [str(CLIENT_BIN / "yakyak"), "--host", "127.0.0.1", "-p", str(port or services.tts)]
    run = _run("yakyak", case, [*argv, "-f", "wav", "-o", str(out), *args], stdin=text)
    return run, out


@pytest.mark.parametrize(
    ("case", "args"),
    [
        ("its default voice en_US-amy-medium", ()),
        ("our voice", ("-v", VOICE)),
        ("an unknown voice", ("-v", "nobody")),
    ],
)
def test_yakyak_speaks(
    services: Services, tmp_path: Path, case: str, args: tuple[str, ...]
) -> None:
    run, out = _yakyak(services, tmp_path, case, TEXT, *args)
    assert run.code == 0, run.stderr
    _assert_says_the_text(services, Wav.parse(out.read_bytes()))


def test_yakyak_nothing_to_speak(services: Services, tmp_path: Path) -> None:
    run, out = _yakyak(services, tmp_path, "text '...'", "...")
    assert run.code == 0, run.stderr
    _assert_silence(Wav.parse(out.read_bytes()))


def test_yakyak_unknown_voice_on_a_strict_server(services: Services, tmp_path: Path) -> None:
    # yakyak ignores `error` events: the close is what ends its wait.
    run, out = _yakyak(
        services, tmp_path, "unknown voice, strict server", TEXT, port=services.strict_tts
    )
    assert run.code == 0 and not out.exists()


# --- wyoming-bench 2026.10.0 (benchmark, command line)


def _bench(case: str, *args: str, requests: int = 1) -> Run:
    argv = [str(CLIENT_BIN / "wyoming-bench"), *args]
    return _run("wyoming-bench", case, argv, requests=requests)


def _assert_each_within_the_limit(run: Run) -> None:
    """The benchmark's own per-request times (its -v lines)."""
    totals = [int(ms) for ms in re.findall(r"^\[\w+\] r0 .*total=(\d+)ms", run.stdout, re.M)]
    assert totals and max(totals) < LIMIT * 1000, run.stdout


def _bench_tts(port: int, case: str, text: str, *args: str, requests: int = 1) -> Run:
    return _bench(
        case, "tts", f"127.0.0.1:{port}", "--rounds", "1", "--warmup", "0", "--no-unique",
        "--timeout", str(WAIT), "-v", "--texts", text, *args, requests=requests,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("case", "text", "config"),
    [
        ("tts, both modes", TEXT, "{}"),
        ("tts, voice en_US-lessac-medium", TEXT, '{"voice": "en_US-lessac-medium"}'),
        ("tts, text '...'", "...", "{}"),
    ],
)
def test_wyoming_bench_tts(services: Services, case: str, text: str, config: str) -> None:
    # a streaming probe, then one request per mode
    run = _bench_tts(services.tts, case, text, "--config", config, requests=3)
    assert run.code == 0, run.stdout
    assert "NOT SUPPORTED" not in run.stdout and "FAIL" not in run.stdout, run.stdout
    for mode in ("non_streaming", "streaming"):
        assert re.search(rf"^\[{mode}\] r0 sent=\d+ ttft=", run.stdout, re.M), run.stdout
    _assert_each_within_the_limit(run)


def test_wyoming_bench_tts_unknown_voice_on_a_strict_server(services: Services) -> None:
    run = _bench_tts(
        services.strict_tts, "tts, unknown voice, strict", TEXT,
        "--config", '{"voice": "nobody"}', "--mode", "non_streaming",
    )  # fmt: skip
    assert run.code == 1
    assert "FAIL: server error (unknown-voice)" in run.stdout, run.stdout


def _corpus(tmp_path: Path) -> Path:
    for clip in clips():
        (tmp_path / f"{clip.name}.wav").write_bytes(clip.wav())
        (tmp_path / f"{clip.name}.txt").write_text(clip.reference + "\n")
    return tmp_path


def _bench_stt(
    services: Services, tmp_path: Path, case: str, config: str, requests: int = 1
) -> Run:
    return _bench(
        case, "stt", f"127.0.0.1:{services.asr}", "--corpus", str(_corpus(tmp_path)),
        "--rounds", "1", "--warmup", "0", "--timeout", str(WAIT), "-v", "--config", config,
        requests=requests,
    )  # fmt: skip


def test_wyoming_bench_stt(services: Services, tmp_path: Path) -> None:
    config = '{"language": "en"}'
    run = _bench_stt(services, tmp_path, "stt, three clips", config, requests=len(clips()))
    assert run.code == 0, run.stdout
    _assert_each_within_the_limit(run)
    wers = [
        float(w) for w in re.findall(r"^\[non_streaming\] r0 .* WER=([\d.]+)%", run.stdout, re.M)
    ]
    assert len(wers) == len(clips()) and max(wers) <= 34, run.stdout  # one word in three
    assert sum(wers) / len(wers) <= 12, run.stdout
    # we do not stream transcripts and say so: the benchmark skips that mode at once
    assert "NOT SUPPORTED" in run.stdout and "not advertised by server" in run.stdout


def test_wyoming_bench_stt_unsupported_language(services: Services, tmp_path: Path) -> None:
    run = _bench_stt(services, tmp_path, "stt, language 'xx'", '{"language": "xx"}')
    assert run.code == 1
    assert run.stdout.count("FAIL: server error (unsupported-language)") == len(clips())


def test_wyoming_bench_info(services: Services) -> None:
    run = _bench("info", "info", f"127.0.0.1:{services.asr}", f"127.0.0.1:{services.tts}")
    assert run.code == 0, run.stdout
    assert "tiny.en" in run.stdout and VOICE in run.stdout
    assert "amy" not in run.stdout  # only installed voices are listed


# --- wyoming 1.10.2 [http]: the HTTP gateways the wyoming package ships


def _tts_url(port: int, text: str, **query: str) -> str:
    return f"http://127.0.0.1:{port}/api/text-to-speech?" + urllib.parse.urlencode(
        {"text": text, **query}
    )


@pytest.mark.parametrize("voice", [VOICE, "en_US-lessac-medium"])
def test_wyoming_http_tts(services: Services, voice: str) -> None:
    reply = _http(
        "wyoming[http] tts", f"voice {voice}", _tts_url(services.http_tts, TEXT, voice=voice)
    )
    assert reply.status == 200 and reply.content_type == "audio/wav", reply
    _assert_says_the_text(services, Wav.parse(reply.body))


def test_wyoming_http_tts_nothing_to_speak(services: Services) -> None:
    reply = _http("wyoming[http] tts", "text '...'", _tts_url(services.http_tts, "..."))
    assert reply.status == 200, reply
    _assert_silence(Wav.parse(reply.body))


def test_wyoming_http_tts_unknown_voice_on_a_strict_server(services: Services) -> None:
    url = _tts_url(
        services.http_tts, TEXT, voice="nobody", uri=f"tcp://127.0.0.1:{services.strict_tts}"
    )
    reply = _http("wyoming[http] tts", "unknown voice, strict server", url)
    assert reply.status == 500  # the gateway turns any server error into a 500


def _stt_url(port: int, language: str) -> str:
    return f"http://127.0.0.1:{port}/api/speech-to-text?language={language}"


def test_wyoming_http_asr(services: Services) -> None:
    clip = clips()[0]
    url = _stt_url(services.http_asr, "en")
    reply = _http("wyoming[http] asr", "goforward", url, clip.wav(), "audio/wav")
    assert reply.status == 200, reply
    body = reply.json()
    assert isinstance(body, dict) and _plain(body["text"]) == clip.reference, body


def test_wyoming_http_asr_unsupported_language(services: Services) -> None:
    url = _stt_url(services.http_asr, "xx")
    reply = _http("wyoming[http] asr", "language 'xx'", url, clips()[0].wav(), "audio/wav")
    assert reply.status == 500


# --- wyoming-openai-gateway 0.2.1 (OpenAI's HTTP API in front of Wyoming)


def _speech(port: int, case: str, text: str, voice: str) -> Reply:
    body = json.dumps({"model": "tts-1", "input": text, "voice": voice}).encode()
    url = f"http://127.0.0.1:{port}/v1/audio/speech"
    return _http("wyoming-openai-gateway", case, url, body, "application/json")


@pytest.mark.parametrize("voice", ["alloy", VOICE, "en_US-amy-medium"])
def test_openai_gateway_speech(services: Services, voice: str) -> None:
    reply = _speech(services.openai, f"speech, voice {voice}", TEXT, voice)
    assert reply.status == 200 and reply.content_type == "audio/wav", reply
    _assert_says_the_text(services, Wav.parse(reply.body))


def test_openai_gateway_nothing_to_speak(services: Services) -> None:
    reply = _speech(services.openai, "speech, text '...'", "...", "alloy")
    assert reply.status == 200, reply
    _assert_silence(Wav.parse(reply.body))


def test_openai_gateway_unknown_voice_on_a_strict_server(services: Services) -> None:
    reply = _speech(services.openai_strict, "speech, unknown voice, strict", TEXT, "nobody")
    assert reply.status == 500, reply  # the gateway's code for any Wyoming failure


def _transcription(services: Services, case: str, language: str) -> Reply:
    body, content_type = _multipart({"model": "whisper-1", "language": language}, clips()[0].wav())
    url = f"http://127.0.0.1:{services.openai}/v1/audio/transcriptions"
    return _http("wyoming-openai-gateway", case, url, body, content_type)


def test_openai_gateway_transcription(services: Services) -> None:
    # it sends model "whisper-1" with every request: an unknown model name is ignored
    reply = _transcription(services, "transcription, model whisper-1", "en")
    assert reply.status == 200, reply
    body = reply.json()
    assert isinstance(body, dict) and _plain(body["text"]) == clips()[0].reference, body


def test_openai_gateway_unsupported_language(services: Services) -> None:
    # an error, not HTTP 200 with the English audio transcribed anyway
    reply = _transcription(services, "transcription, language 'zh'", "zh")
    assert reply.status == 500, reply


def test_openai_gateway_lists_installed_voices(services: Services) -> None:
    url = f"http://127.0.0.1:{services.openai}/v1/voices"
    reply = _http("wyoming-openai-gateway", "voices", url)
    assert reply.status == 200, reply
    body = reply.json()
    assert isinstance(body, dict) and [v["id"] for v in body["voices"]] == [VOICE]


# --- the limits these clients rely on, through the wyoming library they all use


async def _events_until(client: AsyncTcpClient, last: str) -> list[tuple[str, int]]:
    events = []
    while True:
        event = await asyncio.wait_for(client.read_event(), 60)
        assert event is not None and event.type != "error", event
        events.append((event.type, len(event.payload or b"")))
        if event.type == last:
            return events


async def _tts_events(port: int, streaming: bool) -> list[tuple[str, int]]:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        if streaming:
            await client.write_event(SynthesizeStart().event())
            for part in (TEXT[:9], TEXT[9:], " Good night."):
                await client.write_event(SynthesizeChunk(text=part).event())
            await client.write_event(SynthesizeStop().event())
            return await _events_until(client, "synthesize-stopped")
        await client.write_event(Synthesize(text=f"{TEXT} Good night.").event())
        return await _events_until(client, "audio-stop")


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streaming"])
def test_audio_chunks_are_at_most_4096_bytes(services: Services, streaming: bool) -> None:
    events = asyncio.run(_tts_events(services.tts, streaming))
    sizes = [size for kind, size in events if kind == "audio-chunk"]
    assert len(sizes) > 10 and max(sizes) <= 4096, sizes
    kinds = [kind for kind, _ in events if kind != "audio-chunk"]
    assert kinds == ["audio-start", "audio-stop"] + (["synthesize-stopped"] if streaming else [])


async def _info_bytes(port: int) -> tuple[int, Info]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b'{"type": "describe"}\n')
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        header = json.loads(line)
        data = await reader.readexactly(header.get("data_length") or 0)
        payload = await reader.readexactly(header.get("payload_length") or 0)
    finally:
        writer.close()
    merged = {**(header.get("data") or {}), **(json.loads(data) if data else {})}
    return len(line) + len(data) + len(payload), Info.from_event(Event("info", merged))


def test_info_is_under_a_mebibyte(services: Services) -> None:
    for port in (services.asr, services.tts):
        size, info = asyncio.run(_info_bytes(port))
        assert size < 1024 * 1024, size
        assert info.asr or info.tts


async def _after_audio_stop(port: int) -> str:
    clip = clips()[0]
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(16000, 2, 1).event())
        for offset in range(0, len(clip.pcm), 2048):
            await client.write_event(
                AudioChunk(16000, 2, 1, clip.pcm[offset : offset + 2048]).event()
            )
        await client.write_event(AudioStop().event())
        event = await asyncio.wait_for(client.read_event(), 60)
    assert event is not None
    return str(event.type)


def test_transcript_is_the_first_event_after_audio_stop(services: Services) -> None:
    assert asyncio.run(_after_audio_stop(services.asr)) == "transcript"
