"""The transcript is ready when the speaker stops: real speech streamed in real time (10 ms
chunks, as Home Assistant's microphone sends it) to real servers over TCP.

Timings are not asserted here (the benchmark ``script/bench_latency.py`` measures them);
these tests check what each decision does: the decode started during the pause is the
answer, speech after a pause is never lost, the server's own end of a command follows
the rules, and every request has exactly one outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from wyoming_opentalker.asr.service import AsrService
from wyoming_opentalker.client import (
    Connection,
    describe,
    stream_live,
    transcribe,
    transcribe_live,
)
from wyoming_opentalker.engine import AsrRequest
from wyoming_opentalker.settings import Settings

from .conftest import Server, start_server
from .speech import LiveCommand, corpus, live_command, normalize, room_noise, wer

CLIPS = {clip.name: clip for clip in corpus()}
GOFORWARD = live_command([CLIPS["goforward"]])
CARDS = live_command([CLIPS["005"]], seed=1)
SENTENCE = live_command([CLIPS["sense_and_sensibility_01_austen_64kb-0880"]], seed=2)
# Two-part commands: "ten of clubs ... go forward ten meters" with a pause inside.
TWO_PART = live_command([CLIPS["001"], CLIPS["goforward"]], pause=0.5, seed=3)
LONG_PAUSE = live_command([CLIPS["001"], CLIPS["goforward"]], pause=1.0, seed=4)
LONGER_PAUSE = live_command([CLIPS["001"], CLIPS["goforward"]], pause=1.5, seed=6)


@pytest.fixture(scope="module")
def speculating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Decodes during pauses, leaves the end of commands to the client (HA < 2026.10)."""
    server = start_server(tmp_path_factory.mktemp("speculating"), ("asr",), "--no-asr-endpointing")
    yield server
    assert server.stop() == 0, server.log_text()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Speculation and endpointing off: decodes at audio-stop only."""
    server = start_server(
        tmp_path_factory.mktemp("plain"), ("asr",), "--no-asr-speculate", "--no-asr-endpointing"
    )
    yield server
    assert server.stop() == 0, server.log_text()


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Endpointing with short limits: no speech within 2 s, commands of at most 4 s."""
    server = start_server(
        tmp_path_factory.mktemp("quick"),
        ("asr",),
        ASR_NO_SPEECH_SECONDS="2",
        ASR_MAX_COMMAND_SECONDS="4",
    )
    yield server
    assert server.stop() == 0, server.log_text()


def _words(text: str) -> list[str]:
    return normalize(text).split()


async def test_info_says_who_ends_commands(
    server: Server, speculating: Server, plain: Server
) -> None:
    assert (await describe(server.asr)).asr[0].requires_external_vad is False
    assert (await describe(speculating.asr)).asr[0].requires_external_vad is True
    assert (await describe(plain.asr)).asr[0].requires_external_vad is True


async def test_the_pause_decode_is_the_answer_word_for_word(
    speculating: Server, plain: Server
) -> None:
    for command in (GOFORWARD, CARDS, SENTENCE):
        before = speculating.log_text().count("decoded during the pause")
        # Home Assistant's default VAD: audio-stop 0.7 s after the speech ends.
        live = await transcribe_live(
            speculating.asr, command.pcm, stop_after=command.speech_end + 0.7
        )
        assert len(live.answers) == 1, live.events
        assert speculating.log_text().count("decoded during the pause") == before + 1
        reference = await transcribe(plain.asr, command.pcm[: len(live_pcm(command, 0.7))])
        assert live.text == reference.text, command.name
        assert wer([command.reference], [live.text]) <= 0.25, (command.reference, live.text)


def live_pcm(command: LiveCommand, after_end: float) -> bytes:
    return command.pcm[: int((command.speech_end + after_end) * 16000) * 2]


async def test_speech_after_a_pause_is_not_lost(speculating: Server) -> None:
    # The 0.5 s pause starts a decode of "ten of clubs"; the speech that follows drops it.
    live = await transcribe_live(
        speculating.asr, TWO_PART.pcm, stop_after=TWO_PART.speech_end + 0.7
    )
    assert len(live.answers) == 1
    words = _words(live.text)
    assert words[:3] == ["ten", "of", "clubs"] and words[-3:] == ["forward", "ten", "meters"]


async def test_the_server_ends_the_command_and_the_client_stops_sending(server: Server) -> None:
    live = await transcribe_live(server.asr, GOFORWARD.pcm, until_answer=True)
    assert live.stop_at is None  # Home Assistant 2026.10 sends no audio-stop then
    assert live.sent_seconds < GOFORWARD.seconds - 0.3  # answered before the audio ran out
    assert _words(live.text) == ["go", "forward", "ten", "meters"]
    assert len(live.answers) == 1


async def test_a_client_that_keeps_sending_gets_one_outcome_per_request(server: Server) -> None:
    async with Connection(server.asr) as conn:
        first = await stream_live(conn, GOFORWARD.pcm, linger=1.0)  # all audio, then audio-stop
        assert [e.type for _, e in first.answers] == ["transcript"]
        assert first.stop_at is not None and first.answer_at < first.stop_at  # answered early
        second = await stream_live(conn, CARDS.pcm, linger=1.0)  # the same connection again
    assert [e.type for _, e in second.answers] == ["transcript"]
    assert _words(first.text) == ["go", "forward", "ten", "meters"]
    assert wer([CARDS.reference], [second.text]) <= 0.25


async def test_a_half_second_pause_is_not_the_end(server: Server) -> None:
    live = await transcribe_live(server.asr, TWO_PART.pcm, until_answer=True)
    words = _words(live.text)
    assert words[:3] == ["ten", "of", "clubs"] and words[-3:] == ["forward", "ten", "meters"]


async def test_vad_sensitivity_from_the_client_is_honoured(server: Server) -> None:
    aggressive = await transcribe_live(
        server.asr, TWO_PART.pcm, until_answer=True, vad_sensitivity="aggressive"
    )
    assert _words(aggressive.text) == ["ten", "of", "clubs"]  # 0.25 s: the pause ends it
    relaxed = await transcribe_live(
        server.asr, LONG_PAUSE.pcm, until_answer=True, vad_sensitivity="relaxed"
    )
    assert _words(relaxed.text)[-3:] == ["forward", "ten", "meters"]  # 1.25 s: 1 s is a pause
    default = await transcribe_live(server.asr, LONGER_PAUSE.pcm, until_answer=True)
    assert _words(default.text) == ["ten", "of", "clubs"]  # 0.9 s: a 1.5 s pause ends it


async def test_no_speech_gives_an_empty_transcript(quick: Server) -> None:
    noise = room_noise(4.0, -50.0, seed=7)
    pcm = (noise * 32767).astype("<i2").tobytes()
    live = await transcribe_live(quick.asr, pcm, until_answer=True)
    assert live.text == "" and len(live.answers) == 1
    assert live.sent_seconds < 3.0  # ended at the 2 s limit, not by the client


async def test_a_command_that_never_pauses_ends_at_the_limit(quick: Server) -> None:
    sentence = live_command([CLIPS["sense_and_sensibility_01_austen_64kb-0870"]])  # 7 s
    live = await transcribe_live(
        quick.asr, sentence.pcm, until_answer=True, vad_sensitivity="relaxed"
    )
    assert live.sent_seconds < 5.0
    words = _words(live.text)
    assert 3 <= len(words) < len(sentence.reference.split()), live.text
    assert "dashwood" in words[:4] and "leisure" in words  # its first half


async def test_an_upload_faster_than_real_time_is_never_cut_at_a_pause(server: Server) -> None:
    for pause in (1.0, 2.5):  # pauses that would end a live command
        command = live_command([CLIPS["001"], CLIPS["goforward"]], pause=pause, seed=5)
        result = await transcribe(server.asr, command.pcm)
        words = _words(result.text)
        assert words[:3] == ["ten", "of", "clubs"] and words[-2:] == ["ten", "meters"], pause


async def test_a_stream_that_stalls_is_answered(server: Server) -> None:
    # Speech, then nothing: no trailing audio, no audio-stop (a hub that stalls).
    speech_only = GOFORWARD.pcm[: int((GOFORWARD.speech_end + 0.05) * 16000) * 2]
    live = await transcribe_live(server.asr, speech_only, send_stop=False)
    assert _words(live.text) == ["go", "forward", "ten", "meters"]
    assert live.answer_at - live.started_at < GOFORWARD.speech_end + 5.0


async def test_a_client_leaving_during_the_pause_decode(speculating: Server) -> None:
    log_before = speculating.log_text().count("Transcribed")
    conn = Connection(speculating.asr)
    await conn.__aenter__()
    partial = live_pcm(GOFORWARD, 0.4)  # the pause decode has started
    task = asyncio.create_task(stream_live(conn, partial, send_stop=False, linger=0))
    await asyncio.sleep(len(partial) / 32000 + 0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    conn.writer.transport.abort()  # gone, without a goodbye
    await asyncio.sleep(1.0)
    # Nothing was answered for it, and the server serves the next client as before.
    live = await transcribe_live(speculating.asr, CARDS.pcm, stop_after=CARDS.speech_end + 0.7)
    assert wer([CARDS.reference], [live.text]) <= 0.25
    assert speculating.log_text().count("Transcribed") == log_before + 1


async def test_ended_requests_go_before_speculation_and_busy_engines_skip_it() -> None:
    """The service's queue, on the real faster-whisper engine in this process."""
    from wyoming_opentalker.__main__ import start_asr

    service: AsrService = await start_asr(Settings(services=("asr",)), "cpu")
    try:
        audio = np.frombuffer(GOFORWARD.pcm, dtype="<i2").astype(np.float32) / 32768
        long = np.tile(audio, 8)  # ~50 s: a few seconds of decoding
        running = asyncio.create_task(service.transcribe(AsrRequest(long, "en")))
        for _ in range(1000):  # until the worker has it
            if not service.idle:
                break
            await asyncio.sleep(0.01)
        assert service.speculate(AsrRequest(audio, "en")) is None  # busy: skipped
        await running
        assert service.idle
        guess = service.speculate(AsrRequest(audio, "en"))
        assert guess is not None
        final = asyncio.create_task(service.transcribe(AsrRequest(audio[:16000], "en")))
        await guess
        assert final.done()  # queued after the guess, decoded before it
        await final
        served = service.requests_served
        assert served == 2  # the two ended requests; the guess is counted only if used
    finally:
        await service.close()


@pytest.fixture(scope="module")
def qwen_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """The tiny random-weight Qwen3-ASR, with speculation on and off."""
    from tests.qwen_models import build_qwen3_asr

    model = build_qwen3_asr(tmp_path_factory.mktemp("qwen3-asr") / "Qwen3-ASR-tiny")
    flags = ("--asr-engine", "qwen3-asr", "--qwen-asr-runtime", "torch", "--asr-model", str(model))
    flags += ("--qwen-asr-max-new-tokens", "8", "--no-asr-endpointing")
    on = start_server(tmp_path_factory.mktemp("qwen-on"), ("asr",), *flags)
    off = start_server(tmp_path_factory.mktemp("qwen-off"), ("asr",), *flags, "--no-asr-speculate")
    yield on, off
    assert on.stop() == 0, on.log_text()
    assert off.stop() == 0, off.log_text()


async def test_qwen3_asr_answers_from_the_pause_decode_word_for_word(
    qwen_pair: tuple[Server, Server],
) -> None:
    # Random weights write gibberish, but deterministic gibberish: the pause decode must
    # be exactly what a decode at audio-stop gives for the same request.
    on, off = qwen_pair
    for command in (GOFORWARD, TWO_PART):
        stop = command.speech_end + 0.7
        before = on.log_text().count("decoded during the pause")
        early = await transcribe_live(on.asr, command.pcm, stop_after=stop, language="en")
        late = await transcribe_live(off.asr, command.pcm, stop_after=stop, language="en")
        assert len(early.answers) == len(late.answers) == 1
        assert early.text == late.text
        assert on.log_text().count("decoded during the pause") == before + 1
    assert "decoded during the pause" not in off.log_text()
