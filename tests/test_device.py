"""Precision and compute-type decisions for GPUs this machine does not have."""

from __future__ import annotations

from dataclasses import replace

import pytest

from wyoming_opentalker.device import (
    CPU,
    Device,
    GpuInfo,
    Precision,
    choose_ct2_compute_type,
    choose_precision,
    default_asr_batch_size,
    resolve_device,
)

GIB = 1024**3
PASCAL = GpuInfo("GeForce GTX 1050 Ti", (6, 1), 4 * GIB)
VOLTA = GpuInfo("Tesla V100", (7, 0), 16 * GIB)
TURING = GpuInfo("GeForce RTX 2060", (7, 5), 6 * GIB)
AMPERE = GpuInfo("GeForce RTX 3090", (8, 6), 24 * GIB)
MAXWELL = GpuInfo("GeForce GTX 970", (5, 2), 4 * GIB)


@pytest.mark.parametrize(
    ("gpu", "device", "wanted", "fallback", "expected"),
    [
        (None, "cpu", Precision.FP16, None, Precision.FP32),
        (None, "cpu", Precision.BF16, None, Precision.FP32),
        (None, "cpu", Precision.FP32, None, Precision.FP32),
        # Qwen3-ASR, QWEN_ASR_USE_FP16=true: FP16 on every supported GPU, Pascal included
        (PASCAL, "cuda", Precision.FP16, None, Precision.FP16),
        (TURING, "cuda", Precision.FP16, None, Precision.FP16),
        (AMPERE, "cuda", Precision.FP16, None, Precision.FP16),
        (MAXWELL, "cuda", Precision.FP16, None, Precision.FP32),
        # Qwen3-TTS prefers bf16: native only from sm_80; FP16 on Volta/Turing; FP32 on Pascal
        (AMPERE, "cuda", Precision.BF16, None, Precision.BF16),
        (TURING, "cuda", Precision.BF16, None, Precision.FP16),
        (VOLTA, "cuda:1", Precision.BF16, None, Precision.FP16),
        (PASCAL, "cuda", Precision.BF16, None, Precision.FP32),
        (TURING, "cuda", Precision.BF16, Precision.FP32, Precision.FP32),
        (AMPERE, "cuda", Precision.FP32, None, Precision.FP32),
    ],
)
def test_precision(
    gpu: GpuInfo | None,
    device: str,
    wanted: Precision,
    fallback: Precision | None,
    expected: Precision,
) -> None:
    choice = choose_precision(wanted, replace(Device.parse(device), gpu=gpu), fallback=fallback)
    assert choice.precision is expected
    assert choice.reason


def test_pascal_reason_names_the_missing_bf16() -> None:
    reason = choose_precision(Precision.BF16, Device("cuda", 0, PASCAL)).reason
    assert "sm_61" in reason and "bfloat16" in reason


@pytest.mark.parametrize(
    ("requested", "device", "gpu", "expected"),
    [
        ("auto", "cpu", None, "int8"),
        ("auto", "cuda", PASCAL, "int8"),  # CTranslate2 refuses float16 below 7.0
        ("auto", "cuda", MAXWELL, "float32"),
        ("auto", "cuda", VOLTA, "float16"),
        ("auto", "cuda", AMPERE, "float16"),
        ("int8_float16", "cuda", AMPERE, "int8_float16"),
        ("default", "cpu", None, "int8"),
    ],
)
def test_ct2_compute_type(requested: str, device: str, gpu: GpuInfo | None, expected: str) -> None:
    assert choose_ct2_compute_type(requested, replace(Device.parse(device), gpu=gpu)) == expected


def test_unknown_compute_type() -> None:
    with pytest.raises(ValueError, match="unknown compute type"):
        choose_ct2_compute_type("fp8", CPU)


def test_batch_size_by_memory_and_cpu_device() -> None:
    assert default_asr_batch_size(PASCAL) == 4
    assert default_asr_batch_size(TURING) == 8
    assert default_asr_batch_size(AMPERE) == 16
    assert default_asr_batch_size(None) == 4
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto") == CPU  # no GPU on the test machines


def test_cuda_without_a_gpu_is_one_clear_line() -> None:
    """The old compose files set DEVICE=cuda; without the NVIDIA toolkit the container
    sees no GPU, and that must be said in one line, not an engine's traceback."""
    import pytest

    from wyoming_opentalker.device import DeviceUnavailable

    with pytest.raises(DeviceUnavailable, match=r"DEVICE=cuda .* DEVICE=auto .*Toolkit"):
        resolve_device("cuda")


def test_device_is_parsed_once_into_a_value() -> None:
    """DEVICE's forms become one value the engines, the planner and health all read."""
    assert Device.parse("cpu") == CPU and not CPU.is_cuda and CPU.name == "cpu"
    second = replace(Device.parse("CUDA:1"), gpu=AMPERE)
    assert second.is_cuda and second.index == 1 and second.gpu is AMPERE
    assert str(second) == "cuda:1" and Device.parse("cuda").name == "cuda:0"
    assert Device.of(second) is second and Device.of("cpu") == CPU
    for bad in ("gpu", "cuda:x", "cpu:0", ""):
        with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
            Device.parse(bad)
