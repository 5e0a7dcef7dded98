"""What each finished request took, kept for the log, the HTTP status and benchmarks.

Times are ``time.monotonic()`` readings taken by the server as events arrived and left,
so "speech end -> transcript" is what the user felt minus only the network.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

RECENT = 200  # requests remembered per service


@dataclass(frozen=True)
class AsrTiming:
    """One speech-to-text request, from its first audio to its answer."""

    audio_seconds: float  # audio received
    decoded_seconds: float  # audio the decode got (trailing silence trimmed)
    ended_by: str  # "audio-stop", "end of speech", "no speech", "max length"
    speculative: bool  # answered from the decode started during the pause
    started_at: float  # audio-start arrived
    transcript_at: float  # the answer was sent
    speech_end_at: float | None = None  # the audio where speech ended arrived
    stop_at: float | None = None  # audio-stop arrived (None: the server ended the command)
    error: str | None = None  # the error code sent instead of a transcript

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


class Recent(deque[AsrTiming]):
    """The last ``RECENT`` requests, newest last."""

    def __init__(self) -> None:
        super().__init__(maxlen=RECENT)
