#!/usr/bin/env python3
"""Full-size memory check on the CPU: the planner's figures against what really happens.

Builds Qwen3-ASR and Qwen3-TTS checkpoints with the released architectures and random
weights (16-bit files), loads them through the engines' own loading code in a 16-bit
precision (what a GPU gets; ``--dtype``), and reports:

* resident tensor bytes after load, split by where they live, against the planner's
  weight and CPU figures (from the same checkpoints' headers);
* the peak of tensors allocated while serving (tracked at the operator level with a
  ``TorchDispatchMode``, so weights do not count and allocator caching does not blur it)
  for ASR requests of 5 s, 30 s and 300 s and one 200-character TTS chunk, against the
  planner's working-memory model.

The CPU's kernels are not the GPU's (attention in particular), so the peaks are the
model's shape-driven allocations, not a CUDA allocator's reserve; only a GPU run shows
that. Usage: .venv/bin/python script/measure_memory.py [--skip-300] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1024**3


class PeakTracker:
    """Peak bytes of tensors created by operators while active (weights excluded)."""

    def __init__(self) -> None:
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                for tensor in tree_flatten(out)[0]:
                    if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                        storage = tensor.untyped_storage()
                        key = storage.data_ptr()
                        size = storage.nbytes()
                        if size and key not in tracker.live:
                            tracker.live[key] = (StorageWeakRef(storage), size)
                            tracker.current += size
                            if tracker.current > tracker.peak:
                                tracker.purge()
                                tracker.peak = max(tracker.peak, tracker.current)
                return out

        self.mode = Mode()

    def purge(self) -> None:
        for key in [k for k, (ref, _size) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __enter__(self) -> PeakTracker:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


def build(root: Path, dtype: str) -> tuple[Path, Path]:
    import torch

    from tests.qwen_models import build_qwen3_asr, build_qwen3_tts

    asr, tts = root / "asr", root / "tts"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # 16-bit files, as released
    try:
        if not (asr / "model.safetensors").exists() and not list(asr.glob("*.safetensors")):
            build_qwen3_asr(asr, "full")
        if not (tts / "speech_tokenizer" / "model.safetensors").exists():
            build_qwen3_tts(tts, "full")
    finally:
        torch.set_default_dtype(previous)
    return asr, tts


def speech(seconds: float) -> np.ndarray:
    """Real speech from Debian's pocketsphinx test data, repeated to ``seconds``."""
    import wave

    folder = Path("/usr/share/pocketsphinx/test/data/librivox")
    pieces = []
    for file in sorted(folder.glob("*.wav")):
        with wave.open(str(file)) as handle:
            pieces.append(np.frombuffer(handle.readframes(handle.getnframes()), np.int16))
    audio = np.concatenate(pieces).astype(np.float32) / 32768
    repeats = int(np.ceil(seconds * 16000 / audio.size))
    return np.tile(audio, repeats)[: int(seconds * 16000)]


def row(name: str, measured: int, planned: int) -> dict[str, Any]:
    ratio = measured / planned if planned else float("nan")
    print(f"{name:<52} {measured / GIB:8.3f} {planned / GIB:8.3f} {ratio:7.2f}", flush=True)
    return {"name": name, "measured_bytes": measured, "planned_bytes": planned, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "local" / "full-size")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument(
        "--weights-only", action="store_true", help="resident weights only (no requests)"
    )
    parser.add_argument("--skip-300", action="store_true", help="leave out the 300 s request")
    parser.add_argument("--only", choices=("asr", "tts"))
    parser.add_argument("--asr-new-tokens", type=int, default=16)
    parser.add_argument("--tts-frames", type=int, default=24)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    import wyoming_opentalker.asr.qwen3_asr as qasr
    import wyoming_opentalker.tts.qwen3_tts as qtts
    from wyoming_opentalker.device import CPU, Precision, PrecisionChoice
    from wyoming_opentalker.engine import AsrRequest, TtsRequest
    from wyoming_opentalker.quant import weight_bytes
    from wyoming_opentalker.settings import load_settings

    torch.set_num_threads(2)
    asr_path, tts_path = build(args.root, "bfloat16")
    precision = Precision(args.dtype)
    element = 4 if precision is Precision.FP32 else 2
    forced = PrecisionChoice(precision, "measured in 16-bit on the CPU")
    # The engines pick FP32 on the CPU; measure the precision a GPU gets instead.
    qasr.asr_precision = lambda *_a, **_k: forced  # type: ignore[assignment]
    qtts.tts_precision = lambda *_a, **_k: forced  # type: ignore[assignment]
    settings = load_settings(
        [
            *("--asr-engine", "qwen3-asr", "--qwen-asr-runtime", "torch"),
            *("--asr-model", str(asr_path)),
            *("--tts-engine", "qwen3-tts", "--tts-model", str(tts_path)),
            *("--qwen-asr-max-batch-size", "4"),
            # Random weights never stop: the answers are capped so the CPU finishes; the
            # planner models the same caps, and the prefill (the large part) is whole.
            *("--qwen-asr-max-new-tokens", str(args.asr_new_tokens)),
            *("--qwen-tts-max-new-tokens", str(args.tts_frames)),
        ],
        {},
    )
    rows: list[dict[str, Any]] = []
    print(f"{'what':<52} {'GiB':>8} {'planned':>8} {'ratio':>7}")
    if args.only in (None, "asr"):
        load = qasr.Qwen3AsrEngine.plan(settings, CPU)  # the forced precision, as a GPU would get
        need, engine = load.need, qasr.Qwen3AsrEngine(load)
        label = f"ASR resident weights ({args.dtype})"
        rows.append(row(label, weight_bytes(engine._model.model), need.weights))
        shape = qasr.text_shape(asr_path)
        cases: list[tuple[str, float, int]] = []
        if not args.weights_only:
            cases = [("one 5 s request", 5.0, 1), ("one 30 s request", 30.0, 1)]
            if not args.skip_300:
                cases.append(("one 300 s upload", 300.0, 4))
            cases.append(("4 x 30 s at once", 30.0, 4))
        for name, seconds, batch in cases:
            audio = speech(seconds)
            count = 4 if name.startswith("4 x") else 1
            started = time.monotonic()
            with PeakTracker() as tracker, torch.inference_mode():
                engine.transcribe([AsrRequest(audio, "en")] * count)
            planned = qasr.working_bytes(shape, element, batch, settings)
            rows.append(row(f"ASR peak working, {name} ({args.dtype})", tracker.peak, planned))
            rows[-1]["seconds"] = time.monotonic() - started
        del engine
    if args.only in (None, "tts"):
        load = qtts.Qwen3TtsEngine.plan(settings, CPU)
        need, engine = load.need, qtts.Qwen3TtsEngine(load)
        embedding = engine._model.model.talker.model.text_embedding.weight
        resident = weight_bytes(engine._model.model, engine._codec)
        rows.append(row(f"TTS resident weights, device ({args.dtype})", resident, need.weights))
        cpu = embedding.numel() * embedding.element_size()
        rows.append(row(f"TTS text embedding, CPU memory ({args.dtype})", cpu, need.cpu))
        if not args.weights_only:
            sentence = "今天早上七点，客厅的灯已经自动打开了。外面的温度是十八度，空气质量良好。"
            text = (sentence * 8)[:200]
            started = time.monotonic()
            with PeakTracker() as tracker, torch.inference_mode():
                request = TtsRequest(text, "Vivian", None, "zh")
                samples = sum(piece.size for piece in engine.synthesize(request))
            planned = qtts.working_bytes(tts_path, element, settings)
            label = f"TTS peak working, one 200-character chunk ({args.dtype})"
            rows.append(row(label, tracker.peak, planned))
            rows[-1]["seconds"] = time.monotonic() - started
            rows[-1]["audio_seconds"] = samples / engine.sample_rate
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
