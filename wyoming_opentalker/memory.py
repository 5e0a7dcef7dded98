"""GPU memory planning at start-up: refuse a configuration that cannot fit, before loading.

Finding out by a CUDA out-of-memory error in the middle of a user's request is the worst
way; so before any model is loaded, each engine estimates what it will hold — weights
from the checkpoint's own tensor headers as they will be resident (precision,
quantisation, tied weights once, parts kept in CPU memory left out), plus working memory
modelled from the real shapes and the configured limits (batch, piece length, chunk
size) — and the sum is compared with what the GPU has. The working figures are models
checked against tracked allocations of the full-size shapes (script/measure_memory.py);
``MEMORY_CHECK=false`` skips the check.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .device import GpuInfo, Precision
from .quant import QuantMode, quantized_weight_bytes
from .settings import variable

GIB = 1024**3
MIB = 1024**2
# What torch's CUDA context and allocator take before any model (cuBLAS/cuDNN handles,
# kernels): about 0.3-0.5 GiB on current drivers. Counted only when the free memory was
# not measured after the context existed.
CUDA_CONTEXT_BYTES = int(0.4 * GIB)
# Kept free for the driver and a display when only the card's size is known.
DISPLAY_RESERVE_BYTES = int(0.15 * GIB)
# What the automatic defaults leave unplanned: estimates are estimates.
HEADROOM_BYTES = int(0.3 * GIB)
BYTES_PER = {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2}
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4}
_FLOAT = frozenset({"F64", "F32", "F16", "BF16"})


class InsufficientGpuMemory(RuntimeError):
    """The configuration does not fit the GPU; the message is one line with a fix."""


@dataclass(frozen=True)
class MemoryNeed:
    """What one loaded model will hold on the GPU (and beside it in CPU memory)."""

    service: str  # "asr" or "tts"
    label: str  # e.g. "Qwen3-ASR (float16, int8, batch 4 x 30 s)"
    weights: int
    working: int  # activations, KV cache, codec buffers: a model of the peak
    engine: str = ""
    precision: str = ""
    quantization: QuantMode = "none"
    cpu: int = 0  # weights kept in CPU memory (e.g. Qwen3-TTS's text embedding)
    detail: str = ""

    @property
    def total(self) -> int:
        return self.weights + self.working

    def as_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "engine": self.engine,
            "precision": self.precision,
            "quantization": self.quantization,
            "weights_bytes": self.weights,
            "working_bytes": self.working,
            "cpu_bytes": self.cpu,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class MemoryFix:
    """A settings change that lowers one backend's memory need, with the sentence that
    offers it. ``rank`` orders fixes from both services together, mildest compromise
    first: precision, then streaming and chunking, then ASR quantisation and batch, and
    the TTS talker (whose speed every answer feels) quantised last."""

    rank: int
    what: str  # e.g. "quantise Qwen3-ASR"
    change: dict[str, Any]  # Settings fields and their new values

    @property
    def setting(self) -> str:
        """The change as users write it, from the settings' declaration:
        ``QWEN_ASR_QUANT=int8``."""
        return ", ".join(f"{variable(name)}={value}" for name, value in self.change.items())

    @property
    def text(self) -> str:
        return f"{self.what} ({self.setting})"


@dataclass(frozen=True)
class TensorHeader:
    dtype: str
    shape: tuple[int, ...]
    file: Path  # where its bytes are: ``length`` bytes from ``offset`` of this file
    offset: int
    length: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_headers(folder: Path) -> dict[str, TensorHeader]:
    """Every tensor's name, dtype, shape and place from safetensors headers (no weights
    read)."""
    tensors: dict[str, TensorHeader] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with file.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        for key, entry in header.items():
            if key != "__metadata__" and entry.get("dtype") in _SAFETENSORS_BYTES:
                start, end = entry["data_offsets"]
                tensors[key] = TensorHeader(
                    entry["dtype"], tuple(entry["shape"]), file, 8 + size + start, end - start
                )
    return tensors


def checkpoint_bytes(
    headers: dict[str, TensorHeader],
    precision: Precision,
    quant: QuantMode,
    quantisable: Callable[[str], bool],
    *,
    skip: Collection[str] = (),
    include: Callable[[str], bool] = lambda _name: True,
) -> int:
    """Bytes the tensors will hold once loaded: floating tensors at ``precision``, 2-D
    weights that ``quantisable`` accepts at their quantised size, integer buffers as
    stored. ``skip`` names tensors that are not resident (a tied copy, a CPU part)."""
    total = 0
    for name, tensor in headers.items():
        if name in skip or not include(name):
            continue
        if tensor.dtype not in _FLOAT:
            total += tensor.numel * _SAFETENSORS_BYTES[tensor.dtype]
        elif (
            quant != "none"
            and len(tensor.shape) == 2
            and name.endswith(".weight")
            and quantisable(name)
        ):
            rows, cols = tensor.shape
            total += quantized_weight_bytes([(rows, cols)], quant, precision)
        else:
            total += tensor.numel * BYTES_PER[precision]
    return total


def gib(value: int) -> str:
    return f"{value / GIB:.2f} GiB"


@dataclass(frozen=True)
class MemoryPlan:
    """The configured models on one GPU, and whether they fit."""

    needs: tuple[MemoryNeed, ...]
    gpu: GpuInfo
    fixes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def overhead(self) -> int:
        """What the CUDA context and the driver take that ``available`` does not already
        exclude: nothing when free memory was measured with our context alive."""
        if self.gpu.free_bytes is None:
            return CUDA_CONTEXT_BYTES + DISPLAY_RESERVE_BYTES
        return 0 if self.gpu.context_counted else CUDA_CONTEXT_BYTES

    @property
    def total(self) -> int:
        return self.overhead + sum(need.total for need in self.needs)

    @property
    def available(self) -> int:
        return self.gpu.free_bytes if self.gpu.free_bytes is not None else self.gpu.total_bytes

    @property
    def headroom(self) -> int:
        return self.available - self.total

    @property
    def fits(self) -> bool:
        return self.total <= self.available

    def summary(self) -> str:
        parts = ", ".join(f"{need.label} {gib(need.total)}" for need in self.needs)
        overhead = f", CUDA context {gib(self.overhead)}" if self.overhead else ""
        return (
            f"GPU memory plan: {parts}{overhead}; total {gib(self.total)} of "
            f"{gib(self.available)} {'free' if self.gpu.free_bytes is not None else 'on'} "
            f"{self.gpu.name}, headroom {gib(self.headroom)}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpu": {
                "name": self.gpu.name,
                "compute_capability": ".".join(map(str, self.gpu.capability)),
                "total_bytes": self.gpu.total_bytes,
                "free_bytes": self.gpu.free_bytes,
            },
            "fits": self.fits,
            "total_bytes": self.total,
            "available_bytes": self.available,
            "overhead_bytes": self.overhead,
            "headroom_bytes": self.headroom,
            "needs": [need.as_dict() for need in self.needs],
            "fixes": list(self.fixes),
        }


def check_plan(plan: MemoryPlan) -> None:
    """Raise with one line if the plan does not fit; the fixes are those that were shown
    to make it fit, best first."""
    if plan.fits:
        return
    fix = "; or ".join(plan.fixes[:2]) if plan.fixes else "use smaller models or DEVICE=cpu"
    raise InsufficientGpuMemory(
        f"the configured models need about {gib(plan.total)} of GPU memory but "
        f"{plan.gpu.name} has {gib(plan.available)}: {fix} "
        "(MEMORY_CHECK=false skips this check)"
    )


def stronger_fixes(setting: str, field: str, what: str, rank: int) -> list[MemoryFix]:
    """Stronger quantisation than ``setting`` (a ``*_QUANT`` value), as memory fixes."""
    stronger = {"none": ("int8", "nf4"), "auto": ("int8", "nf4"), "int8": ("nf4",)}
    return [
        MemoryFix(rank + step, f"quantise {what}", {field: mode})
        for step, mode in enumerate(stronger.get(setting, ()))
    ]


def free_cpu_memory() -> int | None:
    """CPU memory a new piece of work can use: available RAM plus free swap, within the
    container's cgroup limit if it has one; None where ``/proc/meminfo`` is missing."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = (int(fields["MemAvailable"].split()[0]) + int(fields["SwapFree"].split()[0])) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free
