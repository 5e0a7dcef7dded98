"""Plan A's engine changes on the tiny checkpoints, through the real loading code and, for
faults, real servers over TCP: the text embedding in CPU memory, no codec encoder, an FP32
codec loaded from its files, last-position logits, the frame cap, overflow detection,
out-of-memory recovery, and start-up problems said in one line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wyoming.error import Error
from wyoming.tts import SynthesizeVoice

from wyoming_opentalker.client import synthesize, transcribe
from wyoming_opentalker.device import CPU
from wyoming_opentalker.engine import AsrRequest, EngineError, TtsRequest
from wyoming_opentalker.settings import load_settings

from .conftest import free_port
from .speech import POCKETSPHINX

GOFORWARD = (POCKETSPHINX / "goforward.raw").read_bytes()
AUDIO = np.frombuffer(GOFORWARD, np.int16).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def asr_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.qwen_models import build_qwen3_asr

    return build_qwen3_asr(tmp_path_factory.mktemp("plan-a-asr") / "asr")


@pytest.fixture(scope="module")
def tts_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.qwen_models import build_qwen3_tts

    # the model's own cap (2,048 frames) is left as released: the text's cap must act
    return build_qwen3_tts(tmp_path_factory.mktemp("plan-a-tts") / "tts")


def _settings(asr: Path, tts: Path, *extra: str) -> Any:
    return load_settings(
        [
            "--asr-engine",
            "qwen3-asr",
            "--qwen-asr-runtime",
            "torch",
            "--asr-model",
            str(asr),
            "--tts-engine",
            "qwen3-tts",
            "--tts-model",
            str(tts),
            "--qwen-asr-max-new-tokens",
            "8",
            "--asr-uri",
            f"tcp://127.0.0.1:{free_port()}",
            "--tts-uri",
            f"tcp://127.0.0.1:{free_port()}",
            *extra,
        ],
        {},
    )


@pytest.fixture(scope="module")
def tts_engine(asr_model: Path, tts_model: Path) -> Any:
    from wyoming_opentalker.tts.qwen3_tts import Qwen3TtsEngine

    return Qwen3TtsEngine.load(_settings(asr_model, tts_model), CPU)


@pytest.fixture(scope="module")
def asr_engine(asr_model: Path, tts_model: Path) -> Any:
    from wyoming_opentalker.asr.qwen3_asr import Qwen3AsrEngine

    return Qwen3AsrEngine.load(_settings(asr_model, tts_model), CPU)


def test_text_embedding_lives_in_cpu_memory_and_generation_works(tts_engine: Any) -> None:
    from wyoming_opentalker.tts.qwen3_tts import CpuEmbedding

    talker = tts_engine._model.model.talker
    assert isinstance(talker.model.text_embedding, CpuEmbedding)
    names = [name for name, _ in tts_engine._model.model.named_parameters()]
    assert not any("text_embedding" in name for name in names)  # so .to(cuda) skips it
    assert talker.model.text_embedding.weight.device.type == "cpu"
    audio = np.concatenate(list(tts_engine.synthesize(TtsRequest("你好。", "Vivian", None, "zh"))))
    assert audio.size > 0 and float(np.abs(audio).max()) > 0.01


def test_codec_encoder_is_not_resident(tts_engine: Any) -> None:
    codec = tts_engine._codec
    assert codec.encoder is None
    assert all(name.startswith("decoder.") for name, _ in codec.named_parameters())
    assert all(p.dtype.is_floating_point and p.itemsize == 4 for p in codec.parameters())


def test_a_codec_value_beyond_fp16_survives_loading(tmp_path: Path) -> None:
    """A value above FP16's 65,504 in the codec's file: loading the talker in FP16 used
    to load the codec in FP16 too (inf) and cast it up afterwards (still inf)."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.qwen_models import build_qwen3_tts
    from wyoming_opentalker.tts.qwen3_tts import import_qwen_tts, load_lean

    path = build_qwen3_tts(tmp_path / "tts", max_new_tokens=8)
    file = path / "speech_tokenizer" / "model.safetensors"
    tensors = load_file(file)
    key = next(k for k in tensors if k.startswith("decoder.") and k.endswith("conv.weight"))
    tensors[key].view(-1)[0] = 1.0e5
    save_file(tensors, file, metadata={"format": "pt"})

    model = load_lean(str(path), torch.float16, "cpu")
    planted = dict(model.model.speech_tokenizer.model.named_parameters())[key]
    assert planted.dtype == torch.float32 and float(planted.view(-1)[0]) == 1.0e5
    assert next(model.model.talker.parameters()).dtype == torch.float16

    import_qwen_tts()
    from qwen_tts import Qwen3TTSModel

    stock = Qwen3TTSModel.from_pretrained(str(path), dtype=torch.float16, device_map="cpu")
    stock_value = dict(stock.model.speech_tokenizer.model.named_parameters())[key].view(-1)[0]
    assert torch.isinf(stock_value.float())  # the bug this loading path avoids


def test_last_position_logits_give_the_same_transcript(asr_engine: Any) -> None:
    request = AsrRequest(AUDIO, "en")
    lean = asr_engine.transcribe([request])[0]
    asr_engine._last_only.remove()
    try:
        full = asr_engine.transcribe([request])[0]
    finally:
        thinker = asr_engine._model.model.thinker
        asr_engine._last_only = thinker.lm_head.register_forward_pre_hook(
            lambda _m, args: (args[0][:, -1:, :],)
        )
    assert lean.text == full.text and lean.text


def test_long_audio_is_decoded_in_pieces(asr_engine: Any, caplog: Any) -> None:
    """A 70 s upload becomes three pieces of at most 30 s, decoded as one request."""
    long = np.tile(AUDIO, int(np.ceil(70 * 16000 / AUDIO.size)))[: 70 * 16000]
    seen: list[int] = []
    real = asr_engine._run

    def spy(batch: list[Any]) -> Any:
        seen.extend(len(piece.audio) for piece in batch)
        return real(batch)

    asr_engine._run = spy
    try:
        result = asr_engine.transcribe([AsrRequest(long, "en")])[0]
    finally:
        del asr_engine._run
    assert len(seen) == 3 and max(seen) <= 30 * 16000 and sum(seen) == long.size
    assert isinstance(result.text, str)


def test_hints_are_capped_by_tokens(asr_engine: Any) -> None:
    from wyoming_opentalker.asr.qwen3_asr import MAX_HINT_TOKENS

    names = [f"Lamp number {i}" for i in range(500)]
    context, tokens = asr_engine._context(names)
    assert tokens <= MAX_HINT_TOKENS and context.startswith("Lamp number 0")
    assert 0 < context.count("Lamp") < 500


def test_frame_cap_stops_a_never_ending_chunk(tts_engine: Any, caplog: Any) -> None:
    from wyoming_opentalker.tts.qwen3_tts import frame_cap

    tts_engine._window = 0
    try:
        text = "Hi."
        codes = tts_engine.generate_codes(text, "ryan", "english")
    finally:
        tts_engine._window = 8
    cap = frame_cap(text, 2048)
    assert cap == 25 + 6 * len(text) and cap - 1 <= len(codes) <= cap, len(codes)
    assert f"reached its {cap}-frame cap" in caplog.text  # random weights never stop


def test_non_finite_logits_fail_the_request_clearly(asr_engine: Any, tts_engine: Any) -> None:
    """A planted inf in the final norm makes every logit non-finite, as an FP16 overflow
    would: each engine answers with an error instead of decoding noise."""
    import torch

    for norm in (
        asr_engine._model.model.thinker.model.norm,
        tts_engine._model.model.talker.model.norm,
    ):
        saved = norm.weight.detach().clone()
        with torch.no_grad():
            norm.weight[0] = float("inf")
        try:
            if norm is asr_engine._model.model.thinker.model.norm:
                outcome = asr_engine.transcribe([AsrRequest(AUDIO, "en")])[0]
                assert isinstance(outcome, EngineError) and outcome.code == "numeric-overflow"
            else:
                with pytest.raises(EngineError) as raised:
                    list(tts_engine.synthesize(TtsRequest("你好。", "Vivian", None, "zh")))
                assert raised.value.code == "numeric-overflow"
        finally:
            with torch.no_grad():
                norm.weight.copy_(saved)


# --- faults through real servers (in this process, so the engines can be made to fail)


@pytest.fixture
async def running(asr_model: Path, tts_model: Path) -> AsyncIterator[Any]:
    from wyoming_opentalker.__main__ import start_services

    settings = _settings(asr_model, tts_model, "--qwen-tts-max-new-tokens", "16")
    started = await start_services(settings)
    try:
        yield started
    finally:
        await started.close()


def _port(running: Any, kind: str) -> int:
    index = [service.kind for service in running.services].index(kind)
    port: int = running.listeners[index].port
    return port


async def test_out_of_memory_on_both_engines_and_the_server_keeps_serving(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    asr = running.asr.engine
    tts = running.tts.engine
    monkeypatch.setattr("wyoming_opentalker.asr.qwen3_asr.OOM_RETRY_WAIT", 0.0)
    monkeypatch.setattr("wyoming_opentalker.tts.qwen3_tts.OOM_RETRY_WAIT", 0.0)

    def no_memory(*_args: Any, **_kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    asr_uri, tts_uri = _port(running, "asr"), _port(running, "tts")
    with monkeypatch.context() as faults:
        faults.setattr(asr._model, "transcribe", no_memory)
        faults.setattr(tts._model.model, "generate", no_memory)
        failed = await transcribe(asr_uri, GOFORWARD, language="en")
        assert Error.from_event(failed.event).code == "out-of-memory"
        spoken = await synthesize(tts_uri, "你好，今天天气很好。", SynthesizeVoice(name="Vivian"))
        assert Error.from_event(spoken.events[-1]).code == "out-of-memory"
    ok = await transcribe(asr_uri, GOFORWARD, language="en")
    assert ok.event.type == "transcript"
    spoken = await synthesize(tts_uri, "你好。", SynthesizeVoice(name="Vivian"))
    assert spoken.types[0] == "audio-start" and spoken.seconds > 0


async def test_a_batch_out_of_memory_is_retried_in_halves(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    asr = running.asr.engine
    real = asr._model.transcribe
    sizes: list[int] = []

    def small_batches_only(*, audio: list[Any], **kwargs: Any) -> Any:
        sizes.append(len(audio))
        if len(audio) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(audio=audio, **kwargs)

    monkeypatch.setattr(asr._model, "transcribe", small_batches_only)
    results = await asyncio.to_thread(asr.transcribe, [AsrRequest(AUDIO, "en")] * 4)
    assert all(not isinstance(r, EngineError) for r in results), results
    assert sizes[0] == 4 and sizes.count(1) == 4


@pytest.mark.parametrize("mode", ["int8", "nf4"])
async def test_each_quantised_mode_loads_and_answers(
    asr_model: Path, tts_model: Path, mode: str
) -> None:
    from wyoming_opentalker.__main__ import start_services

    settings = _settings(
        asr_model,
        tts_model,
        *("--qwen-asr-quant", mode, "--qwen-tts-quant", mode),
        *("--qwen-tts-max-new-tokens", "12"),
    )
    running = await start_services(settings)
    try:
        asr, tts = running.asr.engine, running.tts.engine
        assert asr.quantization == mode and tts.quantization == mode
        assert f"{mode} linears" in asr.info.precision and f"{mode} linears" in tts.info.precision
        heard = await transcribe(_port(running, "asr"), GOFORWARD, language="en")
        assert heard.event.type == "transcript"
        spoken = await synthesize(_port(running, "tts"), "你好。", SynthesizeVoice(name="Vivian"))
        assert spoken.types[0] == "audio-start" and spoken.types[-1] == "audio-stop"
        assert float(np.abs(spoken.samples).max()) > 0.01
    finally:
        await running.close()


# --- start-up problems in one line


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "wyoming_opentalker", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_device_cuda_without_a_gpu_stops_in_one_line() -> None:
    done = _start("asr", "--uri", f"tcp://127.0.0.1:{free_port()}", env={"DEVICE": "cuda"})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("wyoming-opentalker: error: DEVICE=cuda") and "DEVICE=auto" in last
    assert "Traceback" not in done.stderr


@pytest.fixture
def old_speaker_server(
    asr_model: Path, tts_model: Path, tmp_path: Path
) -> Iterator[tuple[Any, int]]:
    from .conftest import start_server

    server = start_server(
        tmp_path,
        ("tts",),
        "--tts-engine",
        "qwen3-tts",
        "--tts-model",
        str(tts_model),
        "--qwen-tts-max-new-tokens",
        "8",
        QWEN_TTS_SPEAKER="female_calm",  # the old deployment's example compose file
    )
    yield server, server.tts
    assert server.stop() == 0, server.log_text()


async def test_an_old_speaker_name_starts_with_the_default_voice(
    old_speaker_server: tuple[Any, int],
) -> None:
    server, uri = old_speaker_server
    result = await synthesize(uri, "你好。", None)
    assert result.types[0] == "audio-start"
    log = server.log_text()
    assert "QWEN_TTS_SPEAKER=female_calm is not a voice of this model; using Vivian" in log
