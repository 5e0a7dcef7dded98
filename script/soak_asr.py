#!/usr/bin/env python3
"""Memory over many ASR requests: the server's RSS every N requests, to show it stays flat.

Starts the product's ASR server (the CPU default, faster-whisper with the packaged model)
on 127.0.0.1, sends ``--requests`` Wyoming transcriptions of one short real-speech clip,
four clients at a time, and prints the server's resident memory as it goes. Anything the
service keeps per request (it once kept the size of every batch) shows as a slope.

    .venv/bin/python script/soak_asr.py [--requests 2000] [--every 250]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server  # noqa: E402
from tests.speech import corpus  # noqa: E402
from wyoming_opentalker.client import transcribe  # noqa: E402

CLIENTS = 4


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def soak(
    port: int, pid: int, audio: tuple[bytes, int, int, int], requests: int, every: int
) -> list[tuple[int, float]]:
    samples = [(0, rss_mib(pid))]
    sent = done = 0
    started = time.monotonic()

    async def client() -> None:
        nonlocal sent, done
        while sent < requests:
            sent += 1
            pcm, rate, width, channels = audio
            result = await transcribe(port, pcm, rate, width, channels, language="en")
            if result.event.type != "transcript":
                raise RuntimeError(f"request {sent} failed: {result.event.data}")
            done += 1
            if done % every == 0:
                samples.append((done, rss_mib(pid)))
                print(
                    f"{done:>6} requests  RSS {samples[-1][1]:7.1f} MiB  "
                    f"({time.monotonic() - started:.0f} s)",
                    flush=True,
                )

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--every", type=int, default=250)
    args = parser.parse_args()
    clip = min(corpus(), key=lambda c: c.seconds())
    pcm, rate, width, channels = clip.pcm()
    print(f"clip {clip.name}: {clip.seconds():.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), ("asr",))
        try:
            warm = asyncio.run(
                soak(server.asr, server.process.pid, (pcm, rate, width, channels), 20, 20)
            )
            print(f"after 20 warm-up requests: RSS {warm[-1][1]:.1f} MiB")
            samples = asyncio.run(
                soak(
                    server.asr,
                    server.process.pid,
                    (pcm, rate, width, channels),
                    args.requests,
                    args.every,
                )
            )
        finally:
            server.stop()
    (start, first), (end, last) = samples[1], samples[-1]
    per_request = (last - first) * 1024 / max(1, end - start)
    print(
        f"RSS from request {start} to {end}: {first:.1f} -> {last:.1f} MiB "
        f"({last - first:+.1f} MiB, {per_request:+.2f} KiB per request)"
    )


if __name__ == "__main__":
    main()
