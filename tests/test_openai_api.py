"""The OpenAI-style HTTP API, driven by the official ``openai`` client and by ``curl``,
against real servers on 127.0.0.1 that also serve Wyoming from the same loaded models."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import soundfile

from wyoming_opentalker.client import describe, synthesize, transcribe
from wyoming_opentalker.media import decode_audio

from .conftest import Server, free_port, start_server
from .speech import ALSA, Clip, corpus, float_audio, normalize, wav_bytes, wer
from .test_tts_server import SENTENCES

KEY = "test-secret-key"
CLIP = next(clip for clip in corpus() if clip.name.endswith("0870"))
CLIPS = [clip for clip in corpus() if clip.set == "librivox"]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Both Wyoming servers plus the HTTP API on two ports, with a bearer token."""
    ports = f"{free_port()},{free_port()}"
    server = start_server(
        tmp_path_factory.mktemp("http"),
        ("asr", "tts"),
        "--http",
        "--http-host=127.0.0.1",
        f"--http-port={ports}",
        f"--http-api-key={KEY}",
        "--http-max-upload-mb=4",
    )
    server.ports["http"], server.ports["http2"] = (int(port) for port in ports.split(","))
    _wait_http(server.ports["http"])
    yield server
    assert server.stop() == 0, server.log_text()


def _wait_http(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"HTTP API did not listen on {port}")


def _client(server: Server, port_name: str = "http", key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=key, base_url=f"http://127.0.0.1:{server.ports[port_name]}/v1", max_retries=0
    )


def _wav_bytes(clip: Clip) -> bytes:
    return clip.path.read_bytes()


def _ffmpeg_file(clip: Clip, container: str, codec: str, rate: int) -> bytes:
    """The clip re-encoded by FFmpeg's own encoders and muxers (m4a, webm, mp3)."""
    import av

    pcm, clip_rate, _, _ = clip.pcm()
    out = io.BytesIO()
    with av.open(out, mode="w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(
            np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = clip_rate
        fmt = stream.codec_context.format
        resampler = av.AudioResampler(format=fmt.name if fmt else "s16", layout="mono", rate=rate)
        for piece in [*resampler.resample(frame), *resampler.resample(None), None]:
            for packet in stream.encode(piece):
                muxer.mux(packet)
    return out.getvalue()


def _sox_file(clip: Clip, suffix: str, tmp_path: Path, *effects: str) -> bytes:
    out = tmp_path / f"{clip.name}{suffix}"
    subprocess.run(["sox", str(clip.path), *effects, str(out)], check=True)
    return out.read_bytes()


# --- speech to text


def test_transcription_json_with_the_official_client(api: Server) -> None:
    client = _client(api)
    texts = []
    for clip in CLIPS:
        with clip.path.open("rb") as file:
            texts.append(client.audio.transcriptions.create(model="whisper-1", file=file).text)
    assert wer([clip.reference for clip in CLIPS], texts) <= 0.1, texts


@pytest.mark.parametrize(
    "name",
    ["wav-48k-stereo-24bit", "flac", "ogg-vorbis", "mp3", "m4a-aac", "webm-opus"],
)
def test_transcription_of_each_container(api: Server, name: str, tmp_path: Path) -> None:
    makers = {
        "wav-48k-stereo-24bit": lambda: _sox_file(
            CLIP, ".wav", tmp_path, "-b", "24", "-r", "48000", "-c", "2"
        ),
        "flac": lambda: _sox_file(CLIP, ".flac", tmp_path),
        "ogg-vorbis": lambda: _sox_file(CLIP, ".ogg", tmp_path),
        "mp3": lambda: _ffmpeg_file(CLIP, "mp3", "libmp3lame", 16000),
        "m4a-aac": lambda: _ffmpeg_file(CLIP, "ipod", "aac", 16000),
        "webm-opus": lambda: _ffmpeg_file(CLIP, "webm", "libopus", 48000),
    }
    data = makers[name]()
    suffix = {"m4a-aac": "m4a", "webm-opus": "webm", "ogg-vorbis": "ogg"}.get(name, name[:4])
    result = _client(api).audio.transcriptions.create(
        model="whisper-1", file=(f"speech.{suffix.strip('-')}", data), language="en"
    )
    assert wer([CLIP.reference], [result.text]) <= 0.15, result.text


def test_transcription_text_srt_vtt_and_verbose(api: Server) -> None:
    client = _client(api)
    long = b"".join(clip.pcm()[0] for clip in CLIPS)  # about 25 s of librivox
    data = wav_bytes(long)
    duration = len(long) / 32000
    reference = " ".join(clip.reference for clip in CLIPS)

    text = client.audio.transcriptions.create(
        model="whisper-1", file=("long.wav", data), response_format="text"
    )
    assert isinstance(text, str) and wer([reference], [text]) <= 0.15

    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("long.wav", data), response_format="verbose_json"
    )
    assert verbose.language == "english" and abs(verbose.duration - duration) < 0.05
    segments = verbose.segments or []
    assert len(segments) >= 3, segments  # really timed, not one block
    starts = [segment.start for segment in segments]
    assert starts == sorted(starts) and segments[-1].end <= duration + 0.01
    assert wer([reference], [" ".join(s.text for s in segments)]) <= 0.15

    srt = client.audio.transcriptions.create(
        model="whisper-1", file=("long.wav", data), response_format="srt"
    )
    blocks = [block.splitlines() for block in str(srt).strip().split("\n\n")]
    assert [block[0] for block in blocks] == [str(i) for i in range(1, len(blocks) + 1)]
    assert all(" --> " in block[1] and "," in block[1] for block in blocks)
    assert len(blocks) == len(segments)

    vtt = client.audio.transcriptions.create(
        model="whisper-1", file=("long.wav", data), response_format="vtt"
    )
    assert str(vtt).startswith("WEBVTT\n\n") and str(vtt).count(" --> ") == len(segments)


def test_prompt_reaches_the_engine_as_hints(api: Server) -> None:
    """The prompt goes in as hints (Whisper hotwords), like Home Assistant's names:
    "four queen of clubs" is misheard as "... clothes" without it."""
    client = _client(api)
    clip = next(c for c in corpus() if c.name == "002")
    plain = client.audio.transcriptions.create(model="whisper-1", file=clip.path.open("rb"))
    hinted = client.audio.transcriptions.create(
        model="whisper-1", file=clip.path.open("rb"), prompt="Queen of Clubs, clubs, spades"
    )
    assert "clubs" not in normalize(plain.text)
    assert "clubs" in normalize(hinted.text)


# --- text to speech


def _decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Each format through a decoder other than our encoder: libsndfile for wav/flac,
    numpy for raw pcm, FFmpeg for the compressed ones."""
    if fmt == "pcm":
        return float_audio(data), 24000
    if fmt in ("wav", "flac"):
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
        return samples, rate
    return decode_audio(data, 16000, 120), 16000


async def _hear(server: Server, samples: np.ndarray, rate: int) -> str:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    return (await transcribe(server.asr, pcm, rate=rate, language="en")).text


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
async def test_speech_in_each_format_decodes_and_is_understood(api: Server, fmt: str) -> None:
    text = f"{SENTENCES[0]} {SENTENCES[5]}"  # 13 words, no numbers to normalise
    response = await asyncio.to_thread(
        _client(api).audio.speech.create,
        model="tts-1",
        voice="alloy",
        input=text,
        response_format=fmt,  # type: ignore[arg-type]
    )
    content_type = response.response.headers["content-type"]
    assert content_type.startswith("audio/"), content_type
    samples, rate = _decode(response.content, fmt)
    if fmt == "wav":
        assert rate == 22050  # the voice's own rate
    seconds = samples.size / rate
    assert 2.0 < seconds < 8.0, seconds
    assert float(np.sqrt(np.mean(samples**2))) > 0.02  # speech, not silence
    heard = await _hear(api, samples, rate)
    assert wer([text], [heard]) <= 0.2, heard  # Piper adds noise: a word may vary


def test_speech_streams_before_the_whole_text_is_synthesised(api: Server) -> None:
    text = " ".join(SENTENCES)  # ten sentences, several chunks
    started = time.monotonic()
    first: float | None = None
    size = 0
    with _client(api).audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=text, response_format="pcm"
    ) as response:
        for data in response.iter_bytes(4096):
            if first is None:
                first = time.monotonic() - started
            size += len(data)
    total = time.monotonic() - started
    assert first is not None and size / 2 / 24000 > 15  # about 25 s of speech
    assert first < 0.3 * total, (first, total)


async def test_speed_changes_duration_not_intelligibility(api: Server) -> None:
    client = _client(api)
    text = SENTENCES[5]  # seven plain words: at double speed tiny.en may miss one or two
    lengths = {}
    for speed in (1.0, 2.0, 0.5):
        response = await asyncio.to_thread(
            client.audio.speech.create,
            model="tts-1",
            voice="alloy",
            input=text,
            response_format="wav",
            speed=speed,
        )
        samples, rate = _decode(response.content, "wav")
        lengths[speed] = samples.size / rate
        if speed == 2.0:
            assert wer([text], [await _hear(api, samples, rate)]) <= 0.3
    assert 0.4 < lengths[2.0] / lengths[1.0] < 0.6, lengths
    assert 1.8 < lengths[0.5] / lengths[1.0] < 2.2, lengths


def test_voices_ours_openai_names_and_unknown(api: Server) -> None:
    client = _client(api)
    # ours in any case, OpenAI's names, and names this server lacks: the default voice
    for voice in ("en_US-joe-medium", "EN_us-JOE-medium", "onyx", "nobody", "en_US-amy-medium"):
        response = client.audio.speech.create(
            model="tts-1", voice=voice, input="Hello.", response_format="pcm"
        )
        assert len(response.content) > 10_000, voice
    assert "Voice 'nobody' is not installed; using en_US-joe-medium" in api.log_text()
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="tts-1", voice=5, input="Hello.")  # type: ignore[arg-type]
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "unknown-voice"
    assert error["param"] == "voice"


# --- the rest of the API


def test_models_health_and_the_second_port(api: Server) -> None:
    models = _client(api, "http2").models.list()
    assert {model.id for model in models.data} == {"tiny.en", "en_US-joe-medium"}
    health = subprocess.run(
        ["curl", "-sf", f"http://127.0.0.1:{api.ports['http']}/health"],
        capture_output=True,
        check=True,
    )
    body = json.loads(health.stdout)
    assert body["status"] == "ok" and body["device"] == "cpu"
    assert body["services"]["asr"]["model"] == "tiny.en"
    assert body["services"]["tts"]["voices"] == ["en_US-joe-medium"]
    assert body["memory"]["rss_bytes"] > 10_000_000


def test_token_is_required(api: Server) -> None:
    for key in ("wrong-key", ""):
        with pytest.raises(openai.AuthenticationError) as info:
            _client(api, key=key or "x").models.list()
        assert info.value.status_code == 401
    plain = subprocess.run(
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{api.ports['http']}/v1/models",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert plain.stdout == "401"


def _curl(api: Server, *args: str) -> tuple[int, bytes]:
    out = subprocess.run(
        ["curl", "-s", "-H", f"Authorization: Bearer {KEY}", "-w", "\n%{http_code}", *args],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    body, _, code = out.rpartition(b"\n")
    return int(code), body


def test_curl_transcription_and_speech(api: Server, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{api.ports['http']}/v1/audio"
    code, body = _curl(
        api, "-F", f"file=@{CLIP.path}", "-F", "model=whisper-1", f"{url}/transcriptions"
    )
    assert code == 200 and wer([CLIP.reference], [json.loads(body)["text"]]) <= 0.1
    code, body = _curl(
        api,
        "-F",
        f"file=@{ALSA / 'Front_Center.wav'}",
        "-F",
        "response_format=text",
        f"{url}/transcriptions",
    )
    assert code == 200 and "front" in body.decode().lower()
    out = tmp_path / "speech.flac"
    code, _ = _curl(
        api,
        "-H",
        "Content-Type: application/json",
        "-d",
        json.dumps({"model": "tts-1", "input": SENTENCES[3], "response_format": "flac"}),
        "-o",
        str(out),
        f"{url}/speech",
    )
    assert code == 200
    samples, rate = soundfile.read(out, dtype="float32")
    assert rate == 22050 and samples.size / rate > 1.0


# --- hostile requests: the right error, and Wyoming keeps serving


def _raw_http(port: int, request: bytes) -> bytes:
    """One request with ``Connection: close``; the answer is read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _status_and_error(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


def test_hostile_requests_get_the_right_error(api: Server) -> None:
    client = _client(api)
    port = api.ports["http"]
    auth = f"Authorization: Bearer {KEY}\r\n".encode()

    # Too large: 5 MB against a 4 MB limit, refused from its header.
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("big.wav", b"\0" * 5_000_000))
    assert info.value.status_code == 413

    # Too large without a Content-Length: chunked upload, counted while reading.
    boundary = b"XyZ"
    part = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        + b"\0" * 4_500_000
        + b"\r\n--XyZ--\r\n"
    )
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(part[i : i + 65536]), part[i : i + 65536])
        for i in range(0, len(part), 65536)
    )
    raw = _raw_http(
        port,
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Type: multipart/form-data; boundary="
        + boundary
        + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + chunked
        + b"0\r\n\r\n",
    )
    assert _status_and_error(raw)[0] == 413

    # Wrong content type.
    code, body = _curl(
        api,
        "-H",
        "Content-Type: text/plain",
        "-d",
        "hello",
        f"http://127.0.0.1:{port}/v1/audio/transcriptions",
    )
    assert code == 415 and json.loads(body)["error"]["code"] == "bad-content-type"

    # Truncated multipart: the body ends inside the file part.
    body_bytes = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'
    )
    raw = _raw_http(
        port,
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Type: multipart/form-data; boundary=XyZ\r\nConnection: close\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body_bytes)
        + body_bytes,
    )
    status, error = _status_and_error(raw)
    assert status == 400 and "multipart" in str(error["message"])

    # Not audio, no file, bad JSON, bad speed, unsupported language.
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model="whisper-1", file=("x.mp3", b"not audio" * 99))
    assert "decode" in str(bad.value)
    code, body = _curl(
        api, "-F", "model=whisper-1", f"http://127.0.0.1:{port}/v1/audio/transcriptions"
    )
    assert code == 400 and json.loads(body)["error"]["param"] == "file"
    code, body = _curl(
        api,
        "-H",
        "Content-Type: application/json",
        "-d",
        "{not json",
        f"http://127.0.0.1:{port}/v1/audio/speech",
    )
    assert code == 400
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", speed=9.0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(
            model="whisper-1", file=CLIP.path.open("rb"), language="de"
        )
    assert "not supported" in str(bad.value)
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="alloy", input=" ... ")
    with pytest.raises(openai.NotFoundError):
        client.get("/nothing/here", cast_to=object)


async def test_wyoming_keeps_serving_during_and_after_http(api: Server) -> None:
    """A long HTTP synthesis and a stalled upload do not hold the Wyoming side."""
    port = api.ports["http"]
    long_text = " ".join(SENTENCES * 3)
    auth = f"Authorization: Bearer {KEY}\r\n".encode()

    async def stalled_upload() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            + auth
            + b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 99999\r\n\r\n"
            + b'--XyZ\r\nContent-Disposition: form-data; name="file"\r\n\r\nRIFF'
        )
        await writer.drain()
        await asyncio.sleep(3)
        writer.close()

    def long_speech() -> int:
        response = _client(api).audio.speech.create(
            model="tts-1", voice="alloy", input=long_text, response_format="pcm"
        )
        return len(response.content)

    stall = asyncio.create_task(stalled_upload())
    speech = asyncio.create_task(asyncio.to_thread(long_speech))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    info = await describe(api.tts)
    assert time.monotonic() - started < 0.25 and info.tts
    clip_pcm = CLIP.pcm()[0]
    answer = await transcribe(api.asr, clip_pcm, language="en")
    assert wer([CLIP.reference], [answer.text]) <= 0.1
    spoken = await synthesize(api.tts, SENTENCES[0])
    assert spoken.seconds > 1.0
    assert await speech > 24000 * 2 * 20
    await stall


def test_qwen_engines_over_http(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every engine serves the API: tiny random Qwen3-ASR and Qwen3-TTS checkpoints,
    loaded through the real path (their output is noise; the plumbing is what is tested)."""
    from tests.qwen_models import build_qwen3_asr, build_qwen3_tts

    models = tmp_path_factory.mktemp("http-qwen")
    port = free_port()
    server = start_server(
        tmp_path_factory.mktemp("http-qwen-server"),
        ("asr", "tts"),
        "--asr-engine=qwen3-asr",
        "--qwen-asr-runtime=torch",
        f"--asr-model={build_qwen3_asr(models / 'asr')}",
        "--qwen-asr-max-new-tokens=8",
        "--tts-engine=qwen3-tts",
        f"--tts-model={build_qwen3_tts(models / 'tts', max_new_tokens=24)}",
        "--http",
        "--http-host=127.0.0.1",
        f"--http-port={port}",
    )
    try:
        _wait_http(port)
        client = openai.OpenAI(api_key="none", base_url=f"http://127.0.0.1:{port}/v1")
        result = client.audio.transcriptions.create(
            model="qwen", file=CLIP.path.open("rb"), language="zh", response_format="verbose_json"
        )
        assert result.language == "chinese" and len(result.segments or []) == 1
        speech = client.audio.speech.create(
            model="qwen", voice="Vivian", input="你好。今天天气很好。", response_format="wav"
        )
        samples, rate = soundfile.read(io.BytesIO(speech.content), dtype="float32")
        assert rate == 24000 and samples.size > 0 and np.abs(samples).max() > 0
        unknown = client.audio.speech.create(
            model="qwen", voice="Nobody", input="你好", response_format="pcm"
        )
        assert len(unknown.content) > 0  # the default voice, with a warning in the log
        assert "Voice 'Nobody' is not installed; using " in server.log_text()
    finally:
        assert server.stop() == 0, server.log_text()
