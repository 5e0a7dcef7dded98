"""The start-up memory plan: automatic defaults that fit the card, fixes that really fit,
and ``wyoming-opentalker plan``, which prints the plan without loading any weights.

``auto`` settings (quantisation, ASR batch size) are resolved here, by trying the
candidate configurations in order of preference — least quantisation first, the TTS
talker (whose speed every answer feels) quantised last — and taking the first that
leaves ``HEADROOM_BYTES`` free, else the first that fits at all. Fixes offered for a
configuration that does not fit are only those that were recomputed and do fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .asr.service import asr_plan
from .device import Device, GpuInfo, default_asr_batch_size, gpu_info
from .memory import HEADROOM_BYTES, MIB, MemoryPlan, gib
from .settings import Settings, SettingsError, load_settings
from .tts.service import tts_plan

if TYPE_CHECKING:
    from .engine import LoadPlan
    from .quant import QuantMode

# Cards users ask about (``--gpu NAME``): size and compute capability.
GPUS: dict[str, GpuInfo] = {
    "gtx-1050-ti": GpuInfo("GeForce GTX 1050 Ti", (6, 1), 4096 * MIB),
    "gtx-1650": GpuInfo("GeForce GTX 1650", (7, 5), 4096 * MIB),
    "rtx-2060": GpuInfo("GeForce RTX 2060", (7, 5), 6144 * MIB),
    "rtx-3060": GpuInfo("GeForce RTX 3060", (8, 6), 12288 * MIB),
    "rtx-3090": GpuInfo("GeForce RTX 3090", (8, 6), 24576 * MIB),
}


@dataclass(frozen=True)
class Plans:
    """What start-up loads: the settings with every ``auto`` made concrete, each
    configured service's load plan, and on a GPU the memory plan those make."""

    settings: Settings
    asr: LoadPlan | None = None
    tts: LoadPlan | None = None
    memory: MemoryPlan | None = None


def service_plans(settings: Settings, device: Device) -> Plans:
    """Each configured service's load plan; on a described GPU, their memory plan (in
    start-up order). Nothing is loaded."""
    asr = asr_plan(settings, device) if "asr" in settings.services else None
    tts = tts_plan(settings, device) if "tts" in settings.services else None
    memory = None
    if device.is_cuda and device.gpu is not None:
        loads = {"asr": asr, "tts": tts}
        needs = (load.need for kind in settings.services if (load := loads[kind]) is not None)
        memory = MemoryPlan(tuple(needs), device.gpu)
    return Plans(settings, asr, tts, memory)


def memory_plan(settings: Settings, device: Device) -> MemoryPlan:
    """The configured services' memory plan on ``device``'s GPU."""
    plan = service_plans(settings, device).memory
    if plan is None:
        raise ValueError(f"no GPU described for {device}: nothing to plan")
    return plan


def _qwen(settings: Settings, kind: str) -> bool:
    if kind not in settings.services:
        return False
    return (settings.asr_engine if kind == "asr" else settings.tts_engine).startswith("qwen3")


def _candidates(settings: Settings, device: Device) -> Iterator[Settings]:
    """Concrete settings for every ``auto`` choice, most preferred first."""
    asr_modes = _modes(settings.qwen_asr_quant, device) if _qwen(settings, "asr") else ["none"]
    tts_modes = _modes(settings.qwen_tts_quant, device) if _qwen(settings, "tts") else ["none"]
    top = default_asr_batch_size(device.gpu)
    batches = (
        [b for b in (top, 4, 2, 1) if b <= top]
        if settings.qwen_asr_max_batch_size is None and _qwen(settings, "asr")
        else [settings.qwen_asr_max_batch_size]
    )
    seen: set[tuple[Any, ...]] = set()
    for tts_mode in tts_modes:
        for asr_mode in asr_modes:
            for batch in dict.fromkeys(batches):
                key = (tts_mode, asr_mode, batch)
                if key not in seen:
                    seen.add(key)
                    yield replace(
                        settings,
                        qwen_asr_quant=asr_mode,
                        qwen_tts_quant=tts_mode,
                        qwen_asr_max_batch_size=batch,
                    )


def _modes(configured: str, device: Device) -> list[str]:
    """Quantisation modes to try for an ``auto`` setting: none first, then int8 where it
    runs. nf4 is never picked for the user (about 9% output error per layer measured on
    random weights, its effect on real speech unmeasured); it is offered as a fix."""
    if configured != "auto":
        return [configured]
    if not device.is_cuda or device.gpu is None:
        return ["none"]
    from .quant import quant_available

    modes: list[QuantMode] = ["int8"]
    capability = device.gpu.capability
    return ["none", *(m for m in modes if quant_available(m, device.name, capability) is None)]


def resolve_plan(settings: Settings, device: Device) -> Plans:
    """The plans for ``device``'s GPU with every ``auto`` setting made concrete: the first
    candidate that leaves the headroom, else the first that fits, else the most preferred
    one with the fixes that were shown to make it fit."""
    first: Plans | None = None
    fitting: Plans | None = None
    for candidate in _candidates(settings, device):
        plans = service_plans(candidate, device)
        assert plans.memory is not None
        first = first or plans
        if plans.memory.headroom >= HEADROOM_BYTES:
            return plans
        if plans.memory.fits and fitting is None:
            fitting = plans
    if fitting is not None:
        return fitting
    assert first is not None and first.memory is not None
    found = tuple(fixes(first.settings, device))
    return replace(first, memory=replace(first.memory, fixes=found))


def _fix_options(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    """Changes worth trying, in the order worth trying them."""
    options: list[tuple[str, dict[str, Any]]] = []
    asr, tts = _qwen(settings, "asr"), _qwen(settings, "tts")
    if asr and settings.asr_dtype == "float32":
        options.append(("load Qwen3-ASR in FP16 (ASR_DTYPE=auto)", {"asr_dtype": "auto"}))
    if tts and settings.tts_dtype == "float32":
        options.append(
            ("load the Qwen3-TTS talker in FP16 (TTS_DTYPE=auto)", {"tts_dtype": "auto"})
        )
    if tts and settings.qwen_tts_stream_window == 0:
        options.append(
            ("decode speech in windows (QWEN_TTS_STREAM_WINDOW=8)", {"qwen_tts_stream_window": 8})
        )
    if tts and (settings.tts_chunk_size == 0 or settings.tts_chunk_size > 200):
        options.append(("turn TTS chunking on (QWEN_TTS_CHUNK_SIZE=200)", {"tts_chunk_size": 200}))
    if asr:
        options += _quant_fixes(settings.qwen_asr_quant, "qwen_asr_quant", "Qwen3-ASR")
    batch = settings.qwen_asr_max_batch_size
    for smaller in (2, 1):
        if asr and (batch is None or batch > smaller):
            options.append(
                (
                    f"decode fewer requests together (QWEN_ASR_MAX_BATCH_SIZE={smaller})",
                    {"qwen_asr_max_batch_size": smaller},
                )
            )
    if tts:
        options += _quant_fixes(settings.qwen_tts_quant, "qwen_tts_quant", "the Qwen3-TTS talker")
    return options


def _quant_fixes(current: str, field: str, what: str) -> list[tuple[str, dict[str, Any]]]:
    """Stronger quantisation than ``current``, as fixes to try."""
    stronger = {"none": ("int8", "nf4"), "auto": ("int8", "nf4"), "int8": ("nf4",)}
    return [
        (f"quantise {what} ({field.upper()}={mode})", {field: mode})
        for mode in stronger.get(current, ())
    ]


def fixes(settings: Settings, device: Device) -> list[str]:
    """Only changes that were recomputed and make this configuration fit: single changes
    first, then the fewest of them taken together; one service per card last."""
    options = _fix_options(settings)
    found = [
        text for text, change in options if memory_plan(replace(settings, **change), device).fits
    ]
    if not found:
        combined: dict[str, Any] = {}
        steps: list[str] = []
        for text, change in options:
            combined.update(change)
            steps.append(text.split(" (", 1)[1].rstrip(")"))
            if memory_plan(replace(settings, **combined), device).fits:
                found.append("together: " + ", ".join(steps))
                break
    if len(settings.services) == 2:
        for kind in settings.services:
            alone = replace(settings, services=(kind,))
            if memory_plan(alone, device).fits:
                other = "tts" if kind == "asr" else "asr"
                found.append(
                    f"run only `wyoming-opentalker {kind}` on this GPU and {other} on another "
                    "box or DEVICE=cpu"
                )
                break
    return found


# --- wyoming-opentalker plan


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wyoming-opentalker plan",
        description="Print the GPU memory plan for these settings without loading weights "
        "(exit 0: it fits, 1: it does not). Every other flag and environment variable is "
        "read as for a normal start.",
        add_help=False,
    )
    parser.add_argument("--gpu", choices=sorted(GPUS), help="a known card")
    parser.add_argument("--gpu-memory", type=float, metavar="MIB", help="card memory in MiB")
    parser.add_argument("--compute-capability", metavar="X.Y", help="e.g. 6.1 for Pascal")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.add_argument("-h", "--help", action="store_true")
    return parser


def _gpu_from(args: argparse.Namespace, index: int) -> GpuInfo:
    if args.gpu is None and args.gpu_memory is None and args.compute_capability is None:
        real = gpu_info(index)
        if real is None:
            raise SettingsError(
                "no GPU here: describe one with --gpu NAME or --gpu-memory MIB "
                "--compute-capability X.Y"
            )
        return real
    base = GPUS[args.gpu] if args.gpu else GpuInfo("GPU", (7, 5), 4096 * MIB)
    capability = base.capability
    if args.compute_capability is not None:
        try:
            major, minor = (int(part) for part in args.compute_capability.split("."))
        except ValueError:
            raise SettingsError(
                f"--compute-capability={args.compute_capability!r}: expected X.Y, e.g. 6.1"
            ) from None
        capability = (major, minor)
    total = base.total_bytes if args.gpu_memory is None else int(args.gpu_memory * MIB)
    if total <= 0:
        raise SettingsError("--gpu-memory must be more than 0")
    name = base.name if args.gpu else f"{total / MIB:.0f} MiB sm_{capability[0]}{capability[1]}"
    return GpuInfo(name, capability, total)


def table(plan: MemoryPlan) -> str:
    rows = [("service", "engine", "precision", "quant", "GPU weights", "working", "CPU", "total")]
    for need in plan.needs:
        rows.append(
            (
                need.service,
                need.engine or need.label,
                need.precision or "-",
                need.quantization,
                gib(need.weights),
                gib(need.working),
                gib(need.cpu),
                gib(need.total),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.append("")
    lines.append(f"CUDA context and driver reserve: {gib(plan.overhead)}")
    lines.append(
        f"total {gib(plan.total)} of {gib(plan.available)} on {plan.gpu.name}: "
        f"{'fits' if plan.fits else 'does NOT fit'}, headroom {gib(plan.headroom)}"
    )
    for need in plan.needs:
        if need.detail:
            lines.append(f"{need.service}: {need.detail}")
    lines.extend(f"fix: {fix}" for fix in plan.fixes)
    return "\n".join(lines)


def plan_main(argv: Sequence[str]) -> int:
    """``wyoming-opentalker plan [all|asr|tts] [flags]``."""
    args, rest = _parser().parse_known_args(argv)
    if args.help:
        _parser().print_help()
        return 0
    try:
        settings = load_settings(rest)
        configured = Device.parse(settings.device) if settings.device != "auto" else Device()
        index = configured.index if configured.is_cuda else 0
        plans = resolve_plan(settings, Device("cuda", index, _gpu_from(args, index)))
        settings, plan = plans.settings, plans.memory
        assert plan is not None
    except (SettingsError, ValueError, OSError) as err:
        print(f"wyoming-opentalker plan: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        data = plan.as_dict()
        data["settings"] = {  # the concrete choices the engines will be built with
            "qwen_asr_quant": settings.qwen_asr_quant,
            "qwen_tts_quant": settings.qwen_tts_quant,
            "qwen_asr_max_batch_size": settings.qwen_asr_max_batch_size,
        }
        print(json.dumps(data, indent=2))
    else:
        print(table(plan))
    return 0 if plan.fits else 1


def start_plan(settings: Settings, device: Device) -> Plans:
    """At start-up: on a GPU, resolve ``auto`` choices for the real card (the caller
    refuses a configuration that cannot fit unless ``MEMORY_CHECK=false``); on the CPU
    nothing is quantised unless asked for."""
    if device.is_cuda and device.gpu is not None:
        return resolve_plan(settings, device)
    return service_plans(cpu_settings(settings), device)


def cpu_settings(settings: Settings) -> Settings:
    """On the CPU nothing is quantised unless asked for."""
    return replace(
        settings,
        qwen_asr_quant="none" if settings.qwen_asr_quant == "auto" else settings.qwen_asr_quant,
        qwen_tts_quant="none" if settings.qwen_tts_quant == "auto" else settings.qwen_tts_quant,
    )
