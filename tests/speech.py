"""Real human speech with transcripts, from Debian packages, and the WER normalisation.

Normalisation (stated once, used everywhere): lower case; hyphens become spaces; other
punctuation removed; the digits 0-10 written as words; "mr" -> "mister". Nothing else.
"""

from __future__ import annotations

import re
import wave
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
ALSA = Path("/usr/share/sounds/alsa")
_NUMBERS = "zero one two three four five six seven eight nine ten".split()


@dataclass(frozen=True)
class Clip:
    name: str
    set: str
    path: Path
    reference: str

    def pcm(self) -> tuple[bytes, int, int, int]:
        """Raw PCM and its format (rate, width, channels)."""
        if self.path.suffix == ".raw":
            return self.path.read_bytes(), 16000, 2, 1
        with wave.open(str(self.path)) as wav:
            return (
                wav.readframes(wav.getnframes()),
                wav.getframerate(),
                wav.getsampwidth(),
                wav.getnchannels(),
            )

    def seconds(self) -> float:
        pcm, rate, width, channels = self.pcm()
        return len(pcm) / (rate * width * channels)


def _sphinx_transcripts(path: Path, folder: Path, set_name: str) -> list[Clip]:
    clips = []
    for line in path.read_text().splitlines():
        match = re.match(r"<s>(.*)</s>\s*\((.*)\)", line.strip())
        if match:
            text, name = match.groups()
            clips.append(Clip(name, set_name, folder / f"{name}.wav", " ".join(text.split())))
    return clips


def corpus() -> list[Clip]:
    """Every clip with a transcript in the two packages (Noise.wav has no speech)."""
    clips = _sphinx_transcripts(
        POCKETSPHINX / "librivox" / "transcription", POCKETSPHINX / "librivox", "librivox"
    )
    clips += _sphinx_transcripts(
        POCKETSPHINX / "cards" / "cards.transcription", POCKETSPHINX / "cards", "cards"
    )
    clips.append(
        Clip("goforward", "goforward", POCKETSPHINX / "goforward.raw", "go forward ten meters")
    )
    for wav in sorted(ALSA.glob("*.wav")):
        if wav.stem != "Noise":
            clips.append(Clip(wav.stem, "alsa", wav, wav.stem.replace("_", " ").lower()))
    return clips


def normalize(text: str) -> str:
    text = text.lower().replace("-", " ")
    text = re.sub(r"[^\w\s']", " ", text)
    words = []
    for word in text.split():
        if word.isdigit() and int(word) <= 10:
            word = _NUMBERS[int(word)]
        words.append("mister" if word == "mr" else word)
    return " ".join(words)


def wer(references: list[str], hypotheses: list[str]) -> float:
    ref = [normalize(text) for text in references]
    hyp = [normalize(text) for text in hypotheses]
    return float(jiwer.wer(ref, hyp))


def float_audio(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def wav_bytes(pcm: bytes, rate: int = 16000) -> bytes:
    """16-bit mono PCM as a WAV file."""
    import io

    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return out.getvalue()


# --- live commands: speech in a quiet room, as a microphone streams it

RATE = 16000


def samples_16k(clip: Clip) -> np.ndarray:
    """The clip as mono float32 at 16 kHz."""
    import soxr

    pcm, rate, width, channels = clip.pcm()
    assert width == 2
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1)
    if rate != RATE:
        audio = soxr.resample(audio, rate, RATE).astype(np.float32)
    return audio


def speech_bounds(audio: np.ndarray) -> tuple[float, float]:
    """Where speech starts and ends in a clean clip, in seconds: the first and last 10 ms
    frame whose energy (averaged over 50 ms) is within 25 dB of the loudest. Independent
    of any VAD under test; these recordings' own noise floor sits 30-40 dB down."""
    frames = audio[: audio.size // 160 * 160].reshape(-1, 160)
    power = np.convolve(np.mean(frames**2, axis=1), np.ones(5) / 5, mode="same")
    energy = 10 * np.log10(power + 1e-12)
    loud = np.flatnonzero(energy >= energy.max() - 25.0)
    return float(loud[0] * 0.01), float((loud[-1] + 1) * 0.01)


def room_noise(seconds: float, level_db: float, seed: int) -> np.ndarray:
    """Quiet, steady room noise (pinkish: white noise through a one-pole low-pass), with
    its RMS at ``level_db`` dBFS."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(int(seconds * RATE))
    noise = np.empty_like(white)
    state = 0.0
    for index, value in enumerate(white):  # a few seconds: fast enough
        state = 0.97 * state + value
        noise[index] = state
    noise -= noise.mean()
    noise *= 10 ** (level_db / 20) / (np.sqrt(np.mean(noise**2)) + 1e-12)
    return noise.astype(np.float32)


@dataclass(frozen=True)
class LiveCommand:
    """A command as a microphone hears it: noise, speech (one or more parts with pauses
    between), trailing noise. Times in seconds from the start of the stream."""

    name: str
    reference: str
    pcm: bytes
    speech_end: float
    pauses: tuple[float, ...] = ()  # silent gaps inside the command

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / RATE


def live_command(
    parts: list[Clip],
    *,
    pause: float = 0.5,
    lead: float = 0.5,
    trail: float = 1.5,
    noise_db: float = -60.0,
    seed: int = 0,
) -> LiveCommand:
    """``parts`` spoken one after another with ``pause`` seconds between them (measured
    from one part's speech end to the next one's speech start), in quiet room noise."""
    pieces: list[np.ndarray] = [np.zeros(int(lead * RATE), np.float32)]
    position = lead
    speech_end = lead
    gaps: list[float] = []
    for index, clip in enumerate(parts):
        audio = samples_16k(clip)
        start, end = speech_bounds(audio)
        if index:  # long leading silence goes, leaving 0.15 s (a quiet first sound)
            skip = max(0.0, start - 0.15)
            audio = audio[int(skip * RATE) :]
            start, end = start - skip, end - skip
            gap = int(max(0.0, pause - (position - speech_end) - start) * RATE)
            pieces.append(np.zeros(gap, np.float32))
            position += gap / RATE
            gaps.append(position + start - speech_end)
        pieces.append(audio)
        speech_end = position + end
        position += audio.size / RATE
    pieces.append(np.zeros(int(trail * RATE), np.float32))
    audio = np.concatenate(pieces)
    audio = audio + room_noise(audio.size / RATE, noise_db, seed)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    return LiveCommand(
        "+".join(clip.name for clip in parts),
        " ".join(clip.reference for clip in parts),
        pcm,
        speech_end,
        tuple(gaps),
    )
