"""Qwen3-TTS backend (``qwen-tts``, 12 Hz CustomVoice): nine voices, streamed audio.

``generate_custom_voice`` returns whole waveforms only, from a Hugging Face ``generate()``
that is launch-bound on small GPUs. This engine builds the prompt with upstream's own code,
then runs its own decode loop (``qwen3_loop``: static KV caches, CUDA graphs on CUDA) and
decodes the codec frames in windows between frames as they are generated (``qwen3_codec``:
the same audio a whole decode gives). ``QWEN_TTS_LOOP=upstream`` runs upstream's
``generate()`` instead, in a helper thread, for comparison.

Residency is lean so both Qwen models fit a 4 GB card: the talker's 151,936 x 2048 text
embedding (0.58 GiB in 16-bit) is only looked up while building the prompt, so it stays
in CPU memory; the codec's encoder (voice cloning only) is dropped; the codec decoder is
loaded in FP32 straight from its files (casting a 16-bit load up would keep any value
beyond FP16's range as ``inf``).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.machinery
import json
import logging
import queue
import sys
import threading
import time
import types
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..audio import fade_edges
from ..chunking import split_long
from ..device import (
    Device,
    Precision,
    PrecisionChoice,
    choose_precision,
    cpu_speed_warning,
)
from ..engine import EngineError, EngineInfo, LoadPlan, TtsEngine, TtsRequest, Voice
from ..languages import CODES, NAMES
from ..memory import (
    BYTES_PER,
    GIB,
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
from .qwen3_codec import StreamingCodec
from .qwen3_loop import LeanTalker, Overflow, Prompt, unsupported

if TYPE_CHECKING:
    from ..quant import QuantMode

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
# Streaming windows: the first one is small for time to first audio; later ones grow to
# WINDOW_GROWTH times QWEN_TTS_STREAM_WINDOW (fewer, larger decodes) while the audio
# already sent is LEAD_TO_GROW seconds ahead of real time.
FIRST_WINDOW_FRAMES = 4
WINDOW_GROWTH = 4
LEAD_TO_GROW = 1.0
_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.jinja", "speech_tokenizer/*")
# Display names (the checkpoint stores them lower case) and native languages.
SPEAKERS: dict[str, tuple[str, str]] = {
    "vivian": ("Vivian", "zh"),
    "serena": ("Serena", "zh"),
    "uncle_fu": ("Uncle_Fu", "zh"),
    "dylan": ("Dylan", "zh"),
    "eric": ("Eric", "zh"),
    "ryan": ("Ryan", "en"),
    "aiden": ("Aiden", "en"),
    "ono_anna": ("Ono_Anna", "ja"),
    "sohee": ("Sohee", "ko"),
}
_OPTIONAL_MODULES = ("torchaudio", "torchaudio.compliance", "torchaudio.compliance.kaldi", "sox")


class _Abandoned(Exception):
    """Raised inside generation when nobody wants the audio any more."""


class _Missing(types.ModuleType):
    """Stands in for a module only the 25 Hz tokenizer and voice cloning use."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(
            f"{self.__name__}.{attr} is unavailable: voice cloning and the 25 Hz tokenizer "
            "need torchaudio, which is not installed (PyPI's builds need CUDA torch)"
        )


def import_qwen_tts() -> bool:
    """Import ``qwen_tts`` even without torchaudio; return whether voice cloning works.

    ``import qwen_tts`` imports torchaudio and sox for its 25 Hz tokenizer, which the
    12 Hz CustomVoice path never calls, and PyPI's torchaudio fails to import beside a
    CPU torch. Missing modules are replaced by placeholders for the duration of the
    import only (after transformers has probed for the real ones), so a later use
    raises a clear ImportError instead of the whole engine failing to load.
    """
    if "qwen_tts" in sys.modules:  # a real torchaudio stays imported; a placeholder does not
        loaded = sys.modules.get("torchaudio")
        return loaded is not None and not isinstance(loaded, _Missing)
    import transformers  # noqa: F401  (its availability probes must see the real state)

    placeholders: dict[str, _Missing] = {}
    for name in _OPTIONAL_MODULES:
        try:
            __import__(name)
        except Exception:
            module = _Missing(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            placeholders[name] = module
    for name, module in placeholders.items():
        parent, _, child = name.rpartition(".")
        if parent in placeholders:
            setattr(placeholders[parent], child, module)
        sys.modules[name] = module
    try:
        import qwen_tts  # noqa: F401
    finally:
        for name in placeholders:
            if sys.modules.get(name) is placeholders[name]:
                del sys.modules[name]
    return "torchaudio" not in placeholders


def resolve(settings: Settings) -> ResolvedModel:
    source = ModelSource(default=DEFAULT_MODEL, allow_patterns=_PATTERNS)
    return resolve_configured(settings.tts_model, source, settings)


def tts_precision(device: Device, requested: str = "auto") -> PrecisionChoice:
    """bfloat16 where native (sm_80+), else FP16 (Pascal included: FP16 storage with FP32
    accumulation runs there, and an FP32 talker, 2.2 GiB, cannot share a 4 GB card); FP32
    on the CPU. ``TTS_DTYPE`` overrides (still subject to what the device can do)."""
    wanted = Precision.BF16 if requested == "auto" else Precision(requested)
    return choose_precision(wanted, device, fallback=Precision.FP16)


# Frames a chunk may run to before it is cut off: generous for slow speech and numbers
# read out (a Chinese character is ~3 frames spoken, an English one ~1), but a model that
# never emits its stop frame stops here instead of after 2,048 frames (164 s).
FRAME_CAP_BASE = 25
FRAME_CAP_PER_CHAR = 6
# How long a chunk that ran out of memory waits before it is retried in halves: under
# plan A the likely cause is a Qwen3-ASR prefill on the same card, over within a second.
OOM_RETRY_WAIT = 0.5
# A codec decode's peak per frame decoded at once (FP32; 1.07 GiB for 300 frames), and
# the most frames upstream's whole-utterance decoder takes in one go.
_DECODE_PER_FRAME = int(1.07 * GIB / 300)
_DECODE_MAX_FRAMES = 300
# Prompt tokens per character of text (byte-level BPE; Chinese ~1.5) and fixed prompt.
_PROMPT_PER_CHAR = 2
_PROMPT_FIXED = 16
_WORKING_FIXED = 96 * MIB
UNCHUNKED_PLAN_CHARS = 1000


def frame_cap(text: str, configured: int | None) -> int:
    """Most codec frames one chunk of ``text`` may generate."""
    cap = FRAME_CAP_BASE + FRAME_CAP_PER_CHAR * len(text)
    return min(cap, configured) if configured else cap


def talker_resident(name: str) -> bool:
    """Talker tensors that live on the GPU: all but the text embedding (CPU) and the
    speaker encoder (voice cloning only)."""
    return "text_embedding" not in name and not name.startswith("speaker_encoder")


def codec_resident(name: str) -> bool:
    """Codec tensors on the GPU: the decoder; the encoder serves voice cloning only."""
    return name.startswith("decoder.")


def quantisable(name: str) -> bool:
    """Talker linears that weight-only quantisation converts: not the embeddings, not the
    output heads (the codec head and the predictor's heads stay 16-bit)."""
    return not any(part in name for part in ("embedding", "codec_head", "lm_head"))


def _talker_shape(path: Path) -> tuple[int, int]:
    """KV bytes per position per element byte, and the text embedding's width."""
    talker = json.loads((path / "config.json").read_text())["talker_config"]
    heads = int(talker.get("num_attention_heads", 16))
    head_dim = int(talker.get("head_dim", int(talker.get("hidden_size", 1024)) // heads))
    kv = (
        2
        * int(talker.get("num_hidden_layers", 28))
        * int(talker.get("num_key_value_heads", heads))
        * head_dim
    )
    return kv, int(talker.get("text_hidden_size", 2048))


def _planned_frames(settings: Settings) -> tuple[int, int]:
    """The longest chunk planned for, in characters, and its frame cap."""
    # Chunking off has no bound but the text limit; plan for a 1,000-character answer (a
    # longer one that runs out of memory is retried in halves).
    chars = settings.tts_chunk_size or min(UNCHUNKED_PLAN_CHARS, settings.max_text_chars)
    return chars, frame_cap("x" * chars, settings.qwen_tts_max_new_tokens)


def planned_positions(settings: Settings) -> int:
    """Talker positions one chunk may use: its prompt plus its frame cap. The static KV
    cache (and its CUDA graphs) is sized for this; a longer prompt runs eagerly."""
    chars, frames = _planned_frames(settings)
    return _PROMPT_FIXED + _PROMPT_PER_CHAR * chars + frames


def decoded_frames(settings: Settings) -> int:
    """Most frames one codec decode call takes: a grown window (the streaming decoder
    carries its state, so no left context is re-run), or with windows off a whole chunk
    in upstream's 300-frame pieces."""
    window = settings.qwen_tts_stream_window
    if window == 0:
        return min(_planned_frames(settings)[1], _DECODE_MAX_FRAMES)
    return window * WINDOW_GROWTH


def working_bytes(path: Path, element: int, settings: Settings) -> int:
    """One chunk: the talker's KV cache over prompt and frame cap, and one codec decode."""
    kv_per_position, _ = _talker_shape(path)
    positions = planned_positions(settings)
    return (
        _WORKING_FIXED
        + positions * kv_per_position * element
        + decoded_frames(settings) * _DECODE_PER_FRAME
    )


class CpuEmbedding:
    """The talker's text embedding kept in CPU memory: rows are looked up there and only
    those rows move to the GPU for the projection. A plain attribute, not a submodule,
    so moving the model never drags the 0.58 GiB table onto the card."""

    def __init__(self, weight: Any) -> None:
        self.weight = weight

    def __call__(self, ids: Any) -> Any:
        import torch.nn.functional as F

        return F.embedding(ids.to(self.weight.device), self.weight).to(ids.device)


@contextlib.contextmanager
def _codec_loads_in_fp32() -> Iterator[None]:
    """Make the codec load in FP32 on the CPU from its own files, whatever precision the
    talker is loaded in (upstream passes the talker's dtype on)."""
    import torch
    from qwen_tts.core.models import modeling_qwen3_tts as modeling

    original = modeling.Qwen3TTSTokenizer.from_pretrained

    def fp32(path: str, *args: Any, **kwargs: Any) -> Any:
        kwargs.update(dtype=torch.float32, device_map="cpu")
        return original(path, *args, **kwargs)

    modeling.Qwen3TTSTokenizer.from_pretrained = fp32
    try:
        yield
    finally:
        modeling.Qwen3TTSTokenizer.from_pretrained = original


_LOAD_LOCK = threading.Lock()


def load_lean(path: str, dtype: Any, device: str, quant: QuantMode = "none") -> Any:
    """``Qwen3TTSModel.from_pretrained`` into CPU memory, then only what CustomVoice
    serving needs goes to ``device``: the talker without its text embedding, the codec
    decoder in FP32; the codec encoder is dropped. Returns the ``Qwen3TTSModel``."""
    import torch
    from qwen_tts import Qwen3TTSModel

    with _LOAD_LOCK, _codec_loads_in_fp32():
        model = Qwen3TTSModel.from_pretrained(path, dtype=dtype, device_map="cpu")
    inner = model.model
    text_model = inner.talker.model
    weight = text_model.text_embedding.weight.detach()
    del text_model.text_embedding  # a submodule no more; the lookup below replaces it
    text_model.text_embedding = CpuEmbedding(weight)
    codec = inner.speech_tokenizer
    codec.model.encoder = None
    target = torch.device(device)
    if quant != "none":  # straight from CPU memory to packed on the device
        from ..quant import quantize_linears

        report = quantize_linears(
            inner.talker, quant, device, skip=lambda name, _m: not quantisable(name)
        )
        _LOGGER.info("Qwen3-TTS talker quantised: %s", report.summary())
    inner.to(target)
    codec.model.to(target)
    codec.device = target
    model.device = target
    gc.collect()
    return model


class Qwen3TtsEngine(TtsEngine):
    """``Qwen3TTSModel`` loaded through its own ``from_pretrained``, like real weights."""

    @classmethod
    def plan(cls, settings: Settings, device: Device) -> LoadPlan:
        """The talker's precision and quantisation, decided once, and the memory need they
        give: the talker at its precision (text embedding in CPU memory), the codec decoder
        in FP32, and one chunk's working memory."""
        choice = tts_precision(device, settings.tts_dtype)
        precision = choice.precision
        path = resolve(settings).path
        quant = configured_mode(settings.qwen_tts_quant)
        talker = read_headers(path)
        codec = read_headers(path / "speech_tokenizer")
        weights = checkpoint_bytes(talker, precision, quant, quantisable, include=talker_resident)
        weights += checkpoint_bytes(
            codec, Precision.FP32, "none", quantisable, include=codec_resident
        )
        cpu = sum(
            t.numel * BYTES_PER[precision] for n, t in talker.items() if "text_embedding" in n
        )
        detail = (
            f"chunk {settings.tts_chunk_size or 'off'}, "
            f"window {settings.qwen_tts_stream_window or 'off'}"
        )
        need = MemoryNeed(
            "tts",
            f"Qwen3-TTS ({precision.value}{'' if quant == 'none' else ', ' + quant}, "
            f"codec float32, {detail})",
            weights,
            working_bytes(path, BYTES_PER[precision], settings),
            engine="qwen3-tts",
            precision=precision.value,
            quantization=quant,
            cpu=cpu,
            detail=detail,
        )
        return LoadPlan(settings, device, need, choice.reason)

    @classmethod
    def auto_choices(cls, settings: Settings, device: Device) -> list[dict[str, Any]]:
        return [{"qwen_tts_quant": mode} for mode in auto_modes(settings.qwen_tts_quant, device)]

    @classmethod
    def memory_fixes(cls, settings: Settings) -> list[MemoryFix]:
        fixes = []
        if settings.tts_dtype == "float32":
            fixes.append(MemoryFix(20, "load the Qwen3-TTS talker in FP16", {"tts_dtype": "auto"}))
        if settings.qwen_tts_stream_window == 0:
            fixes.append(MemoryFix(30, "decode speech in windows", {"qwen_tts_stream_window": 8}))
        if settings.tts_chunk_size == 0 or settings.tts_chunk_size > 200:
            fixes.append(MemoryFix(40, "turn TTS chunking on", {"tts_chunk_size": 200}))
        return fixes + stronger_fixes(
            settings.qwen_tts_quant, "qwen_tts_quant", "the Qwen3-TTS talker", 70
        )

    def __init__(self, plan: LoadPlan) -> None:
        from ..quant import quant_available, quiet_import_warnings

        settings, device = plan.settings, plan.device
        self.quantization = plan.quantization
        reason = quant_available(self.quantization, device.name)
        if reason is not None:
            raise EngineError(f"QWEN_TTS_QUANT={self.quantization}: {reason}")
        quiet_import_warnings()
        self.cloning_available = import_qwen_tts()
        # qwen_tts logs config defaults at INFO on every generate(); keep ours readable.
        logging.getLogger("qwen_tts").setLevel(logging.WARNING)
        import torch

        self._torch = torch
        resolved = resolve(settings)
        _LOGGER.info("Qwen3-TTS talker precision: %s (%s)", plan.precision, plan.reason)
        if not device.is_cuda:
            cpu_speed_warning("Qwen3-TTS", "minutes per sentence on 2 cores")
        located = Located(lambda: resolve(settings), resolved)

        def load(paths: list[Path]) -> Any:
            dtype = getattr(torch, plan.precision)
            return load_lean(str(paths[0]), dtype, device.name, self.quantization)

        self._model = load_checked("the Qwen3-TTS checkpoint", located, load, settings)
        resolved = located.resolved
        codec = self._model.model.speech_tokenizer
        self._codec = codec.model
        self._rate = int(self._codec.get_output_sample_rate())
        talker_config = self._model.model.config.talker_config
        self._eos = int(talker_config.codec_eos_token_id)
        # generate() warns on every call when no pad token is set; EOS is what it picks
        self._model.model.talker.generation_config.pad_token_id = self._eos
        self._window = settings.qwen_tts_stream_window
        self._max_new_tokens = settings.qwen_tts_max_new_tokens
        self._groups = int(talker_config.num_code_groups)
        self._lean = self._lean_loop(settings)
        self._voices = self._build_voices()
        by_lower = {voice.name.lower(): voice.name for voice in self._voices}
        wanted = settings.tts_default_voice
        if wanted is not None and wanted.lower() not in by_lower:
            _LOGGER.warning(
                "QWEN_TTS_SPEAKER=%s is not a voice of this model; using %s (have: %s)",
                wanted,
                self._voices[0].name,
                ", ".join(by_lower.values()),
            )
            wanted = None
        self._default = by_lower[wanted.lower()] if wanted else self._voices[0].name
        weights = weight_bytes(self._model.model, self._codec)  # codec: not a submodule
        self.cpu_bytes = int(
            self._model.model.talker.model.text_embedding.weight.numel()
            * self._model.model.talker.model.text_embedding.weight.element_size()
        )
        import qwen_tts

        quant = "" if self.quantization == "none" else f", {self.quantization} linears"
        self._info = EngineInfo(
            engine="qwen3-tts",
            model=resolved.name,
            device=device.name,
            precision=f"{plan.precision}{quant}, codec float32",
            weights_bytes=weights,
            version=f"qwen-tts {getattr(qwen_tts, '__version__', '0.1.1')}",
            description=f"Qwen3-TTS {resolved.name}",
            attribution=("Alibaba Qwen", "https://github.com/QwenLM/Qwen3-TTS"),
        )
        if self._lean is None:
            loop = "upstream generate()"
        else:
            loop = "lean, CUDA graphs" if self._lean.graphed else "lean"
        _LOGGER.info(
            "Qwen3-TTS: %d voices, decode loop %s, streaming window %s, voice cloning %s, "
            "weights %.0f MiB on %s + text embedding %.0f MiB in CPU memory",
            len(self._voices),
            loop,
            f"{self._window} frames" if self._window else "off",
            "available" if self.cloning_available else "unavailable (torchaudio missing)",
            weights / 2**20,
            device,
            self.cpu_bytes / 2**20,
        )

    def _lean_loop(self, settings: Settings) -> LeanTalker | None:
        """Our decode loop, unless upstream's is configured or the model needs a feature
        the loop lacks; with CUDA graphs sized for the planned chunk where enabled."""
        if settings.qwen_tts_loop == "upstream":
            return None
        inner = self._model.model
        reason = unsupported(inner.talker)
        if reason is not None:
            _LOGGER.warning("Qwen3-TTS runs upstream's generate(): %s", reason)
            return None
        _capture_prompts(inner.talker)
        capacity = planned_positions(settings) if settings.qwen_tts_cuda_graphs else 0
        return LeanTalker(inner, graph_capacity=capacity)

    def _build_voices(self) -> list[Voice]:
        languages = [
            CODES[name] for name in self._model.get_supported_languages() or [] if name in CODES
        ]
        voices = []
        for speaker in self._model.get_supported_speakers() or []:
            display, native = SPEAKERS.get(speaker, (speaker.title(), "zh"))
            spoken = (native, *(code for code in languages if code != native))
            voices.append(
                Voice(display, spoken, description=f"Qwen3-TTS {display} ({NAMES[native]})")
            )
        if not voices:
            raise EngineError("this Qwen3-TTS model has no CustomVoice speakers")
        order = list(SPEAKERS)
        return sorted(
            voices, key=lambda v: order.index(v.name.lower()) if v.name.lower() in order else 99
        )

    @property
    def sample_rate(self) -> int:
        return self._rate

    @property
    def voices(self) -> list[Voice]:
        return list(self._voices)

    @property
    def default_voice(self) -> str:
        return self._default

    def _language(self, code: str | None) -> str:
        if code is None:
            return "auto"  # Qwen detects the language of the text itself
        name = NAMES.get(code, code).lower()
        if name not in (self._model.get_supported_languages() or []):
            raise EngineError(f"Qwen3-TTS cannot speak language {code!r}", "unsupported-language")
        return name

    def synthesize(self, request: TtsRequest) -> Iterator[np.ndarray]:
        """Audio for one chunk. A CUDA out-of-memory before any audio left is handled
        outside the ``except`` block (whose traceback pins the failed attempt's KV
        cache): collect, empty the cache, wait briefly for whatever else was using the
        card, then retry the chunk in halves; if even that fails, an error."""
        language = self._language(request.language)
        speaker = request.voice.lower()
        produced = False
        try:
            for piece in self._speak(request.text, speaker, language):
                produced = True
                yield piece
            return
        except self._torch.OutOfMemoryError:
            pass
        self._free()
        if produced or len(request.text) < 2:
            raise EngineError("out of GPU memory while speaking", "out-of-memory")
        time.sleep(OOM_RETRY_WAIT)
        half = max(1, len(request.text) // 2)
        _LOGGER.warning("Out of GPU memory on %d characters: retrying in halves", len(request.text))
        try:
            for part in split_long(request.text, half):
                yield from self._speak(part, speaker, language)
            return
        except self._torch.OutOfMemoryError:
            pass
        self._free()
        raise EngineError(
            "out of GPU memory even for a smaller chunk; lower QWEN_TTS_CHUNK_SIZE",
            "out-of-memory",
        )

    def _free(self) -> None:
        gc.collect()
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()

    def _speak(self, text: str, speaker: str, language: str) -> Iterator[np.ndarray]:
        if not self._window:
            codes = self.generate_codes(text, speaker, language)
            yield fade_edges(self.decode(codes), self._rate)
            return
        yield from self._speak_windowed(text, speaker, language)

    def generate_codes(self, text: str, speaker: str, language: str) -> Any:
        """All codec frames (T x groups) of one text."""
        frames = list(self.frames(text, speaker, language))
        if not frames:
            return self._torch.zeros((0, self._groups), dtype=self._torch.long)
        return self._torch.stack(frames)

    def frames(self, text: str, speaker: str, language: str) -> Generator[Any, None, None]:
        """The talker's codec frames for one text, each as soon as it exists, at most
        ``frame_cap``. Non-finite logits (an FP16 overflow) end the chunk with an error
        instead of sampling noise."""
        model = self._model
        configured = model._merge_generate_kwargs(max_new_tokens=self._max_new_tokens)
        cap = frame_cap(text, int(configured["max_new_tokens"]))
        kwargs = {**configured, "max_new_tokens": cap}
        count = 0
        try:
            if self._lean is not None:
                source = self._lean.frames(self._prompt(text, speaker, language, kwargs), cap)
            else:
                source = self._upstream_frames(text, speaker, language, kwargs)
            with contextlib.closing(source):
                for frame in source:
                    count += 1
                    yield frame
        except Overflow:
            raise EngineError(
                "Qwen3-TTS overflowed (inf/NaN) in its current precision on this text; "
                "TTS_DTYPE=float32 avoids it at twice the memory",
                "numeric-overflow",
            ) from None
        if count >= cap - 1:  # the token sampled at the cap gets no frame
            _LOGGER.warning("A chunk of %d characters reached its %d-frame cap", len(text), cap)

    def _upstream_call(self, text: str, speaker: str, language: str, kwargs: dict[str, Any]) -> Any:
        model = self._model
        with self._torch.inference_mode():
            return model.model.generate(
                input_ids=model._tokenize_texts([model._build_assistant_text(text)]),
                instruct_ids=[None],
                languages=[language],
                speakers=[speaker],
                non_streaming_mode=True,
                **kwargs,
            )

    def _prompt(self, text: str, speaker: str, language: str, kwargs: dict[str, Any]) -> Prompt:
        """Upstream's own prompt for this text (speaker, language and dialect tags, the
        text embedding looked up in CPU memory), taken at its talker ``generate()``."""
        _CAPTURE.active = True
        try:
            self._upstream_call(text, speaker, language, kwargs)
        except _PromptReady as ready:
            return Prompt.from_generate_kwargs(ready.kwargs)
        finally:
            _CAPTURE.active = False
        raise EngineError("Qwen3-TTS built no prompt")  # generate() always reaches the talker

    def _upstream_frames(
        self, text: str, speaker: str, language: str, kwargs: dict[str, Any]
    ) -> Generator[Any, None, None]:
        """Upstream's ``generate()`` in a helper thread, its frames taken by a forward hook
        on the talker; stopping the iteration ends generation at the next frame."""
        frames: queue.Queue[Any] = queue.Queue()
        failure: list[BaseException] = []
        done = object()
        stop = threading.Event()

        def watch(_module: Any, _args: Any, output: Any) -> None:
            logits = getattr(output, "logits", None)
            if logits is not None and not bool(logits[:, -1].isfinite().all()):
                raise Overflow
            if stop.is_set():  # the listener left
                raise _Abandoned
            frame = output.hidden_states[1]
            if frame is not None and int(frame[0, 0]) != self._eos:
                frames.put(frame[0].detach())

        def generate() -> None:
            hook = self._model.model.talker.register_forward_hook(watch)
            try:
                self._upstream_call(text, speaker, language, kwargs)
            except _Abandoned:
                pass
            except BaseException as err:
                failure.append(err)
            finally:
                hook.remove()
                frames.put(done)

        thread = threading.Thread(target=generate, name="qwen3-tts-upstream", daemon=True)
        thread.start()
        try:
            while (item := frames.get()) is not done:
                yield item
        finally:
            stop.set()
            thread.join()
        if failure:
            raise failure[0]

    def decode(self, codes: Any) -> np.ndarray:
        """Whole-utterance decode (upstream's own chunked decoder)."""
        if len(codes) == 0:
            return np.zeros(0, dtype=np.float32)
        with self._torch.inference_mode():
            wav = self._codec.decode(codes.unsqueeze(0).to(self._codec.device)).audio_values[0]
        return np.asarray(wav.float().cpu().numpy(), dtype=np.float32)

    def _speak_windowed(self, text: str, speaker: str, language: str) -> Iterator[np.ndarray]:
        """Audio window by window, decoded between frames on this thread (so no backlog
        forms and the two never contend for the CPU). The first window is small for time
        to first audio; windows grow to ``WINDOW_GROWTH`` times the setting, for fewer,
        larger decodes, while the audio sent is well ahead of real time. One frame is
        held back so the last window, whenever it comes, gets the closing fade."""
        stream = StreamingCodec(self._codec.decoder)
        pending: list[Any] = []
        sent_seconds = 0.0
        first_sent = 0.0

        def target() -> int:
            if stream.frames == 0:
                return min(self._window, FIRST_WINDOW_FRAMES)
            lead = sent_seconds - (time.monotonic() - first_sent)
            return self._window * WINDOW_GROWTH if lead > LEAD_TO_GROW else self._window

        def emit(codes: list[Any], last: bool) -> np.ndarray:
            nonlocal sent_seconds, first_sent
            first = stream.frames == 0
            audio = fade_edges(
                stream.push(self._torch.stack(codes)), self._rate, start=first, end=last
            )
            if first:
                first_sent = time.monotonic()
            sent_seconds += audio.size / self._rate
            return audio

        source = self.frames(text, speaker, language)
        with contextlib.closing(source):
            for frame in source:
                pending.append(frame)
                if len(pending) > target():
                    yield emit(pending[:-1], last=False)
                    pending = pending[-1:]
        if pending:
            yield emit(pending, last=True)


class _PromptReady(Exception):
    """Carries the talker ``generate()`` arguments out of upstream's prompt builder."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("prompt ready")
        self.kwargs = kwargs


_CAPTURE = threading.local()


def _capture_prompts(talker: Any) -> None:
    """Let upstream's ``generate()`` build the prompt and stop at its talker ``generate()``
    while a prompt is being taken on this thread (``_CAPTURE.active``)."""
    original = talker.generate
    if getattr(original, "_prompt_capture", False):
        return

    def generate(*args: Any, **kwargs: Any) -> Any:
        if getattr(_CAPTURE, "active", False):
            raise _PromptReady(kwargs)
        return original(*args, **kwargs)

    generate._prompt_capture = True  # type: ignore[attr-defined]
    talker.generate = generate
