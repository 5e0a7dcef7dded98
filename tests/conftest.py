"""Real servers on 127.0.0.1, started as subprocesses and stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path
    engines: str = "cpu"  # "qwen" when started with the tiny Qwen checkpoints

    @property
    def asr(self) -> int:
        return self.ports["asr"]

    @property
    def tts(self) -> int:
        return self.ports["tts"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait()
        return self.process.returncode


def _wait_listening(server: Server, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(server.ports.values())
    while pending and time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log_text()}")
        for port in list(pending):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    pending.discard(port)
        time.sleep(0.1)
    if pending:
        server.stop()
        raise RuntimeError(f"server did not listen on {pending}:\n{server.log_text()}")


def start_server(
    tmp_path: Path,
    services: tuple[str, ...] = ("asr", "tts"),
    *args: str,
    python: str = sys.executable,
    **env: str,
) -> Server:
    ports = {service: free_port() for service in services}
    argv = [python, "-m", "wyoming_opentalker"]
    argv += ["all"] if len(services) == 2 else [services[0]]
    for service, port in ports.items():
        argv += [f"--{service}-uri", f"tcp://127.0.0.1:{port}"]
    argv += list(args)
    log = tmp_path / f"server-{'-'.join(services)}-{ports[services[0]]}.log"
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MODEL_NAME", "DEVICE", "QWEN_TTS_CHUNK_SIZE", "QWEN_TTS_SPEAKER")
    }
    environ.update(env)
    environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a hub
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environ)
    server = Server(process, ports, log)
    _wait_listening(server)
    return server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Both servers in one process with the embedded CPU defaults."""
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    code = running.stop()
    assert code == 0, running.log_text()
