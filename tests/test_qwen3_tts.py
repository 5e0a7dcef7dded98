"""Qwen3-TTS through the real loading path (a tiny random checkpoint) and real TCP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wyoming.error import Error
from wyoming.tts import SynthesizeVoice

from wyoming_opentalker.chunking import chunk_text
from wyoming_opentalker.client import describe, synthesize, synthesize_streaming
from wyoming_opentalker.device import GpuInfo, Precision
from wyoming_opentalker.engine import EngineError, TtsRequest
from wyoming_opentalker.settings import load_settings

from .conftest import Server, start_server

GIB = 1024**3
FRAMES = 24  # the tiny checkpoint's generation_config caps each chunk at 24 frames
VOICES = ["Vivian", "Serena", "Uncle_Fu", "Dylan", "Eric", "Ryan", "Aiden", "Ono_Anna", "Sohee"]
LONG_CHINESE = (
    "今天早上七点，客厅的灯已经自动打开了。外面的温度是十八度，空气质量良好，适合出门散步。"
    "你的日程上有三件事：九点开会，十二点和朋友吃午饭，下午三点去医院复查。"
    "洗衣机里的衣服已经洗好了，请记得晾干。冰箱里的牛奶快过期了，我已经把它加到了购物清单。"
    "明天可能会下雨，出门的时候别忘了带伞。祝你今天一切顺利！"
)


@pytest.fixture(scope="module")
def tts_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wyoming_opentalker.testing.qwen_models import build_qwen3_tts

    path = tmp_path_factory.mktemp("qwen3-tts") / "Qwen3-TTS-tiny"
    return build_qwen3_tts(path, max_new_tokens=FRAMES)


@pytest.fixture(scope="module")
def tts_server(tts_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("qwen-tts-server"),
        ("tts",),
        "--tts-engine",
        "qwen3-tts",
        "--tts-model",
        str(tts_model),
        "--qwen-tts-stream-window",
        "4",
        QWEN_TTS_CHUNK_SIZE="40",
        QWEN_TTS_SPEAKER="Serena",
    )
    yield server
    assert server.stop() == 0, server.log_text()


@pytest.fixture(scope="module")
def engine(tts_model: Path) -> Any:
    from wyoming_opentalker.tts.qwen3_tts import Qwen3TtsEngine

    settings = load_settings(["tts", "--tts-model", str(tts_model)], {})
    return Qwen3TtsEngine(settings, "cpu")


def _one_response(types: list[str], closing: str = "audio-stop") -> None:
    assert types[0] == "audio-start" and types[-1] == closing, types
    assert types.count("audio-start") == 1 and types.count("audio-stop") == 1


async def test_info_has_the_nine_voices_default_first(tts_server: Server) -> None:
    program = (await describe(tts_server.tts)).tts[0]
    assert program.supports_synthesize_streaming
    names = [voice.name for voice in program.voices]
    assert sorted(names) == sorted(VOICES) and names[0] == "Serena"  # QWEN_TTS_SPEAKER
    languages = {voice.name: voice.languages for voice in program.voices}
    assert languages["Ryan"][0] == "en" and languages["Ono_Anna"][0] == "ja"
    assert languages["Sohee"][0] == "ko" and languages["Eric"][0] == "zh"
    assert set(languages["Vivian"]) == {"zh", "en", "fr", "de", "it", "ja", "ko", "pt", "ru", "es"}
    log = tts_server.log_text()
    assert "voice cloning unavailable (torchaudio missing)" in log
    assert "Qwen3-TTS talker precision: float32" in log


async def test_plain_synthesis_in_home_assistant_order(tts_server: Server) -> None:
    result = await synthesize(
        tts_server.tts, "你好，今天天气很好。", SynthesizeVoice(name="Vivian")
    )
    _one_response(result.types)
    assert result.rate == 24000 and result.format_changes == 0
    assert 0.5 < result.seconds <= FRAMES * 0.08 + 0.01
    assert float(np.abs(result.samples).max()) > 0.01  # real (noise) audio, not silence


async def test_streaming_in_home_assistant_order(tts_server: Server) -> None:
    text = "Turn on the kitchen light. 然后关掉卧室的灯。"
    deltas = [text[i : i + 5] for i in range(0, len(text), 5)]
    result = await synthesize_streaming(tts_server.tts, deltas, SynthesizeVoice(name="Ryan"))
    _one_response(result.types, closing="synthesize-stopped")
    assert result.types[-2:] == ["audio-stop", "synthesize-stopped"]
    # two sentences, each at most FRAMES frames; the repeated full `synthesize` was ignored
    assert result.seconds <= 2 * FRAMES * 0.08 + 0.01


async def test_unknown_voice_and_language(tts_server: Server) -> None:
    unknown = await synthesize(tts_server.tts, "你好。", SynthesizeVoice(name="Cherry"))
    _one_response(unknown.types)  # an unknown name gets a real voice, and a warning
    assert "Voice 'Cherry' is not installed; using " in tts_server.log_text()
    thai = await synthesize(tts_server.tts, "สวัสดี", SynthesizeVoice(language="th"))
    assert Error.from_event(thai.events[-1]).code == "unsupported-language"
    # a language alone picks that language's first voice
    japanese = await synthesize(tts_server.tts, "こんにちは。", SynthesizeVoice(language="ja"))
    _one_response(japanese.types)
    assert "with Ono_Anna" in tts_server.log_text()


async def test_long_chinese_text_chunk_count_and_early_audio(tts_server: Server) -> None:
    expected = len(chunk_text(LONG_CHINESE, 40))
    assert expected >= 5
    result = await synthesize(tts_server.tts, LONG_CHINESE, SynthesizeVoice(name="Vivian"))
    _one_response(result.types)
    assert f"Synthesizing {len(LONG_CHINESE)} characters in {expected} chunk(s)" in (
        tts_server.log_text()
    )
    assert result.first_chunk_at is not None
    # the first audio left while later chunks were still being generated
    assert result.first_chunk_at < 0.5 * result.done_at, (result.first_chunk_at, result.done_at)


def test_windowed_decode_matches_whole_decode(engine: Any) -> None:
    import torch

    torch.manual_seed(1)
    engine._max_new_tokens = 90  # longer than the 25-frame left context windows get
    try:
        codes = engine.generate_codes("今天的天气很好，我们出去走走吧。", "vivian", "chinese")
    finally:
        engine._max_new_tokens = None
    assert codes.shape[0] >= 60
    whole = engine.decode(codes)
    for window in (1, 4, 8):
        pieces = [
            engine.decode_window(codes, start, min(start + window, len(codes)))
            for start in range(0, len(codes), window)
        ]
        windowed = np.concatenate(pieces)
        assert windowed.size == whole.size
        error = float(np.sqrt(np.mean((windowed - whole) ** 2)))
        signal = float(np.sqrt(np.mean(whole**2)))
        snr = 20 * np.log10(signal / max(error, 1e-12))
        print(f"window {window}: SNR of windowed vs whole decode {snr:.1f} dB")
        assert snr >= 40.0, (window, snr)


def test_streaming_switch_gives_the_same_length(engine: Any) -> None:
    request = TtsRequest("Good morning.", "Aiden", None, "en")
    engine._window = 4
    windowed = list(engine.synthesize(request))
    engine._window = 0
    whole = list(engine.synthesize(request))
    assert len(windowed) > 1 and len(whole) == 1
    assert abs(sum(p.size for p in windowed) - whole[0].size) <= FRAMES * 1920


def test_out_of_memory_retries_smaller_then_reports(engine: Any, monkeypatch: Any) -> None:
    import torch

    real = engine.generate_codes
    calls: list[str] = []

    def flaky(text: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(text)
        if len(calls) == 1:  # injected fault: the first, whole chunk runs out of memory
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(text, *args, **kwargs)

    monkeypatch.setattr(engine, "generate_codes", flaky)
    engine._window = 0
    text = "第一句话很长，第二句话也很长，第三句话还是很长。"
    audio = list(engine.synthesize(TtsRequest(text, "Vivian", None, "zh")))
    assert len(calls) >= 3 and calls[0] == text and all(len(c) < len(text) for c in calls[1:])
    assert sum(piece.size for piece in audio) > 0

    def always(*_args: Any, **_kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(engine, "generate_codes", always)
    with pytest.raises(EngineError, match="out of GPU memory"):
        list(engine.synthesize(TtsRequest(text, "Vivian", None, "zh")))


@pytest.mark.parametrize(
    ("gpu", "device", "expected"),
    [
        (None, "cpu", Precision.FP32),
        (GpuInfo("GTX 1050 Ti", (6, 1), 4 * GIB), "cuda", Precision.FP16),
        (GpuInfo("Tesla V100", (7, 0), 16 * GIB), "cuda", Precision.FP16),
        (GpuInfo("RTX 2060", (7, 5), 6 * GIB), "cuda", Precision.FP16),
        (GpuInfo("RTX 3090", (8, 6), 24 * GIB), "cuda", Precision.BF16),
    ],
)
def test_tts_precision_per_device(gpu: GpuInfo | None, device: str, expected: Precision) -> None:
    from wyoming_opentalker.tts.qwen3_tts import tts_precision

    assert tts_precision(device, gpu).precision is expected


def test_time_budget_sanity(engine: Any) -> None:
    started = time.monotonic()
    list(engine.synthesize(TtsRequest("Hi.", "Ryan", None, None)))
    assert time.monotonic() - started < 60
