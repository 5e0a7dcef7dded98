"""Discovery as Home Assistant sees it.

Zeroconf: two hosts made for the test — network namespaces joined by a veth cable, the
server on 192.0.2.10 and a "Home Assistant" host on 192.0.2.20 — so the server binds to
0.0.0.0 on a real interface, a real python-zeroconf browser on the other host sees both
services, connects to the advertised address, and sees them withdrawn on shutdown.

Supervisor: the add-on announcement is received by a stand-in for the Supervisor's
``/discovery`` endpoint (the Supervisor itself cannot run here).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from aiohttp import web

from wyoming_opentalker.discovery import advertised_address

from .conftest import ROOT, free_port, start_server

SERVER_IP, HA_IP = "192.0.2.10", "192.0.2.20"  # TEST-NET-1: never routed anywhere


@dataclass
class Hosts:
    server: str
    ha: str

    def run(self, ns: str, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kwargs
        )


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag = f"{os.getpid() % 100000}"
    made = Hosts(f"otk-srv-{tag}", f"otk-ha-{tag}")
    cable = (f"otk{tag}a", f"otk{tag}b")
    try:
        _ip("netns", "add", made.server)
        _ip("netns", "add", made.ha)
        _ip("link", "add", cable[0], "type", "veth", "peer", "name", cable[1])
        for ns, end, address in ((made.server, cable[0], SERVER_IP), (made.ha, cable[1], HA_IP)):
            _ip("link", "set", end, "netns", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", end)
            _ip("-n", ns, "link", "set", end, "up", "multicast", "on")
            _ip("-n", ns, "route", "add", "default", "dev", end)
        yield made
    finally:
        for ns in (made.server, made.ha):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _lines(stream: IO[str]) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            out.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return out


def _wait_for(lines: queue.Queue[str], want: Any, timeout: float) -> list[dict[str, Any]]:
    """Collect JSON records until ``want(records)`` holds."""
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not want(records):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out; browser saw: {records}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_zeroconf_seen_from_another_host_and_withdrawn(hosts: Hosts, tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    browser = subprocess.Popen(
        ["ip", "netns", "exec", hosts.ha, sys.executable, str(ROOT / "tests" / "mdns_browser.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert browser.stdout is not None
    seen = _lines(browser.stdout)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            "ip", "netns", "exec", hosts.server, sys.executable, "-m", "wyoming_opentalker",
            "--asr-uri", "tcp://0.0.0.0:10300", "--tts-uri", "tcp://0.0.0.0:10200",
            "--zeroconf", "--zeroconf-name", "kitchen-box",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    try:
        _wait_for(seen, lambda r: any(x["change"] == "ready" for x in r), 30)
        names = {"kitchen-box-asr._wyoming._tcp.local.", "kitchen-box-tts._wyoming._tcp.local."}

        def both_resolved(records: list[dict[str, Any]]) -> bool:
            return {r["name"] for r in records if r.get("addresses")} >= names

        records = _wait_for(seen, both_resolved, 120)
        found = {r["name"]: r for r in records if r.get("addresses")}
        assert found["kitchen-box-asr._wyoming._tcp.local."]["port"] == 10300
        assert found["kitchen-box-tts._wyoming._tcp.local."]["port"] == 10200
        for record in found.values():
            assert record["addresses"] == [SERVER_IP], record  # never 0.0.0.0

        # Home Assistant's next step: connect to what was advertised and ask.
        for record in found.values():
            ask = hosts.run(
                hosts.ha,
                sys.executable,
                "-c",
                "import asyncio; from wyoming_opentalker.client import describe;"
                f"info = asyncio.run(describe({record['port']}, host='{SERVER_IP}'));"
                "print(bool(info.asr), bool(info.tts))",
                env=env,
                timeout=30,
            )
            assert ask.returncode == 0, ask.stderr
            expected = "True False" if record["port"] == 10300 else "False True"
            assert ask.stdout.strip() == expected

        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        gone = _wait_for(
            seen, lambda r: {x["name"] for x in r if x["change"] == "removed"} >= names, 30
        )
        assert {x["name"] for x in gone if x["change"] == "removed"} >= names
    finally:
        for process in (server, browser):
            if process.poll() is None:
                process.kill()
                process.wait()
        log.close()
    assert "Zeroconf: withdrawn" in (tmp_path / "server.log").read_text()


def test_advertised_address_rules() -> None:
    assert advertised_address("192.0.2.7") == "192.0.2.7"  # a specific bind is reachable
    assert advertised_address("0.0.0.0", "198.51.100.4") == "198.51.100.4"  # override wins
    wildcard = advertised_address("0.0.0.0")
    assert wildcard != "0.0.0.0" and wildcard.count(".") == 3
    with pytest.raises(ValueError, match="cannot advertise"):
        advertised_address("0.0.0.0", "no-such-host.invalid")


async def test_addon_announces_each_service_to_the_supervisor(tmp_path: Path) -> None:
    """As an add-on (SUPERVISOR_TOKEN set), each service is announced once it answers
    ``describe``, with the add-on's hostname and port — the official add-ons' contract."""
    received: list[tuple[str, dict[str, Any]]] = []

    async def discovery(request: web.Request) -> web.Response:
        received.append((request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({"result": "ok", "data": {"uuid": "x"}})

    app = web.Application()
    app.router.add_post("/discovery", discovery)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        server = await asyncio.to_thread(
            start_server,
            tmp_path,
            ("asr", "tts"),
            SUPERVISOR_TOKEN="addon-token",
            SUPERVISOR_API=f"http://127.0.0.1:{port}",
        )
        try:
            for _ in range(100):
                if len(received) >= 2:
                    break
                await asyncio.sleep(0.1)
        finally:
            assert await asyncio.to_thread(server.stop) == 0
    finally:
        await runner.cleanup()
    hostname = socket.gethostname()
    assert [auth for auth, _ in received] == ["Bearer addon-token"] * 2
    uris = sorted(body["config"]["uri"] for _, body in received)
    assert uris == sorted(f"tcp://{hostname}:{p}" for p in (server.asr, server.tts))
    assert all(body["service"] == "wyoming" for _, body in received)
