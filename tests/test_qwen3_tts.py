"""Qwen3-TTS through the real loading path (a tiny random checkpoint) and real TCP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wyoming.error import Error
from wyoming.tts import SynthesizeVoice

from wyoming_opentalker.chunking import chunk_text
from wyoming_opentalker.client import describe, synthesize, synthesize_streaming
from wyoming_opentalker.device import CPU, Device, GpuInfo, Precision
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
    from tests.qwen_models import build_qwen3_tts

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
    return Qwen3TtsEngine.load(settings, CPU)


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


def _snr(got: np.ndarray, want: np.ndarray) -> float:
    error = float(np.sqrt(np.mean((got - want) ** 2)))
    return 20 * float(np.log10(float(np.sqrt(np.mean(want**2))) / max(error, 1e-12)))


def test_windowed_decode_matches_whole_decode(engine: Any) -> None:
    """Frames pushed window by window through the streaming codec give the audio one
    whole decode of the same frames gives, past the transformer's 72-frame window."""
    import torch

    from wyoming_opentalker.tts.qwen3_codec import StreamingCodec

    torch.manual_seed(1)
    engine._max_new_tokens = 160
    try:
        codes = engine.generate_codes(
            "今天的天气很好，我们出去走走吧，公园里的花都开了。", "vivian", "chinese"
        )
    finally:
        engine._max_new_tokens = None
    assert codes.shape[0] >= 150
    whole = engine.decode(codes)
    for window in (1, 4, 8, 13):
        stream = StreamingCodec(engine._codec.decoder)
        pieces = [
            stream.push(codes[start : start + window]) for start in range(0, len(codes), window)
        ]
        windowed = np.concatenate(pieces)
        assert windowed.size == whole.size
        snr = _snr(windowed, whole)
        print(f"window {window}: SNR of windowed vs whole decode {snr:.1f} dB")
        assert snr >= 90.0, (window, snr)  # float rounding only


@pytest.fixture(scope="module")
def greedy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.qwen_models import build_qwen3_tts

    path = tmp_path_factory.mktemp("qwen3-tts-greedy") / "Qwen3-TTS-tiny-greedy"
    return build_qwen3_tts(path, max_new_tokens=70, sampling=False)


@pytest.mark.parametrize(
    ("text", "speaker", "language"),
    [
        ("Hello there, how are you today?", "ryan", "english"),
        ("今天天气很好。", "eric", "chinese"),  # a dialect speaker: its own language tag
        ("Hi", "vivian", "auto"),
    ],
)
def test_lean_loop_gives_upstreams_frames(
    greedy_model: Path, text: str, speaker: str, language: str
) -> None:
    """With sampling off (the checkpoint's generation config), our loop produces exactly
    the frames upstream's generate_custom_voice does, and so the same audio."""
    import torch

    from wyoming_opentalker.tts.qwen3_tts import Qwen3TtsEngine

    settings = load_settings(["tts", "--tts-model", str(greedy_model)], {})
    ours = Qwen3TtsEngine.load(settings, CPU)
    assert ours._lean is not None
    codes = ours.generate_codes(text, speaker, language)
    wavs, rate = ours._model.generate_custom_voice(
        text, speaker=speaker, language=language, max_new_tokens=len(codes) + 1
    )
    reference = ours._model.model.generate(
        input_ids=ours._model._tokenize_texts([ours._model._build_assistant_text(text)]),
        instruct_ids=[None],
        languages=[language],
        speakers=[speaker],
        non_streaming_mode=True,
        **ours._model._merge_generate_kwargs(max_new_tokens=len(codes) + 1),
    )[0][0]
    assert len(codes) > 10 and torch.equal(codes, reference)
    assert rate == ours.sample_rate and np.allclose(ours.decode(codes), wavs[0], atol=1e-5)


def test_lean_loop_samples_like_upstream_processors() -> None:
    """Our logits processing against Hugging Face's own processors, on random scores with
    planted ties: repetition penalty, min_new_tokens, suppressed range, then temperature,
    top-k and top-p."""
    import torch
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    from wyoming_opentalker.tts.qwen3_loop import LeanTalker, Prompt, Sampling, warp

    vocab, eos = 300, 250
    suppress = tuple(i for i in range(200, 300) if i != eos)
    torch.manual_seed(3)
    history = torch.tensor([[5, 17, 17, 42]])
    for sampling in (
        Sampling(True, 50, 1.0, 0.9),
        Sampling(True, 20, 0.8, 0.7),
        Sampling(False, 50, 1.0, 0.9),
    ):
        for produced in (0, 1, 4):
            scores = torch.randn(1, vocab)
            scores[0, 10:14] = scores[0, 9]  # ties at the cut
            expected = LogitsProcessorList(
                [
                    RepetitionPenaltyLogitsProcessor(1.05),
                    MinNewTokensLengthLogitsProcessor(0, 2, eos, device="cpu"),
                    SuppressTokensLogitsProcessor(list(suppress), device="cpu"),
                ]
                + (
                    [
                        TemperatureLogitsWarper(sampling.temperature),
                        TopKLogitsWarper(sampling.top_k),
                    ]
                    + ([TopPLogitsWarper(sampling.top_p)] if sampling.top_p < 1 else [])
                    if sampling.do_sample
                    else []
                )
            )(history[:, :produced], scores.clone())
            seen = torch.zeros(vocab, dtype=torch.bool)
            seen[history[0, :produced]] = True
            prompt = Prompt(None, None, None, sampling, sampling, 1.05, 2, eos, suppress)
            lean = LeanTalker.__new__(LeanTalker)
            lean._torch, lean.device, lean._masks = torch, torch.device("cpu"), {}
            got = lean.first_token_scores(scores.clone(), prompt, seen, produced)
            assert torch.equal(got, expected), (sampling, produced)
            assert torch.equal(warp(scores, Sampling(False, 0, 1.0, 1.0)), scores)


def test_graphed_loop_wiring_gives_the_eager_frames(greedy_model: Path, monkeypatch: Any) -> None:
    """The graphed loop's static buffers (inputs copied in, outputs read back, caches
    cleared) give the eager loop's frames. CUDA graphs cannot run here: ``capture`` is
    replaced by one that re-runs the captured function on the same buffers, which is what
    a replay computes; that the real capture succeeds needs a GPU (script/gpu-proof)."""
    import torch

    from wyoming_opentalker.tts import qwen3_loop
    from wyoming_opentalker.tts.qwen3_tts import Qwen3TtsEngine

    def rerun(fn: Any) -> tuple[Any, Any]:
        out = fn()

        def replay() -> None:
            fresh = fn()
            for old, new in zip(
                out if isinstance(out, tuple) else (out,),
                fresh if isinstance(fresh, tuple) else (fresh,),
                strict=True,
            ):
                old.copy_(new)

        return replay, out

    monkeypatch.setattr(qwen3_loop, "capture", rerun)
    settings = load_settings(["tts", "--tts-model", str(greedy_model)], {})
    engine = Qwen3TtsEngine.load(settings, CPU)
    eager = [engine.generate_codes(text, "ryan", "english") for text in ("Good night.", "Hi")]
    engine._lean.use_graphs(256)
    assert engine._lean.graphed
    graphed = [engine.generate_codes(text, "ryan", "english") for text in ("Good night.", "Hi")]
    for want, got in zip(eager, graphed, strict=True):
        assert len(want) > 10 and torch.equal(want, got)


def test_graph_step_matches_the_eager_step(engine: Any) -> None:
    """The function CUDA graphs capture (whole-capacity masked attention, the position
    as a tensor) computes what the eager step computes; checked here on the CPU."""
    import torch

    lean = engine._lean
    with torch.inference_mode():
        eager = lean.talker_stack(64)
        masked = lean.talker_stack(64, zeroed=True)
        prompt = torch.randn(1, 9, lean.talker.config.hidden_size)
        assert torch.allclose(eager.run(prompt, 0), masked.run(prompt, 0))
        for position in range(9, 20):
            step = torch.randn(1, 1, lean.talker.config.hidden_size)
            want = eager.run(step, position)
            got = masked.step(step, torch.tensor([position]))
            assert torch.allclose(got, want, atol=1e-5), position
    assert not lean.graphed  # graphs are for CUDA only


def test_streaming_switch_gives_the_same_audio(engine: Any) -> None:
    """Windows on or off, the same frames give the same audio (the streaming decoder is
    exact); the first window is small and later ones are the configured size."""
    import torch

    request = TtsRequest("Good morning, the coffee is ready.", "Aiden", None, "en")
    engine._window = 8
    torch.manual_seed(7)
    windowed = list(engine.synthesize(request))
    engine._window = 0
    torch.manual_seed(7)
    whole = list(engine.synthesize(request))
    engine._window = 8
    assert len(windowed) > 2 and len(whole) == 1
    assert windowed[0].size == 4 * 1920 and windowed[1].size >= 8 * 1920
    joined = np.concatenate(windowed)
    assert joined.size == whole[0].size
    assert np.allclose(joined, whole[0], atol=1e-5)


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

    assert tts_precision(replace(Device.parse(device), gpu=gpu)).precision is expected


def test_time_budget_sanity(engine: Any) -> None:
    started = time.monotonic()
    list(engine.synthesize(TtsRequest("Hi.", "Ryan", None, None)))
    assert time.monotonic() - started < 60
