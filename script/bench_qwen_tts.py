"""Qwen3-TTS memory and speed by precision, on the full-size 0.6B CustomVoice architecture.

Builds a random-weight checkpoint from the released model's config values, loads it
through the product's engine per precision, and reports: weight memory; time to first
audio and real-time factor with windowed streaming on and off; and peak GPU memory for
200 vs 5,000 characters with chunking on (200) and off (0). Random weights never stop on
their own, so each chunk generates a fixed number of frames for its length (Chinese is
spoken at about 4 characters a second; 12.5 frames a second). Compare with the old deployment's
claim: Qwen3-TTS 0.6B bfloat16 ~2.0 GB.

    .venv/bin/python script/bench_qwen_tts.py                  # on a CUDA machine
    .venv/bin/python script/bench_qwen_tts.py --device cpu --size tiny   # smoke test
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.qwen_models import build_qwen3_tts  # noqa: E402
from wyoming_opentalker.chunking import chunk_text  # noqa: E402
from wyoming_opentalker.engine import TtsRequest  # noqa: E402
from wyoming_opentalker.settings import load_settings  # noqa: E402

GIB = 1024**3
SENTENCE = "今天早上七点，客厅的灯已经自动打开了，外面的温度是十八度。"
FRAMES_PER_CHAR = 12.5 / 4


def frames_for(text: str, cap: int) -> int:
    return max(8, min(cap, int(len(text) * FRAMES_PER_CHAR)))


def speak(engine: Any, text: str, cap: int) -> tuple[float, float, float]:
    """(time to first audio, total time, audio seconds) for one chunk."""
    engine._max_new_tokens = frames_for(text, cap)
    started = time.perf_counter()
    first = None
    samples = 0
    for piece in engine.synthesize(TtsRequest(text, "Vivian", None, "zh")):
        first = first if first is not None else time.perf_counter() - started
        samples += piece.size
    return first or 0.0, time.perf_counter() - started, samples / engine.sample_rate


def run(model: Path, dtype: str, device: str, cap: int) -> dict[str, Any]:
    import torch

    from wyoming_opentalker.device import resolve_device
    from wyoming_opentalker.tts.qwen3_tts import Qwen3TtsEngine

    cuda = resolve_device(device).is_cuda

    def reset() -> None:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak() -> float:
        return torch.cuda.max_memory_allocated() / GIB if cuda else 0.0

    reset()
    settings = load_settings(["tts", "--tts-model", str(model), "--tts-dtype", dtype], {})
    engine = Qwen3TtsEngine.load(settings, resolve_device(device))
    row: dict[str, Any] = {
        "dtype": engine.info.precision,
        "weights_gib": engine.info.weights_bytes / GIB,
        "loaded_gib": torch.cuda.memory_allocated() / GIB if cuda else 0.0,
    }
    speak(engine, SENTENCE, cap)  # warm-up
    for window, label in ((8, "stream"), (0, "whole")):
        engine._window = window
        first, total, seconds = speak(engine, SENTENCE, cap)
        row[f"ttfa_{label}"] = first
        row[f"rtf_{label}"] = total / seconds if seconds else 0.0
    engine._window = 8
    for chars in (200, 5000):
        text = (SENTENCE * (chars // len(SENTENCE) + 1))[:chars]
        for size in (200, 0):
            reset()
            for chunk in chunk_text(text, size):
                speak(engine, chunk, cap)
            row[f"peak_{chars}_{'chunked' if size else 'whole'}"] = peak()
    del engine
    gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", choices=("tiny", "full"), default="full")
    parser.add_argument("--dtypes", default="bfloat16,float16,float32")
    parser.add_argument("--max-frames", type=int, default=2048, help="cap per chunk")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model = build_qwen3_tts(Path(tmp) / f"Qwen3-TTS-{args.size}", size=args.size)
        print(f"built {args.size} checkpoint in {time.perf_counter() - started:.0f} s")
        rows = [run(model, d, args.device, args.max_frames) for d in args.dtypes.split(",")]
    keys = [k for k in rows[0] if k != "dtype"]
    print(f"{'metric':<24}" + "".join(f"{r['dtype'][:24]:>26}" for r in rows))
    for key in keys:
        print(f"{key:<24}" + "".join(f"{r[key]:>26.3f}" for r in rows))
    print("GiB for memory, seconds for ttfa, decode seconds per audio second for rtf;")
    print("peak_N_chunked: N characters with QWEN_TTS_CHUNK_SIZE=200, _whole: with 0.")
    print("The old deployment's claim for comparison: Qwen3-TTS 0.6B bfloat16 ~2.0 GB.")


if __name__ == "__main__":
    main()
