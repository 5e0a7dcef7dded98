"""Qwen3-ASR through the real loading path (a tiny random checkpoint) and real TCP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.error import Error

from wyoming_opentalker.asr.qwen3_asr import asr_precision
from wyoming_opentalker.client import Connection, audio_events, describe, transcribe
from wyoming_opentalker.device import Device, GpuInfo, Precision
from wyoming_opentalker.languages import CODES, NAMES, language_code, language_name
from wyoming_opentalker.settings import load_settings

from .conftest import Server, start_server
from .speech import POCKETSPHINX, corpus, speech_bounds

GOFORWARD = (POCKETSPHINX / "goforward.raw").read_bytes()
GIB = 1024**3


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.qwen_models import build_qwen3_asr

    return build_qwen3_asr(tmp_path_factory.mktemp("qwen3-asr") / "Qwen3-ASR-tiny")


@pytest.fixture(scope="module")
def qwen_server(qwen_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("qwen-server"),
        ("asr",),
        "--asr-engine",
        "qwen3-asr",
        "--qwen-asr-runtime",
        "torch",
        "--asr-model",
        str(qwen_model),
        "--qwen-asr-max-new-tokens",
        "8",
        "--qwen-asr-max-batch-size",
        "4",
        # wide enough that four clients finishing together always share a decode here
        "--asr-batch-window-ms",
        "100",
        ASR_HINTS="Living Room",
    )
    yield server
    assert server.stop() == 0, server.log_text()


async def test_info_lists_the_models_languages_as_codes(qwen_server: Server) -> None:
    info = await describe(qwen_server.asr)
    model = info.asr[0].models[0]
    assert model.name == "Qwen3-ASR-tiny" and model.installed
    assert model.languages == ["zh", "en"]  # what the checkpoint's config supports
    log = qwen_server.log_text()
    assert "Qwen3-ASR on the CPU runs in FP32" in log
    assert "device cpu, dtype float32, batch up to 4, weights" in log


async def test_real_speech_flow_and_language_both_ways(qwen_server: Server) -> None:
    for requested, answered in (("zh", "zh"), ("en-US", "en"), ("Chinese", "zh")):
        result = await transcribe(qwen_server.asr, GOFORWARD, language=requested)
        assert Transcript.is_type(result.event.type), result.event
        assert isinstance(result.text, str)
        assert result.event.data.get("language") == answered
    detected = await transcribe(qwen_server.asr, GOFORWARD)  # absent = detect
    assert Transcript.is_type(detected.event.type)
    # 48 kHz stereo-free real speech from another package, converted on the way in
    clip = next(c for c in corpus() if c.name == "Front_Center")
    pcm, rate, width, channels = clip.pcm()
    other = await transcribe(qwen_server.asr, pcm, rate, width, channels, language="en")
    assert Transcript.is_type(other.event.type)


async def test_unsupported_languages_get_clear_errors(qwen_server: Server) -> None:
    for code in ("de", "zh-HK", "xx"):
        result = await transcribe(qwen_server.asr, GOFORWARD, language=code)
        assert Error.is_type(result.event.type), result.event
        error = Error.from_event(result.event)
        assert error.code == "unsupported-language" and "zh, en" in error.text
    assert Transcript.is_type((await transcribe(qwen_server.asr, GOFORWARD)).event.type)


async def test_four_satellites_are_decoded_in_one_batched_call(qwen_server: Server) -> None:
    # Each recording ends where its speech ends: a silence at the end would be decoded
    # during the pause (one request answered from that, the other three batched).
    recordings = []
    for clip in [c for c in corpus() if c.set == "librivox"][:4]:
        pcm = clip.pcm()[0]
        end = speech_bounds(np.frombuffer(pcm, np.int16).astype(np.float32) / 32768)[1]
        recordings.append(pcm[: int((end + 0.05) * 16000) * 2])
    before = qwen_server.log_text().count("Decoding a batch of 4 requests")
    conns = [Connection(qwen_server.asr) for _ in recordings]
    for conn in conns:
        await conn.__aenter__()
    try:
        stops = []
        for conn, pcm in zip(conns, recordings, strict=True):
            *audio, stop = audio_events(pcm, 16000, 2, 1)
            await conn.send(Transcribe(language="en").event(), *audio)
            stops.append(stop)
        await asyncio.sleep(0.5)  # all audio is in; now everyone stops talking at once
        for conn, stop in zip(conns, stops, strict=True):
            await conn.send(stop)
        answers = await asyncio.gather(*(conn.read(120) for conn in conns))
    finally:
        for conn in conns:
            await conn.__aexit__()
    assert all(a is not None and Transcript.is_type(a.type) for a in answers), answers
    assert qwen_server.log_text().count("Decoding a batch of 4 requests") == before + 1


async def test_hints_reach_qwen_context(qwen_server: Server) -> None:
    async def text(**hints: list[str]) -> str:
        return (await transcribe(qwen_server.asr, GOFORWARD, language="en", **hints)).text

    plain = await text()
    assert await text() == plain  # deterministic, so a change below is the hints' doing
    with_names = await text(names=["Kitchen Light", "Garage Door"], terms=["dim", "brighten"])
    assert with_names != plain


def test_language_table_both_ways() -> None:
    assert len(NAMES) == 30
    for code, name in NAMES.items():
        assert language_name(code) == name
        assert language_code(name) == code and language_code(name.upper()) == code
        assert CODES[name.lower()] == code
    assert language_code("zh-CN") == "zh" and language_code("zh_TW") == "zh"
    assert language_code("zh-HK") == "yue" and language_code("yue") == "yue"
    assert language_code("en-US") == "en" and language_code("auto") is None
    assert language_code(None) is None and language_code("") is None
    assert language_name("xx") is None


@pytest.mark.parametrize(
    ("env", "device", "gpu", "expected"),
    [
        ({}, "cpu", None, Precision.FP32),
        ({}, "cuda", GpuInfo("GTX 1050 Ti", (6, 1), 4 * GIB), Precision.FP16),
        ({}, "cuda", GpuInfo("RTX 2060", (7, 5), 6 * GIB), Precision.FP16),
        ({}, "cuda", GpuInfo("RTX 3090", (8, 6), 24 * GIB), Precision.FP16),
        (
            {"QWEN_ASR_USE_FP16": "false"},
            "cuda",
            GpuInfo("RTX 3090", (8, 6), 24 * GIB),
            Precision.FP32,
        ),
        ({"ASR_DTYPE": "bfloat16"}, "cuda", GpuInfo("RTX 3090", (8, 6), 24 * GIB), Precision.BF16),
        (
            {"ASR_DTYPE": "bfloat16"},
            "cuda",
            GpuInfo("GTX 1050 Ti", (6, 1), 4 * GIB),
            Precision.FP32,
        ),
        ({"ASR_DTYPE": "bfloat16"}, "cuda", GpuInfo("RTX 2060", (7, 5), 6 * GIB), Precision.FP16),
    ],
)
def test_asr_dtype_per_device(
    env: dict[str, str], device: str, gpu: GpuInfo | None, expected: Precision
) -> None:
    settings = load_settings([], env)
    assert asr_precision(settings, replace(Device.parse(device), gpu=gpu)).precision is expected
