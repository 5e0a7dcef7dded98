"""One typed settings object for the whole product.

Every setting is declared once in ``OPTIONS``; the command-line flags, the environment
variables users already rely on and the add-on's options file are all read from
that one table, so the three can never drift apart. Precedence: flag > environment >
options file > default. Every value is validated at start-up and a bad one stops the
program with a single line naming the setting and the value.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

SERVICES = ("asr", "tts")
ASR_ENGINES = ("faster-whisper", "qwen3-asr")
TTS_ENGINES = ("piper", "qwen3-tts")
QUANT_MODES = ("auto", "none", "int8", "nf4")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A setting has a bad value; the message is one line meant for the user."""


@dataclass(frozen=True)
class Settings:
    """Validated settings. Field names match ``Option.name``."""

    services: tuple[str, ...] = SERVICES
    asr_uri: str = "tcp://0.0.0.0:10300"
    tts_uri: str = "tcp://0.0.0.0:10200"
    device: str = "auto"
    log_level: str = "INFO"
    hf_endpoint: str | None = None
    cache_dir: Path | None = None
    local_files_only: bool = False
    # ASR
    asr_engine: str = "faster-whisper"
    asr_model: str | None = None
    asr_language: str | None = None
    asr_hints: tuple[str, ...] = ()
    asr_initial_prompt: str | None = None
    asr_beam_size: int = 5
    asr_compute_type: str = "auto"
    qwen_asr_use_fp16: bool = True
    qwen_asr_max_batch_size: int | None = None
    qwen_asr_max_new_tokens: int = 512
    asr_dtype: str = "auto"
    asr_batch_window_ms: float = 5.0
    qwen_asr_quant: str = "auto"
    # TTS
    tts_engine: str = "piper"
    tts_model: str | None = None
    qwen_tts_chunk_size: int = 200
    qwen_tts_speaker: str | None = None
    qwen_tts_stream_window: int = 8
    tts_dtype: str = "auto"
    qwen_tts_max_new_tokens: int | None = None
    qwen_tts_quant: str = "auto"
    qwen_tts_loop: str = "lean"
    qwen_tts_cuda_graphs: bool = True
    tts_strict_voice: bool = False
    # Limits
    max_event_bytes: int = 4 * 1024 * 1024
    max_audio_seconds: float = 300.0
    max_text_chars: int = 50_000
    idle_timeout: float = 60.0
    max_connections: int = 64
    max_queue: int = 32
    shutdown_grace: float = 10.0
    # OpenAI-style HTTP API on the same loaded models
    http_enabled: bool = False
    http_host: str = "0.0.0.0"
    http_port: tuple[int, ...] = (8001,)
    http_api_key: str | None = None
    http_max_upload_mb: float = 25.0
    # Discovery
    zeroconf: bool = False
    zeroconf_name: str = "opentalker"
    zeroconf_host: str | None = None
    memory_check: bool = True


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
    if value in ("auto", "cpu", "cuda"):
        return value
    if value.startswith("cuda:") and value[5:].isdigit():
        return value
    raise ValueError("expected auto, cpu, cuda or cuda:N")


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


def _host(raw: str) -> str:
    value = raw.strip().strip("[]")
    if not value or any(char.isspace() for char in value):
        raise ValueError("expected a host name or address")
    return value


def _text(raw: str) -> str | None:
    return raw.strip() or None


def _path(raw: str) -> Path | None:
    return Path(raw).expanduser() if raw.strip() else None


@dataclass(frozen=True)
class Option:
    """One setting: its field, flag, environment variable and parser."""

    name: str
    flag: str
    env: str | None
    parse: Callable[[str], Any]
    help: str
    is_flag: bool = False  # boolean switch on the command line (--x / --no-x)


OPTIONS: tuple[Option, ...] = (
    Option("services", "--services", "SERVICES", _services, "which servers run: asr, tts or all"),
    Option("asr_uri", "--asr-uri", "ASR_URI", _uri, "where the ASR server listens"),
    Option("tts_uri", "--tts-uri", "TTS_URI", _uri, "where the TTS server listens"),
    Option("device", "--device", "DEVICE", _device, "auto, cpu, cuda or cuda:N"),
    Option(
        "log_level", "--log-level", "LOG_LEVEL", _choice(LOG_LEVELS, upper=True), "logging level"
    ),
    Option("hf_endpoint", "--hf-endpoint", "HF_ENDPOINT", _text, "Hugging Face mirror URL"),
    Option("cache_dir", "--cache-dir", "MODEL_CACHE_DIR", _path, "where downloaded models live"),
    Option(
        "local_files_only",
        "--local-files-only",
        "HF_HUB_OFFLINE",
        _bool,
        "never download; use local paths and the cache only",
        is_flag=True,
    ),
    Option(
        "asr_engine",
        "--asr-engine",
        "ASR_ENGINE",
        _choice(ASR_ENGINES),
        f"speech-to-text engine: {', '.join(ASR_ENGINES)}",
    ),
    Option("asr_model", "--asr-model", "ASR_MODEL", _text, "ASR model id, alias or local path"),
    Option(
        "asr_language",
        "--asr-language",
        "ASR_LANGUAGE",
        _text,
        "language used when a request names none (default: detect)",
    ),
    Option(
        "asr_hints",
        "--asr-hints",
        "ASR_HINTS",
        _list,
        "comma-separated words that bias recognition (names, terms)",
    ),
    Option(
        "asr_initial_prompt",
        "--asr-initial-prompt",
        "ASR_INITIAL_PROMPT",
        _text,
        "text that primes the recogniser (whisper initial_prompt)",
    ),
    Option("asr_beam_size", "--asr-beam-size", "ASR_BEAM_SIZE", _int_at_least(1), "beam size"),
    Option(
        "asr_compute_type",
        "--asr-compute-type",
        "ASR_COMPUTE_TYPE",
        _text,
        "CTranslate2 compute type (default: chosen from the device)",
    ),
    Option(
        "qwen_asr_use_fp16",
        "--qwen-asr-use-fp16",
        "QWEN_ASR_USE_FP16",
        _bool,
        "load Qwen3-ASR weights in FP16 on CUDA",
        is_flag=True,
    ),
    Option(
        "qwen_asr_max_batch_size",
        "--qwen-asr-max-batch-size",
        "QWEN_ASR_MAX_BATCH_SIZE",
        _int_at_least(1),
        "most ASR requests decoded together (default: from GPU memory)",
    ),
    Option(
        "qwen_asr_max_new_tokens",
        "--qwen-asr-max-new-tokens",
        "QWEN_ASR_MAX_NEW_TOKENS",
        _int_at_least(1),
        "most tokens Qwen3-ASR writes for one request",
    ),
    Option(
        "asr_dtype",
        "--asr-dtype",
        "ASR_DTYPE",
        _choice(("auto", "float16", "bfloat16", "float32")),
        "Qwen3-ASR weight precision (auto: FP16 on CUDA per QWEN_ASR_USE_FP16, else FP32)",
    ),
    Option(
        "asr_batch_window_ms",
        "--asr-batch-window-ms",
        "QWEN_ASR_BATCH_WINDOW_MS",
        _float_above(0, inclusive=True),
        "how long a lone request waits for others to batch with",
    ),
    Option(
        "qwen_asr_quant",
        "--qwen-asr-quant",
        "QWEN_ASR_QUANT",
        _choice(QUANT_MODES),
        "Qwen3-ASR weight-only quantisation of linear layers: auto (by GPU), none, int8, nf4",
    ),
    Option(
        "tts_engine",
        "--tts-engine",
        "TTS_ENGINE",
        _choice(TTS_ENGINES),
        f"text-to-speech engine: {', '.join(TTS_ENGINES)}",
    ),
    Option("tts_model", "--tts-model", "TTS_MODEL", _text, "TTS model id or local path"),
    Option(
        "qwen_tts_chunk_size",
        "--qwen-tts-chunk-size",
        "QWEN_TTS_CHUNK_SIZE",
        _int_at_least(0),
        "max characters per TTS chunk; 0 disables chunking",
    ),
    Option(
        "qwen_tts_speaker",
        "--qwen-tts-speaker",
        "QWEN_TTS_SPEAKER",
        _text,
        "default voice (speaker) name",
    ),
    Option(
        "qwen_tts_stream_window",
        "--qwen-tts-stream-window",
        "QWEN_TTS_STREAM_WINDOW",
        _int_at_least(0),
        "Qwen3-TTS: decode audio every N codec frames (80 ms each) while generating; 0 = off",
    ),
    Option(
        "tts_dtype",
        "--tts-dtype",
        "TTS_DTYPE",
        _choice(("auto", "float16", "bfloat16", "float32")),
        "Qwen3-TTS talker precision (auto: bf16 on sm_80+, FP16 on sm_70+, else FP32)",
    ),
    Option(
        "qwen_tts_max_new_tokens",
        "--qwen-tts-max-new-tokens",
        "QWEN_TTS_MAX_NEW_TOKENS",
        _int_at_least(1),
        "most codec frames Qwen3-TTS generates for one chunk (default: the model's)",
    ),
    Option(
        "qwen_tts_quant",
        "--qwen-tts-quant",
        "QWEN_TTS_QUANT",
        _choice(QUANT_MODES),
        "Qwen3-TTS talker weight-only quantisation: auto (by GPU), none, int8, nf4",
    ),
    Option(
        "qwen_tts_loop",
        "--qwen-tts-loop",
        "QWEN_TTS_LOOP",
        _choice(("lean", "upstream")),
        "Qwen3-TTS decode loop: lean (ours: static caches, CUDA graphs) or upstream generate()",
    ),
    Option(
        "qwen_tts_cuda_graphs",
        "--qwen-tts-cuda-graphs",
        "QWEN_TTS_CUDA_GRAPHS",
        _bool,
        "Qwen3-TTS: replay the lean loop's steps as CUDA graphs on CUDA (--no-... = eager)",
        is_flag=True,
    ),
    Option(
        "tts_strict_voice",
        "--tts-strict-voice",
        "TTS_STRICT_VOICE",
        _bool,
        "answer an unknown voice name with an error instead of the default voice",
        is_flag=True,
    ),
    Option(
        "max_event_bytes",
        "--max-event-bytes",
        "MAX_EVENT_BYTES",
        _int_at_least(1024),
        "largest event data or payload accepted",
    ),
    Option(
        "max_audio_seconds",
        "--max-audio-seconds",
        "MAX_AUDIO_SECONDS",
        _float_above(0, inclusive=False),
        "longest ASR upload accepted",
    ),
    Option(
        "max_text_chars",
        "--max-text-chars",
        "MAX_TEXT_CHARS",
        _int_at_least(1),
        "longest TTS text accepted",
    ),
    Option(
        "idle_timeout",
        "--idle-timeout",
        "IDLE_TIMEOUT_SECONDS",
        _float_above(0, inclusive=False),
        "close a connection that sends or reads nothing for this long",
    ),
    Option(
        "max_connections",
        "--max-connections",
        "MAX_CONNECTIONS",
        _int_at_least(1),
        "most simultaneous connections per server",
    ),
    Option(
        "max_queue",
        "--max-queue",
        "MAX_QUEUE_DEPTH",
        _int_at_least(1),
        "most requests waiting for one engine before new ones are turned away",
    ),
    Option(
        "shutdown_grace",
        "--shutdown-grace",
        "SHUTDOWN_GRACE_SECONDS",
        _float_above(0, inclusive=True),
        "how long SIGTERM waits for requests in progress",
    ),
    Option(
        "http_enabled",
        "--http",
        "HTTP_ENABLED",
        _bool,
        "also serve the OpenAI-style HTTP API (/v1/audio/transcriptions, /v1/audio/speech)",
        is_flag=True,
    ),
    Option("http_host", "--http-host", "HTTP_HOST", _host, "where the HTTP API listens"),
    Option(
        "http_port",
        "--http-port",
        "HTTP_PORT",
        _ports,
        "HTTP API port(s), comma-separated; each serves the whole API (e.g. 8001,8002)",
    ),
    Option(
        "http_api_key",
        "--http-api-key",
        "HTTP_API_KEY",
        _text,
        "require this bearer token on the HTTP API (default: no token)",
    ),
    Option(
        "http_max_upload_mb",
        "--http-max-upload-mb",
        "HTTP_MAX_UPLOAD_MB",
        _float_above(0, inclusive=False),
        "largest HTTP upload accepted, in MB",
    ),
    Option(
        "zeroconf",
        "--zeroconf",
        "ZEROCONF",
        _bool,
        "advertise the servers on the LAN (mDNS, _wyoming._tcp) so Home Assistant finds them",
        is_flag=True,
    ),
    Option(
        "zeroconf_name",
        "--zeroconf-name",
        "ZEROCONF_NAME",
        _host,
        "zeroconf instance name prefix (NAME-asr, NAME-tts)",
    ),
    Option(
        "zeroconf_host",
        "--zeroconf-host",
        "ZEROCONF_HOST",
        _text,
        "address to advertise (default: this host's LAN address)",
    ),
    Option(
        "memory_check",
        "--memory-check",
        "MEMORY_CHECK",
        _bool,
        "on a GPU, refuse to start when the models will not fit its free memory",
        is_flag=True,
    ),
)
_BY_NAME = {option.name: option for option in OPTIONS}


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
        if option.is_flag:
            parser.add_argument(
                option.flag, dest=option.name, action=argparse.BooleanOptionalAction, help=label
            )
        else:
            parser.add_argument(option.flag, dest=option.name, metavar="VALUE", help=label)
    return parser


def _from_options_file(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"options file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as err:
        raise SettingsError(f"options file {path} cannot be read: {err}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"options file {path} must hold a JSON object")
    raw: dict[str, str] = {}
    for key, value in data.items():
        if key not in _BY_NAME:
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


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read flags, environment and options file into validated ``Settings``."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    raw: dict[str, str] = {}
    if args.options_file is not None:
        raw.update(_from_options_file(args.options_file))

    sources: dict[str, str] = {name: "options file" for name in raw}
    for option in OPTIONS:
        if option.env and environ.get(option.env, "").strip():
            raw[option.name] = environ[option.env]
            sources[option.name] = option.env
        cli_value = getattr(args, option.name)
        if cli_value is not None:
            raw[option.name] = str(cli_value).lower() if option.is_flag else str(cli_value)
            sources[option.name] = option.flag

    if args.service and args.service != "all":
        raw["services"] = args.service
        sources["services"] = "service"
    elif args.service == "all":
        raw["services"] = "all"
        sources["services"] = "service"
    if args.debug:
        raw["log_level"] = "DEBUG"

    values: dict[str, Any] = {}
    for name, text in raw.items():
        option = _BY_NAME[name]
        try:
            values[name] = option.parse(text)
        except ValueError as err:
            raise SettingsError(f"{sources[name]}={text!r} is invalid: {err}") from None

    services: tuple[str, ...] = values.get("services", SERVICES)
    if args.uri:
        if len(services) != 1:
            raise SettingsError("--uri needs a single service: use `asr --uri …` or `tts --uri …`")
        try:
            values[f"{services[0]}_uri"] = _uri(args.uri)
        except ValueError as err:
            raise SettingsError(f"--uri={args.uri!r} is invalid: {err}") from None

    _apply_model_name(values, services, environ)
    settings = Settings(**values)
    _check_uris(settings)
    return settings


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
