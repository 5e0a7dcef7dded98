"""Model resolution: local path -> packaged -> cache -> download (HF_ENDPOINT) -> error."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest

from wyoming_opentalker.asr.faster_whisper import BASE_SHA256, BASE_SIZE
from wyoming_opentalker.asr.faster_whisper import model_source as whisper_source
from wyoming_opentalker.models import (
    ModelError,
    ModelSource,
    assemble,
    fetch_files,
    resolve_model,
)
from wyoming_opentalker.tts.piper import catalogue_path
from wyoming_opentalker.tts.piper import model_source as piper_source

from .fake_hub import fake_hub


def test_packaged_defaults() -> None:
    whisper = resolve_model(None, whisper_source())
    assert whisper.origin == "packaged" and (whisper.path / "model.bin").exists()
    assert whisper.name == "tiny.en"
    by_name = resolve_model("tiny.en", whisper_source(), local_files_only=True)
    assert by_name.origin == "packaged" and by_name.path == whisper.path
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
        resolve_model("small.en", whisper_source(), cache_dir=tmp_path, local_files_only=True)


def test_packaged_base_is_assembled_once_and_checked(tmp_path: Path) -> None:
    resolved = resolve_model("base", whisper_source(), cache_dir=tmp_path, local_files_only=True)
    assert resolved.origin == "packaged" and resolved.name == "base"
    model = resolved.path / "model.bin"
    assert model.stat().st_size == BASE_SIZE
    assert hashlib.sha256(model.read_bytes()).hexdigest() == BASE_SHA256
    assert {p.name for p in resolved.path.iterdir()} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    }
    stamp = model.stat().st_mtime_ns
    again = resolve_model(
        "Systran/faster-whisper-base", whisper_source(), cache_dir=tmp_path, local_files_only=True
    )
    assert again.path == resolved.path and model.stat().st_mtime_ns == stamp  # not rebuilt


def test_assembly_refuses_parts_that_do_not_add_up(tmp_path: Path) -> None:
    parts = [tmp_path / "a", tmp_path / "b"]
    parts[0].write_bytes(b"hello ")
    parts[1].write_bytes(b"world")
    digest = hashlib.sha256(b"hello world").hexdigest()
    with pytest.raises(ModelError, match="do not add up to the published model") as info:
        assemble(tmp_path / "out", parts, 11, "0" * 64)
    assert "\n" not in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-written left behind
    built = assemble(tmp_path / "out", parts, 11, digest)
    assert (built / "model.bin").read_bytes() == b"hello world"


def test_assembly_where_nothing_can_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    part = tmp_path / "part"
    part.write_bytes(b"x")
    with pytest.raises(
        ModelError, match=r"cannot assemble .*Not a directory \(set MODEL_CACHE_DIR"
    ) as info:
        assemble(tmp_path / "file" / "model", [part], 1, hashlib.sha256(b"x").hexdigest())
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("zh_CN-huayan-medium", "zh/zh_CN/huayan/medium/zh_CN-huayan-medium.onnx"),
        ("zh_CN-huayan-x_low", "zh/zh_CN/huayan/x_low/zh_CN-huayan-x_low.onnx"),
        (
            "en_GB-northern_english_male-medium",
            "en/en_GB/northern_english_male/medium/en_GB-northern_english_male-medium.onnx",
        ),
        ("zh_CN-huayan", None),
        ("huayan", None),
        ("zh-CN-huayan-medium", None),
        ("../zh_CN-huayan-medium", None),
    ],
)
def test_voice_catalogue_paths(name: str, path: str | None) -> None:
    assert catalogue_path(name) == path


def test_fetch_single_files_then_cache_then_offline(tmp_path: Path) -> None:
    files = {"a/b/voice.onnx.json": b"{}", "a/b/voice.onnx": b"onnx" * 1000, "other.bin": b"x"}
    with fake_hub({"Org/voices": files}) as (endpoint, log):
        paths, origin = fetch_files(
            "Org/voices", ["a/b/voice.onnx.json", "a/b/voice.onnx"], cache_dir=tmp_path,
            endpoint=endpoint,
        )  # fmt: skip
        assert origin == "download" and paths[1].read_bytes() == files["a/b/voice.onnx"]
        assert not any("other.bin" in line for line in log)  # only what was asked for
        with pytest.raises(ModelError, match=r"Org/voices at .* has no file a/b/missing\.onnx"):
            fetch_files("Org/voices", ["a/b/missing.onnx"], cache_dir=tmp_path, endpoint=endpoint)
    offline, origin = fetch_files(
        "Org/voices", ["a/b/voice.onnx.json", "a/b/voice.onnx"], cache_dir=tmp_path,
        local_files_only=True,
    )  # fmt: skip
    assert origin == "cache" and offline == paths
    with pytest.raises(ModelError, match="not in the cache and downloads are off"):
        fetch_files("Org/voices", ["a/b/other.onnx"], cache_dir=tmp_path, local_files_only=True)


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
    assert f"cannot download Systran/faster-whisper-tiny.en: cannot reach {endpoint}" in message
    assert "connection refused" in message
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
