"""Property-based fuzzing of the event reader and of both servers' handlers (bounded)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wyoming.event import Event, async_write_event

from wyoming_opentalker.client import describe
from wyoming_opentalker.server import ProtocolError, read_event

from .conftest import Server, start_server

LIMIT = 64 * 1024
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


async def _read_all(data: bytes) -> int:
    reader = asyncio.StreamReader(limit=LIMIT + 1024)
    reader.feed_data(data)
    reader.feed_eof()
    count = 0
    while True:
        try:
            event = await read_event(reader, LIMIT)
        except ProtocolError:
            return count  # the only way bad input may end a stream
        if event is None:
            return count
        assert isinstance(event.type, str) and isinstance(event.data, dict)
        assert event.payload is None or len(event.payload) <= LIMIT
        count += 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=4096))
def test_reader_survives_any_bytes(data: bytes) -> None:
    asyncio.run(_read_all(data))


@st.composite
def framed(draw: st.DrawFn) -> bytes:
    """Mostly well-formed frames with hostile fields: lengths, types, data shapes."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        header: dict[str, object] = {"type": draw(st.sampled_from(["describe", "x", "", 5]))}
        body = json.dumps(draw(json_values)).encode()
        if draw(st.booleans()):
            header["data"] = draw(json_values)
        if draw(st.booleans()):
            header["data_length"] = draw(st.one_of(st.just(len(body)), json_values))
        payload = draw(st.binary(max_size=64))
        if draw(st.booleans()):
            header["payload_length"] = draw(st.one_of(st.just(len(payload)), json_values))
        out += json.dumps(header).encode() + b"\n" + body + payload
    return out


@settings(max_examples=400, deadline=None)
@given(framed())
def test_reader_survives_hostile_frames(data: bytes) -> None:
    asyncio.run(_read_all(data))


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("fuzz"), ("asr", "tts"), "--idle-timeout", "1")
    yield server
    assert server.stop() == 0, server.log_text()


EVENT_TYPES = [
    "describe",
    "transcribe",
    "audio-start",
    "audio-chunk",
    "audio-stop",
    "synthesize",
    "synthesize-start",
    "synthesize-chunk",
    "synthesize-stop",
    "error",
    "info",
    "ping",
]
FORMAT = st.fixed_dictionaries(
    {},
    optional={
        "rate": st.one_of(st.sampled_from([8000, 16000, 0, -1]), json_values),
        "width": st.one_of(st.sampled_from([1, 2, 3, 4, 5]), json_values),
        "channels": st.one_of(st.sampled_from([1, 2, 64]), json_values),
        "text": st.one_of(st.text(max_size=40), json_values),
        "language": st.one_of(st.sampled_from(["en", "zh", "auto", "xx"]), json_values),
        "voice": json_values,
    },
)
events = st.lists(
    st.builds(
        lambda t, d, p: Event(t, d, p),
        st.sampled_from(EVENT_TYPES),
        FORMAT,
        st.one_of(st.none(), st.binary(min_size=1, max_size=640)),
    ),
    min_size=1,
    max_size=6,
)


async def _send(port: int, batch: list[Event]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for event in batch:
            await async_write_event(event, writer)
        try:
            async with asyncio.timeout(0.3):
                while await reader.read(65536):
                    pass
        except (TimeoutError, ConnectionError):
            pass
    finally:
        writer.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=events, target=st.sampled_from(["asr", "tts"]))
def test_handlers_survive_random_event_sequences(
    fuzz_server: Server, batch: list[Event], target: str
) -> None:
    asyncio.run(_send(fuzz_server.ports[target], batch))
    assert fuzz_server.process.poll() is None
    asyncio.run(describe(fuzz_server.ports[target]))
