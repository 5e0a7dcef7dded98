"""Our servers, and the third-party clients' own servers (HTTP gateways), for the
client-compatibility tier.

The clients run from .venv-clients (Python 3.14, the clients as installed from PyPI by
script/setup-clients); our servers run from the product's .venv with the embedded CPU
defaults (faster-whisper tiny.en, Piper joe), on 127.0.0.1, and are stopped by PID.
``CLIENTS_SERVER_ROOT`` points the servers at another checkout of the product (an older
commit, say) to measure it with the same clients; the timings table printed at the end
is the comparison.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_PYTHON = ROOT / ".venv" / "bin" / "python"
SERVER_ROOT = Path(os.environ.get("CLIENTS_SERVER_ROOT", str(ROOT)))
CLIENT_BIN = Path(sys.executable).parent  # the clients' entry points
SPHINX = Path("/usr/share/pocketsphinx/test/data")


@dataclass(frozen=True)
class Timing:
    client: str
    case: str
    seconds: float
    outcome: str


TIMINGS: list[Timing] = []


def record(client: str, case: str, seconds: float, outcome: str) -> None:
    TIMINGS.append(Timing(client, case, seconds, outcome))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMINGS:
        return
    terminalreporter.section(f"client timings (server: {SERVER_ROOT})")
    for t in TIMINGS:
        terminalreporter.write_line(f"{t.client:<24} {t.case:<34} {t.seconds:6.2f} s  {t.outcome}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                return self.popen.wait()
        return self.popen.returncode


def _spawn(
    name: str, argv: list[str], logs: Path, ports: dict[str, int], cwd: Path, **env: str
) -> Process:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST", "VIRTUAL_ENV"))
        and key not in ("DEVICE", "MODEL_NAME", "QWEN_TTS_SPEAKER", "TTS_STRICT_VOICE")
    }
    environ.update(env, HF_HUB_OFFLINE="1")
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=cwd)
    return Process(name, popen, log, ports)


def _wait_listening(processes: list[Process], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    pending = {(p.name, port): p for p in processes for port in p.ports.values()}
    while pending and time.monotonic() < deadline:
        for (name, port), process in list(pending.items()):
            if process.popen.poll() is not None:
                raise RuntimeError(f"{name} exited early:\n{process.log_text()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    del pending[(name, port)]
        time.sleep(0.1)
    if pending:
        raise RuntimeError(f"not listening: {sorted(pending)}")


@dataclass
class Services:
    """Everything the clients talk to, started together (model loading dominates)."""

    asr: int  # our Wyoming ASR
    tts: int  # our Wyoming TTS
    strict_tts: int  # our Wyoming TTS with TTS_STRICT_VOICE=true
    http_asr: int  # wyoming[http]'s ASR gateway -> asr
    http_tts: int  # wyoming[http]'s TTS gateway -> tts (or ?uri=… per request)
    openai: int  # wyoming-openai-gateway -> asr + tts
    openai_strict: int  # wyoming-openai-gateway -> strict_tts
    processes: list[Process]

    def log(self, name: str) -> str:
        return next(p for p in self.processes if p.name == name).log_text()


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    logs = tmp_path_factory.mktemp("logs")
    asr, tts, strict = free_port(), free_port(), free_port()
    http_asr, http_tts, openai, openai_strict = (free_port() for _ in range(4))
    product = [str(PRODUCT_PYTHON), "-m", "wyoming_opentalker"]
    gateway = str(CLIENT_BIN / "wyoming-openai-gateway")
    processes = [
        _spawn(
            "server",
            [*product, "all", "--asr-uri", f"tcp://127.0.0.1:{asr}",
             "--tts-uri", f"tcp://127.0.0.1:{tts}"],
            logs, {"asr": asr, "tts": tts}, SERVER_ROOT,
        ),
        _spawn(
            "strict",
            [*product, "tts", "--uri", f"tcp://127.0.0.1:{strict}"],
            logs, {"tts": strict}, SERVER_ROOT, TTS_STRICT_VOICE="true",
        ),
        _spawn(
            "http-asr",
            [sys.executable, "-m", "wyoming.http.asr_server", "--host", "127.0.0.1",
             "--port", str(http_asr), "--uri", f"tcp://127.0.0.1:{asr}"],
            logs, {"http": http_asr}, ROOT,
        ),
        _spawn(
            "http-tts",
            [sys.executable, "-m", "wyoming.http.tts_server", "--host", "127.0.0.1",
             "--port", str(http_tts), "--uri", f"tcp://127.0.0.1:{tts}",
             "--allow-uri-override"],
            logs, {"http": http_tts}, ROOT,
        ),
        _spawn(
            "openai",
            [gateway], logs, {"http": openai}, ROOT,
            HOST="127.0.0.1", PORT=str(openai), TTS_HOST="127.0.0.1", TTS_PORT=str(tts),
            STT_HOST="127.0.0.1", STT_PORT=str(asr),
        ),
        _spawn(
            "openai-strict",
            [gateway], logs, {"http": openai_strict}, ROOT,
            HOST="127.0.0.1", PORT=str(openai_strict), TTS_HOST="127.0.0.1",
            TTS_PORT=str(strict),
        ),
    ]  # fmt: skip
    try:
        _wait_listening(processes)
        yield Services(asr, tts, strict, http_asr, http_tts, openai, openai_strict, processes)
    finally:
        codes = {p.name: p.stop() for p in reversed(processes)}
    for name in ("server", "strict"):
        assert codes[name] == 0, next(p for p in processes if p.name == name).log_text()


# --- real human speech (Debian's pocketsphinx test data) with transcripts


@dataclass(frozen=True)
class Clip:
    name: str
    reference: str
    pcm: bytes  # 16 kHz, 16-bit, mono

    def wav(self) -> bytes:
        import io

        out = io.BytesIO()
        with wave.open(out, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(16000)
            wav.writeframes(self.pcm)
        return out.getvalue()


def _card(name: str, reference: str) -> Clip:
    with wave.open(str(SPHINX / "cards" / f"{name}.wav")) as wav:
        assert (wav.getframerate(), wav.getsampwidth(), wav.getnchannels()) == (16000, 2, 1)
        return Clip(name, reference, wav.readframes(wav.getnframes()))


def clips() -> list[Clip]:
    """References with numbers as Whisper writes them: the clients score text as is."""
    return [
        Clip("goforward", "go forward 10 meters", (SPHINX / "goforward.raw").read_bytes()),
        _card("001", "10 of clubs"),
        _card("003", "7 of clubs"),
    ]
