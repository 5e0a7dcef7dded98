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
from typing import TYPE_CHECKING

from .asr.service import AsrService, load_asr_engine
from .device import resolve_device
from .discovery import Endpoint, ZeroconfAdvertiser, announce_to_supervisor
from .engine import EngineError
from .memory import InsufficientGpuMemory, check_plan
from .models import ModelError
from .server import HandlerFactory, Listener, listen
from .settings import Settings, SettingsError, describe_settings, load_settings
from .tts.service import TtsService, load_tts_engine

if TYPE_CHECKING:
    from .openai_api import OpenAiApi

_LOGGER = logging.getLogger("wyoming_opentalker")


class StartupError(RuntimeError):
    """Anything that stops the program before it serves; printed as one line."""


@dataclass
class Running:
    """What one process serves: each service once, and every way to reach it."""

    services: dict[str, AsrService | TtsService]
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
        for service in self.services.values():  # nobody can reach them any more
            await service.close()


async def start_services(settings: Settings) -> Running:
    """Load the configured engines (off the event loop) and start listening."""
    device = await asyncio.to_thread(resolve_device, settings.device)  # may run nvidia-smi
    settings = await asyncio.to_thread(plan_settings, settings, device)
    running = Running({})
    try:
        for kind in settings.services:
            running.services[kind] = await load_service(kind, settings, device)
        for service in running.services.values():
            running.listeners.append(await serve_service(service, settings))
        if settings.http_enabled:
            from .openai_api import OpenAiApi

            asr, tts = running.services.get("asr"), running.services.get("tts")
            assert asr is None or isinstance(asr, AsrService)
            assert tts is None or isinstance(tts, TtsService)
            running.http = OpenAiApi(settings, asr, tts, device)
            await running.http.start()
        endpoints = [
            Endpoint(kind, listener.uri, listener.port)
            for kind, listener in zip(running.services, running.listeners, strict=True)
        ]
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


def plan_settings(settings: Settings, device: str) -> Settings:
    """Make ``auto`` choices concrete for this device and, on a GPU, stop now if the
    configured models cannot fit it."""
    from .plan import cpu_settings, start_plan

    if not device.startswith("cuda"):
        return cpu_settings(settings)
    settings, plan = start_plan(settings, device)
    if plan is not None:
        _LOGGER.info("%s", plan.summary())
        if settings.memory_check:
            check_plan(plan)
    return settings


async def load_service(kind: str, settings: Settings, device: str) -> AsrService | TtsService:
    """Load one service's engine on a worker thread (``kind``: asr or tts)."""
    started = time.monotonic()
    service: AsrService | TtsService
    if kind == "asr":
        service = AsrService(await asyncio.to_thread(load_asr_engine, settings, device), settings)
    else:
        service = TtsService(await asyncio.to_thread(load_tts_engine, settings, device), settings)
    info = service.engine.info
    _LOGGER.info("%s ready in %.1f s: %s", kind.upper(), time.monotonic() - started, info.summary())
    return service


async def serve_service(service: AsrService | TtsService, settings: Settings) -> Listener:
    """Listen for Wyoming clients of one loaded service at its configured URI."""
    from .asr.handler import AsrHandler
    from .tts.handler import TtsHandler

    handlers: HandlerFactory
    if isinstance(service, AsrService):
        handlers = functools.partial(AsrHandler, service=service)
        uri = settings.asr_uri
    else:
        handlers = functools.partial(TtsHandler, service=service)
        uri = settings.tts_uri
    return await listen(uri, handlers, settings)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then close every listener."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        running = await start_services(settings)
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


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["plan"]:
        from .plan import plan_main

        sys.exit(plan_main(args[1:]))
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
