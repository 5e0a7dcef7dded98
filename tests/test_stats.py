"""Request timings both services keep (``Tally``), and what a TTS timing derives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from wyoming_opentalker.stats import RECENT, AsrTiming, Recent, Tally, TtsTiming


@dataclass
class _Service(Tally[TtsTiming]):
    kind: ClassVar[str] = "tts"
    requests_served: int = 0
    requests_failed: int = 0
    recent: Recent[TtsTiming] = field(default_factory=Recent)


def test_tts_timing_first_audio_and_real_time_factor() -> None:
    timing = TtsTiming(40, 10.0, 12.5, first_audio_at=10.25, audio_seconds=2.0,
                       synthesis_seconds=0.5)  # fmt: skip
    assert timing.first_audio == 0.25 and timing.real_time_factor == 0.25
    data = timing.as_dict()
    assert data["first_audio"] == 0.25 and data["real_time_factor"] == 0.25
    failed = TtsTiming(5, 1.0, 1.0, error="busy")
    assert failed.first_audio is None and failed.real_time_factor is None


def test_tally_counts_failures_and_lists_newest_first() -> None:
    service = _Service()
    for i in range(RECENT + 5):
        service.record(TtsTiming(i, float(i), float(i) + 1, error="busy" if i % 2 else None))
    assert service.requests_failed == (RECENT + 5) // 2
    rows = service.recent_rows(now=1000.0)
    assert len(rows) == RECENT and rows[0]["characters"] == RECENT + 4
    assert rows[0]["kind"] == "tts" and rows[0]["ago"] == 1000.0 - (RECENT + 5)


def test_asr_timing_ends_when_the_transcript_was_sent() -> None:
    timing = AsrTiming(3.0, 2.5, "upload", False, 5.0, 6.5, stop_at=5.0, via="http")
    assert timing.finished_at == 6.5 and timing.stop_to_transcript == 1.5
    assert timing.as_dict()["via"] == "http" and timing.speech_end_to_transcript is None
