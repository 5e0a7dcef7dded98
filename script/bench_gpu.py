"""The 4 GB proof: Qwen3-ASR and Qwen3-TTS in one server process under a 4 GiB cap,
serving concurrent ASR and TTS traffic over Wyoming.

Full-size architectures (the released 0.6B configs) with random weights: memory and
speed do not depend on the values, and real weights cannot be fetched on these machines.
Each configuration runs in a fresh process (clean CUDA state) that:

1. caps the process at ``--cap-gib`` of GPU memory (``torch.cuda.set_per_process_memory_fraction``),
2. loads Qwen3-ASR, then Qwen3-TTS, through the product's own start-up path, recording
   GPU memory after each,
3. serves 4 ASR clients (real speech) and 2 TTS clients (a 200- and a 1,000-character
   Chinese text) at once over Wyoming on 127.0.0.1, for ``--rounds`` rounds,
4. reports peak GPU memory, ASR RTF, TTS time to first audio and RTF, and every error
   (``out-of-memory`` must be zero).

Random weights never emit end-of-speech, so each TTS chunk is cut at the length real
speech would have (12.5 frames a second, ~4 Chinese characters a second).

    .venv/bin/python script/bench_gpu.py                      # on a CUDA machine
    .venv/bin/python script/bench_gpu.py --device cpu --size tiny --rounds 1   # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1024**3
SENTENCE = "今天早上七点，客厅的灯已经自动打开了，外面的温度是十八度。"
FRAMES_PER_CHAR = 12.5 / 4
# (label, ASR dtype, TTS talker dtype, TTS chunk size)
CONFIGS = [
    ("ASR fp16 + TTS bf16, chunk 200", "float16", "bfloat16", 200),
    ("ASR fp16 + TTS fp16, chunk 200", "float16", "float16", 200),
    ("ASR fp16 + TTS bf16, chunk off", "float16", "bfloat16", 0),
    ("ASR fp32 + TTS bf16, chunk 200", "float32", "bfloat16", 200),
    ("ASR fp32 + TTS fp32, chunk 200", "float32", "float32", 200),
]


def models(size: str) -> tuple[Path, Path]:
    from tests.qwen_models import build_qwen3_asr, build_qwen3_tts

    cache = ROOT / "bench-results" / f"qwen-{size}"
    asr, tts = cache / "asr", cache / "tts"
    if not (asr / "config.json").exists():
        build_qwen3_asr(asr, size=size)  # type: ignore[arg-type]
    if not (tts / "config.json").exists():
        build_qwen3_tts(tts, size=size, max_new_tokens=4096)  # type: ignore[arg-type]
    return asr, tts


async def serve_and_load(
    args: argparse.Namespace, asr_dtype: str, tts_dtype: str, chunk: int
) -> dict[str, Any]:
    import torch

    from tests.conftest import free_port
    from tests.speech import corpus
    from wyoming_opentalker.__main__ import serve_asr, serve_tts, start_asr, start_tts
    from wyoming_opentalker.client import synthesize, transcribe
    from wyoming_opentalker.settings import Settings

    cuda = args.device.startswith("cuda")
    if cuda and args.cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total))
    asr_path, tts_path = models(args.size)
    ports = {"asr": free_port(), "tts": free_port()}
    settings = Settings(
        asr_uri=f"tcp://127.0.0.1:{ports['asr']}",
        tts_uri=f"tcp://127.0.0.1:{ports['tts']}",
        device=args.device,
        asr_engine="qwen3-asr",
        asr_model=str(asr_path),
        asr_dtype=asr_dtype,
        qwen_asr_max_batch_size=4,
        qwen_asr_max_new_tokens=64,
        tts_engine="qwen3-tts",
        tts_model=str(tts_path),
        tts_dtype=tts_dtype,
        tts_chunk_size=chunk,
        memory_check=False,  # measured here instead of estimated
    )

    def allocated() -> float:
        return torch.cuda.memory_allocated() / GIB if cuda else 0.0

    row: dict[str, Any] = {}
    try:
        asr = await start_asr(settings, args.device)
        row["after_asr_gib"] = allocated()
        tts = await start_tts(settings, args.device)
        row["after_both_gib"] = allocated()
    except torch.OutOfMemoryError as err:
        row["load_error"] = f"out of memory while loading: {str(err).splitlines()[0]}"
        return row
    engine = tts.engine
    original = engine.synthesize

    def synthesize_like_real_speech(request: Any) -> Any:
        engine._max_new_tokens = max(8, int(len(request.text) * FRAMES_PER_CHAR))
        return original(request)

    engine.synthesize = synthesize_like_real_speech  # type: ignore[method-assign]
    listeners = [await serve_asr(asr), await serve_tts(tts)]

    clips = [c for c in corpus() if c.set == "librivox"][:4]
    texts = [(SENTENCE * 7)[:200], (SENTENCE * 34)[:1000]]
    asr_rtf: list[float] = []
    ttfa: list[float] = []
    tts_rtf: list[float] = []
    errors: list[str] = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    async def asr_client(clip: Any) -> None:
        pcm, rate, width, channels = clip.pcm()
        started = time.monotonic()
        result = await transcribe(ports["asr"], pcm, rate, width, channels, language="zh")
        if result.event.type == "error":
            errors.append(str(result.event.data))
        else:
            asr_rtf.append((time.monotonic() - started) / clip.seconds())

    async def tts_client(text: str) -> None:
        result = await synthesize(ports["tts"], text)
        if "error" in result.types:
            errors.append(str([e.data for e in result.events if e.type == "error"]))
        elif result.first_chunk_at is not None and result.seconds:
            ttfa.append(result.first_chunk_at)
            tts_rtf.append(result.done_at / result.seconds)

    try:
        for _ in range(args.rounds):
            await asyncio.gather(
                *(asr_client(clip) for clip in clips), *(tts_client(text) for text in texts)
            )
    finally:
        for listener in listeners:
            await listener.close()
    row.update(
        peak_gib=torch.cuda.max_memory_allocated() / GIB if cuda else 0.0,
        reserved_gib=torch.cuda.max_memory_reserved() / GIB if cuda else 0.0,
        asr_rtf=statistics.median(asr_rtf) if asr_rtf else None,
        tts_ttfa=statistics.median(ttfa) if ttfa else None,
        tts_rtf=statistics.median(tts_rtf) if tts_rtf else None,
        errors=errors,
        ooms=sum("out-of-memory" in e or "out of memory" in e for e in errors),
    )
    return row


def whisper_child(args: argparse.Namespace) -> None:
    """faster-whisper on the GPU: memory from nvidia-smi (CTranslate2 has its own
    allocator), RTF over real speech."""
    import os
    import shutil

    from tests.speech import corpus
    from wyoming_opentalker.asr.faster_whisper import FasterWhisperEngine
    from wyoming_opentalker.audio import PcmFormat, PcmToFloat
    from wyoming_opentalker.device import resolve_device
    from wyoming_opentalker.engine import AsrRequest
    from wyoming_opentalker.settings import Settings

    model, compute_type = args.whisper_child.split("|")
    settings = Settings(asr_model=model or None, asr_compute_type=compute_type)
    engine = FasterWhisperEngine.load(settings, resolve_device(args.device))
    clips = [c for c in corpus() if c.set == "librivox"]
    spent = seconds = 0.0
    for clip in clips:
        pcm, rate, width, channels = clip.pcm()
        converter = PcmToFloat(16000)
        audio = converter.feed(pcm, PcmFormat(rate, width, channels))
        started = time.monotonic()
        engine.transcribe([AsrRequest(audio, "en")])
        spent += time.monotonic() - started
        seconds += clip.seconds()
    used = None
    smi = shutil.which("nvidia-smi")
    if smi and args.device.startswith("cuda"):
        query = subprocess.run(
            [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
        ).stdout
        for line in query.splitlines():
            pid, mib = (part.strip() for part in line.split(","))
            if int(pid) == os.getpid():
                used = int(mib) / 1024
    row = {"model": engine.info.model, "compute_type": compute_type, "gpu_gib": used,
           "rtf": spent / seconds}  # fmt: skip
    print("RESULT " + json.dumps(row), flush=True)


def child(args: argparse.Namespace) -> None:
    label, asr_dtype, tts_dtype, chunk = CONFIGS[args.child]
    row = asyncio.run(serve_and_load(args, asr_dtype, tts_dtype, chunk))
    row["config"] = label
    print("RESULT " + json.dumps(row), flush=True)


def fmt(value: Any, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--cap-gib", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default=",".join(str(i) for i in range(len(CONFIGS))))
    parser.add_argument(
        "--whisper-models",
        default="",
        help="comma-separated CTranslate2 model folders (e.g. small, medium) to measure "
        "besides the packaged tiny.en; downloads are not possible offline",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--whisper-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.whisper_child is not None:
        whisper_child(args)
        return
    if args.child is not None:
        child(args)
        return
    models(args.size)  # build once, before the timed processes
    rows = []
    for index in (int(i) for i in args.configs.split(",")):
        argv = [sys.executable, __file__, "--child", str(index), "--device", args.device,
                "--size", args.size, "--cap-gib", str(args.cap_gib),
                "--rounds", str(args.rounds)]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            rows.append({"config": CONFIGS[index][0], "load_error": out.stderr.strip()[-300:]})
            continue
        rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
    print(f"cap {args.cap_gib:g} GiB per process, {args.size} models, device {args.device}")
    header = (
        f"{'configuration':<34} {'ASR GiB':>8} {'+TTS GiB':>9} {'peak GiB':>9} "
        f"{'ASR RTF':>8} {'TTFA s':>7} {'TTS RTF':>8} {'OOMs':>5}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        if "load_error" in row:
            print(f"{row['config']:<34} {row['load_error'][:80]}")
            continue
        print(
            f"{row['config']:<34} {fmt(row['after_asr_gib']):>8} {fmt(row['after_both_gib']):>9} "
            f"{fmt(row['peak_gib']):>9} {fmt(row['asr_rtf']):>8} {fmt(row['tts_ttfa']):>7} "
            f"{fmt(row['tts_rtf']):>8} {row['ooms']:>5}"
        )
    whisper_rows = []
    for model in ["", *filter(None, args.whisper_models.split(","))]:
        for compute_type in ("int8", "float16") if args.device.startswith("cuda") else ("int8",):
            argv = [sys.executable, __file__, "--whisper-child", f"{model}|{compute_type}",
                    "--device", args.device]  # fmt: skip
            out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if lines:
                whisper_rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
            else:
                whisper_rows.append({"model": model or "tiny.en", "compute_type": compute_type,
                                     "error": out.stderr.strip()[-200:]})  # fmt: skip
    print()
    print(f"{'faster-whisper':<34} {'compute':>8} {'GPU GiB':>8} {'RTF':>8}")
    for row in whisper_rows:
        if "error" in row:
            print(f"{row['model']:<34} {row['compute_type']:>8} {row['error'][:60]}")
        else:
            print(
                f"{row['model']:<34} {row['compute_type']:>8} {fmt(row['gpu_gib']):>8} "
                f"{fmt(row['rtf'], '.3f'):>8}"
            )
    rows.append({"faster_whisper": whisper_rows})
    out_path = ROOT / "bench-results" / f"gpu-{args.device.replace(':', '')}-{args.size}.json"
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(rows, indent=2))
    print(f"raw numbers: {out_path}")


if __name__ == "__main__":
    main()
