"""One spoken request while it arrives: where its speech ends, a decode started during
the pause that follows, and (with endpointing) the moment the command is over.

Home Assistant sends ``audio-stop`` 0.7 s after speech ends; the audio is complete long
before. So when ``PAUSE_SECONDS`` of silence follow speech, the audio up to the pause is
decoded at once, in the engine's idle time. If no speech follows, that decode is the
answer; if speech resumes, it is dropped and a later pause starts another.

Every decode — speculative or not, speculation on or off — gets the same audio: up to
``TAIL_SECONDS`` after the last speech window, the rest of the trailing silence trimmed.
That is what makes the early answer the very transcript a decode at ``audio-stop``
would give, and the engines lose nothing by it (Whisper pads its input with silence).

Endpointing follows Home Assistant's rule (its ``VoiceCommandSegmenter``): a command is
speech of at least 0.3 s, lasting at least 1 s, followed by the sensitivity's silence
(relaxed 1.25 s, default 0.9 s — as cautious as HA's 0.7 s of its own, slower detector —,
aggressive 0.25 s); no speech within
``ASR_NO_SPEECH_SECONDS`` is an empty transcript, and ``ASR_MAX_COMMAND_SECONDS`` ends
a command that never pauses. Only live audio is endpointed: while a client sends faster
than anyone speaks (more than 1.5 s of audio in the last second: a file), nothing is
ended early, so uploads with pauses are transcribed whole. A live stream that stops
arriving for ``STALL_SECONDS`` ends with what it sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..engine import AsrRequest, AsrResult, EngineError
from ..stats import AsrTiming
from ..vad import SAMPLE_RATE, SileroStream, SpeechTracker, speech_detector
from .service import AsrService

_LOGGER = logging.getLogger(__name__)

# Silence after speech that starts a speculative decode. On real speech in room noise
# (script/bench_vad.py) 0.2 s fires a median 0.19 s after the speech ends, and 0.52 times
# a command inside speech (0.25 s: 0.24 s and 0.35 times; 0.3 s: 0.29 s and 0.29 times).
# The earlier start is what lets a 2-core box finish a short command's decode (0.4 s)
# before Home Assistant's audio-stop, 0.7 s after the speech; a decode spent on a pause
# inside the command costs CPU, but seldom time (script/bench_latency.py).
PAUSE_SECONDS = 0.2
# Audio every decode keeps after the last speech. Not more than PAUSE_SECONDS: the pause
# decode must have all of it when it starts.
TAIL_SECONDS = PAUSE_SECONDS
SPECULATE_SPEECH_SECONDS = 0.15  # less speech than this (a click, a cough) is not decoded early
MIN_SPEECH_SECONDS = 0.3  # speech a command needs before its end is looked for
MIN_COMMAND_SECONDS = 1.0  # from the start of speech
# Home Assistant's sensitivities. Its "default" 0.7 s is of microVAD silence, which lags
# the speech by about 0.45 s: it ended commands 1.14 s after the speech and cut 8 of 154
# two-part commands at their 0.5 s pause. This detector follows the speech closely, but
# hears a word's soft last sound (the "s" of "meters") as silence, so such a pause can
# look 0.8 s long: 0.9 s cut none of the 154 and ends 0.93 s after the speech (0.8 s: one
# cut). script/bench_vad.py, script/bench_latency.py.
END_SILENCE_SECONDS = {"relaxed": 1.25, "default": 0.9, "aggressive": 0.25}
LIVE_WINDOW_SECONDS = 1.0  # a stream is live while this much wall time brings at most
LIVE_MAX_AUDIO_SECONDS = 1.5  # this much audio (jitter and small bursts allowed)
STALL_SECONDS = 2.0  # no audio for this long: the stream stalled; the command ends
TICK_SECONDS = 0.25  # how often endpointing looks again when no audio arrives

END_OF_SPEECH = "end of speech"
NO_SPEECH = "no speech"
MAX_LENGTH = "max length"
AUDIO_STOP = "audio-stop"


def end_silence(requested: object, default: str) -> float:
    """Seconds of silence that end a command for a ``Transcribe.vad_sensitivity`` (an
    enum, its string, or nothing: the configured default)."""
    name = getattr(requested, "value", requested)
    if isinstance(name, str) and name.lower() in END_SILENCE_SECONDS:
        return END_SILENCE_SECONDS[name.lower()]
    return END_SILENCE_SECONDS[default]


@dataclass
class _Guess:
    speech_end: int  # the tracker's speech end it was decoded for
    cut: int  # the samples it got
    future: asyncio.Future[AsrResult]


class Utterance:
    """The audio of one request and what has been decided about it.

    ``feed`` takes audio as it arrives (on the event loop: the VAD costs about 0.15 ms
    per 32 ms window). With endpointing, ``on_end(reason)`` is called once when the command
    is over; ``answer`` then (or at ``audio-stop``) gives the transcript.
    """

    def __init__(
        self,
        service: AsrService,
        language: str | None,
        hints: tuple[str, ...],
        *,
        silence_seconds: float,
        on_end: Callable[[str], None] | None = None,
        now: float | None = None,
    ) -> None:
        self.service = service
        self.language = language
        self.hints = hints
        self.rate = service.engine.sample_rate
        settings = service.settings
        model = speech_detector() if self.rate == SAMPLE_RATE else None  # both engines: 16 kHz
        self._vad = SileroStream(model) if model is not None else None
        self._tracker = SpeechTracker()
        self._speculate = settings.asr_speculate and self._vad is not None
        self._endpoint = service.ends_commands and self._vad is not None and on_end is not None
        self._on_end = on_end
        self._end_silence = int(silence_seconds * self.rate)
        self._no_speech = settings.asr_no_speech_seconds
        self._max_command = settings.asr_max_command_seconds
        self._pieces: list[np.ndarray] = []
        self.samples = 0
        self.started_at = time.monotonic() if now is None else now
        self.speech_end_at: float | None = None
        self.ended_by: str | None = None
        self.ended_at: float | None = None
        self._guess: _Guess | None = None
        self._arrivals: deque[tuple[float, int]] = deque()  # recent (arrival, samples)
        self._last_audio_at = self.started_at
        self._timer: asyncio.TimerHandle | None = None
        if self._endpoint:
            self._tick()

    # --- audio in

    def feed(self, samples: np.ndarray, now: float | None = None) -> None:
        """Add audio (mono float32 at the engine's rate) that arrived at ``now``."""
        if self.ended_by is not None or samples.size == 0:
            return
        now = time.monotonic() if now is None else now
        self._pieces.append(samples)
        self.samples += samples.size
        self._last_audio_at = now
        self._arrivals.append((now, samples.size))
        if self._vad is None:
            return
        before = self._tracker.speech_end
        self._tracker.update(self._vad.feed(samples))
        if self._tracker.speech_end != before:
            self.speech_end_at = now
        self._drop_stale_guess()
        if self._speculate:
            self._maybe_speculate()
        if self._endpoint:
            self._check_end(now)

    @property
    def audio_seconds(self) -> float:
        return self.samples / self.rate

    def _cut(self) -> int:
        """Samples every decode gets: up to ``TAIL_SECONDS`` past the last speech."""
        end = self._tracker.speech_end
        if end is None:
            return self.samples  # no speech detected: decode everything, as without a VAD
        return min(end + int(TAIL_SECONDS * self.rate), self.samples)

    def _request(self) -> AsrRequest:
        audio = np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32)
        self._pieces = [audio]
        return AsrRequest(audio[: self._cut()], self.language, self.hints)

    # --- speculation

    def _drop_stale_guess(self) -> None:
        guess = self._guess
        if guess is not None and (
            guess.speech_end != self._tracker.speech_end or guess.cut != self._cut()
        ):
            guess.future.cancel()  # new speech: that decode is not the answer
            self._guess = None
            _LOGGER.debug("Pause decode of %.2f s dropped: speech again", guess.cut / self.rate)

    def _maybe_speculate(self) -> None:
        tracker = self._tracker
        if (
            self._guess is not None
            or tracker.speech_end is None
            or tracker.speech_samples < SPECULATE_SPEECH_SECONDS * self.rate
            or tracker.silence < PAUSE_SECONDS * self.rate
        ):
            return
        future = self.service.speculate(self._request())
        if future is not None:  # else the engine is busy: tried again with the next audio
            self._guess = guess = _Guess(tracker.speech_end, self._cut(), future)
            _LOGGER.debug("Pause decode of %.2f s started", guess.cut / self.rate)

    # --- endpointing

    def _live(self, now: float) -> bool:
        """At most ``LIVE_MAX_AUDIO_SECONDS`` of audio arrived in the last second."""
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] < now - LIVE_WINDOW_SECONDS:
            arrivals.popleft()
        return sum(size for _, size in arrivals) <= LIVE_MAX_AUDIO_SECONDS * self.rate

    def _end_reason(self, now: float) -> str | None:
        tracker = self._tracker
        if self.audio_seconds >= self._max_command:
            return MAX_LENGTH
        if tracker.speech_samples >= MIN_SPEECH_SECONDS * self.rate:
            assert tracker.speech_start is not None
            since_start = self.samples - tracker.speech_start
            if (
                tracker.silence >= self._end_silence
                and since_start >= MIN_COMMAND_SECONDS * self.rate
            ):
                return END_OF_SPEECH
        elif self.audio_seconds >= self._no_speech:
            return NO_SPEECH
        if now - self._last_audio_at >= STALL_SECONDS:
            _LOGGER.info("No audio for %.1f s: ending the command", now - self._last_audio_at)
            return END_OF_SPEECH if tracker.speech_end is not None else NO_SPEECH
        return None

    def _check_end(self, now: float) -> None:
        if self.ended_by is None and self._live(now):
            reason = self._end_reason(now)
            if reason is not None:
                self._end(reason, now)

    def _tick(self) -> None:
        """Look again while no audio arrives (a stalled stream, a burst that has passed)."""
        self._check_end(time.monotonic())
        if self.ended_by is None:
            self._timer = asyncio.get_running_loop().call_later(TICK_SECONDS, self._tick)

    def _end(self, reason: str, now: float) -> None:
        self.ended_by = reason
        self.ended_at = now
        if self._timer is not None:
            self._timer.cancel()
        if self._on_end is not None:
            self._on_end(reason)

    # --- the answer

    def stop(self, now: float | None = None) -> None:
        """``audio-stop`` arrived first: the client ended the command."""
        if self.ended_by is None:
            self.ended_by = AUDIO_STOP
            self.ended_at = time.monotonic() if now is None else now
        if self._timer is not None:
            self._timer.cancel()

    async def answer(self) -> tuple[AsrResult, bool]:
        """The transcript, and whether it came from the decode started in the pause."""
        if self.ended_by == NO_SPEECH and self._tracker.speech_end is None:
            return AsrResult(text="", language=self.language), False
        request = self._request()
        if request.audio.size == 0:
            raise EngineError("no audio was received before audio-stop", "no-audio")
        self._drop_stale_guess()
        guess, self._guess = self._guess, None
        if guess is not None:
            try:
                result = await guess.future  # cancelled with the client
            except EngineError:
                pass  # decoded again below, as any request whose decode failed alone
            else:
                self.service.adopted()
                return result, True
        return await self.service.transcribe(request), False

    def timing(
        self, transcript_at: float, *, speculative: bool = False, error: str | None = None
    ) -> AsrTiming:
        stop_at = self.ended_at if self.ended_by == AUDIO_STOP else None
        silent = self.ended_by == NO_SPEECH and self._tracker.speech_end is None
        return AsrTiming(
            audio_seconds=self.audio_seconds,
            decoded_seconds=0.0 if silent else self._cut() / self.rate,
            ended_by=self.ended_by or AUDIO_STOP,
            speculative=speculative,
            started_at=self.started_at,
            transcript_at=transcript_at,
            speech_end_at=self.speech_end_at,
            stop_at=stop_at,
            error=error,
        )

    def close(self) -> None:
        """The request is over (answered, failed, or its client left): drop pending work."""
        if self._timer is not None:
            self._timer.cancel()
        self.ended_by = self.ended_by or AUDIO_STOP
        if self._guess is not None:
            self._guess.future.cancel()
            self._guess = None
        self._pieces = []
