"""GPU memory planning: estimates from the checkpoints' own tensor headers, checked
against what the engines really hold once loaded, and the start/refuse decision for the
cards of SPEC §2."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from wyoming_opentalker.__main__ import memory_plan
from wyoming_opentalker.asr import asr_memory_need, load_asr_engine
from wyoming_opentalker.device import GpuInfo
from wyoming_opentalker.memory import (
    GIB,
    InsufficientGpuMemory,
    MemoryPlan,
    check_plan,
    safetensors_parameters,
    suggestions,
)
from wyoming_opentalker.settings import Settings
from wyoming_opentalker.tts import load_tts_engine, tts_memory_need

GTX_1050_TI = GpuInfo("NVIDIA GeForce GTX 1050 Ti", (6, 1), 4 * GIB, int(3.9 * GIB))
GTX_1650 = GpuInfo("NVIDIA GeForce GTX 1650", (7, 5), 4 * GIB, int(3.9 * GIB))
RTX_2060 = GpuInfo("NVIDIA GeForce RTX 2060", (7, 5), 6 * GIB, int(5.8 * GIB))
RTX_3090 = GpuInfo("NVIDIA GeForce RTX 3090", (8, 6), 24 * GIB, int(23.5 * GIB))

# Parameter counts of the released checkpoints (SPEC §4's sizes: ASR 1.46 GiB in FP16,
# TTS talker 1.69 GiB in bf16, codec 0.57 GiB in FP32).
ASR_PARAMS = int(1.46 * GIB / 2)
TALKER_PARAMS = int(1.69 * GIB / 2)
CODEC_PARAMS = int(0.57 * GIB / 4)


def _header_only_checkpoint(folder: Path, params: int, name: str = "model") -> Path:
    """A safetensors file whose header declares ``params`` weights (the planner reads
    headers only, so no gigabytes are written)."""
    folder.mkdir(parents=True, exist_ok=True)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [params], "data_offsets": [0, 0]}})
    data = header.encode()
    (folder / f"{name}.safetensors").write_bytes(struct.pack("<Q", len(data)) + data)
    return folder


@pytest.fixture(scope="module")
def full_size(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("full-size")
    asr = _header_only_checkpoint(root / "asr", ASR_PARAMS)
    tts = _header_only_checkpoint(root / "tts", TALKER_PARAMS)
    _header_only_checkpoint(tts / "speech_tokenizer", CODEC_PARAMS)
    return asr, tts


def _qwen(asr: Path, tts: Path, **changes: object) -> Settings:
    values: dict[str, object] = {
        "asr_engine": "qwen3-asr",
        "asr_model": str(asr),
        "tts_engine": "qwen3-tts",
        "tts_model": str(tts),
        **changes,
    }
    return Settings(**values)  # type: ignore[arg-type]


def _plan(settings: Settings, gpu: GpuInfo) -> MemoryPlan:
    return memory_plan(settings, "cuda", gpu)


def test_weight_estimates_match_what_the_engines_hold(tmp_path: Path) -> None:
    """On this CPU every engine loads in FP32/int8: the estimate from headers and file
    sizes must match what the loaded engines hold. Qwen: parameters and buffers, less the
    non-persistent buffers no checkpoint stores (the audio encoder's 1500-position table,
    rotary frequencies): ~0.2 MB in these tiny models, under 0.5% at full size."""
    from wyoming_opentalker.testing.qwen_models import build_qwen3_asr, build_qwen3_tts

    settings = _qwen(build_qwen3_asr(tmp_path / "asr"), build_qwen3_tts(tmp_path / "tts"))
    asr_need = asr_memory_need(settings, "cpu", None)
    tts_need = tts_memory_need(settings, "cpu", None)
    for need, loaded in (
        (asr_need, load_asr_engine(settings, "cpu").info.weights_bytes),
        (tts_need, load_tts_engine(settings, "cpu").info.weights_bytes),
    ):
        assert abs(need.weights - loaded) <= max(0.01 * loaded, 256 * 1024), (need, loaded)

    defaults = Settings()
    whisper = asr_memory_need(defaults, "cpu", None)
    piper = tts_memory_need(defaults, "cpu", None)
    whisper_file = load_asr_engine(defaults, "cpu").info.weights_bytes
    assert 0.4 * whisper_file <= whisper.weights <= whisper_file  # int8 from a float16 file
    assert piper.weights == load_tts_engine(defaults, "cpu").info.weights_bytes


def test_header_only_checkpoints_count_parameters(full_size: tuple[Path, Path]) -> None:
    asr, tts = full_size
    assert safetensors_parameters(asr) == ASR_PARAMS
    assert safetensors_parameters(tts) == TALKER_PARAMS  # the codec is counted apart
    assert safetensors_parameters(tts, recursive=True) == TALKER_PARAMS + CODEC_PARAMS


def test_asr_alone_fits_a_1050_ti(full_size: tuple[Path, Path]) -> None:
    asr, tts = full_size
    for use_fp16, low, high in ((True, 1.4, 1.5), (False, 2.8, 3.0)):
        plan = _plan(_qwen(asr, tts, services=("asr",), qwen_asr_use_fp16=use_fp16), GTX_1050_TI)
        assert plan.fits, plan.summary()
        assert low * GIB < plan.needs[0].weights < high * GIB


def test_refusal_is_one_line_with_the_first_fix(full_size: tuple[Path, Path]) -> None:
    asr, tts = full_size
    settings = _qwen(asr, tts, qwen_asr_use_fp16=False)
    plan = _plan(settings, GTX_1650)
    with pytest.raises(InsufficientGpuMemory) as refused:
        check_plan(plan, suggestions(settings, plan))
    message = str(refused.value)
    assert "\n" not in message and "GTX 1650" in message and "MEMORY_CHECK=false" in message
    assert "QWEN_ASR_USE_FP16=true" in message  # SPEC §2's first advice for 4 GB cards


def test_both_services_on_4gb_cards_are_refused_with_the_right_advice(
    full_size: tuple[Path, Path],
) -> None:
    """Weights alone (ASR FP16 1.46 + talker 16-bit 1.69 + FP32 codec 0.57 GiB) exceed
    what a 4 GB card has free: the plan says so up front instead of an OOM mid-request."""
    asr, tts = full_size
    settings = _qwen(asr, tts)
    for gpu, talker in ((GTX_1050_TI, "float32"), (GTX_1650, "float16")):
        plan = _plan(settings, gpu)
        assert not plan.fits and plan.needs[1].label.startswith(f"Qwen3-TTS ({talker}")
        advice = suggestions(settings, plan)
        if talker == "float32":  # Pascal: the talker falls back to FP32 (no native bf16)
            assert advice[0].startswith("load the Qwen3-TTS talker in FP16")
        assert any(fix.startswith("run one service on this GPU") for fix in advice)
    weights = sum(need.weights for need in _plan(settings, GTX_1650).needs)
    assert 3.6 * GIB < weights < 3.8 * GIB


def test_one_service_per_card_and_big_cards_fit(full_size: tuple[Path, Path]) -> None:
    asr, tts = full_size
    assert _plan(_qwen(asr, tts, services=("tts",)), GTX_1650).fits  # plan B: TTS box
    assert _plan(_qwen(asr, tts, services=("tts",), qwen_tts_chunk_size=0), RTX_2060).fits
    big = _qwen(asr, tts, qwen_asr_use_fp16=False, qwen_asr_max_batch_size=16)
    plan = _plan(big, RTX_3090)  # SPEC's 24 GB profile: ASR FP32, batch 16, chunking off
    assert plan.fits and "float32" in plan.needs[0].label and "bfloat16" in plan.needs[1].label


def test_chunking_off_costs_more_working_memory(full_size: tuple[Path, Path]) -> None:
    asr, tts = full_size
    on = tts_memory_need(_qwen(asr, tts), "cuda", RTX_2060)
    off = tts_memory_need(_qwen(asr, tts, qwen_tts_chunk_size=0), "cuda", RTX_2060)
    assert off.weights == on.weights and off.working > on.working
