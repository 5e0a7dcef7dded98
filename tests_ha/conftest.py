"""Our servers for Home Assistant's own tests: started from the product's .venv (its
Python and engines), on 127.0.0.1 free ports, and stopped by PID.

``start_servers(*args)`` starts (once per set of arguments, for the whole session) the
ASR and TTS servers with extra command-line flags, e.g. ``start_servers("--no-asr-speculate")``;
``servers`` is the one with none. ``HA_SERVER_ROOT`` runs the servers from another checkout
of the product (an older commit, say) with the same .venv.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_socket

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_PYTHON = ROOT / ".venv" / "bin" / "python"
SERVER_ROOT = Path(os.environ.get("HA_SERVER_ROOT", str(ROOT)))

pytest_plugins = ["pytest_homeassistant_custom_component"]


@dataclass
class Servers:
    asr: int
    tts: int
    log: Path
    process: subprocess.Popen[bytes]
    args: tuple[str, ...] = ()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM to our server's PID (never a search by name); its exit status."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                return self.process.wait()
        return self.process.returncode


StartServers = Callable[..., Servers]

REPORTS: list[tuple[str, str]] = []  # (title, text) printed at the end of the run


def report(title: str, text: str) -> None:
    REPORTS.append((title, text))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for title, text in REPORTS:
        terminalreporter.section(title)
        for line in text.splitlines():
            terminalreporter.write_line(line)


def _free_port() -> int:
    # The harness blocks sockets outside tests that ask for them; the servers' ports are
    # picked before any test runs (every test here then asks for socket_enabled).
    pytest_socket.enable_socket()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: tuple[str, ...], env_extra: dict[str, str], log: Path) -> Servers:
    asr, tts = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV"))}
    env["HF_HUB_OFFLINE"] = "1"
    env.update(env_extra)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(PRODUCT_PYTHON), "-m", "wyoming_opentalker", "all",
                "--asr-uri", f"tcp://127.0.0.1:{asr}",
                "--tts-uri", f"tcp://127.0.0.1:{tts}",
                "--debug", *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=SERVER_ROOT,
        )  # fmt: skip
    running = Servers(asr, tts, log, process, args)
    deadline = time.monotonic() + 120
    while "Serving:" not in running.log_text():  # no sockets here: the harness blocks them
        if process.poll() is not None or time.monotonic() > deadline:
            running.stop()
            raise RuntimeError(f"servers {list(args)} did not start:\n{running.log_text()}")
        time.sleep(0.2)
    return running


@pytest.fixture(scope="session")
def start_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServers]:
    """A factory: ``start_servers(*flags, **env)`` -> our servers started with those
    extra command-line flags (and environment variables), reused for the session and
    stopped by PID at its end (each must exit 0)."""
    started: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], Servers] = {}

    def start(*args: str, **env: str) -> Servers:
        key = (args, tuple(sorted(env.items())))
        if key not in started:
            log = tmp_path_factory.mktemp("opentalker") / "server.log"
            started[key] = _start(args, env, log)
        return started[key]

    try:
        yield start
    finally:
        codes = {key: s.stop() for key, s in reversed(list(started.items()))}
    for key, code in codes.items():
        assert code == 0, f"servers {key} exited {code}:\n{started[key].log_text()}"


@pytest.fixture(scope="session")
def servers(start_servers: StartServers) -> Servers:
    """Our servers as a user starts them: no extra flags."""
    return start_servers()
