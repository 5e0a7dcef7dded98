"""Home Assistant's real ``wyoming`` integration (2026.10.4) against our servers.

The user's path, through Home Assistant's own code: the config flow a user fills in,
the speech-to-text entity it creates, text-to-speech plain and streaming (Home
Assistant decides which from our ``info``), and a whole Assist pipeline — real human
speech in, our transcript, Home Assistant's intent matching, its answer spoken by our
TTS and understood again by our STT.
"""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from homeassistant import config_entries
from homeassistant.components import stt, tts
from homeassistant.components.assist_pipeline import (
    PipelineEvent,
    PipelineEventType,
    async_pipeline_from_audio_stream,
)
from homeassistant.core import Context, HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.setup import async_setup_component

from .assist import create_pipeline, pcm_16k_metadata, setup_engines, words
from .conftest import Servers

# "go forward ten meters", a human recording, 16 kHz s16le (read once, not in the loop).
GO_FORWARD = Path("/usr/share/pocketsphinx/test/data/goforward.raw").read_bytes()
WAV_16K = {
    "preferred_format": "wav",
    "preferred_sample_rate": 16000,
    "preferred_sample_channels": 1,
}
ANSWER = "The kitchen lights are now on, and the front door is locked."
KEYWORDS = {"kitchen", "lights", "front", "door", "locked"}


def _understood(heard: list[str], keywords: set[str], allowed_misses: int = 1) -> bool:
    """Piper's synthesis has random noise and tiny.en may mishear one word of it."""
    return len(keywords - set(heard)) <= allowed_misses


async def _chunks(data: bytes, size: int = 4096) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def _transcribe(hass: HomeAssistant, stt_id: str, pcm: bytes) -> str:
    entity = stt.async_get_speech_to_text_entity(hass, stt_id)
    assert entity is not None
    metadata = pcm_16k_metadata("en")
    result = await entity.internal_async_process_audio_stream(metadata, _chunks(pcm))
    assert result.result is stt.SpeechResultState.SUCCESS, result
    return result.text or ""


def _pcm_of_wav(data: bytes) -> bytes:
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        return wav.readframes(wav.getnframes())


async def _speech(stream: tts.ResultStream) -> bytes:
    return b"".join([chunk async for chunk in stream.async_stream_result()])


async def test_config_flow_creates_stt_and_tts(
    hass: HomeAssistant, socket_enabled: None, servers: Servers
) -> None:
    stt_id, tts_id = await setup_engines(hass, servers)
    assert hass.states.get(stt_id) is not None and hass.states.get(tts_id) is not None
    entity = stt.async_get_speech_to_text_entity(hass, stt_id)
    assert entity is not None and entity.supported_languages == ["en"]
    # A wrong port is reported as the user would see it, not as a crash.
    result = await hass.config_entries.flow.async_init(
        "wyoming", context={"source": config_entries.SOURCE_USER}
    )
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"host": "127.0.0.1", "port": 1}
    )
    assert result["type"] is FlowResultType.FORM and result["errors"] == {"base": "cannot_connect"}


async def test_speech_to_text(hass: HomeAssistant, socket_enabled: None, servers: Servers) -> None:
    stt_id, _ = await setup_engines(hass, servers)
    text = await _transcribe(hass, stt_id, GO_FORWARD)
    assert words(text) == ["go", "forward", "ten", "meters"], text


async def test_text_to_speech_plain(
    hass: HomeAssistant, socket_enabled: None, servers: Servers
) -> None:
    stt_id, tts_id = await setup_engines(hass, servers)
    stream = tts.async_create_stream(hass, tts_id, "en", WAV_16K)
    stream.async_set_message(ANSWER)
    pcm = _pcm_of_wav(await _speech(stream))
    assert len(pcm) / 32000 > 2.0
    heard = words(await _transcribe(hass, stt_id, pcm))
    assert _understood(heard, KEYWORDS), heard


async def test_text_to_speech_streaming(
    hass: HomeAssistant, socket_enabled: None, servers: Servers
) -> None:
    """Home Assistant streams LLM-style deltas because our info says it may; it also
    repeats the whole text as a plain ``synthesize``, which must be ignored."""
    stt_id, tts_id = await setup_engines(hass, servers)
    entity = hass.data[tts.DATA_COMPONENT].get_entity(tts_id)
    assert entity is not None and entity.async_supports_streaming_input()
    before = servers.log_text().count("Ignoring synthesize sent during a stream")

    async def deltas() -> AsyncIterator[str]:
        for i in range(0, len(ANSWER), 7):  # split mid-word, as LLM deltas are
            yield ANSWER[i : i + 7]

    stream = tts.async_create_stream(hass, tts_id, "en", WAV_16K)
    stream.async_set_message_stream(deltas())
    pcm = _pcm_of_wav(await _speech(stream))
    heard = words(await _transcribe(hass, stt_id, pcm))
    assert _understood(heard, KEYWORDS), heard
    assert servers.log_text().count("Ignoring synthesize sent during a stream") == before + 1


async def test_assist_pipeline_audio_to_intent_to_speech(
    hass: HomeAssistant, socket_enabled: None, servers: Servers, tmp_path: Path
) -> None:
    """A spoken command (a human recording) runs the whole pipeline: our STT, Home
    Assistant's intent matching (a custom sentence with an intent_script answer, as
    users write them), and our TTS speaking the answer."""
    hass.config.config_dir = str(tmp_path)
    sentences = tmp_path / "custom_sentences" / "en"
    sentences.mkdir(parents=True)
    (sentences / "robot.yaml").write_text(
        "language: en\n"
        "intents:\n"
        "  RobotGoForward:\n"
        "    data:\n"
        "      - sentences:\n"
        '          - "go forward (ten|10) (meters|metres)"\n'
    )
    stt_id, tts_id = await setup_engines(hass, servers)
    assert await async_setup_component(
        hass,
        "intent_script",
        {"intent_script": {"RobotGoForward": {"speech": {"text": "Moving forward ten meters."}}}},
    )
    pipeline = await create_pipeline(hass, stt_id, tts_id)

    events: list[PipelineEvent] = []
    await async_pipeline_from_audio_stream(
        hass,
        context=Context(),
        event_callback=events.append,
        stt_metadata=pcm_16k_metadata(),  # the pipeline fills in its language
        stt_stream=_chunks(GO_FORWARD),
        pipeline_id=pipeline.id,
        tts_audio_output=WAV_16K,
    )
    by_type: dict[PipelineEventType, dict[str, Any]] = {e.type: e.data or {} for e in events}
    assert PipelineEventType.ERROR not in by_type, by_type.get(PipelineEventType.ERROR)
    heard = by_type[PipelineEventType.STT_END]["stt_output"]["text"]
    assert words(heard) == ["go", "forward", "ten", "meters"], heard
    response = by_type[PipelineEventType.INTENT_END]["intent_output"]["response"]
    assert response["speech"]["plain"]["speech"] == "Moving forward ten meters."
    token = by_type[PipelineEventType.TTS_END]["tts_output"]["token"]
    result = tts.async_get_stream(hass, token)
    assert result is not None
    spoken = words(await _transcribe(hass, stt_id, _pcm_of_wav(await _speech(result))))
    assert _understood(spoken, {"moving", "forward", "ten", "meters"}), spoken
