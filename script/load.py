"""Load test: N concurrent clients mixing ASR and TTS requests against one server process.

Starts the product (both servers) on loopback, warms it up, then for each concurrency
level runs a fixed number of requests, checks every answer against its own request
(ASR: the transcript of that clip; TTS: the length of that text's audio), and prints
throughput, latency percentiles, describe latency under load, errors and server RSS.

    .venv/bin/python script/load.py [--levels 1,4,16,64] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server  # noqa: E402
from tests.speech import corpus, normalize  # noqa: E402
from wyoming_opentalker.client import describe, synthesize, transcribe  # noqa: E402

TEXTS = [
    "Done.",
    "The kitchen lights are now on.",
    "It is twenty degrees in the living room and the windows are closed.",
    "Your timer has started. I will remind you in ten minutes. Anything else?",
]


@dataclass
class Level:
    clients: int
    latencies: list[float] = field(default_factory=list)
    describe: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # wrong, lost or failed answers
    busy: int = 0  # deliberate refusals past MAX_QUEUE_DEPTH (error code "busy")
    wall: float = 0.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def run_level(asr: int, tts: int, clients: int, total: int, refs: dict) -> Level:
    level = Level(clients)
    clips = [c for c in corpus() if c.set in ("cards", "goforward", "librivox")]
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        jobs.put_nowait(i)

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        while True:
            try:
                jobs.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.monotonic()
            try:
                if rng.random() < 0.5:
                    clip = rng.choice(clips)
                    pcm, rate, width, channels = clip.pcm()
                    text = (await transcribe(asr, pcm, rate, width, channels, "en")).text
                    if normalize(text) != refs[clip.name]:
                        level.errors.append(f"asr {clip.name}: got {text!r}")
                else:
                    sentence = rng.choice(TEXTS)
                    speech = await synthesize(tts, sentence)
                    expected = refs[sentence]
                    if speech.types == ["error"] and speech.events[-1].data.get("code") == "busy":
                        level.busy += 1
                    elif speech.types != ["audio-start", "audio-stop"] or not (
                        0.8 * expected <= speech.seconds <= 1.25 * expected
                    ):
                        level.errors.append(f"tts {sentence!r}: {speech.events[-1]}")
            except Exception as err:  # counted, never fatal to the run
                if "'code': 'busy'" in str(err):
                    level.busy += 1
                else:
                    level.errors.append(f"{type(err).__name__}: {err}")
            level.latencies.append(time.monotonic() - started)

    async def prober() -> None:
        while True:
            started = time.monotonic()
            await describe(asr)
            level.describe.append(time.monotonic() - started)
            await asyncio.sleep(0.2)

    probe = asyncio.create_task(prober())
    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(clients)))
    level.wall = time.monotonic() - started
    probe.cancel()
    return level


async def references(asr: int, tts: int) -> dict:
    """What each request should get back, measured once, unloaded."""
    refs: dict = {}
    for clip in corpus():
        pcm, rate, width, channels = clip.pcm()
        refs[clip.name] = normalize((await transcribe(asr, pcm, rate, width, channels, "en")).text)
    for text in TEXTS:
        refs[text] = statistics.median([(await synthesize(tts, text)).seconds for _ in range(3)])
    return refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--requests", type=int, default=1000, help="requests per level")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), ("asr", "tts"), "--max-connections", "256")
        try:
            process = psutil.Process(server.process.pid)
            refs = asyncio.run(references(server.asr, server.tts))
            rss_before = process.memory_info().rss
            levels = []
            for clients in (int(n) for n in args.levels.split(",")):
                level = asyncio.run(run_level(server.asr, server.tts, clients, args.requests, refs))
                level_rss = process.memory_info().rss
                levels.append((level, level_rss))
        finally:
            server.stop()
    print(
        f"{'clients':>7} {'requests':>8} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
        f"{'describe p95 ms':>15} {'busy':>5} {'wrong/lost':>10} {'RSS MiB':>8}"
    )
    for level, rss in levels:
        print(
            f"{level.clients:>7} {len(level.latencies):>8} "
            f"{len(level.latencies) / level.wall:>7.2f} "
            f"{percentile(level.latencies, 0.5):>7.3f} {percentile(level.latencies, 0.95):>7.3f} "
            f"{percentile(level.latencies, 0.99):>7.3f} "
            f"{percentile(level.describe, 0.95) * 1000:>15.1f} {level.busy:>5} "
            f"{len(level.errors):>10} "
            f"{rss / 2**20:>8.0f}"
        )
        for error in level.errors[:5]:
            print(f"    {error}")
    print(f"server RSS before the load: {rss_before / 2**20:.0f} MiB")
    print("Every answer was checked against its own request (ASR text, TTS audio length);")
    print("busy: refused with error code 'busy' past MAX_QUEUE_DEPTH (32), by design.")


if __name__ == "__main__":
    main()
