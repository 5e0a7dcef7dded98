"""One typed settings object for the whole product.

Every setting is declared once, as a field of ``Settings`` with its default, environment
variable, parser and help (``setting``); the command-line flag (``--field-name``), the
add-on's option key (the field name) and ``OPTIONS`` are derived from it, so they can
never drift apart. Fields are named by what they do; a renamed one keeps its old
environment variable, flag and add-on key. Precedence: flag > environment > options file
> default. Every value is parsed and checked against its field's type at start-up, and a
bad one stops the program with a single line naming the setting and the value.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlparse

from .backends import ASR_BACKENDS, TTS_BACKENDS
from .device import Device

SERVICES = ("asr", "tts")
ASR_ENGINES = tuple(ASR_BACKENDS)
TTS_ENGINES = tuple(TTS_BACKENDS)
QUANT_MODES = ("auto", "none", "int8", "nf4")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Home Assistant's names for how quickly a command's end is detected (Transcribe.vad_sensitivity).
VAD_SENSITIVITIES = ("relaxed", "default", "aggressive")


class SettingsError(ValueError):
    """A setting has a bad value; the message is one line meant for the user."""


# --- value parsers: each takes the raw string and returns the typed value or raises ValueError


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("expected a whole number") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return parse


def _float_above(minimum: float, *, inclusive: bool) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if not (value >= minimum if inclusive else value > minimum):
            raise ValueError(f"must be {'at least' if inclusive else 'more than'} {minimum:g}")
        return value

    return parse


def _choice(choices: Sequence[str], *, upper: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of: {', '.join(choices)}")
        return value

    return parse


def _uri(raw: str) -> str:
    parsed = urlparse(raw.strip())
    if parsed.scheme == "tcp":
        try:
            port = parsed.port
        except ValueError:
            raise ValueError("the port must be a number from 0 to 65535") from None
        if parsed.hostname is None or port is None:
            raise ValueError("expected tcp://HOST:PORT")
        return raw.strip()
    if parsed.scheme == "unix" and parsed.path:
        return raw.strip()
    raise ValueError("expected tcp://HOST:PORT or unix:///path/to/socket")


def _device(raw: str) -> str:
    value = raw.strip().lower()
    if value != "auto":
        Device.parse(value)  # raises with the accepted forms
    return value


def _services(raw: str) -> tuple[str, ...]:
    value = raw.strip().lower()
    if value in ("all", "both", ""):
        return SERVICES
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [name for name in names if name not in SERVICES]
    if unknown or not names:
        raise ValueError("expected asr, tts or all")
    return names


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _ports(raw: str) -> tuple[int, ...]:
    ports: list[int] = []
    for part in raw.split(","):
        if not part.strip():
            continue
        try:
            port = int(part.strip())
        except ValueError:
            raise ValueError("expected port numbers, comma-separated") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is outside 1-65535")
        ports.append(port)
    if not ports:
        raise ValueError("expected at least one port")
    return tuple(dict.fromkeys(ports))


def _optional_port(raw: str) -> int | None:
    if not raw.strip():
        return None
    ports = _ports(raw)
    if len(ports) != 1:
        raise ValueError("expected one port number")
    return ports[0]


def _addresses(raw: str) -> tuple[str, ...]:
    addresses = []
    for part in _list(raw):
        try:
            addresses.append(str(ipaddress.ip_address(part.strip("[]"))))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address") from None
    if not addresses:
        raise ValueError("expected at least one IP address")
    return tuple(addresses)


def _host(raw: str) -> str:
    value = raw.strip().strip("[]")
    if not value or any(char.isspace() for char in value):
        raise ValueError("expected a host name or address")
    return value


def _text(raw: str) -> str | None:
    return raw.strip() or None


def _word(raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ValueError("expected a value")
    return value


def _path(raw: str) -> Path | None:
    return Path(raw).expanduser() if raw.strip() else None


@dataclass(frozen=True)
class Setting:
    """How one ``Settings`` field is set from outside."""

    env: str | None
    parse: Callable[[str], Any]
    help: str
    switch: bool = False  # a boolean switch on the command line (--x / --no-x)
    flag: str | None = None  # default: --field-name
    key: str | None = None  # the add-on option key; default: the field name
    legacy_flags: tuple[str, ...] = ()


def setting(
    default: Any, env: str | None, parse: Callable[[str], Any], help: str, **how: Any
) -> Any:
    """A ``Settings`` field with its default and how it is set (see ``Setting``)."""
    return field(default=default, metadata={"setting": Setting(env, parse, help, **how)})


@dataclass(frozen=True)
class Settings:
    """Validated settings: each field declares its own flag, environment variable, add-on
    key, parser and help (``setting``); everything else is derived from these."""

    services: tuple[str, ...] = setting(
        SERVICES,
        "SERVICES",
        _services,
        "which servers run: asr, tts or all",
    )
    asr_uri: str = setting("tcp://0.0.0.0:10300", "ASR_URI", _uri, "where the ASR server listens")
    tts_uri: str = setting("tcp://0.0.0.0:10200", "TTS_URI", _uri, "where the TTS server listens")
    device: str = setting("auto", "DEVICE", _device, "auto, cpu, cuda or cuda:N")
    log_level: str = setting("INFO", "LOG_LEVEL", _choice(LOG_LEVELS, upper=True), "logging level")
    hf_endpoint: str | None = setting(None, "HF_ENDPOINT", _text, "Hugging Face mirror URL")
    cache_dir: Path | None = setting(  # noqa: RUF009 (a field declaration, evaluated once)
        None, "MODEL_CACHE_DIR", _path, "where downloaded models live"
    )
    local_files_only: bool = setting(
        False,
        "HF_HUB_OFFLINE",
        _bool,
        "never download; use local paths and the cache only",
        switch=True,
    )
    download_stall_seconds: float = setting(
        60.0,
        "DOWNLOAD_STALL_SECONDS",
        _float_above(0, inclusive=False),
        "end a model download that brings less than 64 KiB in this many seconds",
    )
    download_deadline_seconds: float = setting(
        7200.0,
        "DOWNLOAD_DEADLINE_SECONDS",
        _float_above(0, inclusive=False),
        "end a start's model downloads that take longer than this (they resume next time)",
    )
    # ASR
    asr_engine: str = setting(
        "faster-whisper",
        "ASR_ENGINE",
        _choice(ASR_ENGINES),
        f"speech-to-text engine: {', '.join(ASR_ENGINES)}",
    )
    asr_model: str | None = setting(None, "ASR_MODEL", _text, "ASR model id, alias or local path")
    asr_language: str | None = setting(
        None,
        "ASR_LANGUAGE",
        _text,
        "language used when a request names none (default: detect)",
    )
    asr_hints: tuple[str, ...] = setting(
        (),
        "ASR_HINTS",
        _list,
        "comma-separated words that bias recognition (names, terms)",
    )
    asr_initial_prompt: str | None = setting(
        None,
        "ASR_INITIAL_PROMPT",
        _text,
        "text that primes the recogniser (whisper initial_prompt)",
    )
    asr_beam_size: int = setting(5, "ASR_BEAM_SIZE", _int_at_least(1), "beam size")
    asr_compute_type: str = setting(
        "auto",
        "ASR_COMPUTE_TYPE",
        _word,
        "CTranslate2 compute type (default: chosen from the device)",
    )
    qwen_asr_max_batch_size: int | None = setting(
        None,
        "QWEN_ASR_MAX_BATCH_SIZE",
        _int_at_least(1),
        "most ASR requests decoded together (default: from GPU memory)",
    )
    qwen_asr_max_new_tokens: int = setting(
        512,
        "QWEN_ASR_MAX_NEW_TOKENS",
        _int_at_least(1),
        "most tokens Qwen3-ASR writes for one request",
    )
    asr_dtype: str = setting(
        "auto",
        "ASR_DTYPE",
        _choice(("auto", "float16", "bfloat16", "float32")),
        "Qwen3-ASR precision (auto: FP16 on CUDA, FP32 on the CPU)",
    )
    asr_batch_window_ms: float = setting(
        5.0,
        "QWEN_ASR_BATCH_WINDOW_MS",
        _float_above(0, inclusive=True),
        "how long a lone request waits for others to batch with",
    )
    qwen_asr_quant: str = setting(
        "auto",
        "QWEN_ASR_QUANT",
        _choice(QUANT_MODES),
        "Qwen3-ASR weight-only quantisation of linear layers: auto (by GPU), none, int8, nf4",
    )
    qwen_asr_runtime: str = setting(
        "auto",
        "QWEN_ASR_RUNTIME",
        _choice(("auto", "torch", "onnx")),
        "Qwen3-ASR runtime: auto (PyTorch on a GPU, ONNX without one), torch, onnx (CPU)",
    )
    qwen_asr_onnx_quant: str = setting(
        "int8-int4",
        "QWEN_ASR_ONNX_QUANT",
        _choice(("int8-int4", "int8", "int4", "none")),
        "Qwen3-ASR ONNX weights: int8 encoder + int4 decoder, int8, int4, none (FP32)",
    )
    qwen_asr_threads: int | None = setting(
        None,
        "QWEN_ASR_THREADS",
        _int_at_least(1),
        "CPU threads for Qwen3-ASR ONNX (default: onnxruntime's, one per core)",
    )
    asr_speculate: bool = setting(
        True,
        "ASR_SPECULATE",
        _bool,
        "decode during the pause after speech, before the client ends the audio",
        switch=True,
    )
    asr_endpointing: bool = setting(
        True,
        "ASR_ENDPOINTING",
        _bool,
        "end spoken commands here (info: requires_external_vad false) and answer at once",
        switch=True,
    )
    asr_vad_sensitivity: str = setting(
        "default",
        "ASR_VAD_SENSITIVITY",
        _choice(VAD_SENSITIVITIES),
        "silence that ends a command when the client names none: "
        "relaxed 1.25 s, default 0.9 s, aggressive 0.25 s",
    )
    asr_no_speech_seconds: float = setting(
        8.0,
        "ASR_NO_SPEECH_SECONDS",
        _float_above(0, inclusive=False),
        "with endpointing: answer an empty transcript when no speech starts this soon",
    )
    asr_max_command_seconds: float = setting(
        15.0,
        "ASR_MAX_COMMAND_SECONDS",
        _float_above(0, inclusive=False),
        "with endpointing: the longest command; it ends there even without a pause",
    )
    # TTS
    tts_engine: str = setting(
        "piper",
        "TTS_ENGINE",
        _choice(TTS_ENGINES),
        f"text-to-speech engine: {', '.join(TTS_ENGINES)}",
    )
    tts_model: str | None = setting(None, "TTS_MODEL", _text, "TTS model id or local path")
    tts_chunk_size: int = setting(
        200,
        "QWEN_TTS_CHUNK_SIZE",
        _int_at_least(0),
        "max characters per TTS chunk; 0 disables chunking",
        legacy_flags=("--qwen-tts-chunk-size",),
        key="qwen_tts_chunk_size",
    )
    tts_default_voice: str | None = setting(
        None,
        "QWEN_TTS_SPEAKER",
        _text,
        "default voice (speaker) name",
        legacy_flags=("--qwen-tts-speaker",),
        key="qwen_tts_speaker",
    )
    qwen_tts_stream_window: int = setting(
        8,
        "QWEN_TTS_STREAM_WINDOW",
        _int_at_least(0),
        "Qwen3-TTS: decode audio every N codec frames (80 ms each) while generating; 0 = off",
    )
    tts_dtype: str = setting(
        "auto",
        "TTS_DTYPE",
        _choice(("auto", "float16", "bfloat16", "float32")),
        "Qwen3-TTS talker precision (auto: bf16 on sm_80+, FP16 on sm_70+, else FP32)",
    )
    qwen_tts_max_new_tokens: int | None = setting(
        None,
        "QWEN_TTS_MAX_NEW_TOKENS",
        _int_at_least(1),
        "most codec frames Qwen3-TTS generates for one chunk (default: the model's)",
    )
    qwen_tts_quant: str = setting(
        "auto",
        "QWEN_TTS_QUANT",
        _choice(QUANT_MODES),
        "Qwen3-TTS talker weight-only quantisation: auto (by GPU), none, int8, nf4",
    )
    qwen_tts_loop: str = setting(
        "lean",
        "QWEN_TTS_LOOP",
        _choice(("lean", "upstream")),
        "Qwen3-TTS decode loop: lean (ours: static caches, CUDA graphs) or upstream generate()",
    )
    qwen_tts_cuda_graphs: bool = setting(
        True,
        "QWEN_TTS_CUDA_GRAPHS",
        _bool,
        "Qwen3-TTS: replay the lean loop's steps as CUDA graphs on CUDA (--no-... = eager)",
        switch=True,
    )
    tts_strict_voice: bool = setting(
        False,
        "TTS_STRICT_VOICE",
        _bool,
        "answer an unknown voice name with an error instead of the default voice",
        switch=True,
    )
    # Limits
    max_event_bytes: int = setting(
        4 * 1024 * 1024,
        "MAX_EVENT_BYTES",
        _int_at_least(1024),
        "largest event data or payload accepted",
    )
    max_audio_seconds: float = setting(
        300.0,
        "MAX_AUDIO_SECONDS",
        _float_above(0, inclusive=False),
        "longest ASR upload accepted",
    )
    max_text_chars: int = setting(
        50_000,
        "MAX_TEXT_CHARS",
        _int_at_least(1),
        "longest TTS text accepted",
    )
    idle_timeout: float = setting(
        60.0,
        "IDLE_TIMEOUT_SECONDS",
        _float_above(0, inclusive=False),
        "close a connection that sends or reads nothing for this long",
    )
    max_connections: int = setting(
        64,
        "MAX_CONNECTIONS",
        _int_at_least(1),
        "most simultaneous connections per server",
    )
    max_queue: int = setting(
        32,
        "MAX_QUEUE_DEPTH",
        _int_at_least(1),
        "most requests waiting for one engine before new ones are turned away",
    )
    shutdown_grace: float = setting(
        10.0,
        "SHUTDOWN_GRACE_SECONDS",
        _float_above(0, inclusive=True),
        "how long SIGTERM waits for requests in progress",
    )
    # OpenAI-style HTTP API on the same loaded models
    http_enabled: bool = setting(
        False,
        "HTTP_ENABLED",
        _bool,
        "also serve the OpenAI-style HTTP API (/v1/audio/transcriptions, /v1/audio/speech)",
        flag="--http",
        switch=True,
    )
    http_host: str = setting("0.0.0.0", "HTTP_HOST", _host, "where the HTTP API listens")
    http_port: tuple[int, ...] = setting(
        (8001,),
        "HTTP_PORT",
        _ports,
        "HTTP API port(s), comma-separated; each serves the whole API (e.g. 8001,8002)",
    )
    http_api_key: str | None = setting(
        None,
        "HTTP_API_KEY",
        _text,
        "require this bearer token on the HTTP API (default: no token)",
    )
    http_max_upload_mb: float = setting(
        25.0,
        "HTTP_MAX_UPLOAD_MB",
        _float_above(0, inclusive=False),
        "largest HTTP upload accepted, in MB",
    )
    # Home Assistant's ingress: the status page in the add-on's panel, behind HA's login
    http_ingress_port: int | None = setting(
        None,
        "HTTP_INGRESS_PORT",
        _optional_port,
        "also serve the HTTP API and status page on this port, without the bearer token, "
        "to the ingress proxy only (HTTP_INGRESS_ALLOW); works with the API off",
    )
    http_ingress_allow: tuple[str, ...] = setting(
        ("172.30.32.2",),
        "HTTP_INGRESS_ALLOW",
        _addresses,
        "addresses the ingress port answers, comma-separated (Home Assistant's Supervisor)",
    )
    # Discovery
    zeroconf: bool = setting(
        False,
        "ZEROCONF",
        _bool,
        "advertise the servers on the LAN (mDNS, _wyoming._tcp) so Home Assistant finds them",
        switch=True,
    )
    zeroconf_name: str = setting(
        "opentalker",
        "ZEROCONF_NAME",
        _host,
        "zeroconf instance name prefix (NAME-asr, NAME-tts)",
    )
    zeroconf_host: str | None = setting(
        None,
        "ZEROCONF_HOST",
        _text,
        "address to advertise (default: this host's LAN address)",
    )
    memory_check: bool = setting(
        True,
        "MEMORY_CHECK",
        _bool,
        "on a GPU, refuse to start when the models will not fit its free memory",
        switch=True,
    )


@dataclass(frozen=True)
class Option:
    """One setting as the readers see it, derived from its field."""

    name: str
    flag: str
    env: str | None
    parse: Callable[[str], Any]
    help: str
    is_flag: bool
    key: str
    legacy_flags: tuple[str, ...]


def _options() -> tuple[Option, ...]:
    options = []
    for item in fields(Settings):
        how: Setting = item.metadata["setting"]
        options.append(
            Option(
                item.name,
                how.flag or "--" + item.name.replace("_", "-"),
                how.env,
                how.parse,
                how.help,
                how.switch,
                how.key or item.name,
                how.legacy_flags,
            )
        )
    return tuple(options)


OPTIONS = _options()
_BY_NAME = {option.name: option for option in OPTIONS}
_BY_KEY = {option.key: option for option in OPTIONS} | _BY_NAME
_TYPES = get_type_hints(Settings)


def variable(name: str) -> str:
    """How users write the setting of field ``name``: its environment variable (every
    setting a memory fix changes has one), else its flag."""
    option = _BY_NAME[name]
    return option.env or option.flag


@dataclass(frozen=True)
class Legacy:
    """An old setting folded into a newer one: its value is translated, and the newer
    setting, given in the same place or a stronger one, wins."""

    env: str
    flag: str
    key: str
    target: str
    translate: Callable[[bool], str]


LEGACY = (
    # FP16 on (the old default) is the ASR precision's auto; off asks for FP32.
    Legacy(
        "QWEN_ASR_USE_FP16",
        "--qwen-asr-use-fp16",
        "qwen_asr_use_fp16",
        "asr_dtype",
        lambda fp16: "auto" if fp16 else "float32",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one optional service word, then a flag per option."""
    parser = argparse.ArgumentParser(
        prog="wyoming-opentalker",
        description="Wyoming speech-to-text and text-to-speech servers for Home Assistant.",
        epilog="Each flag can also be set with the environment variable named in brackets.",
    )
    parser.add_argument(
        "service",
        nargs="?",
        choices=("all", "asr", "tts"),
        help="run both servers (default) or only one",
    )
    parser.add_argument("--uri", help="where the single selected server listens")
    parser.add_argument(
        "--options-file", type=Path, help="JSON options file (the add-on's /data/options.json)"
    )
    parser.add_argument("--debug", action="store_true", help="shortcut for --log-level DEBUG")
    for option in OPTIONS:
        label = f"{option.help} [{option.env}]" if option.env else option.help
        names = (option.flag, *option.legacy_flags)
        if option.is_flag:
            parser.add_argument(
                *names, dest=option.name, action=argparse.BooleanOptionalAction, help=label
            )
        else:
            parser.add_argument(*names, dest=option.name, metavar="VALUE", help=label)
    for legacy in LEGACY:
        parser.add_argument(
            legacy.flag,
            dest=_legacy_dest(legacy),
            action=argparse.BooleanOptionalAction,
            help=f"old form of --{legacy.target.replace('_', '-')} [{legacy.env}]",
        )
    return parser


def _legacy_dest(legacy: Legacy) -> str:
    return "legacy_" + legacy.key


def _from_options_file(path: Path) -> dict[str, str]:
    """The file's values by add-on key, as text; keys that are not settings are skipped."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"options file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as err:
        raise SettingsError(f"options file {path} cannot be read: {err}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"options file {path} must hold a JSON object")
    legacy_keys = {legacy.key for legacy in LEGACY}
    raw: dict[str, str] = {}
    for key, value in data.items():
        if key not in _BY_KEY and key not in legacy_keys:
            continue  # the add-on may carry keys for itself; they are not ours
        if value is None or value == "":
            continue
        if isinstance(value, bool):
            raw[key] = "true" if value else "false"
        elif isinstance(value, list):
            raw[key] = ",".join(str(item) for item in value)
        else:
            raw[key] = str(value)
    return raw


class _Raw:
    """Setting values as text, by field, each with where it came from; a later ``set``
    (a stronger source) replaces an earlier one."""

    def __init__(self) -> None:
        self.text: dict[str, str] = {}
        self.source: dict[str, str] = {}

    def set(self, name: str, text: str, source: str) -> None:
        self.text[name] = text
        self.source[name] = source

    def legacy(self, legacy: Legacy, text: str, source: str) -> None:
        try:
            value = _bool(text)
        except ValueError as err:
            raise SettingsError(f"{source}={text!r} is invalid: {err}") from None
        self.set(legacy.target, legacy.translate(value), source)


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read flags, environment and options file into validated ``Settings``."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    raw = _Raw()
    if args.options_file is not None:
        given = _from_options_file(args.options_file)
        for legacy in LEGACY:
            if legacy.key in given:
                raw.legacy(legacy, given[legacy.key], "options file")
        for key, text in given.items():
            if key in _BY_KEY:
                raw.set(_BY_KEY[key].name, text, "options file")
    for legacy in LEGACY:
        if environ.get(legacy.env, "").strip():
            raw.legacy(legacy, environ[legacy.env], legacy.env)
    for option in OPTIONS:
        if option.env and environ.get(option.env, "").strip():
            raw.set(option.name, environ[option.env], option.env)
    for legacy in LEGACY:
        flagged = getattr(args, _legacy_dest(legacy))
        if flagged is not None:
            raw.legacy(legacy, str(flagged).lower(), legacy.flag)
    for option in OPTIONS:
        cli_value = getattr(args, option.name)
        if cli_value is not None:
            text = str(cli_value).lower() if option.is_flag else str(cli_value)
            raw.set(option.name, text, option.flag)

    if args.service:
        raw.set("services", args.service, "service")
    if args.debug:
        raw.set("log_level", "DEBUG", "--debug")

    values: dict[str, Any] = {}
    for name, text in raw.text.items():
        try:
            values[name] = _BY_NAME[name].parse(text)
        except ValueError as err:
            raise SettingsError(f"{raw.source[name]}={text!r} is invalid: {err}") from None

    services: tuple[str, ...] = values.get("services", SERVICES)
    if args.uri:
        if len(services) != 1:
            raise SettingsError("--uri needs a single service: use `asr --uri …` or `tts --uri …`")
        try:
            values[f"{services[0]}_uri"] = _uri(args.uri)
        except ValueError as err:
            raise SettingsError(f"--uri={args.uri!r} is invalid: {err}") from None

    _apply_model_name(values, services, environ)
    for name, value in values.items():
        _check_type(name, value, raw.source.get(name, "MODEL_NAME"))
    settings = Settings(**values)
    _check_uris(settings)
    return settings


def _check_type(name: str, value: Any, source: str) -> None:
    """A parsed value has its field's declared type (``Settings(**values)`` cannot be
    checked statically); a parser that returns something else is a bug, said in one line."""
    hint = _TYPES[name]
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    allowed: tuple[Any, ...]
    if origin in (types.UnionType, typing.Union):
        allowed = tuple(typing.get_origin(a) or a for a in args)
    else:
        allowed = (origin or hint,)
    allowed = tuple(type(None) if a is None else a for a in allowed)
    if float in allowed:
        allowed = (*allowed, int)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise SettingsError(f"{source} gives {name} the value {value!r}, which is not a {hint}")


def _apply_model_name(
    values: dict[str, Any], services: tuple[str, ...], environ: Mapping[str, str]
) -> None:
    """Honour the old deployment's per-container ``MODEL_NAME`` in single-service mode."""
    model_name = environ.get("MODEL_NAME", "").strip()
    if not model_name:
        return
    if len(services) != 1:
        raise SettingsError(
            "MODEL_NAME is ambiguous when both servers run: set ASR_MODEL and TTS_MODEL, "
            "or run a single service (`wyoming-opentalker asr` / `tts`)"
        )
    values.setdefault(f"{services[0]}_model", model_name)


def _check_uris(settings: Settings) -> None:
    if set(SERVICES) <= set(settings.services) and settings.asr_uri == settings.tts_uri:
        raise SettingsError(f"ASR and TTS cannot both listen on {settings.asr_uri}")
    if settings.http_enabled and settings.http_ingress_port in settings.http_port:
        raise SettingsError(
            f"HTTP_INGRESS_PORT={settings.http_ingress_port} is also in HTTP_PORT: the ingress "
            "port needs no API key, so it must be a port of its own"
        )


_SECRETS = frozenset({"http_api_key"})


def describe_settings(settings: Settings) -> str:
    """One log line with every non-default setting (for support requests)."""
    default = Settings()
    changed = [
        f"{f.name}={'<hidden>' if f.name in _SECRETS else repr(getattr(settings, f.name))}"
        for f in fields(settings)
        if getattr(settings, f.name) != getattr(default, f.name)
    ]
    return ", ".join(changed) or "all defaults"
