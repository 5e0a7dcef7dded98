"""``wyoming-opentalker [all|asr|tts]``: load the engines and serve Wyoming."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from . import hub
from .asr.service import AsrService, asr_plan, load_asr_engine
from .device import Device, resolve_device
from .discovery import Endpoint, ZeroconfAdvertiser, announce_to_supervisor
from .engine import EngineError
from .memory import InsufficientGpuMemory, check_plan
from .models import ModelError, StartStopped
from .server import HandlerFactory, Listener, listen
from .settings import Settings, SettingsError, describe_settings, load_settings
from .tts.service import TtsService, load_tts_engine, tts_plan

if TYPE_CHECKING:
    from .engine import LoadPlan
    from .openai_api import OpenAiApi
    from .plan import Plans

_LOGGER = logging.getLogger("wyoming_opentalker")


class StartupError(RuntimeError):
    """Anything that stops the program before it serves; printed as one line."""


@dataclass
class Running:
    """What one process serves: each service once, and every way to reach it."""

    asr: AsrService | None = None
    tts: TtsService | None = None
    listeners: list[Listener] = field(default_factory=list)
    http: OpenAiApi | None = None
    zeroconf: ZeroconfAdvertiser | None = None
    announcing: asyncio.Task[list[str]] | None = None

    async def close(self, grace: float = 0.0) -> None:
        if self.announcing is not None:
            self.announcing.cancel()
        if self.zeroconf is not None:  # withdraw first: nobody should connect any more
            await self.zeroconf.close()
        closing = [listener.close(grace) for listener in self.listeners]
        if self.http is not None:
            closing.append(self.http.close())
        await asyncio.gather(*closing)
        for service in self.services:  # nobody can reach them any more
            await service.close()

    @property
    def services(self) -> list[AsrService | TtsService]:
        return [service for service in (self.asr, self.tts) if service is not None]


async def start_services(settings: Settings) -> Running:
    """Load the configured engines (off the event loop) and start listening."""
    device = await asyncio.to_thread(resolve_device, settings.device)  # may run nvidia-smi
    plans = await asyncio.to_thread(plan_services, settings, device)
    settings = plans.settings
    running = Running()
    try:
        if plans.asr is not None:
            running.asr = await load_asr(plans.asr)
        if plans.tts is not None:
            running.tts = await load_tts(plans.tts)
        if running.asr is not None:  # listen only once every engine has loaded
            running.listeners.append(await serve_asr(running.asr))
        if running.tts is not None:
            running.listeners.append(await serve_tts(running.tts))
        endpoints = [
            Endpoint(service.kind, listener.uri, listener.port)
            for service, listener in zip(running.services, running.listeners, strict=True)
        ]
        if settings.http_enabled or settings.http_ingress_port is not None:
            from .openai_api import OpenAiApi

            running.http = OpenAiApi(settings, running.asr, running.tts, device, plans)
            await running.http.start()
        if settings.zeroconf:
            running.zeroconf = ZeroconfAdvertiser(settings)
            await running.zeroconf.start(endpoints)
        token = os.environ.get("SUPERVISOR_TOKEN")
        if token:  # running as a Home Assistant add-on
            running.announcing = asyncio.create_task(announce_to_supervisor(endpoints, token))
    except BaseException:
        await running.close()
        raise
    return running


def plan_services(settings: Settings, device: Device) -> Plans:
    """Decide, once, how each configured service is loaded on this device: ``auto``
    choices made concrete and, on a GPU, stop now if the models cannot fit it."""
    from .plan import start_plan

    plans = start_plan(settings, device)
    if plans.memory is not None:
        _LOGGER.info("%s", plans.memory.summary())
        if plans.settings.memory_check:
            check_plan(plans.memory)
    return plans


async def load_asr(plan: LoadPlan) -> AsrService:
    """Load the planned ASR engine on a worker thread, so the event loop keeps running."""
    started = time.monotonic()
    service = AsrService(await asyncio.to_thread(load_asr_engine, plan), plan.settings)
    _ready(service, started)
    return service


async def load_tts(plan: LoadPlan) -> TtsService:
    """Load the planned TTS engine on a worker thread, so the event loop keeps running."""
    started = time.monotonic()
    service = TtsService(await asyncio.to_thread(load_tts_engine, plan), plan.settings)
    _ready(service, started)
    return service


def _ready(service: AsrService | TtsService, started: float) -> None:
    took = time.monotonic() - started
    _LOGGER.info(
        "%s ready in %.1f s: %s", service.kind.upper(), took, service.engine.info.summary()
    )


async def start_asr(settings: Settings, device: Device | str) -> AsrService:
    """One ASR service from settings, as start-up would load it (for scripts)."""
    return await load_asr(asr_plan(settings, Device.of(device)))


async def start_tts(settings: Settings, device: Device | str) -> TtsService:
    """One TTS service from settings, as start-up would load it (for scripts)."""
    return await load_tts(tts_plan(settings, Device.of(device)))


async def serve_asr(service: AsrService) -> Listener:
    """Listen for Wyoming ASR clients at the configured URI."""
    from .asr.handler import AsrHandler

    handlers: HandlerFactory = functools.partial(AsrHandler, service=service)
    return await listen(service.settings.asr_uri, handlers, service.settings)


async def serve_tts(service: TtsService) -> Listener:
    """Listen for Wyoming TTS clients at the configured URI."""
    from .tts.handler import TtsHandler

    handlers: HandlerFactory = functools.partial(TtsHandler, service=service)
    return await listen(service.settings.tts_uri, handlers, service.settings)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then close every listener."""
    stop = asyncio.Event()
    received: list[signal.Signals] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        hub.STOP.set()  # a download in progress ends at once, its partial file kept
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal, sig)
    starting = asyncio.create_task(start_services(settings))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        _stopped_while_starting(received[0])
    stopping.cancel()
    try:
        running = starting.result()
    except StartStopped:
        _stopped_while_starting(received[0] if received else signal.SIGTERM)
    except (
        ModelError,
        EngineError,
        InsufficientGpuMemory,
        OSError,
        ValueError,
        ImportError,
    ) as err:
        raise StartupError(_one_line(err)) from err
    urls = [listener.uri for listener in running.listeners]
    urls += running.http.urls if running.http is not None else []
    _LOGGER.info("Serving: %s", ", ".join(urls))
    await stop.wait()
    _LOGGER.info("Shutting down (up to %gs for requests in progress)", settings.shutdown_grace)
    await running.close(settings.shutdown_grace)


def _stopped_while_starting(sig: signal.Signals) -> NoReturn:
    """A start was stopped: leave now. Loading runs on a worker thread that cannot be
    interrupted (a model load can take a minute), so the process ends here, at once; a
    download stopped half way keeps its partial file and resumes at the next start."""
    _LOGGER.info("Stopped by %s while starting", sig.name)
    logging.shutdown()
    os._exit(0 if sig == signal.SIGTERM else 128 + sig.value)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def convert_main(argv: Sequence[str]) -> int:
    """``wyoming-opentalker convert-qwen3-asr``: a Qwen3-ASR checkpoint to the ONNX graphs
    the CPU engine loads (what a first start does by itself), e.g. to prepare a model on
    a larger machine and copy the folder over (``ASR_MODEL=<folder>``)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="wyoming-opentalker convert-qwen3-asr",
        description="Convert a Qwen3-ASR checkpoint for the CPU engine (ONNX).",
    )
    parser.add_argument("--model", default=None, help="checkpoint folder or hub id")
    parser.add_argument("--output", required=True, help="folder to write (replaced when done)")
    parser.add_argument(
        "--quant", default="int8-int4", choices=("int8-int4", "int8", "int4", "none")
    )
    options = parser.parse_args(list(argv))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("onnxruntime", "onnxruntime.quantization", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pathlib import Path

    from .asr.qwen3_asr import resolve
    from .asr.qwen3_onnx_export import convert

    try:
        settings = load_settings([])
        if options.model is not None:
            from dataclasses import replace

            settings = replace(settings, asr_model=options.model)
        resolved = resolve(settings)
        convert(
            resolved.path,
            Path(options.output).expanduser(),
            options.quant,
            progress=_LOGGER.info,
            source_name=resolved.name,
        )
    except (ModelError, OSError, ValueError, ImportError) as err:
        print(f"wyoming-opentalker convert-qwen3-asr: error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["plan"]:
        from .plan import plan_main

        sys.exit(plan_main(args[1:]))
    if args[:1] == ["convert-qwen3-asr"]:
        sys.exit(convert_main(args[1:]))
    try:
        settings = load_settings(argv)
    except SettingsError as err:
        print(f"wyoming-opentalker: error: {err}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _LOGGER.info("Settings: %s", describe_settings(settings))
    try:
        asyncio.run(serve(settings))
    except StartupError as err:
        print(f"wyoming-opentalker: error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
