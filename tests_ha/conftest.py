"""Our servers for Home Assistant's own tests: started from the product's .venv (its
Python and engines), on 127.0.0.1, and stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_socket

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_PYTHON = ROOT / ".venv" / "bin" / "python"

pytest_plugins = ["pytest_homeassistant_custom_component"]


@dataclass
class Servers:
    asr: int
    tts: int
    log: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    # The harness blocks sockets outside tests that ask for them; the servers' ports are
    # picked before any test runs (every test here then asks for socket_enabled).
    pytest_socket.enable_socket()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    asr, tts = _free_port(), _free_port()
    log = tmp_path_factory.mktemp("opentalker") / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV"))}
    env["HF_HUB_OFFLINE"] = "1"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(PRODUCT_PYTHON), "-m", "wyoming_opentalker", "all",
                "--asr-uri", f"tcp://127.0.0.1:{asr}",
                "--tts-uri", f"tcp://127.0.0.1:{tts}",
                "--debug",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )  # fmt: skip
    running = Servers(asr, tts, log, process)
    deadline = time.monotonic() + 120
    while "Serving:" not in running.log_text():  # no sockets here: the harness blocks them
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"servers did not start:\n{running.log_text()}")
        time.sleep(0.2)
    yield running
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, running.log_text()
