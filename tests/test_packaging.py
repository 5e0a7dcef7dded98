"""How users install it: the Home Assistant add-on's files, the Docker image's install
steps (run here into a fresh virtual environment: no Docker engine runs on these
machines), the compose files of the deployment plans, and a Dockerfile linter."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from wyoming_opentalker.settings import LEGACY, OPTIONS, load_settings

from .conftest import ROOT, free_port, start_server

ADDON = ROOT / "addon"
COMPOSE = sorted((ROOT / "examples" / "docker").glob("*.yml"))
SETTING_NAMES = {option.name for option in OPTIONS}
# The add-on's option keys: each setting's key (a renamed field keeps its old key), and
# the keys of old settings folded into newer ones.
ADDON_KEYS = {option.key for option in OPTIONS} | {legacy.key for legacy in LEGACY}
ENV_NAMES = {option.env for option in OPTIONS if option.env} | {"MODEL_NAME"}
ENV_NAMES |= {legacy.env for legacy in LEGACY}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


# --- the add-on


def test_addon_config_follows_the_official_addons() -> None:
    config = _yaml(ADDON / "config.yaml")
    for key in ("name", "version", "slug", "description", "url", "arch", "options", "schema"):
        assert config.get(key), key
    assert config["version"] == _version()
    assert _yaml(ADDON / "build.yaml")["args"]["OPENTALKER_VERSION"] == _version()
    assert config["init"] is False  # s6-overlay of the base image is PID 1
    assert config["discovery"] == ["wyoming"]
    assert set(config["arch"]) == {"amd64", "aarch64"}
    assert set(_yaml(ADDON / "build.yaml")["build_from"]) == set(config["arch"])
    assert {"10300/tcp", "10200/tcp"} <= set(config["ports"])
    assert config["backup_exclude"] and config["map"]
    run = ADDON / "rootfs/etc/s6-overlay/s6-rc.d/opentalker/run"
    assert os.access(run, os.X_OK) and "--options-file /data/options.json" in run.read_text()
    # The status page through ingress: the port the run script serves it on, never
    # published on the host, and a panel icon from Material Design Icons.
    assert config["ingress"] is True and config["panel_title"]
    assert config["panel_icon"].startswith("mdi:")
    assert f"--http-ingress-port {config['ingress_port']}" in run.read_text()
    assert f"{config['ingress_port']}/tcp" not in config["ports"]
    for name in ("DOCS.md", "CHANGELOG.md", "README.md", "Dockerfile"):
        assert (ADDON / name).is_file(), name
    assert _version() in (ADDON / "CHANGELOG.md").read_text()


def test_addon_options_are_product_settings_and_cover_spec() -> None:
    config = _yaml(ADDON / "config.yaml")
    schema, options = config["schema"], config["options"]
    assert set(options) <= set(schema)
    assert set(schema) <= ADDON_KEYS, set(schema) - ADDON_KEYS  # one-to-one mapping
    spec = {  # the old deployment's variables, plus which services run, zeroconf and logging
        "asr_engine", "tts_engine", "asr_model", "tts_model", "device", "qwen_asr_use_fp16",
        "qwen_asr_max_batch_size", "qwen_tts_chunk_size", "qwen_tts_speaker", "asr_language",
        "hf_endpoint", "services", "zeroconf", "log_level",
    }  # fmt: skip
    assert spec <= set(schema), spec - set(schema)


@pytest.mark.parametrize("language", ["en", "zh-Hans"])
def test_addon_every_option_and_port_is_translated(language: str) -> None:
    config = _yaml(ADDON / "config.yaml")
    translation = _yaml(ADDON / "translations" / f"{language}.yaml")
    for key in config["schema"]:
        entry = translation["configuration"].get(key)
        assert entry and entry.get("name") and entry.get("description"), (language, key)
    assert set(translation["configuration"]) == set(config["schema"])
    assert set(translation["network"]) == set(config["ports"])


def test_addon_options_file_becomes_the_settings(tmp_path: Path) -> None:
    """What the Supervisor writes to /data/options.json is read by the same settings code
    (flag > environment > options file), including list and optional values."""
    options = dict(_yaml(ADDON / "config.yaml")["options"])
    file = tmp_path / "options.json"
    file.write_text(json.dumps(options))
    defaults = load_settings(["--options-file", str(file)], {})
    assert defaults.services == ("asr", "tts") and defaults.device == "cpu"
    assert defaults.asr_engine == "faster-whisper" and defaults.tts_engine == "piper"
    assert defaults.asr_model is None and defaults.tts_default_voice is None  # "" = default
    assert defaults.zeroconf is False and defaults.http_enabled is False
    options.update(
        services="asr",
        asr_engine="qwen3-asr",
        qwen_asr_use_fp16=False,
        qwen_asr_max_batch_size=8,
        asr_hints=["Kitchen", "客厅"],
        asr_language="zh",
        hf_endpoint="https://mirror.example",
        log_level="DEBUG",
    )
    file.write_text(json.dumps(options))
    changed = load_settings(["--options-file", str(file)], {})
    assert changed.services == ("asr",) and changed.asr_engine == "qwen3-asr"
    assert changed.asr_dtype == "float32" and changed.qwen_asr_max_batch_size == 8
    assert changed.asr_hints == ("Kitchen", "客厅") and changed.asr_language == "zh"
    assert changed.hf_endpoint == "https://mirror.example" and changed.log_level == "DEBUG"


# --- compose files


def _compose_command() -> list[str]:
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if shutil.which("docker") and plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "neither `docker compose` nor docker-compose is installed (script/install-test-data)"
    )


def test_compose_files_validate_and_use_the_known_variables() -> None:
    assert {path.stem for path in COMPOSE} >= {
        "gpu-4gb-both", "gpu-stt-only", "gpu-tts-only", "gpu-8gb", "gpu-24gb", "cpu",
    }  # fmt: skip
    compose = _compose_command()
    for path in COMPOSE:
        result = subprocess.run(
            [*compose, "-f", str(path), "config"], capture_output=True, text=True, cwd=path.parent
        )
        assert result.returncode == 0, (path.name, result.stderr)
        for name, service in yaml.safe_load(result.stdout)["services"].items():
            environment = service.get("environment") or {}
            assert set(environment) <= ENV_NAMES, (path.name, set(environment) - ENV_NAMES)
            argv = list(service.get("command") or [])
            settings = load_settings(argv, {k: str(v) for k, v in environment.items()})
            if path.stem.startswith("gpu"):
                devices = service["deploy"]["resources"]["reservations"]["devices"]
                assert devices[0]["capabilities"] == ["gpu"], name
                assert settings.device == "cuda"
            if path.stem in ("gpu-stt-only", "gpu-tts-only"):
                kind = "asr" if "stt" in path.stem else "tts"
                assert settings.services == (kind,)
                assert getattr(settings, f"{kind}_model") == environment["MODEL_NAME"]


# --- the Docker image


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    for dockerfile in (ROOT / "Dockerfile", ADDON / "Dockerfile"):
        result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
        assert result.returncode == 0, (dockerfile, result.stdout, result.stderr)


def _copied_by_dockerfile(destination: Path) -> None:
    """Exactly what the build stage's COPY lines bring into the image."""
    copies = [
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from" not in line
    ]
    assert copies, "the Dockerfile copies nothing"
    for item in copies:
        source = ROOT / item
        target = destination / item
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _size_mib(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return total / 1024 / 1024


def test_image_cpu_install_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    """The build stage, minus Docker: the Dockerfile's COPY list into an empty folder,
    then its install script into a new virtual environment, which must then serve."""
    src, venv = tmp_path / "src", tmp_path / "venv"
    _copied_by_dockerfile(src)
    install = subprocess.run(
        ["sh", "docker/install.sh", str(venv)],
        cwd=src,
        env=dict(os.environ, VARIANT="cpu"),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert not (venv / "bin" / "pip").exists()  # nothing of the build is shipped
    assert not list(venv.rglob("torch/__init__.py"))  # the CPU variant has no PyTorch
    size = _size_mib(venv)
    print(f"\nCPU image environment: {size:.0f} MiB")
    (ROOT / "bench-results").mkdir(exist_ok=True)
    (ROOT / "bench-results" / "image-cpu-size.txt").write_text(f"{size:.0f} MiB\n")

    asr, tts = free_port(), free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", ASR_URI=f"tcp://127.0.0.1:{asr}")
    env["TTS_URI"] = f"tcp://127.0.0.1:{tts}"
    server = subprocess.Popen(
        [str(venv / "bin" / "wyoming-opentalker")],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        health = [str(venv / "bin" / "python"), "-m", "wyoming_opentalker.health"]
        for _ in range(120):
            result = subprocess.run(health, env=env, cwd=tmp_path, capture_output=True, text=True)
            if result.returncode == 0:
                break
            assert server.poll() is None, server.communicate()[0]
            subprocess.run(["sleep", "0.5"])
        assert result.returncode == 0 and result.stdout.startswith("healthy"), result.stderr
    finally:
        server.terminate()
        server.wait(30)
    stopped = subprocess.run(health, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert stopped.returncode == 1 and stopped.stderr.startswith("unhealthy")
    _serves_a_converted_qwen3_asr(venv, tmp_path)


def _serves_a_converted_qwen3_asr(venv: Path, tmp_path: Path) -> None:
    """A Qwen3-ASR folder converted elsewhere is served by this torch-less install (the
    aarch64 add-on's) with the same transcript as the full install gives."""
    from tests.qwen_models import build_qwen3_asr
    from tests.speech import corpus, samples_16k
    from wyoming_opentalker.client import transcribe

    checkpoint, converted = build_qwen3_asr(tmp_path / "Qwen3-ASR-tiny"), tmp_path / "onnx"
    subprocess.run(
        [sys.executable, "-m", "wyoming_opentalker", "convert-qwen3-asr", "--model",
         str(checkpoint), "--output", str(converted)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    # The checkpoint itself it cannot convert: one line says where to, before any work.
    refused = subprocess.run(
        [str(venv / "bin" / "wyoming-opentalker"), "asr", "--asr-engine", "qwen3-asr",
         "--asr-model", str(checkpoint), "--uri", f"tcp://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    assert refused.returncode != 0
    assert "needs torch, qwen_asr, onnx" in refused.stderr, refused.stderr[-2000:]
    assert "convert-qwen3-asr" in refused.stderr.strip().splitlines()[-1]
    audio = np.clip(samples_16k(corpus()[0]), -1, 1)
    pcm = (audio * 32767).astype("<i2").tobytes()
    texts = []
    for python in (str(venv / "bin" / "python"), sys.executable):
        flags = ("--asr-engine", "qwen3-asr", "--asr-model", str(converted))
        server = start_server(tmp_path, ("asr",), *flags, python=python)
        try:
            texts.append(asyncio.run(transcribe(server.asr, pcm)).text)
        finally:
            assert server.stop() == 0, server.log_text()
        assert "via onnxruntime" in server.log_text()
    assert texts[0] == texts[1] and texts[0]


def test_image_cuda_install_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    """The CUDA variant's steps, with this machine's CPU PyTorch standing in for the CUDA
    12.6 build (its index is not reachable here): the Qwen engines must import, and the
    qwen packages' demo-only dependencies must stay out."""
    src, venv = tmp_path / "src", tmp_path / "venv"
    _copied_by_dockerfile(src)
    install = subprocess.run(
        ["sh", "docker/install.sh", str(venv)],
        cwd=src,
        env=dict(os.environ, VARIANT="cuda", TORCH_INDEX=""),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import qwen_asr, torch, transformers;"
            "from wyoming_opentalker.tts.qwen3_tts import import_qwen_tts; import_qwen_tts();"
            "print(torch.__version__, transformers.__version__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    torch_version, transformers_version = probe.stdout.splitlines()[-1].split()
    assert torch_version.startswith("2.13.0") and transformers_version == "4.57.6"
    site = next(venv.glob("lib/python*/site-packages"))
    for demo_only in ("gradio", "flask", "pytz", "qwen_omni_utils"):
        assert not (site / demo_only).exists(), demo_only
    size = _size_mib(venv)
    torch_size = _size_mib(site / "torch")
    print(f"\nCUDA image environment with a CPU torch: {size:.0f} MiB (torch {torch_size:.0f})")
    (ROOT / "bench-results").mkdir(exist_ok=True)
    (ROOT / "bench-results" / "image-cuda-size.txt").write_text(
        f"{size:.0f} MiB with a CPU torch of {torch_size:.0f} MiB\n"
    )
