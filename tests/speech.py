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
