"""Model resolution: local path -> packaged -> cache -> download (HF_ENDPOINT) -> error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from wyoming_opentalker.asr.faster_whisper import model_source as whisper_source
from wyoming_opentalker.models import ModelError, ModelSource, resolve_model
from wyoming_opentalker.tts.piper import model_source as piper_source

from .fake_hub import fake_hub


def test_packaged_defaults() -> None:
    whisper = resolve_model(None, whisper_source())
    assert whisper.origin == "packaged" and (whisper.path / "model.bin").exists()
    piper = resolve_model(None, piper_source())
    assert piper.origin == "packaged" and piper.path.name == "en_US-joe-medium.onnx"


def test_local_path(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"x")
    resolved = resolve_model(str(tmp_path), ModelSource())
    assert resolved.origin == "local" and resolved.path == tmp_path
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"), ModelSource())


def test_not_a_name() -> None:
    with pytest.raises(ModelError, match=r"known names: .*tiny\.en"):
        resolve_model("tinyish", whisper_source(), local_files_only=True)


def test_offline_and_not_cached(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not in the cache and downloads are off"):
        resolve_model("tiny.en", whisper_source(), cache_dir=tmp_path, local_files_only=True)


def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.raises(ModelError) as info:
        resolve_model(
            "Systran/faster-whisper-tiny.en", ModelSource(), cache_dir=tmp_path, endpoint=endpoint
        )
    message = str(info.value)
    assert f"cannot download Systran/faster-whisper-tiny.en from {endpoint}" in message
    assert "HF_ENDPOINT" in message and "\n" not in message


def test_download_through_a_mirror_then_cache(tmp_path: Path) -> None:
    files = {"config.json": b'{"a": 1}', "model.bin": bytes(range(256)) * 64}
    with fake_hub({"Org/tiny-model": files}) as (endpoint, log):
        resolved = resolve_model(
            "Org/tiny-model", ModelSource(), cache_dir=tmp_path, endpoint=endpoint
        )
        assert resolved.origin == "download"
        assert (resolved.path / "model.bin").read_bytes() == files["model.bin"]
        assert any(line.startswith("GET /api/models/Org/tiny-model") for line in log)
        requests_before = len(log)
        again = resolve_model(
            "Org/tiny-model", ModelSource(), cache_dir=tmp_path, endpoint=endpoint
        )
        assert again.origin == "cache" and len(log) == requests_before
    # and offline afterwards: still served from the cache
    offline = resolve_model(
        "Org/tiny-model", ModelSource(), cache_dir=tmp_path, local_files_only=True
    )
    assert offline.path == resolved.path
