"""Qwen3-ASR on the CPU through the product's own ONNX conversion (tiny random weights).

The FP32 conversion must answer over Wyoming exactly as the PyTorch engine does on the
same weights; quantised conversions change random tiny weights too much for a transcript
comparison, so they are checked for answering only (real-weight accuracy cannot be
measured here). Interrupted and damaged conversions must be redone, never served.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Server, start_server
from tests.speech import corpus, samples_16k
from wyoming_opentalker.client import transcribe

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.qwen_models import build_qwen3_asr

    return build_qwen3_asr(tmp_path_factory.mktemp("qwen3-asr-onnx") / "Qwen3-ASR-tiny")


def _server(tmp: Path, model: Path, cache: Path, *extra: str) -> Server:
    return start_server(
        tmp,
        ("asr",),
        "--asr-engine",
        "qwen3-asr",
        "--asr-model",
        str(model),
        "--cache-dir",
        str(cache),
        "--qwen-asr-max-new-tokens",
        "12",
        *extra,
    )


def _pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def pair(
    tiny: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server, Path]]:
    cache = tmp_path_factory.mktemp("onnx-cache")
    onnx = _server(tmp_path_factory.mktemp("onnx"), tiny, cache, "--qwen-asr-onnx-quant", "none")
    torch = _server(tmp_path_factory.mktemp("torch"), tiny, cache, "--qwen-asr-runtime", "torch")
    yield onnx, torch, cache
    assert onnx.stop() == 0, onnx.log_text()
    assert torch.stop() == 0, torch.log_text()


async def test_fp32_conversion_answers_like_pytorch(pair: tuple[Server, Server, Path]) -> None:
    onnx, torch, _cache = pair
    assert "via onnxruntime" in onnx.log_text()
    clips = [samples_16k(clip) for clip in corpus()[:3]]
    long = np.concatenate([samples_16k(clip) for clip in corpus()[:12]])[: 16000 * 40]
    cases = [(c, None, None) for c in clips] + [
        (clips[0], "en", None),
        (clips[1], None, ["Living Room"]),
    ]
    cases.append((long, "en", None))  # over 30 s: decoded in pieces
    for audio, language, names in cases:
        a = await transcribe(onnx.asr, _pcm(audio), language=language, names=names)
        b = await transcribe(torch.asr, _pcm(audio), language=language, names=names)
        assert a.text == b.text


def test_batched_decode_matches_pytorch(tiny: Path, tmp_path: Path) -> None:
    from wyoming_opentalker.asr.qwen3_asr import Qwen3AsrEngine
    from wyoming_opentalker.asr.qwen3_asr_onnx import Qwen3AsrOnnxEngine
    from wyoming_opentalker.device import CPU
    from wyoming_opentalker.engine import AsrRequest
    from wyoming_opentalker.settings import load_settings

    settings = load_settings(
        ["--asr-model", str(tiny), "--cache-dir", str(tmp_path), "--qwen-asr-max-new-tokens", "12"]
    )
    requests = [AsrRequest(samples_16k(clip)) for clip in corpus()[3:6]]
    onnx = Qwen3AsrOnnxEngine.load(replace(settings, qwen_asr_onnx_quant="none"), CPU)
    torch = Qwen3AsrEngine.load(settings, CPU)
    assert [r.text for r in onnx.transcribe(requests)] == [
        r.text for r in torch.transcribe(requests)
    ]


def _target(cache: Path, quant: str) -> Path:
    return next((cache / "opentalker" / "qwen3-asr-onnx").glob(f"*-{quant}-f*"))


async def test_a_damaged_conversion_is_made_again(tiny: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _server(tmp_path, tiny, cache)  # the default quantisation
    audio = _pcm(samples_16k(corpus()[0]))
    before = (await transcribe(first.asr, audio)).text
    assert first.stop() == 0
    data = _target(cache, "int8-int4") / "decoder" / "decoder.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    data.write_bytes(bytes(raw))
    second = _server(tmp_path, tiny, cache)
    try:
        assert "converting it again" in second.log_text()
        assert (await transcribe(second.asr, audio)).text == before
    finally:
        assert second.stop() == 0, second.log_text()


def _convert_command(model: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "wyoming_opentalker", "convert-qwen3-asr",
            "--model", str(model), "--output", str(output), "--quant", "none"]  # fmt: skip


def test_a_killed_conversion_is_redone_at_the_next_start(tiny: Path, tmp_path: Path) -> None:
    output = tmp_path / "converted"
    process = subprocess.Popen(
        _convert_command(tiny, output),
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("converted.partial-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not output.exists()  # nothing half-written carries the final name
    done = subprocess.run(
        _convert_command(tiny, output),
        check=False,
    )
    assert done.returncode == 0 and (output / "manifest.json").exists()


def test_a_damaged_user_conversion_stops_the_start_in_one_line(tiny: Path, tmp_path: Path) -> None:
    output = tmp_path / "mine"
    subprocess.run(
        _convert_command(tiny, output),
        check=True,
    )
    (output / "encoder" / "encoder.onnx.data").write_bytes(b"broken")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wyoming_opentalker",
            "asr",
            "--asr-engine",
            "qwen3-asr",
            "--asr-model",
            str(output),
            "--asr-uri",
            "tcp://127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "damaged" in done.stderr.strip().splitlines()[-1]


def test_log_mel_matches_whisper_features() -> None:
    from transformers import WhisperFeatureExtractor

    from wyoming_opentalker.asr.qwen3_asr_onnx import LogMel

    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000)
    mel = LogMel(np.asarray(extractor.mel_filters), 400, 160)
    audio = samples_16k(corpus()[0])[: 16000 * 3 + 77]
    want = extractor(audio, sampling_rate=16000, return_tensors="np", padding=True)
    got = mel(audio)
    assert got.shape == want["input_features"][0].shape
    assert np.abs(got - want["input_features"][0]).max() < 1e-3


def test_runtime_choice() -> None:
    from wyoming_opentalker.asr.service import asr_backend
    from wyoming_opentalker.device import CPU, Device
    from wyoming_opentalker.settings import load_settings

    qwen = load_settings(["--asr-engine", "qwen3-asr"])
    assert asr_backend(qwen, CPU) == "qwen3-asr-onnx"
    assert asr_backend(qwen, Device("cuda")) == "qwen3-asr"
    assert asr_backend(replace(qwen, qwen_asr_runtime="torch"), CPU) == "qwen3-asr"
    assert asr_backend(replace(qwen, qwen_asr_runtime="onnx"), Device("cuda")) == "qwen3-asr-onnx"
    assert asr_backend(load_settings([]), CPU) == "faster-whisper"


def test_split_at_quiet_keeps_every_sample() -> None:
    from wyoming_opentalker.audio import split_at_quiet

    audio = np.concatenate([samples_16k(clip) for clip in corpus()] * 2)[: 16000 * 70]
    assert len(audio) == 16000 * 70
    pieces = split_at_quiet(audio, 16000, 30.0)
    assert len(pieces) >= 3 and all(len(p) <= 30 * 16000 for p in pieces)
    assert np.array_equal(np.concatenate(pieces), audio)


def test_a_conversion_that_cannot_fit_is_refused_before_it_starts(tmp_path: Path) -> None:
    """The full-size checkpoint's conversion need, from its headers, is what was measured
    (1.98-2.42 GiB: weights are streamed one tensor at a time), so it fits a 4 GiB box;
    a 2 GiB box is told in one line where to convert instead; enough memory, or none
    known, lets it run."""
    from tests.qwen_models import build_qwen3_asr
    from wyoming_opentalker.asr.qwen3_asr_onnx import memory_shortfall
    from wyoming_opentalker.asr.qwen3_onnx_export import conversion_memory
    from wyoming_opentalker.memory import GIB, read_headers

    full = build_qwen3_asr(tmp_path / "full", "full", header_only=True)
    shapes = {n: t.shape for n, t in read_headers(full).items()}
    need = conversion_memory(shapes)  # every mode: each tensor is quantised on its own
    assert 1.98 <= need / GIB <= 2.5
    assert memory_shortfall(need, 4 * GIB, None) is None
    refusal = memory_shortfall(need, 2 * GIB, "Qwen/Qwen3-ASR-0.6B")
    assert refusal is not None and "\n" not in refusal
    assert "convert-qwen3-asr --model Qwen/Qwen3-ASR-0.6B" in refusal and "ASR_MODEL" in refusal
    assert memory_shortfall(need, 16 * GIB, None) is None
    assert memory_shortfall(need, None, None) is None


@pytest.mark.parametrize("mode", ["none", "int8", "int4"])
def test_weights_are_filled_and_quantised_one_tensor_at_a_time(tmp_path: Path, mode: str) -> None:
    """The exporter's weight pass on a graph shaped like the traced ones (weights as
    graph inputs): an embedding ``Gather``, a ``MatMul`` by a transposed weight, a
    ``Gemm`` with bias and the transposed output layer. onnxruntime must run the result
    and agree with NumPy in FP32 exactly, and within quantisation error at int8/int4."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    from wyoming_opentalker.asr.qwen3_onnx_export import _fill

    rng = np.random.default_rng(1)
    vocab, hidden, inner = 300, 128, 192
    weights = {
        "embed": rng.standard_normal((vocab, hidden)).astype(np.float32),
        "up": rng.standard_normal((inner, hidden)).astype(np.float32) / 10,  # [out, in]
        "down": rng.standard_normal((hidden, inner)).astype(np.float32) / 10,
        "down_bias": rng.standard_normal(hidden).astype(np.float32),
        "head": rng.standard_normal((hidden, vocab)).astype(np.float32) / 10,
    }
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Gather", ["embed", "ids"], ["x"]),
        helper.make_node("Transpose", ["up"], ["up_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x", "up_t"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "down", "down_bias"], ["y"], transB=1),
        helper.make_node("MatMul", ["y", "head"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])]
    inputs += [helper.make_tensor_value_info(k, f, list(v.shape)) for k, v in weights.items()]
    outputs = [helper.make_tensor_value_info("logits", f, ["n", vocab])]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 18)]
    )
    sources = {k: (lambda v=v: torch.from_numpy(v)) for k, v in weights.items()}
    path = tmp_path / "g.onnx"
    _fill(model, sources, mode, tmp_path / "g.onnx.data")
    onnx.save_model(model, str(path))
    ops = {n.op_type for n in model.graph.node}
    expected_ops = {
        "none": {"Gather", "MatMul", "Gemm"},
        "int8": {"DynamicQuantizeMatMul", "Cast"},
        "int4": {"MatMulNBits", "GatherBlockQuantized"},
    }[mode]
    assert expected_ops <= ops and "Transpose" not in ops
    assert [i.name for i in model.graph.input] == ["ids"]

    ids = rng.integers(0, vocab, 7).astype(np.int64)
    x = weights["embed"][ids]
    y = np.maximum(x @ weights["up"].T, 0) @ weights["down"].T + weights["down_bias"]
    want = y @ weights["head"]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"ids": ids}
    )[0]
    error = float(np.linalg.norm(got - want) / np.linalg.norm(want))
    assert error < {"none": 1e-5, "int8": 0.03, "int4": 0.25}[mode], error
