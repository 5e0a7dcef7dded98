"""The same requests over Wyoming and over the OpenAI-style HTTP API, one server process.

Both protocols reach the same loaded models, so the difference is the protocol's own
cost: multipart upload + file decoding for speech-to-text, chunked HTTP + encoding for
text-to-speech. Interleaved rounds; median (min-max).

    .venv/bin/python script/bench_http.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from script.bench import SENTENCES, _pcm, _start  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.speech import wav_bytes  # noqa: E402
from wyoming_opentalker.client import synthesize, transcribe  # noqa: E402

Timing = tuple[float, float]  # (first byte or answer, total), seconds from the start


async def wyoming_asr(port: int, pcm: bytes) -> Timing:
    started = time.monotonic()
    await transcribe(port, pcm, language="en")
    total = time.monotonic() - started
    return total, total


async def http_asr(session: aiohttp.ClientSession, url: str, wav: bytes) -> Timing:
    form = aiohttp.FormData()
    form.add_field("file", wav, filename="speech.wav", content_type="audio/wav")
    form.add_field("model", "whisper-1")
    form.add_field("language", "en")
    started = time.monotonic()
    async with session.post(f"{url}/v1/audio/transcriptions", data=form) as response:
        await response.read()
        response.raise_for_status()
    total = time.monotonic() - started
    return total, total


async def wyoming_tts(port: int, text: str) -> Timing:
    result = await synthesize(port, text)
    assert result.first_chunk_at is not None
    return result.first_chunk_at, result.done_at


async def http_tts(session: aiohttp.ClientSession, url: str, text: str, fmt: str) -> Timing:
    started = time.monotonic()
    first = None
    body = {"model": "tts-1", "input": text, "voice": "alloy", "response_format": fmt}
    async with session.post(f"{url}/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        async for _ in response.content.iter_any():
            if first is None:
                first = time.monotonic() - started
    assert first is not None
    return first, time.monotonic() - started


async def measure(ports: dict[str, int], rounds: int) -> dict[str, list[Timing]]:
    url = f"http://127.0.0.1:{ports['http']}"
    speech = _pcm(10)
    wav = wav_bytes(speech)
    text = " ".join(SENTENCES)
    async with aiohttp.ClientSession() as session:
        cases: dict[str, Callable[[], Awaitable[Timing]]] = {
            "ASR 10 s speech, Wyoming": lambda: wyoming_asr(ports["asr"], speech),
            "ASR 10 s speech, HTTP wav upload": lambda: http_asr(session, url, wav),
            "TTS 5 sentences, Wyoming": lambda: wyoming_tts(ports["tts"], text),
            "TTS 5 sentences, HTTP pcm": lambda: http_tts(session, url, text, "pcm"),
            "TTS 5 sentences, HTTP mp3": lambda: http_tts(session, url, text, "mp3"),
        }
        for run in cases.values():  # warm-up
            await run()
        samples: dict[str, list[Timing]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, run in cases.items():
                samples[name].append(await run())
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    ports = {"asr": free_port(), "tts": free_port(), "http": free_port()}
    argv = [
        sys.executable,
        "-m",
        "wyoming_opentalker",
        f"--asr-uri=tcp://127.0.0.1:{ports['asr']}",
        f"--tts-uri=tcp://127.0.0.1:{ports['tts']}",
        "--http",
        "--http-host=127.0.0.1",
        f"--http-port={ports['http']}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        proc = _start("opentalker", argv, ports, Path(tmp))
        try:
            samples = asyncio.run(measure(ports, args.rounds))
        finally:
            proc.stop()

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    print(f"{'request':<34} {'first byte / answer (s)':>24} {'total (s)':>22}")
    print("-" * 82)
    for name, timings in samples.items():
        firsts = [first for first, _ in timings]
        totals = [total for _, total in timings]
        print(f"{name:<34} {cell(firsts):>24} {cell(totals):>22}")
    print(f"{args.rounds} interleaved rounds after one warm-up; median (min-max).")


if __name__ == "__main__":
    main()
