"""Audio files in and out, through FFmpeg's libraries (PyAV, which faster-whisper uses too).

The HTTP API takes uploads in whatever container a script or phone produced (wav, mp3,
flac, ogg, m4a, webm…) and answers in the format the caller asks for. Decoding and
encoding are plain CPU work on bytes: callers run them off the event loop. Encoding is
incremental — each piece of synthesised audio becomes bytes at once — so a long answer
streams instead of waiting for the whole text.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import soxr

from .audio import float_to_pcm16

if TYPE_CHECKING:
    from av.audio.frame import AudioFrame


class MediaError(ValueError):
    """The upload cannot be decoded, or an output format is not known."""


class AudioTooLong(MediaError):
    """The decoded audio is longer than the limit."""


def decode_audio(data: bytes, rate: int, max_seconds: float) -> np.ndarray:
    """Any audio file FFmpeg knows -> mono float32 at ``rate`` (the first audio stream).

    Stops as soon as ``max_seconds`` is exceeded, so a small file that decompresses to
    hours of audio costs no more than the limit.
    """
    import av

    if not data:
        raise MediaError("the uploaded file is empty")
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    pieces: list[np.ndarray] = []
    samples = 0
    limit = int(max_seconds * rate)
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise MediaError("the uploaded file has no audio stream")
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                frame.pts = None  # the resampler needs none, and broken ones upset it
                for out in resampler.resample(frame):
                    pieces.append(out.to_ndarray().reshape(-1))
                    samples += out.samples
                if samples > limit:
                    raise AudioTooLong(
                        f"audio is longer than the {max_seconds:g} s limit (MAX_AUDIO_SECONDS)"
                    )
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1))
    except MediaError:
        raise
    except (av.FFmpegError, ValueError, IndexError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise MediaError(f"the uploaded file is not audio FFmpeg can decode: {reason}") from None
    if not pieces:
        raise MediaError("the uploaded file holds no audio samples")
    return np.ascontiguousarray(np.concatenate(pieces), dtype=np.float32)


class TempoChanger:
    """Speed up or slow down speech without changing its pitch (FFmpeg's ``atempo``).

    Works on a stream of pieces; ``atempo`` takes 0.5-2.0 per stage, so wider factors
    chain stages (0.25 = 0.5 x 0.5).
    """

    def __init__(self, rate: int, speed: float) -> None:
        import av

        self._av = av
        self._rate = rate
        self._pts = 0
        self._graph = av.filter.Graph()
        node = self._graph.add_abuffer(
            format="flt", sample_rate=rate, layout="mono", time_base=Fraction(1, rate)
        )
        for stage in _tempo_stages(speed):
            following = self._graph.add("atempo", f"{stage:.6f}")
            node.link_to(following)
            node = following
        sink = self._graph.add("abuffersink")
        node.link_to(sink)
        self._graph.configure()

    def process(self, samples: np.ndarray) -> np.ndarray:
        frame = self._av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1),
            format="flt",
            layout="mono",
        )
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += frame.samples
        self._graph.push(frame)
        return self._pull()

    def flush(self) -> np.ndarray:
        self._graph.push(None)
        return self._pull()

    def _pull(self) -> np.ndarray:
        out: list[np.ndarray] = []
        while True:
            try:
                frame = self._graph.pull()
            except (self._av.error.BlockingIOError, self._av.error.EOFError):
                break
            out.append(frame.to_ndarray().reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _tempo_stages(speed: float) -> list[float]:
    stages: list[float] = []
    while speed < 0.5:
        stages.append(0.5)
        speed /= 0.5
    while speed > 2.0:
        stages.append(2.0)
        speed /= 2.0
    return [*stages, speed]


@dataclass(frozen=True)
class OutputFormat:
    """One response format: how it is labelled and how it is produced."""

    name: str
    content_type: str
    container: str | None = None  # FFmpeg muxer; None = written here (wav, pcm)
    codec: str | None = None
    rate: int | None = None  # fixed output rate, else the engine's own
    # False: the file is sent once complete. FLAC's header carries the sample count and
    # checksum, and common readers (libsndfile) refuse a FLAC stream that lacks them.
    streams: bool = True


# OpenAI's speech formats. ``pcm`` is raw 16-bit little-endian at 24 kHz, as OpenAI
# documents it (players of that API assume the rate); Opus runs at 48 kHz.
OUTPUT_FORMATS = {
    fmt.name: fmt
    for fmt in (
        OutputFormat("mp3", "audio/mpeg", "mp3", "libmp3lame"),
        OutputFormat("opus", "audio/ogg", "ogg", "libopus", 48000),
        OutputFormat("aac", "audio/aac", "adts", "aac"),
        OutputFormat("flac", "audio/flac", "flac", "flac", streams=False),
        OutputFormat("wav", "audio/wav"),
        OutputFormat("pcm", "audio/pcm", rate=24000),
    )
}


class _Sink:
    """A write-only file for FFmpeg's muxer; what it wrote is taken after each piece."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class _WholeFile(io.BytesIO):
    """A seekable file for muxers that rewrite their header at the end; given out whole."""

    closed_by_muxer = False

    def take(self) -> bytes:
        return self.getvalue() if self.closed_by_muxer else b""


class AudioEncoder:
    """Mono float32 pieces at ``rate`` -> bytes of one output format, incrementally.

    Not thread-safe; one per response. ``encode`` returns what can be sent now (possibly
    nothing while a codec fills a frame); ``finish`` returns the rest.
    """

    def __init__(self, name: str, rate: int, speed: float = 1.0) -> None:
        fmt = OUTPUT_FORMATS.get(name)
        if fmt is None:
            raise MediaError(
                f"unknown format {name!r}; expected one of {', '.join(OUTPUT_FORMATS)}"
            )
        self.format = fmt
        self.rate = fmt.rate or rate
        self._tempo = TempoChanger(rate, speed) if abs(speed - 1.0) > 1e-3 else None
        self._resampler = (
            soxr.ResampleStream(rate, fmt.rate, 1, dtype="float32")
            if fmt.rate and fmt.rate != rate and fmt.container is None
            else None
        )
        self._header = _wav_header(self.rate) if fmt.name == "wav" else b""
        self._muxer = _Muxer(fmt, rate) if fmt.container else None

    @property
    def content_type(self) -> str:
        return self.format.content_type

    def encode(self, samples: np.ndarray) -> bytes:
        if self._tempo is not None:
            samples = self._tempo.process(samples)
        return self._emit(samples, last=False)

    def finish(self) -> bytes:
        samples = self._tempo.flush() if self._tempo is not None else np.zeros(0, np.float32)
        return self._emit(samples, last=True)

    def _emit(self, samples: np.ndarray, *, last: bool) -> bytes:
        header, self._header = self._header, b""
        if self._muxer is not None:
            return header + self._muxer.encode(samples, last=last)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        return header + float_to_pcm16(samples)


class _Muxer:
    """An FFmpeg encoder and muxer writing into a ``_Sink``."""

    def __init__(self, fmt: OutputFormat, rate: int) -> None:
        import av

        self._av = av
        self._sink: _Sink | _WholeFile = _Sink() if fmt.streams else _WholeFile()
        # Ogg would hold a whole second of audio per page; smaller pages stream sooner.
        options = {"page_duration": "100000"} if fmt.container == "ogg" else {}
        self._container = av.open(self._sink, mode="w", format=fmt.container, options=options)
        stream = self._container.add_stream(fmt.codec or "", rate=fmt.rate or rate)
        if not isinstance(stream, av.audio.stream.AudioStream):
            raise MediaError(f"{fmt.codec} is not an audio codec")
        self._stream = stream
        self._stream.layout = "mono"
        codec_format = self._stream.codec_context.format
        self._resampler = av.AudioResampler(
            format=codec_format.name if codec_format else "s16",
            layout="mono",
            rate=int(self._stream.rate),
        )
        self._rate = rate

    def encode(self, samples: np.ndarray, *, last: bool) -> bytes:
        if samples.size:
            frame = self._av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1),
                format="flt",
                layout="mono",
            )
            frame.sample_rate = self._rate
            self._write(self._resampler.resample(frame))
        if last:
            self._write(self._resampler.resample(None))
            self._write([None])
            self._container.close()
            if isinstance(self._sink, _WholeFile):
                self._sink.closed_by_muxer = True
        return self._sink.take()

    def _write(self, frames: Sequence[AudioFrame | None]) -> None:
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)


def _wav_header(rate: int) -> bytes:
    """A WAV header for a stream whose length is not known yet: the sizes say 'unknown'
    (0xFFFFFFFF), as streaming servers do; decoders read to the end of the data."""
    unknown = 0xFFFFFFFF
    return b"".join(
        (
            b"RIFF",
            unknown.to_bytes(4, "little"),
            b"WAVEfmt ",
            (16).to_bytes(4, "little"),
            (1).to_bytes(2, "little"),  # PCM
            (1).to_bytes(2, "little"),  # mono
            rate.to_bytes(4, "little"),
            (rate * 2).to_bytes(4, "little"),
            (2).to_bytes(2, "little"),
            (16).to_bytes(2, "little"),
            b"data",
            unknown.to_bytes(4, "little"),
        )
    )
