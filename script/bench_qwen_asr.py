"""Qwen3-ASR memory and speed by precision, on the full-size 0.6B architecture.

Builds a random-weight checkpoint from the released model's config values (real weights
cannot be downloaded here; memory and speed do not depend on the values), loads it
through the product's own engine for each precision, and reports weight memory, peak GPU
memory while transcribing real speech (one request and a batch of four), and real-time
factor. Compare with the old deployment's claims: FP32 ~3.1 GB, FP16 ~1.6 GB.

    .venv/bin/python script/bench_qwen_asr.py                 # on a CUDA machine
    .venv/bin/python script/bench_qwen_asr.py --device cpu --size tiny   # smoke test
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.qwen_models import build_qwen3_asr  # noqa: E402
from wyoming_opentalker.engine import AsrRequest  # noqa: E402
from wyoming_opentalker.settings import load_settings  # noqa: E402

SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox")
GIB = 1024**3


def speech() -> list[np.ndarray]:
    import wave

    clips = []
    for path in sorted(SPEECH.glob("*.wav"))[:4]:
        with wave.open(str(path)) as wav:
            pcm = wav.readframes(wav.getnframes())
        clips.append(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)
    return clips


def run(model: Path, dtype: str, device: str, rounds: int) -> dict[str, float | str]:
    import torch

    from wyoming_opentalker.asr.qwen3_asr import Qwen3AsrEngine
    from wyoming_opentalker.device import resolve_device

    cuda = resolve_device(device).is_cuda
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    settings = load_settings(
        [
            "asr",
            "--asr-engine",
            "qwen3-asr",
            "--asr-model",
            str(model),
            "--asr-dtype",
            dtype,
            "--qwen-asr-max-batch-size",
            "4",
            "--qwen-asr-max-new-tokens",
            "64",
        ],
        {},
    )
    engine = Qwen3AsrEngine.load(settings, resolve_device(device))
    loaded = torch.cuda.memory_allocated() if cuda else engine.info.weights_bytes
    clips = speech()
    audio_seconds = sum(c.size for c in clips) / 16000
    engine.transcribe([AsrRequest(clips[0], "en")])  # warm-up
    single, batch = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        engine.transcribe([AsrRequest(clips[0], "en")])
        single.append((time.perf_counter() - started) / (clips[0].size / 16000))
        started = time.perf_counter()
        engine.transcribe([AsrRequest(c, "en") for c in clips])
        batch.append((time.perf_counter() - started) / audio_seconds)
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    result: dict[str, float | str] = {
        "dtype": engine.info.precision.split(" ")[0],
        "weights_gib": engine.info.weights_bytes / GIB,
        "allocated_after_load_gib": loaded / GIB,
        "peak_gib": peak / GIB,
        "rtf_single": statistics.median(single),
        "rtf_batch4": statistics.median(batch),
    }
    del engine
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model = build_qwen3_asr(Path(tmp) / f"Qwen3-ASR-{args.size}", size=args.size)
        print(f"built {args.size} checkpoint in {time.perf_counter() - started:.0f} s")
        rows = [run(model, dtype, args.device, args.rounds) for dtype in args.dtypes.split(",")]
    print(
        f"{'dtype':<10} {'weights GiB':>11} {'after load GiB':>14} {'peak GiB':>9} "
        f"{'RTF x1':>7} {'RTF x4':>7}"
    )
    for row in rows:
        print(
            f"{row['dtype']:<10} {row['weights_gib']:>11.2f} "
            f"{row['allocated_after_load_gib']:>14.2f} {row['peak_gib']:>9.2f} "
            f"{row['rtf_single']:>7.3f} {row['rtf_batch4']:>7.3f}"
        )
    print("RTF: decode seconds per second of audio (x4: four clips in one batched call).")
    print("The old deployment's claims for comparison: FP32 ~3.1 GB, FP16 ~1.6 GB.")


if __name__ == "__main__":
    main()
