"""One settings object from flags, environment variables and the add-on's options file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wyoming_opentalker.settings import Settings, SettingsError, load_settings


def test_defaults() -> None:
    settings = load_settings([], {})
    assert settings == Settings()
    assert settings.services == ("asr", "tts")
    assert settings.asr_uri.endswith(":10300") and settings.tts_uri.endswith(":10200")
    assert settings.tts_chunk_size == 200 and settings.asr_dtype == "auto"


def test_spec_environment_variables_keep_their_names_and_meanings(tmp_path: Path) -> None:
    env = {
        "DEVICE": "cuda:1",
        "LOG_LEVEL": "debug",
        "HF_ENDPOINT": "https://mirror.example",
        "QWEN_ASR_USE_FP16": "false",
        "QWEN_ASR_MAX_BATCH_SIZE": "16",
        "QWEN_TTS_CHUNK_SIZE": "0",
        "QWEN_TTS_SPEAKER": "Vivian",
    }
    settings = load_settings([], env)
    assert settings.device == "cuda:1"
    assert settings.log_level == "DEBUG"
    assert settings.hf_endpoint == "https://mirror.example"
    assert settings.asr_dtype == "float32"  # QWEN_ASR_USE_FP16=false, folded in
    assert settings.qwen_asr_max_batch_size == 16
    assert settings.tts_chunk_size == 0
    assert settings.tts_default_voice == "Vivian"


def test_precedence_flag_over_env_over_options_file(tmp_path: Path) -> None:
    options = tmp_path / "options.json"
    options.write_text(
        json.dumps(
            {
                "qwen_tts_chunk_size": 150,  # the add-on's keys keep their names
                "asr_hints": ["Kitchen", "Living Room"],
                "qwen_asr_use_fp16": False,
                "log_level": "warning",
                "addon_only_key": 1,
            }
        )
    )
    base = ["--options-file", str(options)]
    settings = load_settings(base, {})
    assert settings.tts_chunk_size == 150
    assert settings.asr_hints == ("Kitchen", "Living Room")
    assert settings.asr_dtype == "float32"
    assert settings.log_level == "WARNING"
    assert load_settings(base, {"QWEN_TTS_CHUNK_SIZE": "100"}).tts_chunk_size == 100
    flagged = load_settings(
        [*base, "--qwen-tts-chunk-size", "50", "--qwen-asr-use-fp16"],
        {"QWEN_TTS_CHUNK_SIZE": "100"},
    )
    assert flagged.tts_chunk_size == 50 and flagged.asr_dtype == "auto"
    renamed = load_settings(["--tts-chunk-size", "60", "--tts-default-voice", "Ryan"], {})
    assert renamed.tts_chunk_size == 60 and renamed.tts_default_voice == "Ryan"


def test_legacy_fp16_switch_yields_to_the_precision_setting() -> None:
    both = {"QWEN_ASR_USE_FP16": "false", "ASR_DTYPE": "bfloat16"}
    assert load_settings([], both).asr_dtype == "bfloat16"
    assert (
        load_settings(["--no-qwen-asr-use-fp16"], {"ASR_DTYPE": "float16"}).asr_dtype == "float32"
    )


def test_single_service_modes_and_model_name() -> None:
    asr = load_settings(["asr", "--uri", "tcp://127.0.0.1:9000"], {"MODEL_NAME": "/models/x"})
    assert asr.services == ("asr",) and asr.asr_uri == "tcp://127.0.0.1:9000"
    assert asr.asr_model == "/models/x"
    tts = load_settings(["tts"], {"MODEL_NAME": "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"})
    assert tts.services == ("tts",) and tts.tts_model == "Qwen/Qwen3-TTS-12Hz-0.6B-CustomVoice"
    assert load_settings([], {"SERVICES": "tts"}).services == ("tts",)
    assert load_settings(["--uri", "unix:///tmp/x.sock", "asr"], {}).asr_uri == "unix:///tmp/x.sock"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"QWEN_ASR_MAX_BATCH_SIZE": "abc"}, "QWEN_ASR_MAX_BATCH_SIZE='abc' is invalid"),
        ([], {"QWEN_ASR_MAX_BATCH_SIZE": "0"}, "must be at least 1"),
        ([], {"QWEN_TTS_CHUNK_SIZE": "-5"}, "QWEN_TTS_CHUNK_SIZE='-5' is invalid"),
        ([], {"QWEN_ASR_USE_FP16": "maybe"}, "expected true or false"),
        (["--asr-compute-type", ""], {}, "--asr-compute-type='' is invalid: expected a value"),
        (["--asr-engine", "whisper.cpp"], {}, "--asr-engine='whisper.cpp' is invalid"),
        ([], {"DEVICE": "gpu"}, "expected auto, cpu, cuda or cuda:N"),
        ([], {"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' is invalid"),
        (["--asr-uri", "http://x:1"], {}, "expected tcp://HOST:PORT"),
        (["--tts-uri", "tcp://x:99999"], {}, "port must be a number"),
        ([], {"MODEL_NAME": "x"}, "MODEL_NAME is ambiguous"),
        (["--uri", "tcp://127.0.0.1:1"], {}, "--uri needs a single service"),
        (["--asr-uri", "tcp://h:1", "--tts-uri", "tcp://h:1"], {}, "cannot both listen"),
    ],
)
def test_bad_values_are_one_line_errors(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(argv, env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_value_exits_2_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wyoming_opentalker"],
        env={"QWEN_ASR_MAX_BATCH_SIZE": "abc", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "wyoming-opentalker: error: QWEN_ASR_MAX_BATCH_SIZE='abc' is invalid: "
        "expected a whole number"
    )


def test_http_api_settings(tmp_path: Path) -> None:
    assert Settings().http_enabled is False  # off unless asked for
    settings = load_settings(
        ["--http", "--http-port", "8001, 8002,8001"],
        {"HTTP_API_KEY": "s3cret", "HTTP_HOST": "[::1]"},
    )
    assert settings.http_enabled and settings.http_port == (8001, 8002)
    assert settings.http_host == "::1" and settings.http_api_key == "s3cret"
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"http_enabled": True, "http_port": 9000}))
    from_file = load_settings(["--options-file", str(options)], {})
    assert from_file.http_enabled and from_file.http_port == (9000,)
    for bad in ("0", "http", "", "70000"):
        with pytest.raises(SettingsError, match="HTTP_PORT"):
            load_settings([], {"HTTP_PORT": bad} if bad else {"HTTP_PORT": ","})


def test_ingress_listener_settings() -> None:
    """The status page's ingress port: off by default, the Supervisor's address alone."""
    assert Settings().http_ingress_port is None
    assert Settings().http_ingress_allow == ("172.30.32.2",)
    settings = load_settings(
        ["--http-ingress-port", "8099"], {"HTTP_INGRESS_ALLOW": "127.0.0.1, ::1"}
    )
    assert settings.http_ingress_port == 8099 and settings.http_ingress_allow == (
        "127.0.0.1",
        "::1",
    )
    for env, match in (
        ({"HTTP_INGRESS_PORT": "8099,8100"}, "one port"),
        ({"HTTP_INGRESS_ALLOW": "supervisor"}, "not an IP address"),
        ({"HTTP_ENABLED": "true", "HTTP_PORT": "8099", "HTTP_INGRESS_PORT": "8099"}, "its own"),
    ):
        with pytest.raises(SettingsError, match=match):
            load_settings([], env)


def test_the_api_key_never_reaches_the_log() -> None:
    from wyoming_opentalker.settings import describe_settings

    line = describe_settings(load_settings(["--http-api-key", "s3cret"], {}))
    assert "s3cret" not in line and "http_api_key=<hidden>" in line


@pytest.mark.parametrize(("given", "kept"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_waits_passively_unless_the_user_says_otherwise(
    given: str | None, kept: str
) -> None:
    """Importing the package sets OpenMP's wait policy before torch can load it (a busy
    core otherwise slows PyTorch's thread pool more than twofold); a user's choice stays."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    probe = (
        "import os, sys, wyoming_opentalker; "
        "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == [kept, "False"]
