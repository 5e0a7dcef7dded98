"""Weight-only quantisation with the real libraries on the CPU (torchao int8,
bitsandbytes NF4): Qwen-shaped layers, then the tiny Qwen checkpoints loaded through
their own ``from_pretrained`` and quantised before they generate.

Tolerances come from ``script/bench_quant.py`` and the runs noted beside them: a
1024->3072->1024 stack with N(0, 0.02) weights has 0.55-0.75% relative output error in
int8 and 13.1% in NF4 (4 bits cannot do better on Gaussian weights).
"""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from wyoming_opentalker import quant
from wyoming_opentalker.quant import QuantUnavailable, quantize_linears

from .speech import POCKETSPHINX

MODES = ["int8", "nf4"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# upper bounds on the stack's relative output error, about 2x the measured values
STACK_ERROR = {"int8": 0.015, "nf4": 0.16}


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def _stack(dtype: torch.dtype) -> nn.Module:
    """Embedding, a Qwen MLP's two linears, and a head tied to the embedding."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(64, 1024),
        nn.Linear(1024, 3072),
        nn.Linear(3072, 1024, bias=False),
        nn.Linear(1024, 64, bias=False),
    )
    for layer in model[1:3]:
        nn.init.normal_(layer.weight, std=0.02)
    model[3].weight = model[0].weight
    return model.to(dtype).eval()


def _saved_bytes(module: nn.Module) -> int:
    """Serialised size of the weights (biases left out): what torch.save writes."""
    buffer = io.BytesIO()
    torch.save({k: v for k, v in module.state_dict().items() if not k.endswith("bias")}, buffer)
    return len(buffer.getvalue())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("mode", MODES)
def test_linears_convert_close_to_unquantised_and_shrink_as_predicted(
    mode: quant.QuantMode, dtype: torch.dtype
) -> None:
    model = _stack(dtype)
    tokens = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    hidden = model[0](tokens)
    with torch.no_grad():
        want = model[2](model[1](hidden))
    embedding = model[0].weight
    shapes = quant.linear_shapes(model, mode)
    assert shapes == [(3072, 1024), (1024, 3072)]  # the tied head is not offered

    report = quantize_linears(model, mode, "cpu")
    assert (report.converted, report.skipped) == (2, 1)
    assert report.bytes_before == 2 * 1024 * 3072 * embedding.element_size()
    with torch.no_grad():
        got = model[2](model[1](hidden))
    assert got.dtype == dtype and bool(torch.isfinite(got).all())
    error = _relative(got, want)
    assert 0 < error < STACK_ERROR[mode], error  # really quantised, and close

    predicted = quant.quantized_weight_bytes(shapes, mode, dtype)
    assert abs(report.bytes_after - predicted) <= 0.02 * predicted
    # independent of our own counting: what torch.save writes for the two linears
    linears = nn.Sequential(model[1], model[2])
    assert abs(_saved_bytes(linears) - predicted) <= 0.02 * predicted
    per_weight = {"int8": 1.05, "nf4": 0.52}[mode]
    assert report.bytes_after <= per_weight * 2 * 1024 * 3072

    # the embedding and its tied head stay exactly as they were
    assert type(model[0]) is nn.Embedding and model[0].weight is embedding
    assert type(model[3]) is nn.Linear and model[3].weight is embedding
    assert embedding.dtype == dtype
    assert type(model[1]) is not nn.Linear or type(model[1].weight) is not nn.Parameter


def test_skip_predicate_keeps_the_named_linears() -> None:
    model = _stack(torch.float32)
    kept = model[2].weight
    seen: list[str] = []

    def skip(name: str, linear: Any) -> bool:
        seen.append(name)
        return name == "2"

    report = quantize_linears(model, "int8", "cpu", skip=skip)
    assert sorted(seen) == ["1", "2", "3"]
    assert (report.converted, report.skipped) == (1, 2)
    assert model[2].weight is kept and type(kept) is nn.Parameter
    assert type(model[1].weight) is not nn.Parameter
    assert quantize_linears(_stack(torch.float32), "none", "cpu").converted == 0


@pytest.mark.parametrize("mode", MODES)
def test_an_fp16_activation_outlier_stays_finite(mode: quant.QuantMode) -> None:
    """torchao's per-row int8 path multiplies by the unscaled int8 weights and overflows
    FP16 on a 3000-valued channel (measured: inf); the grouped path must not."""
    torch.manual_seed(0)
    layer = nn.Linear(3072, 1024, bias=False)
    nn.init.normal_(layer.weight, std=0.02)
    x = torch.randn(4, 3072)
    x[:, 7] = 3000.0
    with torch.no_grad():
        want = layer(x)
        holder = nn.Sequential(layer.half())
        plain = holder(x.half())
        assert bool(torch.isfinite(plain).all())
        quantize_linears(holder, mode, "cpu")
        got = holder(x.half())
    assert bool(torch.isfinite(got).all())
    assert _relative(got, want) < STACK_ERROR[mode]


def test_byte_accounting_for_the_real_layer_shapes() -> None:
    """Shapes only, as the start-up planner calls it: one Qwen3 0.6B decoder layer."""
    layer = [(2048, 1024), (1024, 1024), (1024, 1024), (1024, 2048)]
    layer += [(3072, 1024), (3072, 1024), (1024, 3072)]
    weights = sum(o * i for o, i in layer)
    assert quant.quantized_weight_bytes(layer, "none", "float16") == 2 * weights
    assert quant.quantized_weight_bytes(layer, "none", torch.float32) == 4 * weights
    int8_row = quant.quantized_weight_bytes(layer, "int8", "bfloat16")
    assert int8_row == weights + 5 * sum(o for o, _ in layer)  # scale + zero point per row
    int8_fp16 = quant.quantized_weight_bytes(layer, "int8", "float16")
    assert int8_fp16 == weights + 5 * weights // 128  # per 128 inputs in FP16
    nf4 = quant.quantized_weight_bytes(layer, "nf4", "float16")
    assert 0.515 * weights < nf4 < 0.518 * weights
    # a shape no FP16 group divides stays 16-bit
    assert quant.quantized_weight_bytes([(8, 20)], "int8", "float16") == 2 * 8 * 20


def test_unavailable_modes_give_a_clear_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    available = quant.quant_available
    assert available("none", "cuda") is None
    for mode in MODES:
        assert available(mode, "cpu") is None
    # int8 is plain PyTorch: any CUDA GPU, Pascal included
    assert available("int8", "cuda", (6, 1), "12.6") is None
    # bitsandbytes 0.50.2's NF4 kernels by CUDA build: sm_60+, sm_70+ from 12.8, sm_75+ 13.x
    assert available("nf4", "cuda", (6, 1), "12.6") is None
    assert available("nf4", "cuda", (7, 5), "13.0") is None
    pascal_on_cu128 = available("nf4", "cuda", (6, 1), "12.8")
    assert pascal_on_cu128 is not None and "7.0" in pascal_on_cu128 and "6.1" in pascal_on_cu128
    turing_only = available("nf4", "cuda", (6, 1), "13.0")
    assert turing_only is not None and "7.5" in turing_only
    mps = available("int8", "mps")
    assert mps is not None and "'mps'" in mps
    unknown = available("int4", "cpu")  # type: ignore[arg-type]
    assert unknown is not None and "none, int8, nf4" in unknown
    if not torch.cuda.is_available():
        reason = available("nf4", "cuda")
        assert reason is not None and "torch sees none" in reason
        int8 = available("int8", "cuda")
        assert int8 is not None and "torch sees none" in int8
        with pytest.raises(QuantUnavailable, match="torch sees none"):
            quantize_linears(_stack(torch.float16), "nf4", "cuda")
    # a library that cannot be imported (None in sys.modules makes import fail)
    monkeypatch.setitem(sys.modules, "torchao", None)
    missing = available("int8", "cpu")
    assert missing is not None and "torchao==0.18.0" in missing
    with pytest.raises(QuantUnavailable, match="torchao"):
        quantize_linears(_stack(torch.float32), "int8", "cpu")


def test_torchao_import_warnings_can_be_kept_out_of_the_log() -> None:
    """Here torchao's sm_90/MX extensions fail to load (CPU torch) and it says so at
    import, as it would in every Qwen start-up log (transformers imports it)."""
    code = (
        "from wyoming_opentalker.quant import quiet_import_warnings\n"
        "quiet_import_warnings()\n"
        "import torchao.quantization\n"
        "print('imported')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "imported", run.stderr[-2000:]
    assert "Failed to load" not in run.stderr and "register_constant" not in run.stderr


# --- the tiny Qwen checkpoints, loaded through the packages' own from_pretrained


def _first_output(module: nn.Module) -> Callable[[], torch.Tensor]:
    """Capture ``module``'s first output (the prefill's) during generation."""
    seen: list[torch.Tensor] = []

    def hook(_module: Any, _args: Any, output: Any) -> None:
        if not seen:
            seen.append(output.detach().float().clone())

    module.register_forward_hook(hook)
    return lambda: seen[0]


@pytest.fixture(scope="module")
def asr_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.qwen_models import build_qwen3_asr

    return build_qwen3_asr(tmp_path_factory.mktemp("quant-asr") / "Qwen3-ASR-tiny")


@pytest.fixture(scope="module")
def tts_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.qwen_models import build_qwen3_tts

    return build_qwen3_tts(tmp_path_factory.mktemp("quant-tts") / "Qwen3-TTS-tiny")


def _asr_meta_shapes(path: Path, mode: quant.QuantMode) -> list[tuple[int, int]]:
    """The planner's view: the checkpoint's config built on the meta device."""
    from qwen_asr.core.transformers_backend import (
        Qwen3ASRConfig,
        Qwen3ASRForConditionalGeneration,
    )

    with torch.device("meta"):
        model = Qwen3ASRForConditionalGeneration(Qwen3ASRConfig.from_pretrained(path))
    return quant.linear_shapes(model, mode)


def _asr_run(path: Path, mode: quant.QuantMode) -> tuple[Any, quant.QuantReport, torch.Tensor]:
    from qwen_asr import Qwen3ASRModel

    asr = Qwen3ASRModel.from_pretrained(
        str(path), dtype=torch.float32, device_map="cpu", max_new_tokens=4
    )
    thinker = asr.model.thinker
    embedding = thinker.model.embed_tokens.weight
    linears = sum(type(m) is nn.Linear for m in asr.model.modules())
    report = quantize_linears(asr.model, mode, "cpu")
    if mode != "none":  # every linear but the head tied to the embedding
        assert (report.converted, report.skipped) == (linears - 1, 1)
    assert thinker.lm_head.weight is embedding and type(embedding) is nn.Parameter
    assert type(thinker.model.embed_tokens) is nn.Embedding
    logits = _first_output(thinker.lm_head)
    pcm = np.frombuffer((POCKETSPHINX / "goforward.raw").read_bytes(), dtype=np.int16)
    audio = (pcm.astype(np.float32) / 32768.0, 16000)
    out = asr.transcribe(audio=[audio], context=[""], language=["English"])
    assert len(out) == 1 and isinstance(out[0].text, str)
    return asr, report, logits()


def _bf16_gemv() -> float:
    """On CPUs with AVX512-BF16, bitsandbytes 0.50.2 registers other CPU kernels (single-row
    nf4 products in bfloat16) and its error on the tiny models doubles or more."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return 1.0
    return 2.0 if has_avx512bf16() else 1.0


_BF16_GEMV = _bf16_gemv()


def test_tiny_qwen3_asr_transcribes_in_each_mode(asr_model: Path) -> None:
    _, _, want = _asr_run(asr_model, "none")
    # measured: int8 0.0197, nf4 0.352 (0.767 with AVX512-BF16). The tiny model's weights
    # are N(0, 0.5), far rougher than a trained model's, and its audio tower and LLM
    # compound the error.
    for mode, tolerance in (("int8", 0.04), ("nf4", 0.6 * _BF16_GEMV)):
        _, report, got = _asr_run(asr_model, mode)
        assert report.converted == len(_asr_meta_shapes(asr_model, mode))
        predicted = quant.quantized_weight_bytes(_asr_meta_shapes(asr_model, mode), mode, "float32")
        assert abs(report.bytes_after - predicted) <= 0.02 * predicted
        error = _relative(got, want)
        print(f"asr {mode}: prefill logits relative error {error:.4f}")
        assert 0 < error < tolerance, (mode, error)


def test_tiny_qwen3_tts_speaks_in_each_mode(tts_model: Path) -> None:
    from wyoming_opentalker.tts.qwen3_tts import import_qwen_tts

    import_qwen_tts()
    from qwen_tts import Qwen3TTSModel

    reference: torch.Tensor | None = None
    # measured on the codec head's prefill logits: int8 0.0080, nf4 0.118 (0.55 on a CPU
    # with AVX512-BF16, where bitsandbytes takes other CPU kernels)
    nf4 = 0.25 if _BF16_GEMV == 1.0 else 0.7
    for mode, tolerance in (("none", 0.0), ("int8", 0.02), ("nf4", nf4)):
        tts = Qwen3TTSModel.from_pretrained(str(tts_model), dtype=torch.float32, device_map="cpu")
        talker = tts.model.talker
        embeddings = [m.weight for m in talker.modules() if isinstance(m, nn.Embedding)]
        report = quantize_linears(tts.model, mode, "cpu")
        assert all(type(w) is nn.Parameter for w in embeddings)
        logits = _first_output(talker.codec_head)
        torch.manual_seed(0)
        wavs, rate = tts.generate_custom_voice(
            text="你好。", speaker="Vivian", language="chinese", max_new_tokens=4
        )
        assert rate == 24000 and len(wavs) == 1 and wavs[0].size > 0
        assert bool(np.isfinite(wavs[0]).all())
        if reference is None:
            reference = logits()
            continue
        assert report.converted > 0 and report.bytes_after < report.bytes_before
        error = _relative(logits(), reference)
        print(f"tts {mode}: {report.summary()}; prefill logits relative error {error:.4f}")
        assert 0 < error < tolerance, (mode, error)
