"""OpenAI-style HTTP API on the models the Wyoming servers already loaded.

Users come from a deployment that answered ``POST /v1/audio/transcriptions`` and
``POST /v1/audio/speech``; their scripts keep working against this process. Requests go
through the same ``AsrService``/``TtsService`` as Wyoming clients — the same queue, the
same batching, the same single copy of each model — so neither protocol can starve the
other or load a model twice. Errors use OpenAI's JSON shape and honest status codes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web
from aiohttp.typedefs import Middleware

from . import status_page
from .asr.service import AsrService
from .device import Device, memory_report
from .engine import AsrRequest, AsrResult, AsrSegment, EngineError
from .languages import NAMES
from .media import OUTPUT_FORMATS, AudioEncoder, AudioTooLong, MediaError, decode_audio
from .settings import Settings
from .stats import AsrTiming
from .status_page import StatusSource
from .tts.service import TtsService, VoiceChoice

if TYPE_CHECKING:
    from .plan import Plans

_LOGGER = logging.getLogger(__name__)

# OpenAI's voice names: scripts written for that API send them; they get the default voice.
OPENAI_VOICES = frozenset(
    "alloy ash ballad coral echo fable onyx nova sage shimmer verse marin cedar".split()
)
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
MIN_SPEED, MAX_SPEED = 0.25, 4.0
_FIELD_LIMIT = 64 * 1024  # a text form field (prompt, language…) longer than this is abuse

# Engine error codes -> HTTP status; anything else a client did is a 400.
_STATUS = {
    "busy": 503,
    "out-of-memory": 503,
    "too-long": 413,
    "too-large": 413,
    "internal": 500,
    "engine-error": 500,
    "not-found": 404,
}


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    @classmethod
    def from_engine(cls, err: EngineError, param: str | None = None) -> ApiError:
        return cls(_STATUS.get(err.code, 400), str(err), err.code, param)

    def response(self) -> web.Response:
        if self.status == 401:
            kind = "authentication_error"
        elif self.status >= 500:
            kind = "server_error"
        else:
            kind = "invalid_request_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        body = {"error": error}
        return web.json_response(body, status=self.status)


# The page's shell is fetched by a browser that cannot send a token; it holds no data.
_PUBLIC = frozenset({"/", "/health"})
_PAGE_HEADERS = {
    "Content-Security-Policy": status_page.CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


def _public(path: str) -> bool:
    return path in _PUBLIC or path.startswith("/assets/")


@dataclass
class _Upload:
    audio: bytes
    fields: dict[str, str]


class OpenAiApi:
    """The aiohttp applications and the sites they listen on: the API's own ports (bearer
    token when ``HTTP_API_KEY`` is set) and, for Home Assistant's ingress, one port that
    needs no token but answers the ingress proxy's address only (Home Assistant has
    already logged the user in, and cannot add our token)."""

    def __init__(
        self,
        settings: Settings,
        asr: AsrService | None,
        tts: TtsService | None,
        device: Device,
        plans: Plans | None = None,
    ) -> None:
        self.settings = settings
        self.asr = asr
        self.tts = tts
        self.device = device
        self.status = StatusSource(asr, tts, device, plans, time.monotonic())
        self.max_upload = int(settings.http_max_upload_mb * 1_000_000)
        self.app = self._application(self._auth)
        self.ingress_app = self._application(self._ingress_only)
        self._runners: list[web.AppRunner] = []
        self.urls: list[str] = []

    def _application(self, guard: Middleware) -> web.Application:
        app = web.Application(middlewares=[self._errors, guard], client_max_size=self.max_upload)
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        app.router.add_post("/v1/audio/speech", self.speech)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/", self.page)
        app.router.add_get("/status", self.status_data)
        app.router.add_get("/assets/{name}", self.asset)
        return app

    async def start(self) -> None:
        host = self.settings.http_host
        ports = self.settings.http_port if self.settings.http_enabled else ()
        if ports:
            self.urls += await self._serve(self.app, host, ports)
            _LOGGER.info("OpenAI-style HTTP API and status page on %s", ", ".join(self.urls))
        ingress = self.settings.http_ingress_port
        if ingress is not None:
            urls = await self._serve(self.ingress_app, host, (ingress,))
            self.urls += urls
            _LOGGER.info(
                "Status page for Home Assistant's ingress on %s (answers %s only)",
                urls[0],
                ", ".join(self.settings.http_ingress_allow),
            )

    async def _serve(self, app: web.Application, host: str, ports: tuple[int, ...]) -> list[str]:
        # A client that hangs up cancels its handler, so its queued work is dropped.
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self.settings.shutdown_grace,
        )
        await runner.setup()
        self._runners.append(runner)
        urls = []
        for port in ports:
            site = web.TCPSite(runner, host, port)
            await site.start()
            shown = f"[{host}]" if ":" in host else host
            urls.append(f"http://{shown}:{port}")
        return urls

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()

    # --- middlewares

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as err:
            _LOGGER.info("HTTP %s %s -> %d: %s", request.method, request.path, err.status, err)
            return err.response()
        except EngineError as err:
            api = ApiError.from_engine(err)
            _LOGGER.info("HTTP %s %s -> %d: %s", request.method, request.path, api.status, err)
            return api.response()
        except web.HTTPRequestEntityTooLarge:
            text = f"the request is larger than the {self.max_upload} byte limit"
            return ApiError(413, text, "too-large").response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return ApiError(exc.status, exc.reason, None).response()
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception as err:
            _LOGGER.exception("HTTP %s %s failed", request.method, request.path)
            return ApiError(500, f"internal error: {type(err).__name__}", "internal").response()

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The bearer token, when one is set, on everything but the health check and the
        page's static shell (which holds no data: a browser cannot send a header when it
        opens a URL, so the page asks for the token and sends it on each call)."""
        key = self.settings.http_api_key
        if key and not _public(request.path):
            given = request.headers.get("Authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), key.encode()
            ):
                raise ApiError(
                    401, "a valid API key is required (Authorization: Bearer …)", "invalid_api_key"
                )
        return await handler(request)

    @web.middleware
    async def _ingress_only(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The ingress port answers the Supervisor's proxy alone, which lets through only
        users Home Assistant has logged in; everyone else is refused, token or not."""
        if request.remote not in self.settings.http_ingress_allow:
            raise ApiError(
                403,
                "this port serves Home Assistant's ingress proxy only; use the HTTP API's port",
                "forbidden",
            )
        return await handler(request)

    # --- the status page

    async def page(self, request: web.Request) -> web.Response:
        ingress = request.app is self.ingress_app
        body = status_page.page(request.headers.get("X-Ingress-Path") if ingress else None)
        return web.Response(text=body, content_type="text/html", headers=_PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = status_page.ASSETS.get(name)
        if kind is None:
            raise ApiError(404, f"no such file: {name}", "not-found")
        return web.Response(body=status_page.asset(name), content_type=kind, headers=_PAGE_HEADERS)

    async def status_data(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self.status.snapshot))

    # --- speech to text

    async def transcriptions(self, request: web.Request) -> web.Response:
        asr = self.asr
        if asr is None:
            raise ApiError(404, "speech-to-text is not running in this server", "not-found")
        upload = await self._read_upload(request)
        if upload.fields.get("stream", "false").strip().lower() == "true":
            raise ApiError(
                400, "streamed transcription (stream=true) is not offered", "unsupported", "stream"
            )
        fmt = upload.fields.get("response_format", "json") or "json"
        if fmt not in TRANSCRIPT_FORMATS:
            raise ApiError(
                400,
                f"response_format {fmt!r} is not one of {', '.join(TRANSCRIPT_FORMATS)}",
                "bad-format",
                "response_format",
            )
        try:
            language = asr.resolve_language(upload.fields.get("language") or None)
        except EngineError as err:
            raise ApiError.from_engine(err, "language") from None
        received = time.monotonic()
        duration = 0.0

        def timing(error: str | None = None) -> AsrTiming:
            # The whole file had arrived: "audio-stop" is when its upload ended.
            return AsrTiming(
                duration, duration, "upload", False, received, time.monotonic(),
                stop_at=received, error=error, via="http",
            )  # fmt: skip

        try:
            try:
                audio = await asyncio.to_thread(
                    decode_audio, upload.audio, asr.engine.sample_rate, asr.max_audio_seconds
                )
            except AudioTooLong as err:
                raise ApiError(413, str(err), "too-long", "file") from None
            except MediaError as err:
                raise ApiError(400, str(err), "bad-audio-format", "file") from None
            duration = audio.size / asr.engine.sample_rate
            prompt = upload.fields.get("prompt", "").strip()
            timed = fmt in ("verbose_json", "srt", "vtt")
            result = await asr.transcribe(
                AsrRequest(audio, language, (prompt,) if prompt else (), timestamps=timed)
            )
        except (ApiError, EngineError) as err:
            asr.record(timing(err.code or "error"))
            raise
        asr.record(timing())
        _LOGGER.info(
            "HTTP transcribed %.1f s of audio in %.3f s: %s",
            duration,
            time.monotonic() - received,
            result.text,
        )
        return _transcript_response(result, fmt, duration)

    async def _read_upload(self, request: web.Request) -> _Upload:
        if request.content_type != "multipart/form-data":
            raise ApiError(
                415,
                f"expected multipart/form-data with a 'file' field, got {request.content_type!r}",
                "bad-content-type",
            )
        if request.content_length is not None and request.content_length > self.max_upload:
            raise ApiError(
                413,
                f"upload of {request.content_length} bytes is larger than the "
                f"{self.max_upload} byte limit (HTTP_MAX_UPLOAD_MB)",
                "too-large",
                "file",
            )
        fields: dict[str, str] = {}
        audio: bytes | None = None
        total = 0
        try:
            reader = await request.multipart()
            while True:
                async with asyncio.timeout(self.settings.idle_timeout):
                    part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    continue  # nested multipart: not part of this API
                is_file = part.name == "file"
                data = await self._read_part(part, self.max_upload - total if is_file else None)
                total += len(data)
                if is_file:
                    audio = data
                elif part.name:
                    fields[part.name] = data.decode("utf-8", errors="replace")
        except TimeoutError:
            raise ApiError(408, "the upload stalled", "timeout") from None
        except (ValueError, AssertionError, asyncio.IncompleteReadError) as err:
            raise ApiError(400, f"malformed multipart body: {err}", "bad-request") from None
        if audio is None:
            raise ApiError(400, "the form has no 'file' field", "no-audio", "file")
        return _Upload(audio, fields)

    async def _read_part(self, part: BodyPartReader, limit: int | None) -> bytes:
        cap = _FIELD_LIMIT if limit is None else limit
        data = bytearray()
        while True:
            async with asyncio.timeout(self.settings.idle_timeout):
                chunk = await part.read_chunk(1 << 16)
            if not chunk:
                return bytes(data)
            data += chunk
            if len(data) > cap:
                what = "upload" if limit is not None else f"form field {part.name!r}"
                raise ApiError(413, f"{what} is larger than {cap} bytes", "too-large", part.name)

    # --- text to speech

    async def speech(self, request: web.Request) -> web.StreamResponse:
        tts = self.tts
        if tts is None:
            raise ApiError(404, "text-to-speech is not running in this server", "not-found")
        if request.content_type != "application/json":
            raise ApiError(
                415, f"expected application/json, got {request.content_type!r}", "bad-content-type"
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError(400, "the body is not valid JSON", "bad-request") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", "bad-request")
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "'input' must be a non-empty string", "no-text", "input")
        try:
            chunks = tts.text_chunks(text)
        except EngineError as err:
            raise ApiError.from_engine(err, "input") from None
        fmt = body.get("response_format") or "mp3"
        if fmt not in OUTPUT_FORMATS:
            raise ApiError(
                400,
                f"response_format {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}",
                "bad-format",
                "response_format",
            )
        if body.get("stream_format") not in (None, "audio"):
            raise ApiError(
                400, "only stream_format 'audio' is offered", "unsupported", "stream_format"
            )
        speed = body.get("speed", 1.0)
        if (
            not isinstance(speed, int | float)
            or isinstance(speed, bool)
            or not MIN_SPEED <= speed <= MAX_SPEED
        ):
            raise ApiError(
                400, f"speed must be a number from {MIN_SPEED} to {MAX_SPEED}", "bad-speed", "speed"
            )
        choice = _choose_voice(tts, body.get("voice"))
        if not chunks:
            raise ApiError(400, "the text has nothing to speak (no letters or digits)", "no-text")
        _LOGGER.info(
            "HTTP speech: %d characters in %d chunk(s) with %s as %s",
            len(text),
            len(chunks),
            choice.voice,
            fmt,
        )
        return await self._stream_speech(request, tts, chunks, choice, fmt, float(speed))

    async def _stream_speech(
        self,
        request: web.Request,
        tts: TtsService,
        chunks: list[str],
        choice: VoiceChoice,
        fmt: str,
        speed: float,
    ) -> web.StreamResponse:
        """Send audio as each piece is synthesised (chunked transfer). Errors before the
        first piece are JSON errors; after it the status is sent, so the connection is
        cut instead — a truncated file, never a complete-looking wrong one."""
        audio = tts.synthesize(chunks, choice, via="http")
        try:
            first = await anext(audio, None)
            encoder = AudioEncoder(fmt, tts.engine.sample_rate, speed)
            response = web.StreamResponse(headers={"Content-Type": encoder.content_type})
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                piece = first
                while piece is not None:
                    await self._send(response, await asyncio.to_thread(encoder.encode, piece))
                    piece = await anext(audio, None)
                await self._send(response, await asyncio.to_thread(encoder.finish))
            except Exception:
                _LOGGER.exception("HTTP speech failed after audio was sent; cutting the stream")
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write_eof()
            return response
        finally:
            await audio.aclose()

    async def _send(self, response: web.StreamResponse, data: bytes) -> None:
        if data:
            async with asyncio.timeout(self.settings.idle_timeout):  # a reader that stalls
                await response.write(data)

    # --- discovery and health

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {
                "id": service.engine.info.model,
                "object": "model",
                "created": 0,
                "owned_by": service.engine.info.engine,
            }
            for service in (self.asr, self.tts)
            if service is not None
        ]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        services: dict[str, Any] = {}
        if self.asr is not None:
            services["asr"] = {
                **_engine_fields(self.asr.engine.info),
                "languages": self.asr.engine.languages,
                "requests_served": self.asr.requests_served,
            }
        if self.tts is not None:
            services["tts"] = {
                **_engine_fields(self.tts.engine.info),
                "voices": [voice.name for voice in self.tts.engine.voices],
                "default_voice": self.tts.engine.default_voice,
                "active_requests": self.tts.active_requests,
            }
        memory = await asyncio.to_thread(memory_report, self.device)
        return web.json_response(
            {"status": "ok", "device": self.device.name, "services": services, "memory": memory}
        )


def _engine_fields(info: Any) -> dict[str, Any]:
    return {
        "engine": info.engine,
        "model": info.model,
        "device": info.device,
        "precision": info.precision,
        "weights_bytes": info.weights_bytes,
    }


def _choose_voice(tts: TtsService, voice: object) -> VoiceChoice:
    """Our voice names (any case), OpenAI's names (-> the default voice), or nothing."""
    if isinstance(voice, dict):  # newer clients may send {"id": "..."}
        voice = voice.get("id") or voice.get("name")
    if voice is None or voice == "":
        return tts.resolve_voice({})
    if not isinstance(voice, str):
        raise ApiError(400, "'voice' must be a string", "unknown-voice", "voice")
    if voice.lower() in OPENAI_VOICES and not tts.has_voice(voice):
        return tts.resolve_voice({})
    try:
        return tts.resolve_voice({"name": voice})
    except EngineError as err:
        raise ApiError.from_engine(err, "voice") from None


def _transcript_response(result: AsrResult, fmt: str, duration: float) -> web.Response:
    if fmt == "json":
        return web.json_response({"text": result.text})
    if fmt == "text":
        return web.Response(text=result.text + "\n", content_type="text/plain")
    # Engines without timestamps give one segment spanning the whole audio.
    segments = result.segments or (AsrSegment(0.0, round(duration, 3), result.text),)
    if fmt == "srt":
        cues = [
            f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
            for i, s in enumerate(segments, 1)
        ]
        return web.Response(text="\n".join(cues), content_type="application/x-subrip")
    if fmt == "vtt":
        cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in segments]
        return web.Response(text="WEBVTT\n\n" + "\n".join(cues), content_type="text/vtt")
    language = NAMES.get(result.language or "", result.language or "")
    return web.json_response(
        {
            "task": "transcribe",
            "language": language.lower(),
            "duration": round(duration, 3),
            "text": result.text,
            "segments": [
                {
                    "id": i,
                    "seek": 0,
                    "start": s.start,
                    "end": s.end,
                    "text": s.text,
                    "tokens": [],
                    "temperature": 0.0,
                    "avg_logprob": 0.0,
                    "compression_ratio": 0.0,
                    "no_speech_prob": 0.0,
                }
                for i, s in enumerate(segments)
            ],
        }
    )


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"
