"""``wyoming-opentalker [all|asr|tts]``: load the engines and serve Wyoming."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
import time
from collections.abc import Sequence

from .device import resolve_device
from .engine import EngineError
from .models import ModelError
from .server import HandlerFactory, Listener, listen
from .settings import Settings, SettingsError, describe_settings, load_settings

_LOGGER = logging.getLogger("wyoming_opentalker")


class StartupError(RuntimeError):
    """Anything that stops the program before it serves; printed as one line."""


async def start_services(settings: Settings) -> list[Listener]:
    """Load the configured engines (off the event loop) and start listening."""
    device = await asyncio.to_thread(resolve_device, settings.device)  # may run nvidia-smi
    listeners: list[Listener] = []
    try:
        for kind in settings.services:
            listeners.append(await _start(kind, settings, device))
    except BaseException:
        for listener in listeners:
            await listener.close()
        raise
    return listeners


async def _start(kind: str, settings: Settings, device: str) -> Listener:
    """Load one service's engine on a worker thread, then serve it."""
    from .asr import AsrService, load_asr_engine
    from .asr.handler import AsrHandler
    from .tts import TtsService, load_tts_engine
    from .tts.handler import TtsHandler

    started = time.monotonic()
    factory: HandlerFactory
    if kind == "asr":
        asr_engine = await asyncio.to_thread(load_asr_engine, settings, device)
        info = asr_engine.info
        factory = functools.partial(AsrHandler, service=AsrService(asr_engine, settings))
    else:
        tts_engine = await asyncio.to_thread(load_tts_engine, settings, device)
        info = tts_engine.info
        factory = functools.partial(TtsHandler, service=TtsService(tts_engine, settings))
    _LOGGER.info("%s ready in %.1f s: %s", kind.upper(), time.monotonic() - started, info.summary())
    uri = settings.asr_uri if kind == "asr" else settings.tts_uri
    return await listen(uri, factory, settings)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then close every listener."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        listeners = await start_services(settings)
    except (ModelError, EngineError, OSError, ValueError, ImportError) as err:
        raise StartupError(_one_line(err)) from err
    _LOGGER.info("Serving: %s", ", ".join(listener.uri for listener in listeners))
    await stop.wait()
    _LOGGER.info("Shutting down (up to %gs for requests in progress)", settings.shutdown_grace)
    await asyncio.gather(*(listener.close(settings.shutdown_grace) for listener in listeners))


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def main(argv: Sequence[str] | None = None) -> None:
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
