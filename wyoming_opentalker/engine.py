"""The engine interfaces both servers program against, and the worker that runs them.

A backend is one file implementing ``AsrEngine`` or ``TtsEngine``; the Wyoming servers
never see a model library directly. Inference always runs on an ``InferenceWorker``
thread, never on the event loop, so ``describe`` is answered at once while a long
request is being decoded.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np

from .backends import Backend

if TYPE_CHECKING:
    from typing import Self

    from .device import Device
    from .memory import MemoryFix, MemoryNeed
    from .quant import QuantMode
    from .settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


class EngineError(RuntimeError):
    """A request the engine cannot serve; the message is sent to the client."""

    def __init__(self, text: str, code: str = "engine-error") -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True)
class LoadPlan:
    """One backend's decisions for these settings on this device, made once (by its
    engine class's ``plan``): the start-up memory check reads ``need``, and the engine is built
    from the same plan, so the two can never disagree."""

    settings: Settings
    device: Device
    need: MemoryNeed  # what the engine will hold on the GPU; precision and quantisation
    reason: str = ""  # why that precision, logged at start-up
    batch_size: int = 1  # most requests (or audio pieces) decoded together

    @property
    def precision(self) -> str:
        """A torch dtype name (``float16``), or CTranslate2's compute type."""
        return self.need.precision

    @property
    def quantization(self) -> QuantMode:
        return self.need.quantization


class Engine(ABC):
    """What every backend has besides its side's requests: a plan made before any weight
    is read, and the answers the memory planner asks of it. The class is built from its
    plan (``Engine(plan)``), which loads the model."""

    @classmethod
    @abstractmethod
    def plan(cls, settings: Settings, device: Device) -> LoadPlan:
        """Precision, quantisation, batch size and memory need: no weights loaded."""

    @classmethod
    def auto_choices(cls, settings: Settings, device: Device) -> list[dict[str, Any]]:
        """Concrete values for this backend's ``auto`` settings, most preferred first, for
        the planner to try in turn (``[{}]``: nothing to choose)."""
        return [{}]

    @classmethod
    def memory_fixes(cls, settings: Settings) -> list[MemoryFix]:
        """Setting changes that lower this backend's memory need; the planner offers only
        those a recomputed plan shows to fit."""
        return []

    @classmethod
    def load(cls, settings: Settings, device: Device) -> Self:
        """Plan and build in one step (scripts and tests)."""
        return cls(cls.plan(settings, device))

    @abstractmethod
    def __init__(self, plan: LoadPlan) -> None: ...

    _info: EngineInfo  # set by ``__init__`` once the model is loaded

    @property
    def info(self) -> EngineInfo:
        return self._info


def pick_backend(backends: Mapping[str, Backend], name: str) -> Backend:
    """The backend called ``name``, or a one-line error naming the choices."""
    backend = backends.get(name)
    if backend is None:
        raise EngineError(f"unknown engine {name!r}; expected one of {', '.join(backends)}")
    return backend


def engine_class(backend: Backend) -> type[Engine]:
    """Import ``backend``'s module and return its engine class (narrow it with
    ``issubclass`` to the side's interface)."""
    module: ModuleType = importlib.import_module(backend.module)
    engine = getattr(module, backend.engine)
    if not (isinstance(engine, type) and issubclass(engine, Engine)):
        raise TypeError(f"{backend.module}.{backend.engine} is not an engine class")
    return engine


PROGRAM_NAME = "wyoming-opentalker"
PROGRAM_URL = "https://github.com/wyoming-opentalker/wyoming-opentalker"


@dataclass(frozen=True)
class EngineInfo:
    """What an engine reports about itself: logged at start-up, shown in ``info``."""

    engine: str
    model: str
    device: str
    precision: str
    weights_bytes: int
    version: str | None = None
    description: str | None = None
    attribution: tuple[str, str] = ("", "")

    def summary(self) -> str:
        mib = self.weights_bytes / 1024 / 1024
        return (
            f"{self.engine}: model {self.model} on {self.device} ({self.precision}), "
            f"weights {mib:.0f} MiB"
        )


# --- speech-to-text


@dataclass(frozen=True)
class AsrRequest:
    """One utterance: mono float32 at the engine's sample rate."""

    audio: np.ndarray
    language: str | None = None  # a code from AsrEngine.languages, or None to detect
    hints: tuple[str, ...] = ()  # names and terms that should bias recognition
    timestamps: bool = False  # ask for timed segments (subtitles); engines may ignore it


@dataclass(frozen=True)
class AsrSegment:
    """A stretch of the transcript with its place in the audio, in seconds."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class AsrResult:
    text: str
    language: str | None = None
    segments: tuple[AsrSegment, ...] = ()  # only from engines that time their output


class AsrEngine(Engine):
    """Speech-to-text backend. ``transcribe`` may get several requests at once (batching)."""

    sample_rate: int = 16000
    max_batch_size: int = 1

    _languages: list[str]  # set by ``__init__`` from what the loaded model lists

    @property
    def languages(self) -> list[str]:
        """Language codes the loaded model really recognises."""
        return self._languages

    @property
    def detects_language(self) -> bool:
        """True if a request without a language is detected rather than assumed."""
        return len(self.languages) > 1

    @abstractmethod
    def transcribe(self, requests: Sequence[AsrRequest]) -> Sequence[AsrResult | EngineError]:
        """Decode each request; called on the worker thread only. A request that fails
        alone (out of memory, overflow) gets its ``EngineError`` in its place."""


# --- text-to-speech


@dataclass(frozen=True)
class Voice:
    """A voice as Wyoming advertises it."""

    name: str
    languages: tuple[str, ...]
    speakers: tuple[str, ...] = ()
    description: str | None = None


@dataclass(frozen=True)
class TtsRequest:
    text: str
    voice: str
    speaker: str | None = None
    language: str | None = None


class TtsEngine(Engine):
    """Text-to-speech backend: synthesises one chunk of text at a time."""

    @property
    @abstractmethod
    def sample_rate(self) -> int: ...

    @property
    @abstractmethod
    def voices(self) -> list[Voice]: ...

    @property
    @abstractmethod
    def default_voice(self) -> str: ...

    @abstractmethod
    def synthesize(self, request: TtsRequest) -> Iterator[np.ndarray]:
        """Yield mono float32 audio for one chunk of text, piece by piece as it is made."""


@dataclass
class InferenceWorker:
    """One thread per loaded model: requests run one at a time in arrival order.

    The models are not safe to call from several threads at once, and on a small GPU
    or two CPU cores running requests side by side is slower than running them in turn.
    """

    name: str
    _executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``func`` on the worker thread; cancelling drops it if not yet started."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(func, *args, **kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
