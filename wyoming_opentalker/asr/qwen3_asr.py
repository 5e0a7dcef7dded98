"""Qwen3-ASR backend (``qwen-asr``, transformers): FP16 on CUDA, real batching, hints.

The model is what most users install the product for: it is far better than Whisper at
Chinese and dialects. It decodes several utterances in one ``generate`` call, so the
service's batcher hands it everything that is waiting.

Working memory is bounded so it can share a 4 GB card with Qwen3-TTS:

* The language-model head computes logits for the last position only. Upstream computes
  full-vocabulary logits for every prompt token (~297 KiB a token in FP16): 1.5 GiB for
  one 300 s upload. Generation only ever reads the last position.
* Audio longer than ``PIECE_SECONDS`` is cut at quiet points (upstream's own splitter)
  and the pieces are decoded like separate requests, so a 300 s upload costs what a
  batch of 30 s requests costs; a batch never holds more than ``max_batch_size`` pieces.
* Hints are capped at ``MAX_HINT_TOKENS`` and each piece's answer at
  ``NEW_TOKENS_PER_SECOND`` of audio, so neither a long entity list nor a model that
  never stops grows the KV cache without bound.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import split_at_quiet
from ..device import (
    Device,
    Precision,
    PrecisionChoice,
    choose_precision,
    cpu_speed_warning,
    default_asr_batch_size,
)
from ..engine import AsrEngine, AsrRequest, AsrResult, EngineError, EngineInfo, LoadPlan
from ..languages import CODES, language_name
from ..memory import (
    BYTES_PER,
    MIB,
    MemoryFix,
    MemoryNeed,
    checkpoint_bytes,
    read_headers,
    stronger_fixes,
)
from ..models import Located, ModelSource, ResolvedModel, load_checked, resolve_configured
from ..quant import auto_modes, configured_mode, weight_bytes
from ..settings import Settings

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-ASR-0.6B"
# Files a Qwen3-ASR checkpoint needs; anything else in the repository is not fetched.
_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model")
SAMPLE_RATE = 16000
PIECE_SECONDS = 30.0
MAX_HINT_TOKENS = 256
NEW_TOKENS_PER_SECOND = 10
MIN_NEW_TOKENS = 32
# The audio encoder emits ~13 tokens a second; the chat prompt around it ~40 tokens.
AUDIO_TOKENS_PER_SECOND = 13
PROMPT_TOKENS = 40
# How long an out-of-memory batch of one waits before its one retry: under plan A the
# likely cause is a Qwen3-TTS step on the same card, which is over in milliseconds.
OOM_RETRY_WAIT = 0.3


def resolve(settings: Settings) -> ResolvedModel:
    source = ModelSource(default=DEFAULT_MODEL, allow_patterns=_PATTERNS)
    return resolve_configured(settings.asr_model, source, settings)


def asr_precision(settings: Settings, device: Device) -> PrecisionChoice:
    """``ASR_DTYPE`` if given, else FP16 (on CUDA; the CPU gets FP32)."""
    wanted = Precision.FP16 if settings.asr_dtype == "auto" else Precision(settings.asr_dtype)
    return choose_precision(wanted, device)


def quantisable(name: str) -> bool:
    """Linear weights that weight-only quantisation converts: not the embedding, not the
    tied head (they stay 16-bit), and not the audio tower's convolutions (not linear)."""
    return not any(part in name for part in ("embed_tokens", "lm_head"))


@dataclass(frozen=True)
class KvShape:
    """What one token costs in the language model's KV cache, from config.json."""

    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int

    def kv_bytes(self, element: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * element


def text_shape(path: Path) -> KvShape:
    config = json.loads((path / "config.json").read_text())
    text = config["thinker_config"]["text_config"]
    heads = int(text.get("num_attention_heads", 16))
    hidden = int(text.get("hidden_size", 1024))
    return KvShape(
        layers=int(text.get("num_hidden_layers", 28)),
        kv_heads=int(text.get("num_key_value_heads", heads)),
        head_dim=int(text.get("head_dim", hidden // heads)),
        hidden=hidden,
        intermediate=int(text.get("intermediate_size", 3072)),
        heads=heads,
        vocab=int(text.get("vocab_size", 151936)),
    )


def piece_tokens(
    seconds: float, hint_tokens: int = MAX_HINT_TOKENS, configured: int = 10**9
) -> int:
    """Prompt + hints + audio + the longest answer allowed, for one piece."""
    return (
        PROMPT_TOKENS
        + hint_tokens
        + int(AUDIO_TOKENS_PER_SECOND * seconds)
        + max_new_tokens(seconds, configured)
    )


def max_new_tokens(seconds: float, configured: int) -> int:
    return min(configured, MIN_NEW_TOKENS + int(NEW_TOKENS_PER_SECOND * seconds))


# The audio encoder's largest transient for one 30 s piece (its first convolution runs
# over every 1 s window at once), scaled by precision: measured with
# script/measure_memory.py on the full-size shapes.
_AUDIO_TOWER_PER_SECOND_FP32 = 12 * MIB
# cuBLAS workspace, generation bookkeeping, allocator rounding.
_WORKING_FIXED = 96 * MIB


def token_budget(batch: int, configured: int = 10**9) -> int:
    """Most prompt-plus-answer tokens one ``generate`` may hold: half of ``batch`` full
    pieces (at least one), so a batch of short commands is decoded together while long
    pieces go two by two, and memory is bounded either way."""
    return piece_tokens(PIECE_SECONDS, configured=configured) * max(1, batch // 2)


def working_bytes(shape: KvShape, element: int, batch: int, settings: Settings) -> int:
    """Peak working memory of one ``generate`` at the token budget."""
    seconds = min(PIECE_SECONDS, settings.max_audio_seconds)
    configured = settings.qwen_asr_max_new_tokens
    longest = piece_tokens(seconds, configured=configured)
    tokens = min(token_budget(batch, configured), batch * longest)
    kv = tokens * shape.kv_bytes(element)
    # Prefill of the widest layer: hidden states, q/k/v, the MLP's three projections and
    # (math attention) one layer's scores, for every prompt token of the batch.
    per_token = shape.hidden * 3 + shape.heads * shape.head_dim * 2 + shape.intermediate * 3
    prefill = tokens * per_token * element
    scores = shape.heads * tokens * longest * element
    last_logits = batch * shape.vocab * 4 * 3  # the head's row, upcast, and the processors'
    tower = int(_AUDIO_TOWER_PER_SECOND_FP32 * seconds * element / 4)
    return _WORKING_FIXED + kv + prefill + scores + last_logits + tower


class _NonFinite:
    """Flags, per batch row, logits that are inf or NaN (an FP16 overflow) without a
    device sync per step: read once after ``generate``."""

    def __init__(self) -> None:
        self.flags: Any = None

    def hook(self, _module: Any, _args: Any, output: Any) -> None:
        bad = ~output.isfinite().all(dim=-1).any(dim=-1)
        self.flags = (
            bad if self.flags is None or self.flags.shape != bad.shape else self.flags | bad
        )


class Qwen3AsrPieces(AsrEngine):
    """What both Qwen3-ASR runtimes (PyTorch here, ONNX in ``qwen3_asr_onnx``) share:
    requests cut into pieces of at most ``PIECE_SECONDS``, pieces grouped into batches
    within the token budget, hints fitted into the context, pieces joined again. A
    runtime supplies ``_decode`` (one batch) and ``_count_tokens``."""

    max_batch_size = 1
    _budget = 0
    _max_new_tokens = 512
    _hints: tuple[str, ...] = ()

    @staticmethod
    def known_codes(names: Sequence[str]) -> list[str]:
        return [CODES[name.lower()] for name in names if name.lower() in CODES]

    @abstractmethod
    def _decode(self, batch: list[_Piece]) -> list[_Outcome]:
        """Transcribe one batch of pieces: a result or an error for each."""

    @abstractmethod
    def _count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is in the model's tokenizer."""

    def transcribe(self, requests: Sequence[AsrRequest]) -> list[AsrResult | EngineError]:
        """Cut each request into pieces, decode them in batches of at most
        ``max_batch_size``, and join each request's pieces again."""
        pieces: list[_Piece] = []
        for index, request in enumerate(requests):
            name = language_name(request.language) if request.language else None
            if request.language and name is None:
                raise EngineError(f"Qwen3-ASR has no language {request.language!r}")
            context, hint_tokens = self._context(request.hints)
            for wav in split_at_quiet(request.audio, SAMPLE_RATE, PIECE_SECONDS):
                tokens = piece_tokens(len(wav) / SAMPLE_RATE, hint_tokens, self._max_new_tokens)
                pieces.append(_Piece(index, wav, context, name, tokens))
        outcomes: list[_Outcome] = []
        for batch in self._batches(pieces):
            outcomes.extend(self._decode(batch))
        results: list[AsrResult | EngineError] = []
        for index in range(len(requests)):
            mine = [
                out for piece, out in zip(pieces, outcomes, strict=True) if piece.request == index
            ]
            failed = next((out for out in mine if isinstance(out, EngineError)), None)
            if failed is not None:
                results.append(failed)
                continue
            texts = [out.text for out in mine if isinstance(out, AsrResult)]
            language = next(
                (out.language for out in mine if isinstance(out, AsrResult) and out.language),
                None,
            )
            results.append(AsrResult(text=_join(texts), language=language))
        return results

    def _batches(self, pieces: list[_Piece]) -> Iterator[list[_Piece]]:
        """Pieces in order, grouped while the padded batch stays within the token budget
        and ``max_batch_size``."""
        batch: list[_Piece] = []
        longest = 0
        for piece in pieces:
            tokens = piece.tokens
            padded = (len(batch) + 1) * max(longest, tokens)
            if batch and (len(batch) >= self.max_batch_size or padded > self._budget):
                yield batch
                batch, longest = [], 0
            batch.append(piece)
            longest = max(longest, tokens)
        if batch:
            yield batch

    def _context(self, hints: Sequence[str]) -> tuple[str, int]:
        """Qwen's hotword mechanism: biasing words go in as system-prompt context, as many
        as fit ``MAX_HINT_TOKENS`` (request hints first, then ``ASR_HINTS``); returns the
        context and its token count."""
        words = list(dict.fromkeys((*hints, *self._hints)))
        context = ", ".join(words)
        count = self._count_tokens(context) if words else 0
        if count <= MAX_HINT_TOKENS:
            return context, count
        kept: list[str] = []
        count = 0
        for word in words:
            trial = self._count_tokens(", ".join([*kept, word]))
            if trial > MAX_HINT_TOKENS:
                break
            kept.append(word)
            count = trial
        _LOGGER.info(
            "Using %d of %d hints (at most %d tokens)", len(kept), len(words), MAX_HINT_TOKENS
        )
        return ", ".join(kept), count

    @staticmethod
    def _code(name: str) -> str | None:
        first = name.split(",", 1)[0].strip().lower() if name else ""
        return CODES.get(first)


class Qwen3AsrEngine(Qwen3AsrPieces):
    """``Qwen3ASRModel`` loaded through its own ``from_pretrained``, like real weights."""

    @classmethod
    def plan(cls, settings: Settings, device: Device) -> LoadPlan:
        """Precision, quantisation and batch size, decided once; and the memory need they
        give: weights as they will be resident (tied head once, quantised linears at their
        packed size), plus one full batch's working memory."""
        choice = asr_precision(settings, device)
        precision = choice.precision
        path = resolve(settings).path
        headers = read_headers(path)
        config = json.loads((path / "config.json").read_text())
        tied = bool(config["thinker_config"]["text_config"].get("tie_word_embeddings", False))
        skip = {"thinker.lm_head.weight"} if tied else set()
        quant = configured_mode(settings.qwen_asr_quant)
        weights = checkpoint_bytes(headers, precision, quant, quantisable, skip=skip)
        batch = settings.qwen_asr_max_batch_size or default_asr_batch_size(device.gpu)
        working = working_bytes(text_shape(path), BYTES_PER[precision], batch, settings)
        budget = token_budget(batch, settings.qwen_asr_max_new_tokens)
        detail = f"batch up to {batch}, {budget} tokens, {PIECE_SECONDS:g} s pieces"
        need = MemoryNeed(
            "asr",
            f"Qwen3-ASR ({precision.value}{'' if quant == 'none' else ', ' + quant}, {detail})",
            weights,
            working,
            engine="qwen3-asr",
            precision=precision.value,
            quantization=quant,
            detail=detail,
        )
        return LoadPlan(settings, device, need, choice.reason, batch)

    @classmethod
    def auto_choices(cls, settings: Settings, device: Device) -> list[dict[str, Any]]:
        """Quantisation (none before int8) and, unless configured, the batch size: the
        card's default first, then smaller."""
        top = default_asr_batch_size(device.gpu)
        configured = settings.qwen_asr_max_batch_size
        batches = [configured] if configured else [b for b in (top, 4, 2, 1) if b <= top]
        return [
            {"qwen_asr_quant": mode, "qwen_asr_max_batch_size": batch}
            for mode in auto_modes(settings.qwen_asr_quant, device)
            for batch in dict.fromkeys(batches)
        ]

    @classmethod
    def memory_fixes(cls, settings: Settings) -> list[MemoryFix]:
        fixes = []
        if settings.asr_dtype == "float32":
            fixes.append(MemoryFix(10, "load Qwen3-ASR in FP16", {"asr_dtype": "auto"}))
        fixes += stronger_fixes(settings.qwen_asr_quant, "qwen_asr_quant", "Qwen3-ASR", 50)
        batch = settings.qwen_asr_max_batch_size
        for step, smaller in enumerate((2, 1)):
            if batch is None or batch > smaller:
                change = {"qwen_asr_max_batch_size": smaller}
                fixes.append(MemoryFix(60 + step, "decode fewer requests together", change))
        return fixes

    def __init__(self, plan: LoadPlan) -> None:
        from ..quant import quant_available, quiet_import_warnings

        settings, device = plan.settings, plan.device
        self.quantization = plan.quantization
        reason = quant_available(self.quantization, device.name)
        if reason is not None:
            raise EngineError(f"QWEN_ASR_QUANT={self.quantization}: {reason}")
        quiet_import_warnings()
        import torch
        from qwen_asr import Qwen3ASRModel

        self._torch = torch
        resolved = resolve(settings)
        if not device.is_cuda:
            _LOGGER.info("Qwen3-ASR on the CPU runs in FP32 (%s)", plan.reason)
            cpu_speed_warning(
                "Qwen3-ASR on PyTorch", "5.6 s for a 5 s command on 2 cores; ONNX takes 1.2 s"
            )
        self.max_batch_size = plan.batch_size
        self._budget = token_budget(self.max_batch_size, settings.qwen_asr_max_new_tokens)
        self._max_new_tokens = settings.qwen_asr_max_new_tokens

        def load(paths: list[Path]) -> Any:
            return Qwen3ASRModel.from_pretrained(
                str(paths[0]),
                dtype=getattr(torch, plan.precision),
                device_map=device.name,
                max_inference_batch_size=self.max_batch_size,
                max_new_tokens=self._max_new_tokens,
            )

        located = Located(lambda: resolve(settings), resolved)

        self._model = load_checked("the Qwen3-ASR checkpoint", located, load, settings)
        resolved = located.resolved
        thinker = self._model.model.thinker
        # Generation reads only the last position's logits: compute only those.
        self._last_only = thinker.lm_head.register_forward_pre_hook(
            lambda _m, args: (args[0][:, -1:, :],)
        )
        self._nonfinite = _NonFinite()
        thinker.lm_head.register_forward_hook(self._nonfinite.hook)
        if self.quantization != "none":
            from ..quant import quantize_linears

            report = quantize_linears(
                thinker, self.quantization, device.name, skip=lambda name, _m: not quantisable(name)
            )
            _LOGGER.info("Qwen3-ASR weights quantised: %s", report.summary())
        generation = self._model.model.generation_config
        if generation.pad_token_id is None:  # silences a warning on every generate()
            generation.pad_token_id = self._model.processor.tokenizer.pad_token_id
        self._tokenizer = self._model.processor.tokenizer
        self._hints = settings.asr_hints
        supported = getattr(self._model.model.config, "support_languages", None) or list(
            self._model.get_supported_languages()
        )
        self._languages = self.known_codes(supported)
        weights = weight_bytes(self._model.model)
        import qwen_asr

        quant = "" if self.quantization == "none" else f", {self.quantization} linears"
        self._info = EngineInfo(
            engine="qwen3-asr",
            model=resolved.name,
            device=device.name,
            precision=f"{plan.precision}{quant} ({plan.reason})",
            weights_bytes=weights,
            version=f"qwen-asr {getattr(qwen_asr, '__version__', '0.0.6')}",
            description=f"Qwen3-ASR {resolved.name} ({plan.precision}{quant})",
            attribution=("Alibaba Qwen", "https://github.com/QwenLM/Qwen3-ASR"),
        )
        _LOGGER.info(
            "Qwen3-ASR: device %s, dtype %s%s, batch up to %d, weights %.0f MiB",
            device,
            plan.precision,
            quant,
            self.max_batch_size,
            weights / 2**20,
        )

    def _decode(self, batch: list[_Piece], *, retried: bool = False) -> list[_Outcome]:
        """One ``generate`` for the batch. Out of memory: free what the failed attempt
        held (outside the ``except`` block, whose traceback pins its tensors), then the
        batch in halves; a lone piece waits briefly and tries once more."""
        try:
            return self._run(batch)
        except self._torch.OutOfMemoryError:
            pass
        gc.collect()
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()
        if len(batch) > 1:
            half = len(batch) // 2
            _LOGGER.warning("Out of GPU memory on a batch of %d: retrying in halves", len(batch))
            return self._decode(batch[:half]) + self._decode(batch[half:])
        if not retried:
            time.sleep(OOM_RETRY_WAIT)
            return self._decode(batch, retried=True)
        error = EngineError(
            "out of GPU memory while transcribing; lower QWEN_ASR_MAX_BATCH_SIZE or "
            "quantise (QWEN_ASR_QUANT=int8)",
            "out-of-memory",
        )
        return [error]

    def _count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text)["input_ids"])

    def _run(self, batch: list[_Piece]) -> list[_Outcome]:
        longest = max(len(piece.audio) for piece in batch) / SAMPLE_RATE
        self._model.max_new_tokens = max_new_tokens(longest, self._max_new_tokens)
        self._nonfinite.flags = None
        outputs = self._model.transcribe(
            audio=[(piece.audio, SAMPLE_RATE) for piece in batch],
            context=[piece.context for piece in batch],
            language=[piece.language for piece in batch],
        )
        flags = self._nonfinite.flags
        bad = [False] * len(batch) if flags is None else [bool(f) for f in flags.tolist()]
        results: list[_Outcome] = []
        for out, overflow in zip(outputs, bad, strict=True):
            if overflow:
                results.append(
                    EngineError(
                        "Qwen3-ASR overflowed (inf/NaN) in its current precision on this audio; "
                        "ASR_DTYPE=float32 avoids it at twice the memory",
                        "numeric-overflow",
                    )
                )
            else:
                results.append(AsrResult(text=out.text.strip(), language=self._code(out.language)))
        return results


@dataclass(frozen=True)
class _Piece:
    request: int
    audio: np.ndarray
    context: str
    language: str | None
    tokens: int  # prompt, hints, audio and the longest answer allowed


_Outcome = AsrResult | EngineError


def _join(texts: Sequence[str]) -> str:
    """Pieces' texts in order: a space between two alphabetic ends, none for CJK."""
    joined = ""
    for text in (t for t in texts if t):
        if joined and joined[-1].isascii() and text[0].isascii() and not joined[-1].isspace():
            joined += " "
        joined += text
    return joined
