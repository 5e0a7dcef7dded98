"""What each finished request took, kept for the log, the status page and benchmarks.

Times are ``time.monotonic()`` readings taken by the server as events arrived and left,
so "speech end -> transcript" is what the user felt minus only the network. Both services
keep their requests the same way (``Tally``): counters, and the last ``RECENT`` timings.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

RECENT = 200  # requests remembered per service


@dataclass(frozen=True)
class AsrTiming:
    """One speech-to-text request, from its first audio to its answer."""

    audio_seconds: float  # audio received
    decoded_seconds: float  # audio the decode got (trailing silence trimmed)
    ended_by: str  # "audio-stop", "end of speech", "no speech", "max length", "upload"
    speculative: bool  # answered from the decode started during the pause
    started_at: float  # audio-start arrived
    transcript_at: float  # the answer was sent
    speech_end_at: float | None = None  # the audio where speech ended arrived
    stop_at: float | None = None  # audio-stop arrived (None: the server ended the command)
    error: str | None = None  # the error code sent instead of a transcript
    via: str = "wyoming"  # or "http"

    @property
    def finished_at(self) -> float:
        return self.transcript_at

    @property
    def speech_end_to_transcript(self) -> float | None:
        if self.speech_end_at is None:
            return None
        return self.transcript_at - self.speech_end_at

    @property
    def stop_to_transcript(self) -> float | None:
        if self.stop_at is None:
            return None
        return self.transcript_at - self.stop_at

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["speech_end_to_transcript"] = self.speech_end_to_transcript
        data["stop_to_transcript"] = self.stop_to_transcript
        return data


@dataclass(frozen=True)
class TtsTiming:
    """One text-to-speech request, from its first text to its last audio."""

    characters: int  # in the pieces synthesised (white space between two not counted)
    started_at: float  # the first text reached the synthesiser
    finished_at: float  # the last audio was handed on (or the request failed)
    first_audio_at: float | None = None  # the first audio was ready to send
    audio_seconds: float = 0.0  # audio made
    synthesis_seconds: float = 0.0  # time the engine spent making it
    voice: str = ""
    error: str | None = None  # the error code sent instead of (the rest of) the audio
    via: str = "wyoming"  # or "http"

    @property
    def first_audio(self) -> float | None:
        """Text -> first audio, in seconds."""
        if self.first_audio_at is None:
            return None
        return self.first_audio_at - self.started_at

    @property
    def real_time_factor(self) -> float | None:
        """Engine time per second of audio (below 1: faster than it is spoken)."""
        if self.audio_seconds <= 0:
            return None
        return self.synthesis_seconds / self.audio_seconds

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["first_audio"] = self.first_audio
        data["real_time_factor"] = self.real_time_factor
        return data


class Timing(Protocol):
    """What ``Tally`` needs of a request's timing."""

    @property
    def error(self) -> str | None: ...

    @property
    def finished_at(self) -> float: ...

    def as_dict(self) -> dict[str, Any]: ...


T = TypeVar("T", bound=Timing)


class Recent(deque[T]):
    """The last ``RECENT`` requests, newest last."""

    def __init__(self) -> None:
        super().__init__(maxlen=RECENT)


class Tally(Generic[T]):
    """Counters and recent timings, the same for both services (a mixin of their
    dataclasses, which declare the three fields)."""

    kind: ClassVar[str]
    requests_served: int
    requests_failed: int
    recent: Recent[T]

    def record(self, timing: T) -> None:
        """Remember a finished request's timings; a failed one is counted here (a served
        one is counted where its work was done)."""
        self.recent.append(timing)
        if timing.error is not None:
            self.requests_failed += 1

    def recent_rows(self, now: float) -> list[dict[str, Any]]:
        """The remembered requests, newest first, each with how long ago it ended."""
        rows = []
        for timing in reversed(self.recent):
            row = timing.as_dict()
            row["kind"] = self.kind
            row["ago"] = max(0.0, now - timing.finished_at)
            rows.append(row)
        return rows
