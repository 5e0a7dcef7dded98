"""Qwen3-ASR backend (``qwen-asr``, transformers): FP16 on CUDA, real batching, hints.

The model is what most users install the product for: it is far better than Whisper at
Chinese and dialects. It decodes several utterances in one ``generate`` call, so the
service's batcher hands it everything that is waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..device import (
    GpuInfo,
    Precision,
    PrecisionChoice,
    choose_precision,
    default_asr_batch_size,
    gpu_info,
    weight_bytes,
)
from ..engine import AsrEngine, AsrRequest, AsrResult, EngineError, EngineInfo
from ..languages import CODES, language_name
from ..memory import BYTES_PER, GIB, MemoryNeed, safetensors_parameters
from ..models import ModelSource, ResolvedModel, resolve_configured
from ..settings import Settings

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-ASR-0.6B"
# Files a Qwen3-ASR checkpoint needs; anything else in the repository is not fetched.
_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model")


def resolve(settings: Settings) -> ResolvedModel:
    source = ModelSource(default=DEFAULT_MODEL, allow_patterns=_PATTERNS)
    return resolve_configured(settings.asr_model, source, settings)


def asr_precision(settings: Settings, device: str, gpu: GpuInfo | None) -> PrecisionChoice:
    """``ASR_DTYPE`` if given, else FP16 on CUDA when ``QWEN_ASR_USE_FP16`` (the default)."""
    if settings.asr_dtype != "auto":
        return choose_precision(Precision(settings.asr_dtype), device, gpu)
    wanted = Precision.FP16 if settings.qwen_asr_use_fp16 else Precision.FP32
    return choose_precision(wanted, device, gpu)


# Per request in a batch: the KV cache of the 0.6B thinker (28 layers x 8 KV heads x 128,
# about 112 KiB a token in FP16) over ~30 s of audio tokens plus the longest answer,
# with the audio encoder's activations: ~0.1 GiB. Plus fixed buffers.
_WORKING_FIXED = int(0.15 * GIB)
_WORKING_PER_REQUEST = int(0.1 * GIB)


def memory_need(settings: Settings, device: str, gpu: GpuInfo | None) -> MemoryNeed:
    """Weights at the precision they will load in, plus the batch's working memory."""
    precision = asr_precision(settings, device, gpu).precision
    params = safetensors_parameters(resolve(settings).path)
    batch = settings.qwen_asr_max_batch_size or default_asr_batch_size(gpu)
    return MemoryNeed(
        "asr",
        f"Qwen3-ASR ({precision.value}, batch {batch})",
        params * BYTES_PER[precision],
        _WORKING_FIXED + batch * _WORKING_PER_REQUEST,
    )


class Qwen3AsrEngine(AsrEngine):
    """``Qwen3ASRModel`` loaded through its own ``from_pretrained``, like real weights."""

    def __init__(self, settings: Settings, device: str) -> None:
        import torch
        from qwen_asr import Qwen3ASRModel

        resolved = resolve(settings)
        gpu = gpu_info(device)
        choice = asr_precision(settings, device, gpu)
        if not device.startswith("cuda"):
            _LOGGER.info("Qwen3-ASR on the CPU runs in FP32 (%s)", choice.reason)
        self.max_batch_size = settings.qwen_asr_max_batch_size or default_asr_batch_size(gpu)
        self._model = Qwen3ASRModel.from_pretrained(
            str(resolved.path),
            dtype=getattr(torch, choice.precision.value),
            device_map=device,
            max_inference_batch_size=self.max_batch_size,
            max_new_tokens=settings.qwen_asr_max_new_tokens,
        )
        generation = self._model.model.generation_config
        if generation.pad_token_id is None:  # silences a warning on every generate()
            generation.pad_token_id = self._model.processor.tokenizer.pad_token_id
        self._hints = settings.asr_hints
        supported = getattr(self._model.model.config, "support_languages", None) or list(
            self._model.get_supported_languages()
        )
        self._languages = [CODES[name.lower()] for name in supported if name.lower() in CODES]
        weights = weight_bytes(self._model.model)
        import qwen_asr

        self._info = EngineInfo(
            engine="qwen3-asr",
            model=resolved.name,
            model_path=str(resolved.path),
            device=device,
            precision=f"{choice.precision.value} ({choice.reason})",
            weights_bytes=weights,
            version=f"qwen-asr {getattr(qwen_asr, '__version__', '0.0.6')}",
            description=f"Qwen3-ASR {resolved.name} ({choice.precision.value})",
            attribution=("Alibaba Qwen", "https://github.com/QwenLM/Qwen3-ASR"),
        )
        _LOGGER.info(
            "Qwen3-ASR: device %s, dtype %s, batch up to %d, weights %.0f MiB",
            device,
            choice.precision.value,
            self.max_batch_size,
            weights / 2**20,
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def languages(self) -> list[str]:
        return self._languages

    @property
    def detects_language(self) -> bool:
        return True

    def transcribe(self, requests: Sequence[AsrRequest]) -> list[AsrResult]:
        """One ``transcribe`` call for the whole batch (the library splits past its limit)."""
        audio = [(request.audio, self.sample_rate) for request in requests]
        contexts = [self._context(request.hints) for request in requests]
        languages: list[str | None] = []
        for request in requests:
            name = language_name(request.language) if request.language else None
            if request.language and name is None:
                raise EngineError(f"Qwen3-ASR has no language {request.language!r}")
            languages.append(name)
        outputs = self._model.transcribe(audio=audio, context=contexts, language=languages)
        return [
            AsrResult(text=out.text.strip(), language=self._code(out.language)) for out in outputs
        ]

    def _context(self, hints: Sequence[str]) -> str:
        """Qwen's hotword mechanism: biasing words go in as system-prompt context."""
        words = list(dict.fromkeys((*hints, *self._hints)))
        return ", ".join(words)

    @staticmethod
    def _code(name: str) -> str | None:
        first = name.split(",", 1)[0].strip().lower() if name else ""
        return CODES.get(first)


ENGINE = Qwen3AsrEngine
