"""Audio conversion between Wyoming PCM and the float32 arrays engines use.

Clients send any rate, width and channel count; engines want mono float32 at their own
rate. Conversion is incremental (chunk by chunk, as audio arrives) so an upload costs
no extra latency at ``audio-stop``; resampling uses libsoxr, which is band-limited (no
aliasing, unlike ``audioop.ratecv``) and keeps state across chunks (no clicks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soxr

MIN_RATE = 1000
MAX_RATE = 384_000
MAX_CHANNELS = 32
SUPPORTED_WIDTHS = (1, 2, 3, 4)


class AudioFormatError(ValueError):
    """The client's audio format cannot be converted."""


@dataclass(frozen=True)
class PcmFormat:
    """Interleaved little-endian PCM (8-bit unsigned, 16/24/32-bit signed)."""

    rate: int
    width: int
    channels: int

    def validate(self) -> PcmFormat:
        """Raise ``AudioFormatError`` with a readable reason if this is not usable."""
        for label, value in (
            ("rate", self.rate),
            ("width", self.width),
            ("channels", self.channels),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise AudioFormatError(f"audio {label} must be an integer, got {value!r}")
        if not MIN_RATE <= self.rate <= MAX_RATE:
            raise AudioFormatError(f"audio rate {self.rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz")
        if self.width not in SUPPORTED_WIDTHS:
            raise AudioFormatError(f"audio width {self.width} bytes is not one of 1, 2, 3, 4")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise AudioFormatError(f"audio channels {self.channels} is outside 1-{MAX_CHANNELS}")
        return self

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels


def pcm_to_float(pcm: bytes, width: int, channels: int) -> np.ndarray:
    """Whole frames of PCM to mono float32 in [-1, 1] (channels averaged)."""
    if width == 1:
        samples = (np.frombuffer(pcm, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        raw = np.frombuffer(pcm, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        samples = value.astype(np.float32) / float(1 << 23)
    elif width == 4:
        samples = (np.frombuffer(pcm, dtype="<i4").astype(np.float64) / 2147483648.0).astype(
            np.float32
        )
    else:
        raise AudioFormatError(f"audio width {width} is not supported")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] to 16-bit little-endian PCM, clipping what overshoots."""
    clipped = np.clip(samples, -1.0, 1.0) * 32767.0
    pcm: bytes = np.rint(clipped).astype("<i2").tobytes()
    return pcm


class PcmToFloat:
    """Streaming converter: PCM chunks in any format to mono float32 at ``target_rate``.

    Keeps the odd bytes of a partial frame for the next chunk, and a resampler state so
    that chunk boundaries leave no trace in the output.
    """

    def __init__(self, target_rate: int) -> None:
        self.target_rate = target_rate
        self._format: PcmFormat | None = None
        self._leftover = b""
        self._resampler: soxr.ResampleStream | None = None
        self.input_seconds = 0.0

    def feed(self, pcm: bytes, fmt: PcmFormat) -> np.ndarray:
        """Convert one chunk; a format change mid-stream is allowed (flushes first)."""
        head = np.zeros(0, dtype=np.float32)
        if fmt != self._format:
            fmt.validate()
            head = self.flush()
            self._format = fmt
            self._resampler = (
                None
                if fmt.rate == self.target_rate
                else soxr.ResampleStream(fmt.rate, self.target_rate, 1, dtype="float32")
            )
        data = self._leftover + pcm
        usable = len(data) - len(data) % fmt.frame_bytes
        self._leftover = data[usable:]
        self.input_seconds += usable / fmt.frame_bytes / fmt.rate
        mono = pcm_to_float(data[:usable], fmt.width, fmt.channels)
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        return np.concatenate([head, mono]) if head.size else mono

    def flush(self) -> np.ndarray:
        """Drain the resampler (a partial trailing frame is dropped)."""
        resampler, self._resampler = self._resampler, None
        self._leftover = b""
        self._format = None
        if resampler is None:
            return np.zeros(0, dtype=np.float32)
        tail: np.ndarray = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return tail


def fade_edges(
    audio: np.ndarray, rate: int, ms: float = 5.0, *, start: bool = True, end: bool = True
) -> np.ndarray:
    """Short linear fades so separately generated chunks join without clicks."""
    length = min(int(rate * ms / 1000), audio.size // 2)
    if length <= 0 or not (start or end):
        return audio
    out = audio.astype(np.float32, copy=True)
    ramp = np.linspace(0.0, 1.0, length, dtype=np.float32)
    if start:
        out[:length] *= ramp
    if end:
        out[-length:] *= ramp[::-1]
    return out


def split_at_quiet(
    samples: np.ndarray, rate: int, max_seconds: float, search_seconds: float = 5.0
) -> list[np.ndarray]:
    """Cut ``samples`` into pieces of at most ``max_seconds``, each cut placed in the
    quietest 100 ms of the last ``search_seconds`` before the limit (a pause between
    words, so no word is cut in half). The pieces put back together are the input."""
    limit = int(max_seconds * rate)
    window = max(1, rate // 10)
    search = min(int(search_seconds * rate), limit // 2)
    pieces: list[np.ndarray] = []
    start = 0
    while len(samples) - start > limit:
        left = start + limit - search
        energy = np.convolve(np.abs(samples[left : start + limit]), np.ones(window), "valid")
        cut = left + int(np.argmin(energy)) + window // 2 if len(energy) else start + limit
        pieces.append(samples[start:cut])
        start = cut
    pieces.append(samples[start:])
    return pieces
