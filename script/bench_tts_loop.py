#!/usr/bin/env python3
"""Qwen3-TTS decode loop and streaming decode against upstream, in one run.

1. Overhead proxy (tiny random checkpoint, CPU): milliseconds per codec frame. With a
   model this small the compute is negligible, so the time is Python and operator
   dispatch, which is what makes a GPU launch-bound. Ours is measured through the real
   Wyoming server over TCP (lean loop with streaming windows on and off, and the old
   path: upstream's generate() behind our windows); upstream is a direct
   ``generate_custom_voice`` call (generation plus its whole decode).
2. The same comparison on the full-size architecture with random weights (CPU,
   engine-level, a few frames each).
3. Windowed vs whole decode of the same frames on the full-size codec (random weights):
   SNR at the default window and at window 1, for our streaming decoder and for the old
   25-frame left context, and the largest sample step across window edges against the
   largest inside windows.

    .venv/bin/python script/bench_tts_loop.py [--sections 1,2,3] [--out bench-results/tts-loop.json]

Real weights on a GPU (time to first audio, real-time factor, CUDA graphs) are measured
by script/gpu-proof on the GPU test machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import start_server  # noqa: E402
from tests.qwen_models import build_qwen3_tts  # noqa: E402
from wyoming_opentalker.client import synthesize  # noqa: E402
from wyoming_opentalker.settings import load_settings  # noqa: E402

SAMPLES_PER_FRAME = 1920  # 24 kHz / 12.5 Hz
TEXTS = [
    "The kitchen lights are on and the front door is locked for the night.",
    "Tomorrow will be cloudy with a light breeze and a high of eighteen degrees.",
    "今天早上七点，客厅的灯已经自动打开了，外面的温度是十八度。",
    "Your timer for the pasta has five minutes left, and the oven is preheated.",
]
ROUNDS = 2


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("wyoming_opentalker").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)


def upstream_direct(model: Path, threads: int) -> tuple[float, int]:
    """Seconds and frames for upstream's generate_custom_voice over the texts."""
    import torch

    torch.set_num_threads(threads)

    from wyoming_opentalker.tts.qwen3_tts import import_qwen_tts, load_lean

    import_qwen_tts()
    tts = load_lean(str(model), torch.float32, "cpu")
    tts.generate_custom_voice("warm up", speaker="ryan", language="english")
    seconds, frames = 0.0, 0
    for _ in range(ROUNDS):
        for text in TEXTS:
            started = time.perf_counter()
            wavs, _rate = tts.generate_custom_voice(text, speaker="ryan", language="auto")
            seconds += time.perf_counter() - started
            frames += round(len(wavs[0]) / SAMPLES_PER_FRAME)
    return seconds, frames


def through_server(
    model: Path, work: Path, loop: str, window: int, threads: int
) -> tuple[float, int]:
    """Seconds (request sent to last audio) and frames through the Wyoming server."""
    server = start_server(
        work,
        ("tts",),
        "--tts-engine",
        "qwen3-tts",
        "--tts-model",
        str(model),
        "--qwen-tts-loop",
        loop,
        "--qwen-tts-stream-window",
        str(window),
        QWEN_TTS_SPEAKER="Ryan",
        OMP_NUM_THREADS=str(threads),
    )
    try:

        async def run() -> tuple[float, int]:
            await synthesize(server.tts, "warm up")
            seconds, frames = 0.0, 0
            for _ in range(ROUNDS):
                for text in TEXTS:
                    result = await synthesize(server.tts, text)
                    seconds += result.done_at  # already relative to the request
                    frames += round(result.seconds * 12.5)
            return seconds, frames

        return asyncio.run(run())
    finally:
        server.stop()


def overhead(work: Path, threads: int) -> list[dict[str, Any]]:
    model = build_qwen3_tts(work / "Qwen3-TTS-tiny", max_new_tokens=200)
    rows = []
    seconds, frames = upstream_direct(model, threads)
    reference = 1000 * seconds / frames
    rows.append(
        {"path": "upstream generate_custom_voice (direct)", "frames": frames, "ms": reference}
    )
    for loop, window, label in (
        ("lean", 8, "ours via server: lean loop, windows of 8"),
        ("lean", 0, "ours via server: lean loop, windows off"),
        ("upstream", 8, "ours via server: upstream generate(), windows of 8"),
        ("upstream", 0, "ours via server: upstream generate(), windows off"),
    ):
        seconds, frames = through_server(model, work, loop, window, threads)
        rows.append({"path": label, "frames": frames, "ms": 1000 * seconds / frames})
    for row in rows:
        row["ratio"] = row["ms"] / reference
        row["threads"] = threads
    return rows


def full_size(work: Path, frames: int) -> list[dict[str, Any]]:
    """Engine-level ms/frame on the full-size architecture, lean vs upstream loop."""
    from wyoming_opentalker.device import CPU
    from wyoming_opentalker.tts.qwen3_tts import Qwen3TtsEngine

    started = time.perf_counter()
    model = build_qwen3_tts(work / "Qwen3-TTS-full", size="full")
    print(f"built the full-size checkpoint in {time.perf_counter() - started:.0f} s", flush=True)
    rows = []
    for loop in ("upstream", "lean"):
        settings = load_settings(
            ["tts", "--tts-model", str(model), "--qwen-tts-loop", loop, "--tts-dtype", "float32"],
            {},
        )
        engine = Qwen3TtsEngine.load(settings, CPU)
        engine._max_new_tokens = 3
        engine.generate_codes("warm up", "ryan", "english")
        engine._max_new_tokens = frames + 1
        started = time.perf_counter()
        codes = engine.generate_codes(TEXTS[0], "ryan", "english")
        seconds = time.perf_counter() - started
        rows.append(
            {"path": f"{loop} loop", "frames": len(codes), "ms": 1000 * seconds / len(codes)}
        )
        del engine
    for row in rows:
        row["ratio"] = row["ms"] / rows[0]["ms"]
    return rows


def _full_codec() -> Any:
    import torch

    from tests.qwen_models import TTS_FULL
    from wyoming_opentalker.tts.qwen3_tts import import_qwen_tts

    import_qwen_tts()
    from qwen_tts.core import Qwen3TTSTokenizerV2Config, Qwen3TTSTokenizerV2Model

    config = Qwen3TTSTokenizerV2Config(
        encoder_config={**TTS_FULL["codec_encoder"], "frame_rate": 12.5, "sampling_rate": 24000},
        decoder_config={**TTS_FULL["codec_decoder"], "num_quantizers": 16},
        encoder_valid_num_quantizers=16,
    )
    torch.manual_seed(0)
    codec = Qwen3TTSTokenizerV2Model(config).eval()
    with torch.no_grad():  # zero EMA codebooks would decode to silence
        for name, tensor in [*codec.decoder.named_parameters(), *codec.decoder.named_buffers()]:
            if name.endswith("embedding_sum"):
                tensor.normal_(0.0, 1.0)
            elif name.endswith("cluster_usage"):
                tensor.fill_(1.0)
    return codec.decoder


def _old_windows(decoder: Any, codes: Any, window: int, context: int = 25) -> np.ndarray:
    """The previous streaming decode: each window with a fixed left context."""
    import torch

    pieces = []
    for start in range(0, len(codes), window):
        lead = min(start, context)
        part = codes[start - lead : start + window]
        with torch.inference_mode():
            wav = decoder(part.transpose(0, 1).unsqueeze(0))
        pieces.append(wav[0, 0, lead * SAMPLES_PER_FRAME :].numpy())
    return np.concatenate(pieces)


def _new_windows(decoder: Any, codes: Any, window: int) -> np.ndarray:
    from wyoming_opentalker.tts.qwen3_codec import StreamingCodec

    stream = StreamingCodec(decoder)
    return np.concatenate(
        [stream.push(codes[s : s + window]) for s in range(0, len(codes), window)]
    )


def _snr(got: np.ndarray, want: np.ndarray) -> float:
    error = float(np.sqrt(np.mean((got - want) ** 2)))
    return 20 * float(np.log10(float(np.sqrt(np.mean(want**2))) / max(error, 1e-12)))


def _edges(audio: np.ndarray, window: int) -> tuple[float, float]:
    """Largest sample step across window edges and inside windows."""
    steps = np.abs(np.diff(audio))
    edge = np.zeros(steps.size, dtype=bool)
    edge[SAMPLES_PER_FRAME * window - 1 :: SAMPLES_PER_FRAME * window] = True
    return float(steps[edge].max()), float(steps[~edge].max())


def codec_windows(frames: dict[int, int]) -> list[dict[str, Any]]:
    import torch

    decoder = _full_codec()
    rows = []
    for window, count in frames.items():
        torch.manual_seed(window)
        codes = torch.randint(0, 2048, (count, 16))
        with torch.inference_mode():
            whole = decoder(codes.transpose(0, 1).unsqueeze(0))[0, 0].numpy()
        for label, decode in (
            ("ours (carried state)", _new_windows),
            ("old (25-frame left context)", _old_windows),
        ):
            started = time.perf_counter()
            audio = decode(decoder, codes, window)
            seconds = time.perf_counter() - started
            edge, inside = _edges(audio, window)
            rows.append(
                {
                    "decoder": label,
                    "window": window,
                    "frames": count,
                    "snr_db": _snr(audio, whole),
                    "edge_step": edge,
                    "inside_step": inside,
                    "edge_ratio": edge / inside if inside else 0.0,
                    "seconds": seconds,
                }
            )
            print(f"  codec window {window} {label}: {rows[-1]['snr_db']:.1f} dB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="1,2,3", help="which of the sections to run")
    parser.add_argument("--full-frames", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "tts-loop.json")
    args = parser.parse_args()
    _quiet()
    sections = set(args.sections.split(","))
    results: dict[str, Any] = {}
    if args.out.exists():  # sections not run this time keep their last results
        results = json.loads(args.out.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        import torch

        for threads in (1, torch.get_num_threads()) if "1" in sections else ():
            if threads == 1:
                results["overhead_tiny_cpu"] = []
            rows = overhead(work, threads)
            results["overhead_tiny_cpu"] += rows
            print(
                "\n1. ms per codec frame, tiny checkpoint on the CPU (dispatch overhead proxy), "
                f"{threads} intra-op thread(s) on both sides"
            )
            for row in rows:
                print(
                    f"  {row['path']:<52} {row['ms']:8.2f} ms  x{row['ratio']:.2f}  "
                    f"({row['frames']} frames)"
                )
        if "3" in sections:
            results["codec_full"] = codec_windows({8: 96, 1: 40})
        if "2" in sections:
            results["full_cpu"] = full_size(work, args.full_frames)
    if "full_cpu" in results:
        print("\n2. ms per codec frame, full-size random weights on the CPU (FP32, engine level)")
        for row in results["full_cpu"]:
            print(
                f"  {row['path']:<52} {row['ms']:8.1f} ms  x{row['ratio']:.2f}  "
                f"({row['frames']} frames)"
            )
    if "codec_full" in results:
        print("\n3. windowed vs whole decode, full-size codec (random weights)")
        print(f"  {'decoder':<32} {'window':>6} {'SNR dB':>8} {'edge/inside step':>17}")
        for row in results["codec_full"]:
            print(
                f"  {row['decoder']:<32} {row['window']:>6} {row['snr_db']:>8.1f} "
                f"{row['edge_ratio']:>17.2f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
