"""Speech-to-text: engine selection, batching, and the service the Wyoming handler uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar

from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from .. import __version__
from ..backends import ASR_BACKENDS, runtime_backend
from ..device import Device
from ..engine import (
    PROGRAM_NAME,
    PROGRAM_URL,
    AsrEngine,
    AsrRequest,
    AsrResult,
    EngineError,
    InferenceWorker,
    LoadPlan,
    engine_class,
    pick_backend,
)
from ..languages import language_code
from ..settings import Settings
from ..stats import AsrTiming, Recent, Tally
from ..vad import speech_detector

_LOGGER = logging.getLogger(__name__)


def asr_backend(settings: Settings, device: Device) -> str:
    """The ASR backend that serves the configured engine on ``device``: Qwen3-ASR on a
    machine without a GPU runs as ONNX unless ``QWEN_ASR_RUNTIME=torch``."""
    backend = pick_backend(ASR_BACKENDS, settings.asr_engine)
    return runtime_backend(backend, settings.qwen_asr_runtime, device.is_cuda)


def _engine_class(settings: Settings, device: Device) -> type[AsrEngine]:
    engine = engine_class(pick_backend(ASR_BACKENDS, asr_backend(settings, device)))
    if not issubclass(engine, AsrEngine):
        raise TypeError(f"{engine.__name__} is not a AsrEngine")
    return engine


def asr_plan(settings: Settings, device: Device) -> LoadPlan:
    """How the configured ASR engine will be loaded on ``device``: no weights read."""
    return _engine_class(settings, device).plan(settings, device)


def load_asr_engine(plan: LoadPlan) -> AsrEngine:
    """Build the planned engine (blocking: loads its model)."""
    return _engine_class(plan.settings, plan.device)(plan)


@dataclass
class _Job:
    request: AsrRequest
    future: asyncio.Future[AsrResult]
    speculative: bool = False


@dataclass
class AsrService(Tally[AsrTiming]):
    """A loaded engine, its worker thread, the batcher, and what ``info`` says.

    Requests whose audio has ended queue in arrival order. Whenever the engine is free,
    everything waiting (up to ``engine.max_batch_size``) goes into one ``transcribe``
    call. A lone request waits at most ``batch_window`` seconds for company, so
    satellites that finish speaking together share one decode while a single user pays
    only a few milliseconds.

    Speculative decodes (audio decoded during a pause, before the client says it has
    ended) are taken only while the engine is idle, run only when no ended request is
    waiting, and are never batched with one: they may use spare time, never delay an
    answer someone is waiting for.
    """

    kind: ClassVar[str] = "asr"
    engine: AsrEngine
    settings: Settings
    worker: InferenceWorker = field(default_factory=lambda: InferenceWorker("asr"))
    requests_served: int = 0
    speculative_decodes: int = 0  # started; each also counted when its answer was used
    speculative_used: int = 0
    requests_failed: int = 0
    recent: Recent[AsrTiming] = field(default_factory=Recent)

    def __post_init__(self) -> None:
        self.info_event: Event = self._build_info().event()
        self._finals: deque[_Job] = deque()
        self._guesses: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._busy = False  # a batch is on the worker
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def max_audio_seconds(self) -> float:
        """``MAX_AUDIO_SECONDS``: the longest audio one request may send."""
        return self.settings.max_audio_seconds

    def check_audio_seconds(self, seconds: float) -> None:
        """Refuse a request as soon as its audio passes the limit."""
        limit = self.max_audio_seconds
        if seconds > limit:
            raise EngineError(
                f"audio is longer than the {limit:g} s limit (MAX_AUDIO_SECONDS)", "too-long"
            )

    @property
    def batch_window(self) -> float:
        return self.settings.asr_batch_window_ms / 1000 if self.engine.max_batch_size > 1 else 0.0

    @property
    def ends_commands(self) -> bool:
        """Whether this server decides itself when a spoken command has ended
        (``ASR_ENDPOINTING``), so clients need no VAD of their own."""
        return self.settings.asr_endpointing and speech_detector() is not None

    def _build_info(self) -> Info:
        info = self.engine.info
        author, url = info.attribution
        model = AsrModel(
            name=info.model,
            attribution=Attribution(name=author, url=url),
            installed=True,
            description=info.description,
            version=info.version,
            languages=list(self.engine.languages),
        )
        program = AsrProgram(
            name=PROGRAM_NAME,
            attribution=Attribution(name=PROGRAM_NAME, url=PROGRAM_URL),
            installed=True,
            description=f"Speech to text with {info.engine}",
            version=__version__,
            models=[model],
            supports_transcript_streaming=False,
            requires_external_vad=not self.ends_commands,
        )
        return Info(asr=[program])

    def resolve_language(self, requested: str | None) -> str | None:
        """The language to decode in, or ``None`` to detect; unsupported -> ``EngineError``."""
        language = language_code(requested)
        if language is None:
            language = language_code(self.settings.asr_language)
        if language is None:
            return None
        if language not in self.engine.languages:
            supported = ", ".join(self.engine.languages[:40])
            raise EngineError(
                f"language {requested!r} is not supported by model {self.engine.info.model} "
                f"(supported: {supported})",
                "unsupported-language",
            )
        return language

    async def close(self) -> None:
        """Stop batching and the worker thread; requests still queued get an error."""
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for queue in (self._finals, self._guesses):
            while queue:
                job = queue.popleft()
                if not job.future.done():
                    job.future.set_exception(EngineError("the server is shutting down", "busy"))
        self.worker.shutdown()

    def _start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._batch_loop())

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        """Decode a request whose audio has ended (queued ahead of any speculation)."""
        self._start()
        waiting = sum(not job.future.done() for job in self._finals)
        if waiting >= self.settings.max_queue:
            raise EngineError(
                f"speech-to-text is busy ({waiting} requests waiting); try again", "busy"
            )
        future: asyncio.Future[AsrResult] = asyncio.get_running_loop().create_future()
        self._finals.append(_Job(request, future))
        self._wake.set()
        return await future  # cancelled with the client: the job is then skipped

    @property
    def idle(self) -> bool:
        """Nothing running and nothing waiting."""
        return not self._busy and not any(not job.future.done() for job in self._finals)

    def speculate(self, request: AsrRequest) -> asyncio.Future[AsrResult] | None:
        """Decode ``request`` now if the engine is idle, else ``None`` (try again later).
        Cancel the future to drop it (a decode already running finishes unseen)."""
        if not self.idle:
            return None
        self._start()
        future: asyncio.Future[AsrResult] = asyncio.get_running_loop().create_future()
        self._guesses.append(_Job(request, future, speculative=True))
        self.speculative_decodes += 1
        self._wake.set()
        return future

    def adopted(self) -> None:
        """A speculative answer was sent to its client: it counts as a request served."""
        self.speculative_used += 1
        self.requests_served += 1

    def _take(self, queue: deque[_Job], limit: int) -> list[_Job]:
        jobs: list[_Job] = []
        while queue and len(jobs) < limit:
            job = queue.popleft()
            if not job.future.done():
                jobs.append(job)
        return jobs

    async def _batch_loop(self) -> None:
        limit = max(1, self.engine.max_batch_size)
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # what arrives in the same moment is seen: finals first
            while True:
                jobs = self._take(self._finals, limit)
                if len(jobs) == 1 and limit > 1 and self.batch_window > 0:
                    await self._company(self.batch_window)
                    jobs += self._take(self._finals, limit - 1)
                if not jobs:
                    jobs = self._take(self._guesses, limit)
                if not jobs:
                    break
                await self._run_batch(jobs)

    async def _company(self, window: float) -> None:
        """Wait up to ``window`` seconds for more ended requests to batch with."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        while (remaining := deadline - loop.time()) > 0:
            if len(self._finals) >= self.engine.max_batch_size - 1:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        requests = [job.request for job in jobs]
        if len(jobs) > 1:
            _LOGGER.info("Decoding a batch of %d requests in one call", len(jobs))
        self._busy = True
        started = time.monotonic()
        try:
            results = await self.worker.run(self.engine.transcribe, requests)
        except Exception as err:
            _LOGGER.exception("Transcription failed")
            error = (
                err
                if isinstance(err, EngineError)
                else EngineError(f"transcription failed: {type(err).__name__}: {err}")
            )
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        finally:
            self._busy = False
            self._wake.set()  # a speculation waiting for the engine may now go
            if _LOGGER.isEnabledFor(logging.DEBUG):  # the per-job text only when it is read
                _LOGGER.debug(
                    "Decoded %s in %.3f s%s",
                    ", ".join(
                        f"{job.request.audio.size / self.engine.sample_rate:.2f} s" for job in jobs
                    ),
                    time.monotonic() - started,
                    " (in a pause)" if jobs[0].speculative else "",
                )
        self.requests_served += sum(not job.speculative for job in jobs)
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, EngineError):  # this request alone failed (e.g. OOM)
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
