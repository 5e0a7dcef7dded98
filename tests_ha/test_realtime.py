"""A spoken command through Home Assistant's real Assist pipeline in real time.

Human speech ("go forward ten meters") followed by 1.5 s of room noise is fed like a
microphone, 10 ms every 10 ms, into ``async_pipeline_from_audio_stream`` with Home
Assistant's own audio processing on. Home Assistant 2026.10 runs its VAD on the STT
stage only when our ``info`` says ``requires_external_vad: true``:

* with our endpointing off, it reports ``stt-vad-start``, then ``stt-vad-end`` after
  0.7 s of silence, ends our audio, and the transcript follows at once — decoded during
  that silence;
* with it on (the default), Home Assistant runs no VAD, never ends the audio, and takes
  the transcript we send as soon as we decide the command is over.

The times between those moments are printed at the end of the run.
"""

from __future__ import annotations

from homeassistant.components.assist_pipeline import PipelineEventType
from homeassistant.core import HomeAssistant

from .assist import (
    GO_FORWARD_RAW,
    RealtimeRun,
    create_pipeline,
    run_realtime_pipeline,
    setup_engines,
    speech_then_silence,
    words,
)
from .conftest import Servers, StartServers, report

GO_FORWARD = GO_FORWARD_RAW.read_bytes()
E = PipelineEventType


async def _run(hass: HomeAssistant, servers: Servers, title: str) -> RealtimeRun:
    stt_id, tts_id = await setup_engines(hass, servers)
    pipeline = await create_pipeline(hass, stt_id, tts_id)
    run = await run_realtime_pipeline(
        hass, pipeline.id, speech_then_silence(GO_FORWARD), speech_bytes=len(GO_FORWARD)
    )
    report(title, run.summary())
    assert run.error is None, run.error
    assert run.transcript is not None, run.summary()
    assert words(run.transcript) == ["go", "forward", "ten", "meters"], run.transcript
    return run


async def test_home_assistant_vad_then_the_transcript_decoded_during_the_pause(
    hass: HomeAssistant, socket_enabled: None, start_servers: StartServers
) -> None:
    servers = start_servers("--no-asr-endpointing")
    decoded_early = servers.log_text().count("decoded during the pause")
    run = await _run(hass, servers, "real-time pipeline, Home Assistant's VAD (endpointing off)")
    assert run.requires_external_vad is True
    order = [E.STT_START, E.STT_VAD_START, E.STT_VAD_END, E.STT_END]
    assert all(kind in run.types for kind in order), run.summary()
    times = [run.at(kind) for kind in order]
    assert times == sorted(times), run.summary()
    # Home Assistant ended the audio (its VAD), and the answer was the pause decode.
    assert run.chunks_sent < run.chunks_total, run.summary()
    assert servers.log_text().count("decoded during the pause") == decoded_early + 1


async def test_our_endpointing_replaces_home_assistants_vad(
    hass: HomeAssistant, socket_enabled: None, servers: Servers
) -> None:
    ended_here = servers.log_text().count("ended here (end of speech)")
    run = await _run(hass, servers, "real-time pipeline, our endpointing (the default)")
    assert run.requires_external_vad is False
    types = run.types
    assert E.STT_VAD_START not in types and E.STT_VAD_END not in types, run.summary()
    # We ended the command (Home Assistant sent no audio-stop: the log says who ended
    # it), and the transcript came well before the microphone's audio ran out.
    assert servers.log_text().count("ended here (end of speech)") == ended_here + 1
    stt_end = run.at(E.STT_END)
    ran_out = run.started + run.chunks_total * 0.01
    assert stt_end is not None and stt_end < ran_out - 0.3, run.summary()
