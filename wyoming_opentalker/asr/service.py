"""Speech-to-text: engine selection, batching, and the service the Wyoming handler uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import ClassVar

from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Info

from .. import __version__
from ..backends import ASR_BACKENDS
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

_LOGGER = logging.getLogger(__name__)


def _engine_class(settings: Settings) -> type[AsrEngine]:
    engine = engine_class(pick_backend(ASR_BACKENDS, settings.asr_engine))
    if not issubclass(engine, AsrEngine):
        raise TypeError(f"{engine.__name__} is not a AsrEngine")
    return engine


def asr_plan(settings: Settings, device: Device) -> LoadPlan:
    """How the configured ASR engine will be loaded on ``device``: no weights read."""
    return _engine_class(settings).plan(settings, device)


def load_asr_engine(plan: LoadPlan) -> AsrEngine:
    """Build the planned engine (blocking: loads its model)."""
    return _engine_class(plan.settings)(plan)


@dataclass
class _Job:
    request: AsrRequest
    future: asyncio.Future[AsrResult]


@dataclass
class AsrService:
    """A loaded engine, its worker thread, the batcher, and what ``info`` says.

    Requests queue in arrival order. Whenever the engine is free, everything waiting (up
    to ``engine.max_batch_size``) goes into one ``transcribe`` call. A lone request
    waits at most ``batch_window`` seconds for company, so satellites that finish speaking
    together share one decode while a single user pays only a few milliseconds.
    """

    kind: ClassVar[str] = "asr"
    engine: AsrEngine
    settings: Settings
    worker: InferenceWorker = field(default_factory=lambda: InferenceWorker("asr"))
    requests_served: int = 0

    def __post_init__(self) -> None:
        self.info_event: Event = self._build_info().event()
        self._queue: asyncio.Queue[_Job] | None = None
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
        queue, self._queue = self._queue, None
        while queue is not None and not queue.empty():
            job = queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(EngineError("the server is shutting down", "busy"))
        self.worker.shutdown()

    async def transcribe(self, request: AsrRequest) -> AsrResult:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._loop_task = asyncio.create_task(self._batch_loop(self._queue))
        if self._queue.qsize() >= self.settings.max_queue:
            raise EngineError(
                f"speech-to-text is busy ({self._queue.qsize()} requests waiting); try again",
                "busy",
            )
        future: asyncio.Future[AsrResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(request, future))
        return await future  # cancelled with the client: the job is then skipped

    async def _batch_loop(self, queue: asyncio.Queue[_Job]) -> None:
        limit = max(1, self.engine.max_batch_size)
        while True:
            jobs = [await queue.get()]
            if limit > 1 and self.batch_window > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.batch_window):
                        while len(jobs) < limit:
                            jobs.append(await queue.get())
            while len(jobs) < limit and not queue.empty():
                jobs.append(queue.get_nowait())
            live = [job for job in jobs if not job.future.done()]
            if live:
                await self._run_batch(live)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        requests = [job.request for job in jobs]
        if len(jobs) > 1:
            _LOGGER.info("Decoding a batch of %d requests in one call", len(jobs))
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
        self.requests_served += len(jobs)
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():
                continue
            if isinstance(result, EngineError):  # this request alone failed (e.g. OOM)
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
