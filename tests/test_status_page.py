"""The status page in a real browser: Debian's headless Chromium driven by its chromedriver
(Selenium), against the real server on 127.0.0.1 with the packaged models, directly (with
the API key) and through a stand-in for Home Assistant's ingress proxy.

Screenshots are saved in ``tests/output/status-page/`` (printed with ``-s``)."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait
from wyoming.tts import SynthesizeVoice

from wyoming_opentalker.client import synthesize, synthesize_streaming, transcribe
from wyoming_opentalker.memory import GIB, MemoryNeed, MemoryPlan
from wyoming_opentalker.plan import GPUS

from .conftest import ROOT, Server, free_port, start_server
from .speech import corpus, wer
from .test_openai_api import _wait_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
OUTPUT = ROOT / "tests" / "output" / "status-page"
KEY = "status-page-secret"
INGRESS_TOKEN = "Xq7ingressSession"
INGRESS = f"/api/hassio_ingress/{INGRESS_TOKEN}"
CLIP = next(clip for clip in corpus() if clip.name.endswith("0870"))
WAIT = 30.0


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Both services, the API on one port with a key, and the ingress port answering the
    test's stand-in Supervisor (127.0.0.1) without one."""
    http, ingress = free_port(), free_port()
    server = start_server(
        tmp_path_factory.mktemp("status"),
        ("asr", "tts"),
        "--http",
        "--http-host=127.0.0.1",
        f"--http-port={http}",
        f"--http-api-key={KEY}",
        f"--http-ingress-port={ingress}",
        "--http-ingress-allow=127.0.0.1",
    )
    server.ports["http"], server.ports["ingress"] = http, ingress
    _wait_http(http)
    _wait_http(ingress)
    yield server
    assert server.stop() == 0, server.log_text()


class Supervisor:
    """Home Assistant's ingress proxy as the add-on sees it: the panel's URL
    ``/api/hassio_ingress/<token>/…`` forwarded to the ingress port without the prefix,
    with ``X-Ingress-Path`` naming it, the response streamed back as it comes."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{INGRESS}"

    async def _start(self) -> None:
        self._session = ClientSession()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", INGRESS, self._forward)
        app.router.add_route("*", INGRESS + "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        tail = request.match_info.get("tail", "")
        skip = {"host", "content-length", "transfer-encoding", "connection", "authorization"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        headers["X-Ingress-Path"] = INGRESS
        async with self._session.request(
            request.method,
            f"http://127.0.0.1:{self.upstream}/{tail}",
            params=request.query,
            headers=headers,
            data=await request.read(),
        ) as upstream:
            drop = {"content-length", "transfer-encoding", "connection", "content-encoding"}
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in drop},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    def close(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def supervisor(box: Server) -> Iterator[Supervisor]:
    proxy = Supervisor(box.ports["ingress"])
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium from Debian. Missing, it is a failure with the fix, not a skip:
    CI installs it (script/install-test-data)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: the status page tests need Debian's "
            "chromium and chromium-driver (script/install-test-data installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root in a container
        "--disable-dev-shm-usage",
        "--window-size=1280,1700",
        "--autoplay-policy=no-user-gesture-required",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    print(f"\nstatus page screenshots: {OUTPUT}")
    yield driver
    driver.quit()


def _until(driver: WebDriver, what: str, check: Callable[[WebDriver], Any]) -> Any:
    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(check)
    except TimeoutException:
        _shot(driver, f"timeout-{what}")
        raise AssertionError(f"timed out waiting for {what}; page log: {_log(driver)}") from None


def _loaded(driver: WebDriver) -> None:
    _until(driver, "the status", lambda d: d.find_element(By.TAG_NAME, "body").get_attribute(
        "data-loaded"
    ) == "true")  # fmt: skip


def _log(driver: WebDriver) -> list[dict[str, Any]]:
    return list(driver.get_log("browser"))


def _errors(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["level"] in ("SEVERE", "ERROR")]


def _shot(driver: WebDriver, name: str) -> Path:
    path = OUTPUT / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _rows(driver: WebDriver) -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, "#recent-table tbody tr"))


def _get(url: str, key: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


# --- through Home Assistant's ingress


def test_ingress_page_loads_with_the_engines_and_no_console_errors(
    browser: WebDriver, supervisor: Supervisor
) -> None:
    # Opened without the trailing slash: the <base> the page gets from X-Ingress-Path
    # keeps its relative URLs under the prefix.
    browser.get(supervisor.url)
    _loaded(browser)
    base = browser.find_element(By.TAG_NAME, "base").get_attribute("href")
    assert base == supervisor.url + "/", base
    cards = {
        card.get_attribute("data-kind"): card.text
        for card in browser.find_elements(By.CSS_SELECTOR, "#engines .engine")
    }
    assert set(cards) == {"asr", "tts"}, cards
    assert "faster-whisper" in cards["asr"] and "tiny.en" in cards["asr"], cards["asr"]
    assert "piper" in cards["tts"] and "en_US-joe-medium" in cards["tts"], cards["tts"]
    assert "Process memory (RSS)" in browser.find_element(By.ID, "memory").text
    assert browser.find_element(By.ID, "token-form").get_attribute("hidden") is not None
    _shot(browser, "1-ingress-loaded")
    assert not _errors(_log(browser))


def test_tts_try_it_streams_audio_of_the_right_length(
    browser: WebDriver, supervisor: Supervisor, box: Server
) -> None:
    text = "Good evening. The front door is locked and the heating is set to twenty degrees."
    browser.get(supervisor.url + "/")
    _loaded(browser)
    Select(browser.find_element(By.ID, "tts-voice")).select_by_value("en_US-joe-medium")
    area = browser.find_element(By.ID, "tts-text")
    area.clear()
    area.send_keys(text)
    browser.find_element(By.ID, "tts-speak").click()
    out = browser.find_element(By.ID, "tts-duration")
    _until(browser, "the audio", lambda _d: out.get_attribute("data-done") == "true")
    played = float(out.get_attribute("data-seconds") or 0)
    # Piper's timing varies from one request to the next (its noise), so the length to
    # match is what the server made for this request (22.05 kHz, sent resampled to 24 kHz).
    _, body = _get(supervisor.url + "/status")
    made = next(row for row in json.loads(body)["recent"] if row["kind"] == "tts")
    assert made["via"] == "http" and made["characters"] == len(text), made
    assert 3 < made["audio_seconds"] < 8, made  # 80 characters at a speaking pace
    assert abs(played - made["audio_seconds"]) < 0.005, (played, made)
    assert browser.find_element(By.ID, "tts-first-audio").text.endswith(" s")
    src = browser.find_element(By.ID, "tts-audio").get_attribute("src") or ""
    assert src.startswith("blob:"), src
    # The replay copy (a WAV the page built from the same stream) plays as long.
    replay = browser.execute_async_script(
        "const done = arguments[0], audio = document.getElementById('tts-audio');"
        "if (audio.readyState >= 1) done(audio.duration);"
        "else { audio.onloadedmetadata = () => done(audio.duration);"
        "       audio.onerror = () => done(-1); audio.load(); }"
    )
    assert abs(replay - played) < 0.001, (replay, played)
    _shot(browser, "2-tts-try-it")
    assert not _errors(_log(browser))


def test_asr_upload_shows_the_transcript(browser: WebDriver, supervisor: Supervisor) -> None:
    browser.get(supervisor.url + "/")
    _loaded(browser)
    browser.find_element(By.ID, "asr-file").send_keys(str(CLIP.path))
    browser.find_element(By.ID, "asr-send").click()
    out = browser.find_element(By.ID, "asr-transcript")
    _until(browser, "the transcript", lambda _d: out.text not in ("", "…"))
    assert wer([CLIP.reference], [out.text]) <= 0.15, out.text
    _shot(browser, "3-asr-upload")
    assert not _errors(_log(browser))


def test_last_requests_grow_after_wyoming_requests(
    browser: WebDriver, supervisor: Supervisor, box: Server
) -> None:
    browser.get(supervisor.url + "/")
    _loaded(browser)
    before = len(_rows(browser))
    pcm = CLIP.pcm()[0]
    answer = asyncio.run(transcribe(box.asr, pcm))
    assert answer.event.type == "transcript", answer.event
    asyncio.run(synthesize(box.tts, "Turning off the lights."))
    _until(browser, "two new rows", lambda d: len(_rows(d)) >= before + 2)
    tts, asr = (row.find_elements(By.TAG_NAME, "td") for row in _rows(browser)[:2])
    assert [cell.text for cell in asr[1:3]] == ["ASR", "wyoming"], [c.text for c in asr]
    assert asr[3].text == f"{CLIP.seconds():.2f} s audio", asr[3].text
    assert asr[5].text.endswith(" s"), "audio-stop → transcript is shown"
    assert [cell.text for cell in tts[1:4]] == ["TTS", "wyoming", "23 characters"]
    assert tts[6].text.endswith(" s") and float(tts[7].text) > 0, [c.text for c in tts]
    bars = browser.find_elements(By.CSS_SELECTOR, "#plot rect")
    assert len(bars) == len(_rows(browser)), "one bar per request"
    # The try-it requests of the tests before were HTTP requests, timed the same way.
    vias = {(r.get_attribute("data-kind"), r.find_elements(By.TAG_NAME, "td")[2].text)
            for r in _rows(browser)}  # fmt: skip
    assert {("tts", "http"), ("asr", "http")} <= vias, vias
    browser.execute_script("document.getElementById('recent-table').scrollIntoView()")
    _shot(browser, "4-last-requests")
    assert not _errors(_log(browser))


# --- directly, with the API key


def test_direct_page_asks_for_the_key_and_shows_the_api_errors(
    browser: WebDriver, box: Server
) -> None:
    url = f"http://127.0.0.1:{box.ports['http']}/"
    browser.get(url)
    form = browser.find_element(By.ID, "token-form")
    _until(browser, "the key form", lambda _d: form.is_displayed())
    key = browser.find_element(By.ID, "token")
    key.send_keys("wrong")
    form.find_element(By.TAG_NAME, "button").click()
    error = browser.find_element(By.ID, "token-error")
    _until(browser, "the refusal", lambda _d: error.text == "That key was refused.")
    _shot(browser, "5-direct-key-refused")
    key.send_keys(KEY)
    form.find_element(By.TAG_NAME, "button").click()
    _loaded(browser)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#engines .engine")) == 2
    # Bad input to a try-it call: the API's own error, with its code.
    browser.find_element(By.ID, "tts-text").clear()
    browser.find_element(By.ID, "tts-speak").click()
    tts_error = browser.find_element(By.ID, "tts-error")
    _until(browser, "the TTS error", lambda _d: tts_error.text != "")
    assert tts_error.text == "'input' must be a non-empty string (no-text)", tts_error.text
    browser.find_element(By.ID, "asr-file").send_keys(str(ROOT / "README.md"))
    browser.find_element(By.ID, "asr-send").click()
    asr_error = browser.find_element(By.ID, "asr-error")
    _until(browser, "the ASR error", lambda _d: asr_error.text != "")
    assert asr_error.text.endswith("(bad-audio-format)"), asr_error.text
    _until(browser, "the failed request's row", lambda d: any(
        "error: bad-audio-format" in row.text for row in _rows(d)
    ))  # fmt: skip
    _shot(browser, "6-direct-bad-input")
    # The only errors in the console are the refused calls themselves (401, 400).
    unexpected = [
        entry
        for entry in _errors(_log(browser))
        if not any(f"status of {code}" in entry["message"] for code in (400, 401))
    ]
    assert not unexpected, unexpected
    assert KEY not in browser.page_source


def test_gpu_memory_is_drawn_against_the_card(browser: WebDriver, supervisor: Supervisor) -> None:
    """No GPU here: the page draws a real planner's figures for a 4 GB card (the README's
    GTX 1050 Ti plan with both Qwen models) and torch's measured use."""
    card = GPUS["gtx-1050-ti"]
    needs = tuple(
        MemoryNeed(kind, kind, int(weights * GIB), int(working * GIB), kind, "float16", "int8")
        for kind, weights, working in (("asr", 1.1, 0.55), ("tts", 0.86, 0.45))
    )
    plan = MemoryPlan(needs, card).as_dict()
    browser.get(supervisor.url + "/")
    _loaded(browser)
    _, body = _get(supervisor.url + "/status")
    status = json.loads(body)
    status["device"] = {"name": "cuda:0", "gpu": plan["gpu"]}
    measured = {"allocated_bytes": int(2.4 * GIB), "reserved_bytes": int(2.7 * GIB),
                "peak_allocated_bytes": int(2.9 * GIB), "free_bytes": int(1.1 * GIB),
                "total_bytes": card.total_bytes}  # fmt: skip
    status["memory"]["gpu"] = measured
    status["plan"] = plan
    browser.execute_script("stopPolling(); pollRound++; render(arguments[0]);", status)
    parts = browser.find_elements(By.CSS_SELECTOR, "#memory-bar rect")
    names = [part.get_attribute("class") for part in parts]
    assert names == ["weights asr", "working asr", "weights tts", "working tts", "overhead",
                     "headroom"], names  # fmt: skip
    widths = [float(part.get_attribute("width") or 0) for part in parts]
    assert abs(sum(widths) - 1000) < 1, widths  # the bar is the card
    line = browser.find_element(By.CSS_SELECTOR, "#memory-bar line.measured")
    assert abs(float(line.get_attribute("x1") or 0) - 2.7 / 4 * 1000) < 1
    text = browser.find_element(By.ID, "memory").text
    assert "GeForce GTX 1050 Ti" in text and "fits" in text and "2.70 GiB reserved" in text
    assert "GeForce GTX 1050 Ti (cuda:0)" in browser.find_element(By.ID, "summary").text
    browser.execute_script("document.getElementById('memory').scrollIntoView()")
    _shot(browser, "7-gpu-memory")
    assert not _errors(_log(browser))


# --- the endpoints' rules, without a browser


def test_status_needs_the_key_directly_and_reveals_no_secrets_or_paths(box: Server) -> None:
    base = f"http://127.0.0.1:{box.ports['http']}"
    assert _get(f"{base}/status")[0] == 401
    assert _get(f"{base}/status", "wrong")[0] == 401
    for public in ("/", "/assets/app.js", "/assets/style.css", "/health"):
        assert _get(base + public)[0] == 200, public
    assert _get(f"{base}/assets/../settings.py")[0] == 404
    status, body = _get(f"{base}/status", KEY)
    assert status == 200
    data = json.loads(body)
    assert data["services"]["asr"]["model"] == "tiny.en" and data["plan"] is None
    for secret in (KEY, str(ROOT), "/usr/", "/tmp/", "site-packages", "/root"):
        assert secret not in body, secret


def test_streamed_and_failed_wyoming_speech_are_timed(box: Server) -> None:
    """A stream is timed from its first text; a failure is listed with its code."""
    base = f"http://127.0.0.1:{box.ports['http']}"
    deltas = ["The garage door ", "is open. ", "Shall I close it?"]
    streamed = asyncio.run(synthesize_streaming(box.tts, deltas))
    assert streamed.types[-1] == "synthesize-stopped", streamed.types
    voice = SynthesizeVoice(name="en_US-joe-medium")
    failed = asyncio.run(synthesize(box.tts, "今天天气很好，我们去公园散步吧。", voice))
    assert failed.types == ["error"], failed.types
    data = json.loads(_get(f"{base}/status", KEY)[1])
    error, stream = [row for row in data["recent"] if row["kind"] == "tts"][:2]
    assert error["error"] == "unsupported-language" and error["via"] == "wyoming", error
    # The characters of the sentences spoken: the space between two is not.
    assert stream["error"] is None and stream["characters"] == len("".join(deltas)) - 1, stream
    assert 0 < stream["first_audio"] < 10 and stream["real_time_factor"] > 0
    assert abs(stream["audio_seconds"] - streamed.seconds) < 0.001, (stream, streamed.seconds)
    assert data["services"]["tts"]["requests_failed"] >= 1


def test_ingress_port_answers_only_the_supervisor(box: Server) -> None:
    port = box.ports["ingress"]
    status, _ = _get(f"http://127.0.0.1:{port}/status")  # from the allowed 127.0.0.1
    assert status == 200
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)
    )
    try:
        conn.request("GET", "/status", headers={"Authorization": f"Bearer {KEY}"})
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 403 and body["error"]["code"] == "forbidden", body
    # A forged prefix never reaches the page, and the direct port ignores the header.
    forged = urllib.request.Request(
        f"http://127.0.0.1:{port}/", headers={"X-Ingress-Path": '/x"><script>alert(1)</script>'}
    )
    with urllib.request.urlopen(forged, timeout=10) as page:
        assert b"<script>alert" not in page.read()
    direct = urllib.request.Request(
        f"http://127.0.0.1:{box.ports['http']}/", headers={"X-Ingress-Path": "/api/x"}
    )
    with urllib.request.urlopen(direct, timeout=10) as page:
        assert b"<base" not in page.read()
