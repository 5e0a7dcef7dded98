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
from .backends import ASR_BACKENDS, TTS_BACKENDS, runtime_backend
from .device import Device, GpuInfo, gpu_info
from .engine import Engine, engine_class, pick_backend
from .memory import HEADROOM_BYTES, MIB, MemoryFix, MemoryPlan, gib
from .quant import configured_mode
from .settings import Settings, SettingsError, load_settings
from .tts.service import tts_plan

if TYPE_CHECKING:
    from .engine import LoadPlan

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
    """Each configured service's load plan; on a described GPU, their memory plan (ASR
    first, the order start-up loads them in). Nothing is loaded."""
    asr = asr_plan(settings, device) if "asr" in settings.services else None
    tts = tts_plan(settings, device) if "tts" in settings.services else None
    memory = None
    if device.is_cuda and device.gpu is not None:
        needs = tuple(load.need for load in (asr, tts) if load is not None)
        memory = MemoryPlan(needs, device.gpu)
    return Plans(settings, asr, tts, memory)


def memory_plan(settings: Settings, device: Device) -> MemoryPlan:
    """The configured services' memory plan on ``device``'s GPU."""
    plan = service_plans(settings, device).memory
    if plan is None:
        raise ValueError(f"no GPU described for {device}: nothing to plan")
    return plan


def _backends(
    settings: Settings, on_gpu: bool = True
) -> tuple[type[Engine] | None, type[Engine] | None]:
    """The configured ASR and TTS engine classes (None for a service not configured)."""
    name = runtime_backend(
        pick_backend(ASR_BACKENDS, settings.asr_engine), settings.qwen_asr_runtime, on_gpu
    )
    asr = engine_class(pick_backend(ASR_BACKENDS, name))
    tts = engine_class(pick_backend(TTS_BACKENDS, settings.tts_engine))
    return (
        asr if "asr" in settings.services else None,
        tts if "tts" in settings.services else None,
    )


def _candidates(settings: Settings, device: Device) -> Iterator[Settings]:
    """Concrete settings for every ``auto`` choice, most preferred first: the TTS
    backend's choices vary slowest, so the talker is compromised last."""
    asr, tts = _backends(settings, device.is_cuda)
    asr_choices = asr.auto_choices(settings, device) if asr else [{}]
    tts_choices = tts.auto_choices(settings, device) if tts else [{}]
    seen: set[tuple[tuple[str, Any], ...]] = set()
    for tts_choice in tts_choices:
        for asr_choice in asr_choices:
            change = {**asr_choice, **tts_choice}
            key = tuple(sorted(change.items()))
            if key not in seen:
                seen.add(key)
                yield no_auto_quant(replace(settings, **change))


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


def _fix_options(settings: Settings) -> list[MemoryFix]:
    """The configured backends' fixes, in the order worth trying them."""
    asr, tts = _backends(settings)
    return sorted(
        (fix for engine in (asr, tts) if engine for fix in engine.memory_fixes(settings)),
        key=lambda fix: fix.rank,
    )


def fixes(settings: Settings, device: Device) -> list[str]:
    """Only changes that were recomputed and make this configuration fit: single changes
    first, then the fewest of them taken together; one service per card last."""
    options = _fix_options(settings)
    found = [
        fix.text for fix in options if memory_plan(replace(settings, **fix.change), device).fits
    ]
    if not found:
        combined: dict[str, Any] = {}
        steps: list[str] = []
        for fix in options:
            combined.update(fix.change)
            steps.append(fix.setting)
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
    return service_plans(no_auto_quant(settings), device)


def no_auto_quant(settings: Settings) -> Settings:
    """An ``auto`` quantisation that no backend's choices made concrete (on the CPU, or
    for an engine that does not quantise) means none, and is shown as such."""
    return replace(
        settings,
        qwen_asr_quant=configured_mode(settings.qwen_asr_quant),
        qwen_tts_quant=configured_mode(settings.qwen_tts_quant),
    )
