"""GPU memory planning at start-up: refuse a configuration that cannot fit, before loading.

A 4 GB card fits Qwen3-ASR in FP16 plus Qwen3-TTS only just (SPEC §4). Finding out by a
CUDA out-of-memory error in the middle of a user's request is the worst way; so before
any model is loaded, each engine estimates what it will hold — weights from the
checkpoint's own tensor headers at the precision it will load in, plus a working margin
for activations, caches and the CUDA context — and the sum is compared with the GPU's
free memory. If it does not fit, the program stops with one line that says what to
change. The margins are estimates (``MEMORY_CHECK=false`` skips the check).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .device import GpuInfo, Precision
from .settings import Settings

GIB = 1024**3
# What torch's CUDA context and allocator take before any model (cuBLAS/cuDNN handles,
# kernels): about 0.3-0.5 GiB on current drivers.
CUDA_CONTEXT_BYTES = int(0.4 * GIB)
BYTES_PER = {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2}
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4}


class InsufficientGpuMemory(RuntimeError):
    """The configuration does not fit the GPU; the message is one line with a fix."""


@dataclass(frozen=True)
class MemoryNeed:
    """What one loaded model will hold on the GPU."""

    service: str  # "asr" or "tts"
    label: str  # e.g. "Qwen3-ASR weights in float16"
    weights: int
    working: int  # activations, KV cache, codec buffers: an estimate

    @property
    def total(self) -> int:
        return self.weights + self.working


def safetensors_parameters(folder: Path, *, recursive: bool = False) -> int:
    """Parameter count of a checkpoint, read from the tensor headers (no weights loaded)."""
    pattern = "**/*.safetensors" if recursive else "*.safetensors"
    count = 0
    for file in sorted(folder.glob(pattern)):
        with file.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        count += sum(
            math.prod(entry["shape"])
            for key, entry in header.items()
            if key != "__metadata__" and entry.get("dtype") in _SAFETENSORS_BYTES
        )
    return count


def gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


@dataclass(frozen=True)
class MemoryPlan:
    needs: tuple[MemoryNeed, ...]
    gpu: GpuInfo
    overhead: int = CUDA_CONTEXT_BYTES

    @property
    def total(self) -> int:
        return self.overhead + sum(need.total for need in self.needs)

    @property
    def available(self) -> int:
        return self.gpu.free_bytes if self.gpu.free_bytes is not None else self.gpu.total_bytes

    @property
    def fits(self) -> bool:
        return self.total <= self.available

    def summary(self) -> str:
        parts = ", ".join(f"{need.label} {gib(need.total)}" for need in self.needs)
        return (
            f"GPU memory plan: {parts}, CUDA context {gib(self.overhead)}; "
            f"total {gib(self.total)} of {gib(self.available)} free on {self.gpu.name}"
        )


def check_plan(plan: MemoryPlan, suggestions: Sequence[str]) -> None:
    """Raise with one line if the plan does not fit; ``suggestions`` are the fixes that
    apply to this configuration, best first."""
    if plan.fits:
        return
    fix = suggestions[0] if suggestions else "use smaller models or DEVICE=cpu"
    raise InsufficientGpuMemory(
        f"the configured models need about {gib(plan.total)} of GPU memory but "
        f"{plan.gpu.name} has {gib(plan.available)} free: {fix} "
        "(MEMORY_CHECK=false skips this check)"
    )


def suggestions(settings: Settings, plan: MemoryPlan) -> list[str]:
    """What would make this configuration fit, in the order worth trying (SPEC §2's
    advice for 4 GB cards first)."""
    fixes = []
    by_service = {need.service: need for need in plan.needs}
    asr, tts = by_service.get("asr"), by_service.get("tts")
    if asr is not None and settings.asr_engine == "qwen3-asr" and "float32" in asr.label:
        fixes.append("load Qwen3-ASR in FP16 (QWEN_ASR_USE_FP16=true, ASR_DTYPE=auto)")
    if (
        tts is not None
        and settings.tts_engine == "qwen3-tts"
        and tts.label.startswith("Qwen3-TTS (float32")
    ):
        fixes.append("load the Qwen3-TTS talker in FP16 (TTS_DTYPE=float16)")
    if tts is not None and settings.tts_engine == "qwen3-tts" and settings.qwen_tts_chunk_size == 0:
        fixes.append("turn TTS chunking on (QWEN_TTS_CHUNK_SIZE=200)")
    batch = settings.qwen_asr_max_batch_size
    if asr is not None and settings.asr_engine == "qwen3-asr" and (batch is None or batch > 4):
        fixes.append("decode fewer requests together (QWEN_ASR_MAX_BATCH_SIZE=4)")
    if asr is not None and tts is not None:
        fixes.append(
            "run one service on this GPU (`wyoming-opentalker asr` or `tts`) and the other "
            "on another box or DEVICE=cpu"
        )
    fixes.append("use a smaller model or DEVICE=cpu")
    return fixes
