"""Qwen3-TTS backend (``qwen-tts``, 12 Hz CustomVoice): nine voices, windowed streaming.

``generate_custom_voice`` returns whole waveforms only. To get audio out before a long
sentence is finished, this engine watches the talker's codec frames as they are generated
and decodes them in windows of ``QWEN_TTS_STREAM_WINDOW`` frames (80 ms each) with the
left context the causal codec needs, while generation continues in a helper thread.
"""

from __future__ import annotations

import importlib.machinery
import logging
import queue
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..audio import fade_edges
from ..chunking import split_long
from ..device import (
    GpuInfo,
    Precision,
    PrecisionChoice,
    choose_precision,
    gpu_info,
    weight_bytes,
)
from ..engine import EngineError, EngineInfo, TtsEngine, TtsRequest, Voice
from ..languages import CODES, NAMES
from ..memory import BYTES_PER, GIB, MemoryNeed, safetensors_parameters
from ..models import ModelSource, ResolvedModel, resolve_configured
from ..settings import Settings

_LOGGER = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
# Upstream's chunked decoder uses 25 frames (2 s) of left context; so do the windows.
LEFT_CONTEXT_FRAMES = 25
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
    if "qwen_tts" in sys.modules:
        return not isinstance(sys.modules.get("torchaudio"), _Missing)
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


def tts_precision(device: str, gpu: GpuInfo | None, requested: str = "auto") -> PrecisionChoice:
    """bfloat16 where native (sm_80+), FP16 on Volta/Turing, FP32 on Pascal and the CPU;
    ``TTS_DTYPE`` overrides (still subject to what the device can do)."""
    wanted = Precision.BF16 if requested == "auto" else Precision(requested)
    return choose_precision(wanted, device, gpu)


# Generating one chunk: the talker's KV cache (28 layers x 8 KV heads x 128, ~112 KiB a
# position in 16-bit) over the text and ~3 codec frames a character, the code predictor,
# and the codec decoding a window. Chunking bounds it; without chunking it grows with the
# text, so the estimate assumes 1,000 characters.
_WORKING_FIXED = int(0.25 * GIB)
_WORKING_PER_CHAR = 4 * 112 * 1024


def memory_need(settings: Settings, device: str, gpu: GpuInfo | None) -> MemoryNeed:
    """Talker at its precision, the codec in FP32, and one chunk's working memory."""
    precision = tts_precision(device, gpu, settings.tts_dtype).precision
    path = resolve(settings).path
    talker = safetensors_parameters(path)
    codec = safetensors_parameters(path / "speech_tokenizer")
    chars = settings.qwen_tts_chunk_size or 1000
    return MemoryNeed(
        "tts",
        f"Qwen3-TTS ({precision.value}, codec float32, chunk {settings.qwen_tts_chunk_size})",
        talker * BYTES_PER[precision] + codec * BYTES_PER[Precision.FP32],
        _WORKING_FIXED + chars * _WORKING_PER_CHAR,
    )


class Qwen3TtsEngine(TtsEngine):
    """``Qwen3TTSModel`` loaded through its own ``from_pretrained``, like real weights."""

    def __init__(self, settings: Settings, device: str) -> None:
        self.cloning_available = import_qwen_tts()
        # qwen_tts logs config defaults at INFO on every generate(); keep ours readable.
        logging.getLogger("qwen_tts").setLevel(logging.WARNING)
        import torch
        from qwen_tts import Qwen3TTSModel

        self._torch = torch
        resolved = resolve(settings)
        choice = tts_precision(device, gpu_info(device), settings.tts_dtype)
        _LOGGER.info("Qwen3-TTS talker precision: %s (%s)", choice.precision.value, choice.reason)
        self._model = Qwen3TTSModel.from_pretrained(
            str(resolved.path), dtype=getattr(torch, choice.precision.value), device_map=device
        )
        # The speech codec has been reported to decode silence in bf16: always FP32.
        codec = self._model.model.speech_tokenizer
        codec.model.to(torch.float32)
        self._codec = codec.model
        self._upsample = int(self._codec.get_decode_upsample_rate())
        self._rate = int(self._codec.get_output_sample_rate())
        talker_config = self._model.model.config.talker_config
        self._eos = int(talker_config.codec_eos_token_id)
        # generate() warns on every call when no pad token is set; EOS is what it picks
        self._model.model.talker.generation_config.pad_token_id = self._eos
        self._window = settings.qwen_tts_stream_window
        self._max_new_tokens = settings.qwen_tts_max_new_tokens
        self._voices = self._build_voices()
        by_lower = {voice.name.lower(): voice.name for voice in self._voices}
        wanted = settings.qwen_tts_speaker
        if wanted is not None and wanted.lower() not in by_lower:
            raise EngineError(
                f"speaker {wanted!r} is not in this model (have: {', '.join(by_lower.values())})"
            )
        self._default = by_lower[wanted.lower()] if wanted else self._voices[0].name
        weights = weight_bytes(self._model.model, self._codec)  # codec: not a submodule
        import qwen_tts

        self._info = EngineInfo(
            engine="qwen3-tts",
            model=resolved.name,
            model_path=str(resolved.path),
            device=device,
            precision=f"{choice.precision.value}, codec float32",
            weights_bytes=weights,
            version=f"qwen-tts {getattr(qwen_tts, '__version__', '0.1.1')}",
            description=f"Qwen3-TTS {resolved.name}",
            attribution=("Alibaba Qwen", "https://github.com/QwenLM/Qwen3-TTS"),
        )
        _LOGGER.info(
            "Qwen3-TTS: %d voices, streaming window %s, voice cloning %s, weights %.0f MiB",
            len(self._voices),
            f"{self._window} frames" if self._window else "off",
            "available" if self.cloning_available else "unavailable (torchaudio missing)",
            weights / 2**20,
        )

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
    def info(self) -> EngineInfo:
        return self._info

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
        """Audio for one chunk. A CUDA out-of-memory before any audio left frees the cache
        and retries the chunk in halves; if even that fails, the request gets an error."""
        language = self._language(request.language)
        speaker = request.voice.lower()
        produced = False
        try:
            for piece in self._speak(request.text, speaker, language):
                produced = True
                yield piece
        except self._torch.OutOfMemoryError:
            self._torch.cuda.empty_cache()
            if produced or len(request.text) < 2:
                raise EngineError("out of GPU memory while speaking", "out-of-memory") from None
            half = max(1, len(request.text) // 2)
            _LOGGER.warning("Out of GPU memory on %d characters: retrying in halves", half * 2)
            try:
                for part in split_long(request.text, half):
                    yield from self._speak(part, speaker, language)
            except self._torch.OutOfMemoryError:
                self._torch.cuda.empty_cache()
                raise EngineError(
                    "out of GPU memory even for a smaller chunk; lower QWEN_TTS_CHUNK_SIZE",
                    "out-of-memory",
                ) from None

    def _speak(self, text: str, speaker: str, language: str) -> Iterator[np.ndarray]:
        if not self._window:
            codes = self.generate_codes(text, speaker, language)
            yield fade_edges(self.decode(codes), self._rate)
            return
        yield from self._speak_windowed(text, speaker, language)

    def generate_codes(self, text: str, speaker: str, language: str, on_frame: Any = None) -> Any:
        """The talker's codec frames (T x groups) for one text; ``on_frame`` sees each
        frame as soon as it exists."""
        model = self._model
        input_ids = model._tokenize_texts([model._build_assistant_text(text)])
        kwargs = model._merge_generate_kwargs(max_new_tokens=self._max_new_tokens)
        hook = None
        if on_frame is not None:

            def watch(_module: Any, _args: Any, output: Any) -> None:
                frame = output.hidden_states[1]
                if frame is not None:
                    on_frame(frame[0].detach())

            hook = model.model.talker.register_forward_hook(watch)
        try:
            with self._torch.inference_mode():
                codes, _ = model.model.generate(
                    input_ids=input_ids,
                    instruct_ids=[None],
                    languages=[language],
                    speakers=[speaker],
                    non_streaming_mode=True,
                    **kwargs,
                )
        finally:
            if hook is not None:
                hook.remove()
        return codes[0]

    def decode(self, codes: Any) -> np.ndarray:
        """Whole-utterance decode (upstream's own chunked decoder)."""
        if len(codes) == 0:
            return np.zeros(0, dtype=np.float32)
        with self._torch.inference_mode():
            wav = self._codec.decode(codes.unsqueeze(0).to(self._codec.device)).audio_values[0]
        return np.asarray(wav.float().cpu().numpy(), dtype=np.float32)

    def decode_window(self, codes: Any, start: int, end: int) -> np.ndarray:
        """Audio of frames [start, end) decoded with up to LEFT_CONTEXT_FRAMES before it."""
        context = min(start, LEFT_CONTEXT_FRAMES)
        window = codes[start - context : end].to(self._codec.device)
        with self._torch.inference_mode():
            wav = self._codec.decoder(window.transpose(0, 1).unsqueeze(0).clamp(min=0))
        audio = wav[0, 0, context * self._upsample :].float().cpu().numpy()
        return np.asarray(audio, dtype=np.float32)

    def _speak_windowed(self, text: str, speaker: str, language: str) -> Iterator[np.ndarray]:
        frames: queue.Queue[Any] = queue.Queue()
        failure: list[BaseException] = []
        done = object()
        stop = threading.Event()

        def on_frame(frame: Any) -> None:
            if stop.is_set():  # the listener left: end generation at the next frame
                raise _Abandoned
            frames.put(frame)

        def generate() -> None:
            try:
                self.generate_codes(text, speaker, language, on_frame=on_frame)
            except _Abandoned:
                pass
            except BaseException as err:
                failure.append(err)
            finally:
                frames.put(done)

        thread = threading.Thread(target=generate, name="qwen3-tts-talker", daemon=True)
        thread.start()
        received: list[Any] = []
        sent = 0
        finished = False
        try:
            while not finished:
                item = frames.get()
                if item is done:
                    finished = True
                elif int(item[0]) == self._eos:
                    continue  # the stop frame carries no audio
                else:
                    received.append(item)
                while not finished and frames.qsize() and len(received) - sent < self._window:
                    extra = frames.get()
                    if extra is done:
                        finished = True
                    elif int(extra[0]) != self._eos:
                        received.append(extra)
                ready = len(received) - sent
                if ready and (ready >= self._window or finished):
                    codes = self._torch.stack(received)
                    audio = self.decode_window(codes, sent, len(received))
                    audio = fade_edges(audio, self._rate, start=sent == 0, end=finished)
                    sent = len(received)
                    yield audio
        finally:
            stop.set()
            thread.join()
        if failure:
            raise failure[0]


ENGINE = Qwen3TtsEngine
