"""GPU memory planning with the released shapes: header-only checkpoints built on the
meta device from the real configs (no weights written), the defaults chosen per card,
`wyoming-opentalker plan`, and the refusal with fixes that really fit."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from wyoming_opentalker.asr.service import asr_plan, load_asr_engine
from wyoming_opentalker.device import CPU, Device, GpuInfo
from wyoming_opentalker.memory import (
    GIB,
    HEADROOM_BYTES,
    MIB,
    InsufficientGpuMemory,
    MemoryPlan,
    check_plan,
    read_headers,
)
from wyoming_opentalker.plan import GPUS, fixes, memory_plan, resolve_plan
from wyoming_opentalker.settings import Settings
from wyoming_opentalker.tts.service import load_tts_engine, tts_plan

GTX_1050_TI, GTX_1650 = GPUS["gtx-1050-ti"], GPUS["gtx-1650"]
RTX_2060, RTX_3090 = GPUS["rtx-2060"], GPUS["rtx-3090"]


@pytest.fixture(scope="module")
def full_size(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.qwen_models import build_qwen3_asr, build_qwen3_tts

    root = tmp_path_factory.mktemp("full-size")
    asr = build_qwen3_asr(root / "asr", "full", header_only=True)
    tts = build_qwen3_tts(root / "tts", "full", header_only=True)
    return asr, tts


def _qwen(asr: Path, tts: Path, **changes: Any) -> Settings:
    return replace(
        Settings(),
        asr_engine="qwen3-asr",
        asr_model=str(asr),
        tts_engine="qwen3-tts",
        tts_model=str(tts),
        **changes,
    )


def _on(gpu: GpuInfo) -> Device:
    return Device("cuda", 0, gpu)


def _plan(settings: Settings, gpu: GpuInfo) -> MemoryPlan:
    return memory_plan(settings, _on(gpu))


def test_header_only_checkpoints_have_the_released_sizes(full_size: tuple[Path, Path]) -> None:
    """The meta-device counts of the released configs: ASR 938.0 M stored (lm_head again),
    782.4 M unique; talker 594.6 M + text embedding 311.2 M; codec 56.2 M + 114.3 M."""
    asr, tts = full_size
    stored = sum(t.numel for t in read_headers(asr).values())
    assert abs(stored / 1e6 - 938.0) < 0.5
    talker = read_headers(tts)
    embedding = sum(t.numel for n, t in talker.items() if "text_embedding" in n)
    assert abs(embedding / 1e6 - 311.2) < 0.1
    assert abs((sum(t.numel for t in talker.values()) - embedding) / 1e6 - 594.6) < 0.5
    codec = read_headers(tts / "speech_tokenizer")
    encoder = sum(t.numel for n, t in codec.items() if n.startswith("encoder."))
    assert abs(encoder / 1e6 - 56.2) < 0.1
    assert abs((sum(t.numel for t in codec.values()) - encoder) / 1e6 - 114.3) < 0.1


def test_resident_weights_count_what_stays_on_the_gpu(full_size: tuple[Path, Path]) -> None:
    asr, tts = full_size
    settings = _qwen(asr, tts, qwen_asr_quant="none", qwen_tts_quant="none")
    asr_need = asr_plan(settings, _on(RTX_3090)).need
    assert asr_need.precision == "float16"
    assert abs(asr_need.weights / GIB - 1.457) < 0.005  # tied head counted once
    tts_need = tts_plan(settings, _on(RTX_3090)).need
    assert tts_need.precision == "bfloat16"
    # talker 1.107 GiB in 16-bit + FP32 codec decoder 0.426; no encoder, no embedding
    assert abs(tts_need.weights / GIB - (1.107 + 0.426)) < 0.005
    assert abs(tts_need.cpu / GIB - 0.580) < 0.005


def test_weight_estimates_match_what_the_engines_hold(tmp_path: Path) -> None:
    """Tiny checkpoints loaded for real on this CPU (FP32): the estimate from headers
    matches what the loaded engines hold, on the device and in CPU memory."""
    from tests.qwen_models import build_qwen3_asr, build_qwen3_tts

    settings = _qwen(build_qwen3_asr(tmp_path / "asr"), build_qwen3_tts(tmp_path / "tts"))
    asr_load, tts_load = asr_plan(settings, CPU), tts_plan(settings, CPU)
    asr_need, tts_need = asr_load.need, tts_load.need
    asr_engine = load_asr_engine(asr_load)  # built from the plan the estimate came from
    tts_engine = load_tts_engine(tts_load)
    for need, loaded in (
        (asr_need, asr_engine.info.weights_bytes),
        (tts_need, tts_engine.info.weights_bytes),
    ):
        assert abs(need.weights - loaded) <= max(0.02 * loaded, 256 * 1024), (need, loaded)
    assert tts_need.cpu == tts_engine.cpu_bytes  # type: ignore[attr-defined]

    defaults = Settings()
    whisper, piper = asr_plan(defaults, CPU), tts_plan(defaults, CPU)
    whisper_file = load_asr_engine(whisper).info.weights_bytes
    assert 0.4 * whisper_file <= whisper.need.weights <= whisper_file  # int8 from float16
    assert piper.need.weights == load_tts_engine(piper).info.weights_bytes


# What the product picks by default on each card (both Qwen models, one card). The
# 4 GB cards are the product's central promise: they must start with headroom.
PROFILES = [
    ("gtx-1050-ti", ("float16", "float16")),
    ("gtx-1650", ("float16", "float16")),
    ("rtx-2060", ("float16", "float16")),
    ("rtx-3090", ("float16", "bfloat16")),
]


@pytest.mark.parametrize(("gpu", "precisions"), PROFILES)
def test_plan_a_starts_by_default_on_every_profile(
    full_size: tuple[Path, Path], gpu: str, precisions: tuple[str, str]
) -> None:
    asr, tts = full_size
    plans = resolve_plan(_qwen(asr, tts), _on(GPUS[gpu]))
    chosen, plan = plans.settings, plans.memory
    assert plan is not None and plan.fits and plan.headroom >= HEADROOM_BYTES, plan.summary()
    assert tuple(need.precision for need in plan.needs) == precisions
    # the plan describes the settings the engines will be built with
    assert plan == _plan(chosen, GPUS[gpu])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wyoming_opentalker", "plan", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_plan_command_json_for_a_card_the_user_describes(full_size: tuple[Path, Path]) -> None:
    asr, tts = full_size
    models = ["--asr-engine", "qwen3-asr", "--asr-model", str(asr)]
    models += ["--tts-engine", "qwen3-tts", "--tts-model", str(tts)]
    done = _cli("--gpu-memory", "4096", "--compute-capability", "6.1", "--json", *models)
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["fits"] is True and plan["available_bytes"] == 4096 * MIB
    assert plan["total_bytes"] + HEADROOM_BYTES <= plan["available_bytes"]
    assert [need["service"] for need in plan["needs"]] == ["asr", "tts"]
    for need in plan["needs"]:
        assert set(need) >= {
            "service",
            "engine",
            "precision",
            "quantization",
            "weights_bytes",
            "working_bytes",
            "cpu_bytes",
        }
    assert plan["needs"][1]["cpu_bytes"] > 0.5 * GIB  # the text embedding

    # FP32 everywhere and no quantisation does not fit a 4 GB card: exit 1, with fixes
    table = _cli(
        "--gpu",
        "gtx-1050-ti",
        "--asr-dtype",
        "float32",
        "--tts-dtype",
        "float32",
        "--qwen-asr-quant",
        "none",
        "--qwen-tts-quant",
        "none",
        *models,
    )
    assert table.returncode == 1, table.stdout + table.stderr
    assert "does NOT fit" in table.stdout and "fix:" in table.stdout

    bad = _cli("--gpu-memory", "4096", "--compute-capability", "six", *models)
    assert bad.returncode == 2 and "--compute-capability" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_every_fix_offered_really_fits(full_size: tuple[Path, Path]) -> None:
    asr, tts = full_size
    settings = _qwen(
        asr,
        tts,
        asr_dtype="float32",
        tts_dtype="float32",
        qwen_asr_quant="none",
        qwen_tts_quant="none",
        qwen_asr_max_batch_size=4,
    )
    plan = _plan(settings, GTX_1650)
    assert not plan.fits
    offered = fixes(settings, _on(GTX_1650))
    assert offered, "a 4 GB card can hold plan A with some change"
    # nothing offered that is already in force
    assert not any("QWEN_ASR_MAX_BATCH_SIZE=4" in fix for fix in offered)
    with pytest.raises(InsufficientGpuMemory) as refused:
        check_plan(replace(plan, fixes=tuple(offered)))
    message = str(refused.value)
    assert "\n" not in message and "GTX 1650" in message and "MEMORY_CHECK=false" in message
    assert offered[0] in message


def test_one_service_per_card_and_big_cards(full_size: tuple[Path, Path]) -> None:
    asr, tts = full_size
    alone = resolve_plan(_qwen(asr, tts, services=("asr",)), _on(GTX_1050_TI)).memory
    assert (
        alone is not None and alone.fits and alone.needs[0].quantization == "none"
    )  # plan B: no compromise
    big = _qwen(asr, tts, asr_dtype="float32", qwen_asr_max_batch_size=16, tts_chunk_size=0)
    plans = resolve_plan(big, _on(RTX_3090))  # the 24 GB profile
    chosen, plan = plans.settings, plans.memory
    assert plan is not None and plan.fits and plan.needs[0].precision == "float32"
    assert chosen.qwen_asr_quant == "none" and chosen.qwen_tts_quant == "none"


def test_working_memory_follows_the_limits(full_size: tuple[Path, Path]) -> None:
    asr, tts = full_size
    on = tts_plan(_qwen(asr, tts), _on(RTX_2060)).need
    whole = tts_plan(_qwen(asr, tts, qwen_tts_stream_window=0), _on(RTX_2060)).need
    off = tts_plan(_qwen(asr, tts, tts_chunk_size=0), _on(RTX_2060)).need
    assert off.weights == on.weights and off.working > on.working
    assert whole.working - on.working > 0.7 * GIB  # a whole-chunk codec decode
    small = asr_plan(_qwen(asr, tts, qwen_asr_max_batch_size=1), _on(RTX_2060)).need
    large = asr_plan(_qwen(asr, tts, qwen_asr_max_batch_size=8), _on(RTX_2060)).need
    assert large.working > small.working
    # the upload limit does not change ASR's working memory: long audio goes in pieces
    longer = asr_plan(
        _qwen(asr, tts, qwen_asr_max_batch_size=1, max_audio_seconds=3000), _on(RTX_2060)
    ).need
    assert longer.working == small.working


def test_free_memory_measured_with_the_context_is_not_charged_twice(
    full_size: tuple[Path, Path],
) -> None:
    asr, tts = full_size
    settings = _qwen(asr, tts, services=("asr",))
    measured = GpuInfo("card", (7, 5), 4096 * MIB, 3600 * MIB, context_counted=True)
    smi = GpuInfo("card", (7, 5), 4096 * MIB, 3600 * MIB)
    assert _plan(settings, measured).overhead == 0
    assert _plan(settings, smi).overhead > 0
    assert _plan(settings, GTX_1650).available == 4096 * MIB  # only the size is known
