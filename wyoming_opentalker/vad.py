"""Streaming voice-activity detection: where speech is in audio that is still arriving.

The ASR server uses it to notice a pause after speech (and decode while the client is
still sending silence) and, when it ends commands itself, the end of a command. The model
is Silero VAD v6, the ONNX file faster-whisper ships (MIT), run with onnxruntime on one
thread: 3.2 ms of CPU per second of audio fed in 10 ms chunks (0.3 % of a core per
stream). It was chosen over Home Assistant's microVAD and WebRTC's VAD by measurement
(``script/bench_vad.py``; README, *The transcript when you stop speaking*).

The model reads 512-sample windows at 16 kHz, each with the 64 samples before it, and
carries a recurrent state; several consecutive windows go into one call as a sequence.
Everything here is deterministic: the same audio gives the same decisions whatever the
chunk sizes it arrived in.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WINDOW = 512  # samples per probability: 32 ms
CONTEXT = 64  # samples of the previous window the model also reads
STATE_SHAPE = (1, 1, 128)


class VadUnavailable(RuntimeError):
    """No VAD can run here; the message says what to install."""


def _model_path() -> Path:
    try:
        import faster_whisper
    except ImportError:
        raise VadUnavailable(
            "the speech detector needs faster-whisper's Silero VAD model: "
            "pip install 'wyoming-opentalker[whisper]'"
        ) from None
    path = Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise VadUnavailable(f"faster-whisper has no Silero VAD model at {path}")
    return path


class SileroModel:
    """One ONNX session shared by every stream (``run`` is thread-safe in onnxruntime)."""

    _shared: SileroModel | None = None
    _lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise VadUnavailable(
                "the speech detector needs onnxruntime: pip install 'wyoming-opentalker[piper]'"
            ) from None
        options = onnxruntime.SessionOptions()
        # One thread, no spinning: the detector must never compete with the engine's
        # threads for the cores (a spinning pool collapses a busy 2-core box).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 4
        self._session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"], sess_options=options
        )

    @classmethod
    def shared(cls) -> SileroModel:
        """The process's model, loaded on first use; ``VadUnavailable`` if it cannot be."""
        with cls._lock:
            if cls._shared is None:
                cls._shared = cls(_model_path())
            return cls._shared

    def run(self, windows: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[Any, Any, Any]:
        """Probabilities for consecutive ``(n, CONTEXT + WINDOW)`` windows, and the state after."""
        probs, h, c = self._session.run(None, {"input": windows, "h": h, "c": c})
        return probs, h, c


@functools.cache
def speech_detector() -> SileroModel | None:
    """The shared model, or None (with one WARNING) where it cannot run: the servers then
    decode at ``audio-stop`` only and leave the end of commands to the client."""
    try:
        return SileroModel.shared()
    except VadUnavailable as err:
        _LOGGER.warning("No pause decoding or endpointing: %s", err)
        return None


@dataclass
class SileroStream:
    """One audio stream's detector state: feed any number of samples, get a probability
    for every window they complete."""

    model: SileroModel
    _h: np.ndarray = field(default_factory=lambda: np.zeros(STATE_SHAPE, np.float32))
    _c: np.ndarray = field(default_factory=lambda: np.zeros(STATE_SHAPE, np.float32))
    _context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))
    _pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Speech probabilities (float32, one per completed 32 ms window)."""
        data = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        count = data.size // WINDOW
        self._pending = data[count * WINDOW :]
        if count == 0:
            return np.zeros(0, np.float32)
        frames = data[: count * WINDOW].reshape(count, WINDOW)
        contexts = np.concatenate([self._context[None, :], frames[:-1, -CONTEXT:]])
        self._context = frames[-1, -CONTEXT:].copy()
        windows = np.ascontiguousarray(np.concatenate([contexts, frames], axis=1))
        probs, self._h, self._c = self.model.run(windows, self._h, self._c)
        return np.asarray(probs, dtype=np.float32).reshape(count)


@dataclass
class SpeechTracker:
    """Speech and silence over windows of probabilities: a window starts speech at ``on``
    or above and ends it below ``off``. Both default to 0.3, measured best for this job
    (``script/bench_vad.py``): at Silero's usual 0.5 a real 0.5 s pause between two parts
    of a command looks 0.7 s long or more in a quarter of the cases (a second part that
    starts with a fricative is picked up late); at 0.3 it does in 3 %, with no false
    speech in room noise. Positions are in samples of the stream."""

    on: float = 0.3
    off: float = 0.3
    samples: int = 0  # audio judged so far
    in_speech: bool = False
    speech_samples: int = 0  # windows judged speech, in samples
    speech_start: int | None = None  # where the first speech window begins
    speech_end: int | None = None  # where the last speech window ends

    def update(self, probs: np.ndarray) -> None:
        for prob in probs.tolist():
            start = self.samples
            self.samples += WINDOW
            if self.in_speech:
                self.in_speech = prob >= self.off
            else:
                self.in_speech = prob >= self.on
            if self.in_speech:
                self.speech_samples += WINDOW
                if self.speech_start is None:
                    self.speech_start = start
                self.speech_end = self.samples

    @property
    def silence(self) -> int:
        """Samples since the last speech window (0 while speaking or before any speech)."""
        if self.in_speech or self.speech_end is None:
            return 0
        return self.samples - self.speech_end
