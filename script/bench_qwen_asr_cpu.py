"""Qwen3-ASR without a GPU: every CPU candidate in one run, on the full-size 0.6B shapes.

Builds (once, in ``--work``) a random-weight checkpoint with the released model's
config values (real weights cannot be downloaded here; speed and memory do not depend
on the values), converts it to each ONNX variant through the product's own
``convert-qwen3-asr`` (time and peak memory of the conversion), then measures each
candidate in a fresh child process through the product's own engine:

* 5 s of real speech answered with exactly 24 new tokens (min of ``--rounds``), and the
  ratio to FP32 PyTorch measured in the same run;
* 30 s of speech (the longest piece), to compare with real time;
* the same 5 s request while another process keeps one core busy (``--busy``);
* peak RSS of the child (the engine, its runtime and the requests).

``--server`` also starts the real ASR server with the default ONNX model and reports its
peak RSS after a 5 s and a 30 s request over Wyoming.

    PYTHONPATH=. .venv/bin/python script/bench_qwen_asr_cpu.py --busy --server
    PYTHONPATH=. .venv/bin/python script/bench_qwen_asr_cpu.py --size tiny --rounds 1  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1024**3
TORCH = ("torch-fp32", "torch-bf16", "torch-int8-dynamic")
ONNX = ("onnx-int8-int4", "onnx-int8", "onnx-int4")
NEW_TOKENS = 24


def speech(seconds: float) -> Any:
    """``seconds`` of real read speech (LibriVox clips from pocketsphinx, joined)."""
    import numpy as np

    from tests.speech import corpus, samples_16k

    joined = np.concatenate([samples_16k(clip) for clip in corpus()])
    return joined[: int(seconds * 16000)].copy()


def child(candidate: str, model: str, rounds: int, threads: int | None) -> dict[str, Any]:
    """One candidate measured in this (fresh) process."""
    import resource
    from dataclasses import replace

    from wyoming_opentalker.device import CPU
    from wyoming_opentalker.engine import AsrRequest
    from wyoming_opentalker.settings import load_settings

    settings = load_settings(
        ["asr", "--asr-model", model, "--qwen-asr-max-new-tokens", str(NEW_TOKENS)]
    )
    if threads:
        settings = replace(settings, qwen_asr_threads=threads)
    started = time.monotonic()
    engine: Any
    if candidate.startswith("onnx"):
        from wyoming_opentalker.asr.qwen3_asr_onnx import Qwen3AsrOnnxEngine

        engine = Qwen3AsrOnnxEngine.load(settings, CPU)
        engine._model.eos = set()  # exactly NEW_TOKENS tokens, whatever the noise says
    else:
        import torch

        from wyoming_opentalker.asr.qwen3_asr import Qwen3AsrEngine

        if threads:
            torch.set_num_threads(threads)
        dtype = {"torch-bf16": "bfloat16"}.get(candidate, "float32")
        engine = Qwen3AsrEngine.load(replace(settings, asr_dtype=dtype), CPU)
        if candidate == "torch-int8-dynamic":
            import warnings

            warnings.simplefilter("ignore")
            thinker = engine._model.model.thinker
            torch.ao.quantization.quantize_dynamic(
                thinker, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
            )
    loaded = time.monotonic() - started
    rss_loaded = _rss()
    short = [AsrRequest(speech(5.0), language="en")]
    engine.transcribe(short)  # warm-up
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        engine.transcribe(short)
        times.append(time.monotonic() - started)
    result: dict[str, Any] = {"load_s": loaded, "five_s": min(times), "rss_loaded": rss_loaded}
    if os.environ.get("BENCH_BUSY") == "1":
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)
            engine.transcribe(short)
            busy_times = []
            for _ in range(rounds):
                started = time.monotonic()
                engine.transcribe(short)
                busy_times.append(time.monotonic() - started)
            result["busy_five_s"] = min(busy_times)
        finally:
            busy.kill()
            busy.wait()
    long = [AsrRequest(speech(30.0), language="en")]
    started = time.monotonic()
    engine.transcribe(long)
    result["thirty_s"] = time.monotonic() - started
    result["rss_peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def _rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[int, float, int]:
    """Run ``command``; its exit status, wall time and peak RSS (its own ``wait4``)."""
    started = time.monotonic()
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.monotonic() - started, usage.ru_maxrss * 1024


def convert(checkpoint: Path, target: Path, quant: str) -> dict[str, Any]:
    if (target / "manifest.json").exists():
        return {"reused": True}
    code, wall, peak = measured(
        [
            sys.executable,
            "-m",
            "wyoming_opentalker",
            "convert-qwen3-asr",
            "--model",
            str(checkpoint),
            "--output",
            str(target),
            "--quant",
            quant,
        ]
    )
    if code != 0:
        raise SystemExit(f"conversion {quant} failed ({code})")
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return {"wall_s": wall, "peak_rss": peak, "bytes": size}


def server_rss(model: Path, work: Path) -> dict[str, Any]:
    """The real ASR server with ``model`` loaded: peak RSS after 5 s and 30 s requests."""
    import asyncio

    from tests.conftest import start_server
    from wyoming_opentalker.client import transcribe

    (work / "server").mkdir(exist_ok=True)
    server = start_server(
        work / "server", ("asr",), "--asr-engine", "qwen3-asr", "--asr-model", str(model)
    )
    try:
        pid = server.process.pid
        result = {"rss_loaded": _status_of(pid, "VmRSS")}
        # Random weights never stop: each answer runs to its cap (a 30 s piece: 332 tokens,
        # about three times what 30 s of real speech says), so the 30 s peak is a worst case.
        for seconds, key in ((5.0, "rss_peak_5s"), (30.0, "rss_peak")):
            audio = speech(seconds)
            pcm = (audio * 32767).astype("<i2").tobytes()
            asyncio.run(transcribe(server.asr, pcm, language="en"))
            result[key] = _status_of(pid, "VmHWM")
        return result
    finally:
        server.stop()


def _status_of(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/qwen-asr-cpu"))
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--candidates", default=",".join(TORCH + ONNX))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--busy", action="store_true", help="also measure beside a busy core")
    parser.add_argument("--server", action="store_true", help="also the real server's RSS")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.model, args.rounds, args.threads)))
        return

    from tests.qwen_models import build_qwen3_asr

    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.work / f"Qwen3-ASR-{args.size}"
    if not (checkpoint / "config.json").exists():
        print(f"building the random {args.size} checkpoint in {checkpoint}", flush=True)
        build_qwen3_asr(checkpoint, args.size)
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    conversions: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for candidate in candidates:
        model = checkpoint
        if candidate.startswith("onnx"):
            quant = candidate.removeprefix("onnx-")
            model = args.work / f"onnx-{quant}"
            conversions[quant] = convert(checkpoint, model, quant)
        env = dict(os.environ, BENCH_BUSY="1" if args.busy else "0")
        command = [
            sys.executable,
            __file__,
            "--child",
            candidate,
            "--model",
            str(model),
            "--rounds",
            str(args.rounds),
        ]
        if args.threads:
            command += ["--threads", str(args.threads)]
        print(f"measuring {candidate}", flush=True)
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        line = next((x for x in output.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(output.stderr[-2000:])
            results[candidate] = {"error": output.returncode}
            continue
        results[candidate] = json.loads(line.removeprefix("RESULT "))
    server = server_rss(args.work / "onnx-int8-int4", args.work) if args.server else None
    report(results, conversions, server)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size": args.size,
                    "cores": os.cpu_count(),
                    "results": results,
                    "conversions": conversions,
                    "server": server,
                },
                indent=1,
            )
        )


def report(results: dict[str, Any], conversions: dict[str, Any], server: Any) -> None:
    base = results.get("torch-fp32", {}).get("five_s")
    print(f"\nQwen3-ASR on the CPU ({os.cpu_count()} cores), 5 s of speech, {NEW_TOKENS} tokens")
    print("| candidate | 5 s | × FP32 | 30 s | × real time | busy / idle | RSS loaded | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | failed ({r['error']}) | | | | | | |")
            continue
        ratio = f"{r['five_s'] / base:.2f}" if base else "-"
        busy = f"{r['busy_five_s'] / r['five_s']:.2f}" if "busy_five_s" in r else "-"
        print(
            f"| {name} | {r['five_s']:.2f} s | {ratio} | {r['thirty_s']:.2f} s | "
            f"{r['thirty_s'] / 30:.2f} | {busy} | {r['rss_loaded'] / GIB:.2f} GiB | "
            f"{r['rss_peak'] / GIB:.2f} GiB |"
        )
    if conversions:
        print("\n| conversion | time | peak RSS | files |")
        print("|---|---:|---:|---:|")
        for quant, c in conversions.items():
            if c.get("reused"):
                print(f"| {quant} | (reused) | | |")
            else:
                print(
                    f"| {quant} | {c['wall_s']:.0f} s | {c['peak_rss'] / GIB:.2f} GiB | "
                    f"{c['bytes'] / GIB:.2f} GiB |"
                )
    if server:
        print(
            f"\nASR server (ONNX int8-int4): RSS loaded {server['rss_loaded'] / GIB:.2f} GiB, "
            f"peak after a 5 s request {server['rss_peak_5s'] / GIB:.2f} GiB, after a 30 s "
            f"one decoded to its 332-token cap {server['rss_peak'] / GIB:.2f} GiB"
        )


if __name__ == "__main__":
    main()
