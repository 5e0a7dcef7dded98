"""PCM conversion: every width, channel count and rate to mono float32."""

from __future__ import annotations

import numpy as np
import pytest

from wyoming_opentalker.audio import (
    AudioFormatError,
    PcmFormat,
    PcmToFloat,
    float_to_pcm16,
    pcm_to_float,
)


def _tone(rate: int, seconds: float = 1.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_frequency(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(audio.size, 1 / rate)[int(np.argmax(spectrum))])


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_widths(width: int) -> None:
    tone = _tone(16000)
    if width == 1:
        pcm = np.clip(np.rint(tone * 127 + 128), 0, 255).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.rint(tone * (2**23 - 1)).astype("<i4")
        pcm = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        dtype = "<i2" if width == 2 else "<i4"
        pcm = np.rint(tone * (2 ** (8 * width - 1) - 1)).astype(dtype).tobytes()
    out = pcm_to_float(pcm, width, 1)
    assert out.dtype == np.float32 and out.size == tone.size
    assert np.max(np.abs(out - tone)) < (0.01 if width == 1 else 1e-4)


def test_stereo_is_averaged() -> None:
    left, right = _tone(16000), np.zeros(16000, dtype=np.float32)
    pcm = float_to_pcm16(np.stack([left, right], axis=1).reshape(-1))
    assert np.allclose(pcm_to_float(pcm, 2, 2), left / 2, atol=1e-4)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_streaming_resample_keeps_pitch_length_and_has_no_seams(rate: int) -> None:
    tone = _tone(rate, 2.0)
    pcm = float_to_pcm16(tone)
    converter = PcmToFloat(16000)
    fmt = PcmFormat(rate, 2, 1)
    pieces = [converter.feed(pcm[i : i + 999], fmt) for i in range(0, len(pcm), 999)]
    out = np.concatenate([*pieces, converter.flush()])
    assert abs(out.size - 32000) <= 2
    assert abs(_dominant_frequency(out, 16000) - 440) < 2
    whole = PcmToFloat(16000)
    reference = np.concatenate([whole.feed(pcm, fmt), whole.flush()])
    assert np.allclose(out, reference, atol=1e-5)  # chunk boundaries leave no trace
    assert converter.input_seconds == pytest.approx(2.0, abs=1e-3)


def test_float_to_pcm16_clips() -> None:
    pcm = np.frombuffer(float_to_pcm16(np.array([2.0, -2.0, 0.0], dtype=np.float32)), "<i2")
    assert pcm.tolist() == [32767, -32767, 0]


@pytest.mark.parametrize(
    ("rate", "width", "channels", "message"),
    [
        (0, 2, 1, "rate"),
        (16000, 5, 1, "width"),
        (16000, 2, 0, "channels"),
        (16000, 2, 64, "channels"),
        ("16000", 2, 1, "integer"),
    ],
)
def test_bad_formats(rate: object, width: object, channels: object, message: str) -> None:
    with pytest.raises(AudioFormatError, match=message):
        PcmFormat(rate, width, channels).validate()  # type: ignore[arg-type]
