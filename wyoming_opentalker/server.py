"""The Wyoming connection layer shared by the ASR and TTS servers.

``wyoming``'s own reader trusts the peer: a header announcing a 4 GB payload makes it
try to read 4 GB, and a malformed header ends the connection without a word. Here every
event is read with limits and checked, a bad one gets an ``error`` event with a reason,
and no exception in one connection can reach another or the server.

A request that fails gets exactly one ``error`` and then the connection is closed. Most
clients ignore ``error`` and wait for ``audio-stop`` or ``transcript``; the close tells them
at once that nothing more is coming, and nothing more (a transcript, more errors) is sent
for that request. Home Assistant opens a connection per request, so it loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Describe

from .engine import EngineError
from .settings import Settings

_LOGGER = logging.getLogger(__name__)
# How long a connection closed after an error keeps discarding the client's input.
LINGER_SECONDS = 3.0
T = TypeVar("T")


class ProtocolError(ValueError):
    """The peer sent something that is not a valid Wyoming event."""

    def __init__(self, text: str, code: str = "bad-event") -> None:
        super().__init__(text)
        self.code = code


async def read_event(reader: asyncio.StreamReader, max_bytes: int) -> Event | None:
    """Read one event, or ``None`` at a clean end of stream. Raises ``ProtocolError``."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as err:
        if err.partial.strip():
            raise ProtocolError("connection closed in the middle of an event header") from None
        return None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"event header is longer than {max_bytes} bytes", "too-large") from None
    if not line.strip():
        raise ProtocolError("empty event header")
    try:
        header = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("event header is not valid JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("event header must be a JSON object with a string 'type'")

    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError("event 'data' must be a JSON object")
    data_length = _length(header, "data_length", max_bytes)
    payload_length = _length(header, "payload_length", max_bytes)
    try:
        if data_length:
            extra = json.loads(await reader.readexactly(data_length))
            if not isinstance(extra, dict):
                raise ProtocolError("event data must be a JSON object")
            data.update(extra)
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed in the middle of an event") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("event data is not valid UTF-8 JSON") from None
    return Event(type=header["type"], data=data, payload=payload)


def _length(header: dict[str, Any], key: str, max_bytes: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"event '{key}' must be a non-negative integer")
    if value > max_bytes:
        raise ProtocolError(
            f"event {key} {value} is larger than the {max_bytes}-byte limit", "too-large"
        )
    return value


class Handler(ABC):
    """One client connection: reads events, answers ``describe``, dispatches the rest."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info_event: Event,
        settings: Settings,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._info_event = info_event
        self.settings = settings
        self.peer = str(writer.get_extra_info("peername") or "local")
        self._failed = asyncio.Event()  # a request failed: close after its one error

    async def run(self) -> None:
        limit = self.settings.max_event_bytes
        try:
            while True:
                try:
                    event = await self._next_event(limit)
                except TimeoutError:
                    _LOGGER.info("Closing %s: idle for %gs", self.peer, self.settings.idle_timeout)
                    await self.send_error(
                        f"no complete event for {self.settings.idle_timeout:g} s; closing",
                        "timeout",
                    )
                    await self._linger()
                    break
                except ProtocolError as err:
                    _LOGGER.warning("Bad input from %s: %s", self.peer, err)
                    await self.send_error(str(err), err.code)
                    await self._linger()  # the stream cannot be trusted any more
                    break
                if self._failed.is_set():
                    await self._linger()
                    break
                if event is None:
                    break
                if Describe.is_type(event.type):
                    await self.write_event(self._info_event)
                    continue
                if not await self._dispatch(event) or self._failed.is_set():
                    await self._linger()
                    break
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            _LOGGER.debug("Client %s went away", self.peer)
        finally:
            await self.disconnected()
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()

    async def _next_event(self, limit: int) -> Event | None:
        """The next event; ``None`` at the end of input or as soon as a request fails in
        a background task (a speaking stream), which must not wait for the client's next
        event to close. Raises ``TimeoutError`` after the idle timeout."""
        if self._failed.is_set():
            return None
        read = asyncio.ensure_future(read_event(self.reader, limit))
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            async with asyncio.timeout(self.settings.idle_timeout):
                await asyncio.wait({read, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (read, failed):
                if not task.done():
                    task.cancel()
            await asyncio.gather(read, failed, return_exceptions=True)
        if self._failed.is_set() or read.cancelled():
            return None
        return read.result()

    async def _dispatch(self, event: Event) -> bool:
        try:
            return await self.handle_event(event)
        except EngineError as err:
            _LOGGER.warning("Request from %s failed: %s", self.peer, err)
            await self.fail(str(err), err.code)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:
            _LOGGER.exception("Unexpected error handling %s from %s", event.type, self.peer)
            await self.fail(f"internal error: {type(err).__name__}: {err}", "internal")
        return False

    async def fail(self, text: str, code: str) -> None:
        """End the current request with its one ``error``; the connection then closes.
        Later failures of the same request (a stream task and the main loop both
        noticing) send nothing more."""
        if self._failed.is_set():
            return
        self._failed.set()
        await self.send_error(text, code)

    async def _linger(self) -> None:
        """Close politely after an error: send FIN, then discard what the client is
        still sending. Closing with unread input makes the kernel send a reset, which
        can destroy the error event before the client reads it.
        """
        with contextlib.suppress(OSError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_SECONDS
        with contextlib.suppress(OSError, TimeoutError, asyncio.LimitOverrunError):
            while (remaining := deadline - loop.time()) > 0:
                if not await asyncio.wait_for(self.reader.read(1 << 16), remaining):
                    break

    @abstractmethod
    async def handle_event(self, event: Event) -> bool:
        """Handle one event; return False to close the connection."""

    async def disconnected(self) -> None:  # noqa: B027 - optional hook
        """Called once when the connection ends, for whatever reason."""

    async def write_event(self, event: Event) -> None:
        """Send one event; a client that reads nothing for the idle timeout is dropped."""
        try:
            async with asyncio.timeout(self.settings.idle_timeout):
                await async_write_event(event, self.writer)
        except TimeoutError:
            self.writer.transport.abort()
            raise ConnectionResetError(f"{self.peer} stopped reading") from None

    def client_gone(self) -> bool:
        """True once the connection was reset. A plain end of input (FIN) is not enough:
        a client may half-close after its request and still read the answer; a client
        that really left is noticed at the next write instead."""
        return self.reader.exception() is not None

    async def unless_client_leaves(self, work: Awaitable[T]) -> T:
        """Await ``work``, cancelling it if the client disconnects meanwhile, so a request
        nobody waits for stops holding its engine slot and memory."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.05)
                if done:
                    return task.result()
                if self.client_gone():
                    raise ConnectionResetError(f"{self.peer} left before the answer")
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def send_error(self, text: str, code: str) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.write_event(Error(text=text, code=code).event())


HandlerFactory = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Handler]


@dataclass
class Listener:
    """A running server socket and its connections."""

    uri: str
    server: asyncio.Server
    connections: set[asyncio.Task[None]]

    @property
    def port(self) -> int | None:
        for sock in self.server.sockets:
            addr = sock.getsockname()
            if isinstance(addr, tuple):
                return int(addr[1])
        return None

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting, give requests in progress ``grace`` seconds, cancel the rest."""
        self.server.close()
        if grace > 0 and self.connections:
            await asyncio.wait(set(self.connections), timeout=grace)
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.server.wait_closed()
        parsed = urlparse(self.uri)
        if parsed.scheme == "unix":
            await asyncio.to_thread(Path(parsed.path).unlink, missing_ok=True)


async def listen(uri: str, factory: HandlerFactory, settings: Settings) -> Listener:
    """Start accepting connections on ``tcp://host:port`` or ``unix://path``."""
    connections: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(connections) >= settings.max_connections:
            _LOGGER.warning("Refusing a connection: %d already open", len(connections))
            with contextlib.suppress(ConnectionError, OSError):
                text = f"server busy: {settings.max_connections} connections open"
                await async_write_event(Error(text=text, code="busy").event(), writer)
                writer.close()
            return
        connections.add(task)
        try:
            await factory(reader, writer).run()
        finally:
            connections.discard(task)

    parsed = urlparse(uri)
    limit = settings.max_event_bytes + 1024
    server: asyncio.Server
    if parsed.scheme == "unix":
        path = Path(parsed.path)
        await asyncio.to_thread(path.unlink, missing_ok=True)
        server = await asyncio.start_unix_server(on_connect, path=str(path), limit=limit)
    else:
        server = await asyncio.start_server(
            on_connect, host=parsed.hostname, port=parsed.port, limit=limit
        )
    listener = Listener(uri, server, connections)
    _LOGGER.info("Listening on %s", uri)
    return listener
