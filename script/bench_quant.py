#!/usr/bin/env python3
"""Weight-only quantisation candidates measured with Qwen-shaped linears (CPU or CUDA).

For every library that imports here (torchao, bitsandbytes, optimum-quanto, hqq) and
every precision (float32, bfloat16, float16) this quantises the seven projections of one
Qwen3 0.6B decoder layer (hidden 1024, 16 query / 8 KV heads of 128, MLP 3072) and
reports, against the same layers unquantised:

* bytes/weight: what the quantised weights hold (every inner tensor, counted once) per
  weight (16-bit storage: 2.0),
* rel. error: ||y_q - y|| / ||y|| over all seven outputs (random N(0, 0.02) weights),
* CPU time: one decode token (matrix-vector, the TTS/ASR generation step) and a
  64-token prefill, quantised / unquantised, median of repeats,
* fp16 outlier: one input channel at 3000 (LLM "massive activations") into down_proj,
  whose true output stays far inside FP16's range: does the quantised FP16 path stay
  finite where the unquantised FP16 layer does?

Libraries that are not installed are listed as such. ``--models`` adds what
``wyoming_opentalker.quant`` would hold for the released Qwen3-ASR-0.6B and
Qwen3-TTS-12Hz-0.6B-CustomVoice architectures, built on the meta device (no weights);
``--bnb-archs`` lists the GPU architectures compiled into each bitsandbytes CUDA library.
Run (a scratch venv with all four libraries, or the project's with torchao and
bitsandbytes):

    python script/bench_quant.py [--json out.json] [--repeats 20] [--models] [--bnb-archs]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.qwen_models

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

# (name, in_features, out_features) of one Qwen3-ASR/TTS 0.6B decoder layer
LAYER = [
    ("q_proj", 1024, 2048),
    ("k_proj", 1024, 1024),
    ("v_proj", 1024, 1024),
    ("o_proj", 2048, 1024),
    ("gate_proj", 1024, 3072),
    ("up_proj", 1024, 3072),
    ("down_proj", 3072, 1024),
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every plain tensor inside a (possibly subclassed, possibly nested) tensor."""
    if isinstance(obj, torch.Tensor):
        flatten = getattr(type(obj), "__tensor_flatten__", None)
        if flatten is not None and type(obj) not in (torch.Tensor, nn.Parameter):
            names, _ = obj.__tensor_flatten__()
            for name in names:
                yield from tensors(getattr(obj, name))
            return
        yield obj
        state = getattr(obj, "quant_state", None)  # bitsandbytes keeps absmax etc. here
        if state is not None:
            yield from (v for v in state.as_dict(packed=True).values() if torch.is_tensor(v))
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from tensors(value)


def module_bytes(module: nn.Module) -> int:
    """Bytes of every distinct tensor a module holds (parameters, buffers, hqq's meta)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    found = [*module.parameters(), *module.buffers()]
    for sub in module.modules():
        meta = getattr(sub, "meta", None)
        if isinstance(meta, dict):
            found.append(meta)  # type: ignore[arg-type]
    for outer in found:
        for t in tensors(outer):
            key = (t.data_ptr(), t.numel() * t.element_size())
            if key not in seen and key[1]:
                seen.add(key)
                total += key[1]
    return total


# --- candidates: each turns one nn.Linear (already in the target dtype) into its
# quantised replacement on the CPU.


Convert = Callable[[nn.Linear, torch.dtype, str], nn.Module]


def _torchao_int8(granularity: str) -> Convert:
    def convert(linear: nn.Linear, dtype: torch.dtype, device: str) -> nn.Module:
        from torchao.quantization import Int8WeightOnlyConfig, PerGroup, PerRow, quantize_

        gran = PerRow() if granularity == "row" else PerGroup(128)
        quantize_(linear, Int8WeightOnlyConfig(granularity=gran, set_inductor_config=False))
        return linear

    return convert


def _torchao_nf4(linear: nn.Linear, dtype: torch.dtype, device: str) -> nn.Module:
    from torchao.prototype._nf4tensor_api import NF4WeightOnlyConfig
    from torchao.quantization import quantize_

    quantize_(linear, NF4WeightOnlyConfig())
    return linear


def _bnb_int8(linear: nn.Linear, dtype: torch.dtype, device: str) -> nn.Module:
    import bitsandbytes as bnb

    q = bnb.nn.Linear8bitLt(
        linear.in_features, linear.out_features, bias=False, has_fp16_weights=False, threshold=6.0
    )
    q.weight = bnb.nn.Int8Params(
        linear.weight.data.cpu(), requires_grad=False, has_fp16_weights=False
    )
    return q.to(device)


def _bnb_nf4(linear: nn.Linear, dtype: torch.dtype, device: str) -> nn.Module:
    import bitsandbytes as bnb

    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=False,
        compute_dtype=dtype,
        compress_statistics=True,
        quant_type="nf4",
        device="meta",
    )
    q.weight = bnb.nn.Params4bit(
        linear.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
    )
    q.weight.module = q
    return q.to(device)


def _quanto(bits: int) -> Convert:
    def convert(linear: nn.Linear, dtype: torch.dtype, device: str) -> nn.Module:
        from optimum.quanto import freeze, qint4, qint8, quantize

        holder = nn.Sequential(linear)
        quantize(holder, weights=qint8 if bits == 8 else qint4)
        freeze(holder)
        return holder[0]

    return convert


def _hqq(bits: int) -> Convert:
    def convert(linear: nn.Linear, dtype: torch.dtype, device: str) -> nn.Module:
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        config = BaseQuantizeConfig(nbits=bits, group_size=64)
        return HQQLinear(linear, config, compute_dtype=dtype, device=device)

    return convert


CANDIDATES: list[tuple[str, str, str, Convert]] = [
    ("torchao", "torchao", "int8 per-row", _torchao_int8("row")),
    ("torchao", "torchao", "int8 group 128", _torchao_int8("group")),
    ("torchao", "torchao", "nf4 (prototype)", _torchao_nf4),
    ("bitsandbytes", "bitsandbytes", "int8 (LLM.int8, t=6)", _bnb_int8),
    ("bitsandbytes", "bitsandbytes", "nf4 (double quant)", _bnb_nf4),
    ("optimum-quanto", "optimum.quanto", "qint8", _quanto(8)),
    ("optimum-quanto", "optimum.quanto", "qint4 (group 128)", _quanto(4)),
    ("hqq", "hqq", "8-bit (group 64)", _hqq(8)),
    ("hqq", "hqq", "4-bit (group 64)", _hqq(4)),
]


@dataclass
class Row:
    library: str
    version: str
    mode: str
    dtype: str
    bytes_per_weight: float | None = None  # all quantised storage / weight count (16-bit: 2)
    quantize_s: float | None = None  # converting the seven layers on the CPU
    rel_error: float | None = None
    time_ratio_decode: float | None = None
    time_ratio_prefill: float | None = None
    fp16_outlier_finite: bool | None = None
    error: str | None = None


def _median_time(fn: Callable[[], Any], repeats: int, device: str) -> float:
    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    samples = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _layer(dtype: torch.dtype, device: str) -> dict[str, nn.Linear]:
    torch.manual_seed(0)
    layers = {}
    for name, fan_in, fan_out in LAYER:
        linear = nn.Linear(fan_in, fan_out, bias=False)
        nn.init.normal_(linear.weight, std=0.02)
        layers[name] = linear.to(device=device, dtype=dtype).eval()
    return layers


def _inputs(tokens: int, dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        name: torch.randn(tokens, fan_in, generator=gen).to(device=device, dtype=dtype)
        for name, fan_in, _ in LAYER
    }


def _run(layers: dict[str, nn.Module], x: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():  # quanto's qint4 fails under inference_mode
        return [layers[name](x[name]) for name, _, _ in LAYER]


def measure(
    library: str,
    module_name: str,
    mode: str,
    convert: Convert,
    dtype_name: str,
    repeats: int,
    device: str = "cpu",
) -> Row:
    dtype = DTYPES[dtype_name]
    try:
        lib = importlib.import_module(module_name)
    except ImportError:
        return Row(library, "-", mode, dtype_name, error="not installed")
    version = str(getattr(lib, "__version__", "?"))
    row = Row(library, version, mode, dtype_name)
    try:
        base = _layer(dtype, device)
        start = time.perf_counter()
        quant = {
            name: convert(copy.deepcopy(lin), dtype, device).eval() for name, lin in base.items()
        }
        row.quantize_s = time.perf_counter() - start
        weights = sum(lin.weight.numel() for lin in base.values())
        row.bytes_per_weight = sum(module_bytes(m) for m in quant.values()) / weights
        x = _inputs(64, dtype, device)
        ref = torch.cat([y.float().flatten() for y in _run(base, x)])  # type: ignore[arg-type]
        got = torch.cat([y.float().flatten() for y in _run(quant, x)])
        row.rel_error = float((got - ref).norm() / ref.norm())
        for tokens, field in ((1, "time_ratio_decode"), (64, "time_ratio_prefill")):
            xt = _inputs(tokens, dtype, device)
            t_ref = _median_time(lambda xt=xt: _run(base, xt), repeats, device)  # type: ignore[arg-type,misc]
            t_q = _median_time(lambda xt=xt: _run(quant, xt), repeats, device)  # type: ignore[misc]
            setattr(row, field, t_q / t_ref)
        if dtype == torch.float16:
            outlier = torch.randn(4, 3072, generator=torch.Generator().manual_seed(2))
            outlier[:, 7] = 3000.0
            outlier = outlier.to(device)
            with torch.no_grad():
                plain = base["down_proj"](outlier.half())
                quantised = quant["down_proj"](outlier.half())
            assert bool(torch.isfinite(plain).all()), "the unquantised FP16 layer overflowed"
            row.fp16_outlier_finite = bool(torch.isfinite(quantised).all())
    except Exception as exc:  # a candidate that fails is a result, not a crash
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return row


def _meta_models() -> dict[str, Any]:
    """The released architectures on the meta device, built from the packages' config
    classes with the real values (see tests.qwen_models)."""
    from qwen_asr.core.transformers_backend import (
        Qwen3ASRConfig,
        Qwen3ASRForConditionalGeneration,
    )

    from tests import qwen_models as qm
    from wyoming_opentalker.tts.qwen3_tts import import_qwen_tts

    import_qwen_tts()
    from qwen_tts.core.models import Qwen3TTSConfig, Qwen3TTSForConditionalGeneration

    asr_config = Qwen3ASRConfig(
        thinker_config={
            "audio_config": dict(qm.ASR_FULL["audio"]),
            "text_config": dict(qm.ASR_FULL["text"]),
            "audio_token_id": 151676,
            "audio_start_token_id": 151669,
        },
        support_languages=["English"],
    )
    spec = qm.TTS_FULL
    talker = dict(spec["talker"])
    talker.update(
        qm._TTS_CODEC_IDS,
        vocab_size=3072,
        num_code_groups=spec["groups"],
        spk_id=dict(qm.TTS_SPEAKERS),
        spk_is_dialect={name: False for name in qm.TTS_SPEAKERS},
        codec_language_id=dict(qm.TTS_LANGUAGES),
        code_predictor_config={
            **spec["predictor"],
            "vocab_size": 2048,
            "num_code_groups": spec["groups"],
        },
    )
    tts_config = Qwen3TTSConfig(
        talker_config=talker,
        tokenizer_type="qwen3_tts_tokenizer_12hz",
        tts_model_size="0b6",
        tts_model_type="custom_voice",
        im_start_token_id=151644,
        im_end_token_id=151645,
        tts_pad_token_id=151671,
        tts_bos_token_id=151672,
        tts_eos_token_id=151673,
    )
    with torch.device("meta"):
        return {
            "Qwen3-ASR-0.6B": Qwen3ASRForConditionalGeneration(asr_config),
            "Qwen3-TTS talker": Qwen3TTSForConditionalGeneration(tts_config),
        }


def model_table() -> list[str]:
    from wyoming_opentalker import quant

    gib = 1024**3
    lines = [
        "| model | dtype | linears converted | their weights | none | int8 | nf4 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, model in _meta_models().items():
        if name.startswith("Qwen3-TTS"):  # text_embedding stays on the CPU: not counted
            params = sum(
                p.numel() for n, p in model.named_parameters() if "text_embedding" not in n
            )
        else:
            params = sum(p.numel() for p in model.parameters())  # tied head counted once
        shapes = quant.linear_shapes(model, "nf4")
        weights = sum(o * i for o, i in shapes)
        for dtype in ("float16", "float32"):
            size = 2 if dtype == "float16" else 4
            whole = params * size
            rest = whole - weights * size  # embeddings, norms, convolutions, tied head
            cells = [
                f"{(rest + quant.quantized_weight_bytes(shapes, mode, dtype)) / gib:.3f}"
                for mode in ("none", "int8", "nf4")
            ]
            lines.append(
                f"| {name} ({params / 1e6:.1f} M) | {dtype} | {len(shapes)} | "
                f"{weights / 1e6:.1f} M | " + " | ".join(cells) + " |"
            )
    lines.append("(GiB resident: the whole part, its linears in each mode; embeddings as loaded)")
    return lines


def bnb_archs() -> list[str]:
    """GPU architectures in each of bitsandbytes' CUDA libraries, read from the fatbins
    (the evidence for its minimum compute capability per CUDA build)."""
    import pathlib
    import struct

    import bitsandbytes

    lines = []
    for lib in sorted(pathlib.Path(bitsandbytes.__file__).parent.glob("libbitsandbytes_cuda*.so")):
        data, found, at = lib.read_bytes(), set(), 0
        while (at := data.find(struct.pack("<I", 0xBA55ED50), at)) >= 0:
            header_size, fat_size = struct.unpack_from("<HQ", data, at + 6)
            entry, end = at + header_size, at + header_size + fat_size
            while entry + 32 <= min(end, len(data)):
                kind, _, entry_header, size = struct.unpack_from("<HHIQ", data, entry)
                if kind not in (1, 2) or not entry_header:
                    break
                arch = struct.unpack_from("<I", data, entry + 28)[0]
                found.add(("ptx" if kind == 1 else "sm") + f"_{arch}")
                entry += entry_header + size
            at = max(end, at + 4)
        ordered = sorted(found, key=lambda a: (a.startswith("ptx"), int(a.split("_")[1])))
        lines.append(f"{lib.name}: {' '.join(ordered)}")
    return lines


def _fmt(value: float | bool | None, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**inf**"
    return format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the same table on a GPU)")
    parser.add_argument("--models", action="store_true", help="add the real models' bytes")
    parser.add_argument("--no-layers", action="store_true", help="skip the layer measurements")
    parser.add_argument("--bnb-archs", action="store_true", help="list bitsandbytes' GPU archs")
    args = parser.parse_args()
    if args.bnb_archs:
        print("\n".join(bnb_archs()), end="\n\n")
    if args.models:
        print("\n".join(model_table()), end="\n\n")
    if args.no_layers:
        return 0
    rows = [
        measure(lib, module, mode, convert, dtype, args.repeats, args.device)
        for dtype in args.dtypes.split(",")
        for lib, module, mode, convert in CANDIDATES
    ]
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"CPU {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__}, {where}")
    print(
        "| library | mode | dtype | bytes/weight | rel. error | CPU time decode | "
        "CPU time prefill 64 | fp16 outlier finite | quantise s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        if r.error:
            print(f"| {r.library} {r.version} | {r.mode} | {r.dtype} | {r.error} ||||||")
            continue
        print(
            f"| {r.library} {r.version} | {r.mode} | {r.dtype} | {_fmt(r.bytes_per_weight)} | "
            f"{_fmt(r.rel_error, '.4f')} | {_fmt(r.time_ratio_decode, '.2f')}x | "
            f"{_fmt(r.time_ratio_prefill, '.2f')}x | {_fmt(r.fp16_outlier_finite)} | "
            f"{_fmt(r.quantize_s, '.1f')} |"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(r) for r in rows], handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
