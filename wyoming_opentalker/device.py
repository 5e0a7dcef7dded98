"""Device and precision selection shared by every engine.

The rules are pure functions of the GPU's compute capability so they can be unit-tested
for hardware this machine does not have:

* bfloat16 needs compute capability >= 8.0. On Pascal (sm_61) bf16 matmuls fail at the
  first GEMM even though ``torch.cuda.is_bf16_supported()`` says True (emulation), so the
  capability, not that call, decides.
* FP16 halves weight memory and runs on any CUDA GPU PyTorch still supports (>= 6.0).
* CTranslate2 refuses float16 below 7.0; int8 is the compact choice there and on the CPU.
* On the CPU, half precision is slow or unsupported: FP32 (or int8 for CTranslate2).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any, Literal

_LOGGER = logging.getLogger(__name__)


class Precision(StrEnum):
    """Floating-point precision of model weights."""

    FP32 = "float32"
    FP16 = "float16"
    BF16 = "bfloat16"


@dataclass(frozen=True)
class GpuInfo:
    """What precision and memory decisions need to know about one GPU."""

    name: str
    capability: tuple[int, int]
    total_bytes: int
    free_bytes: int | None = None
    # True when free_bytes was measured with this process's CUDA context already alive
    # (torch), so the planner must not subtract the context again.
    context_counted: bool = False


@dataclass(frozen=True)
class Device:
    """Where the engines run, resolved once at start-up (``resolve_device``): the CPU, or
    one CUDA GPU together with what it can do. Engines, the planner and quantisation ask
    this value instead of re-parsing the ``DEVICE`` string each time."""

    type: Literal["cpu", "cuda"] = "cpu"
    index: int = 0
    gpu: GpuInfo | None = None  # None on the CPU, or when the GPU could not be described

    @classmethod
    def parse(cls, name: str) -> Device:
        """``cpu``, ``cuda`` or ``cuda:N``; nothing is probed (``resolve_device`` does)."""
        kind, _, index = name.strip().lower().partition(":")
        if kind == "cpu" and not index:
            return cls()
        if kind == "cuda" and (not index or index.isdigit()):
            return cls("cuda", int(index or 0))
        raise ValueError("expected auto, cpu, cuda or cuda:N")

    @classmethod
    def of(cls, device: Device | str) -> Device:
        """``device`` as a ``Device``: scripts may still write ``"cpu"``."""
        return device if isinstance(device, Device) else cls.parse(device)

    @property
    def is_cuda(self) -> bool:
        return self.type == "cuda"

    @property
    def name(self) -> str:
        """The name torch takes (``cpu``, ``cuda:0``)."""
        return "cpu" if self.type == "cpu" else f"cuda:{self.index}"

    def __str__(self) -> str:
        return self.name


CPU = Device()


@dataclass(frozen=True)
class PrecisionChoice:
    """A decision and the reason for it, which is logged once at start-up."""

    precision: Precision
    reason: str


def choose_precision(
    wanted: Precision, device: Device, *, fallback: Precision | None = None
) -> PrecisionChoice:
    """Pick the precision to load weights in.

    ``wanted`` is what the user or engine prefers; ``fallback`` is what to use when
    bfloat16 is wanted but the GPU lacks it (FP16 for most models; engines that are
    unstable in FP16 can pass FP32).
    """
    gpu = device.gpu
    if not device.is_cuda or gpu is None:
        if wanted is Precision.FP32:
            return PrecisionChoice(Precision.FP32, "FP32 requested")
        return PrecisionChoice(
            Precision.FP32, f"{wanted.name} is not used on the CPU (slow or unsupported): FP32"
        )
    major, minor = gpu.capability
    cc = f"sm_{major}{minor}"
    if wanted is Precision.FP32:
        return PrecisionChoice(Precision.FP32, "FP32 requested")
    if wanted is Precision.BF16:
        if major >= 8:
            return PrecisionChoice(Precision.BF16, f"{gpu.name} ({cc}) supports bfloat16")
        if fallback is None:
            fallback = Precision.FP16 if major >= 7 else Precision.FP32
        if fallback is Precision.FP16 and major < 6:
            fallback = Precision.FP32
        return PrecisionChoice(
            fallback, f"{gpu.name} ({cc}) has no native bfloat16 (needs sm_80+): {fallback.name}"
        )
    if major >= 6:
        return PrecisionChoice(Precision.FP16, f"FP16 requested; {gpu.name} ({cc}) supports it")
    return PrecisionChoice(Precision.FP32, f"{gpu.name} ({cc}) is too old for FP16: FP32")


_CT2_TYPES = (
    "default",
    "auto",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


def choose_ct2_compute_type(requested: str, device: Device) -> str:
    """CTranslate2 compute type: an explicit request wins, else by device capability."""
    requested = requested.strip().lower()
    if requested not in _CT2_TYPES:
        raise ValueError(f"unknown compute type {requested!r}; expected one of {_CT2_TYPES}")
    if requested not in ("auto", "default"):
        return requested
    gpu = device.gpu
    if not device.is_cuda or gpu is None:
        return "int8"
    if gpu.capability >= (7, 0):
        return "float16"
    if gpu.capability >= (6, 1):
        return "int8"
    return "float32"


class DeviceUnavailable(ValueError):
    """The configured device is not there; the message is one line with the fix."""


def resolve_device(requested: str) -> Device:
    """The ``DEVICE`` setting as a ``Device``: ``auto`` is the first GPU when a usable one
    exists, else the CPU; a CUDA device that is not visible is refused in one line, before
    an engine fails with a traceback (the usual cause: a container started without the
    NVIDIA Container Toolkit)."""
    if requested.strip().lower() == "auto":
        gpu = gpu_info(0)
        return Device("cuda", 0, gpu) if gpu is not None else CPU
    device = Device.parse(requested)
    if not device.is_cuda:
        return device
    gpu = gpu_info(device.index)
    if gpu is None:
        raise DeviceUnavailable(
            f"DEVICE={requested} but no usable NVIDIA GPU is visible to this process "
            "(neither PyTorch nor nvidia-smi found one): set DEVICE=auto to fall back to the "
            "CPU, or give the container the GPU (NVIDIA Container Toolkit and `gpus: all` in "
            "compose / `--gpus all`)"
        )
    return Device("cuda", device.index, gpu)


@lru_cache(maxsize=8)
def gpu_info(index: int = 0) -> GpuInfo | None:
    """Describe CUDA GPU ``index`` (torch if installed, else nvidia-smi)."""
    try:
        import torch

        if torch.cuda.is_available() and index < torch.cuda.device_count():
            props = torch.cuda.get_device_properties(index)
            free, total = torch.cuda.mem_get_info(index)
            return GpuInfo(props.name, (props.major, props.minor), total, free, True)
        return None
    except ImportError:
        pass
    return _nvidia_smi_info(index)


def _nvidia_smi_info(index: int) -> GpuInfo | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [
                smi,
                f"--id={index}",
                "--query-gpu=name,compute_cap,memory.total,memory.free",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        name, cap, total, free = (part.strip() for part in out.strip().split(","))
        major, minor = (int(part) for part in cap.split("."))
        mib = 1024 * 1024
        return GpuInfo(name, (major, minor), int(total) * mib, int(free) * mib)
    except (OSError, ValueError, subprocess.SubprocessError) as err:
        _LOGGER.debug("nvidia-smi gave no GPU information: %s", err)
        return None


def memory_report(device: Device) -> dict[str, Any]:
    """Process and GPU memory now, for health checks (GPU figures only once torch runs)."""
    import resource
    import sys

    report: dict[str, Any] = {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            report["rss_bytes"] = int(statm.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        pass
    torch = sys.modules.get("torch")
    if device.is_cuda and torch is not None and torch.cuda.is_initialized():
        index = device.index
        free, total = torch.cuda.mem_get_info(index)
        report["gpu"] = {
            "allocated_bytes": int(torch.cuda.memory_allocated(index)),
            "reserved_bytes": int(torch.cuda.memory_reserved(index)),
            "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(index)),
            "free_bytes": int(free),
            "total_bytes": int(total),
        }
    return report


def default_asr_batch_size(gpu: GpuInfo | None) -> int:
    """4 on a 4 GB card, up to 16 on 24 GB; the CPU gains nothing past 4."""
    if gpu is None:
        return 4
    gib = gpu.total_bytes / 1024**3
    if gib < 6:
        return 4
    if gib < 12:
        return 8
    return 16


def cpu_speed_warning(engine: str, measured: str) -> None:
    """One WARNING when a GPU-class engine is about to run on the CPU: it works, but too
    slowly for Assist, and users should know the alternatives before they wait."""
    _LOGGER.warning(
        "%s is running on the CPU (measured %s): expect slow answers. For Assist use a GPU "
        "box (the Docker image with DEVICE=cuda) or the CPU engines (faster-whisper, Piper; "
        "the README's Chinese CPU profile for Chinese).",
        engine,
        measured,
    )
