"""Telling Home Assistant where the servers are: zeroconf (mDNS) and the Supervisor.

* Zeroconf: each server is advertised as ``_wyoming._tcp.local.`` under its own instance
  name, with an address a client on the LAN can really connect to. A server bound to
  ``0.0.0.0`` is reachable on the host's LAN address, so that is what is advertised — the
  peers advertise ``0.0.0.0`` itself, which no client can use. On shutdown the records
  are withdrawn (goodbye packets), so Home Assistant stops offering a dead server.
* Supervisor: inside a Home Assistant add-on, each service is announced to the Supervisor
  (``POST /discovery``) once it answers ``describe``, which makes the Wyoming integration
  offer it without the user typing a host or port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from .settings import Settings

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
MDNS_GROUP = "224.0.0.251"
SUPERVISOR_API = "http://supervisor"


@dataclass(frozen=True)
class Endpoint:
    """A running Wyoming server: which service, and the URI it listens on."""

    kind: str  # asr or tts
    uri: str
    port: int | None


def advertised_address(bind_host: str, override: str | None = None) -> str:
    """The IPv4 address to advertise for a server bound to ``bind_host``.

    An explicit ``override`` wins (containers on a bridge network know better). A
    specific bind address is itself reachable. For a wildcard bind, the address the
    host would use to reach the mDNS group — the LAN interface — is chosen; loopback
    only when the host has nothing else.
    """
    if override:
        return _ipv4(override)
    if bind_host not in ("", "0.0.0.0", "::"):
        return _ipv4(bind_host)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((MDNS_GROUP, 5353))  # no packet is sent: only a route lookup
            address = str(probe.getsockname()[0])
        except OSError:
            address = ""
    if address and address != "0.0.0.0":
        return address
    for candidate in _interface_addresses():
        return candidate
    _LOGGER.warning("No LAN address found; advertising 127.0.0.1 (reachable from this host only)")
    return "127.0.0.1"


def _ipv4(host: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
    except (OSError, IndexError):
        raise ValueError(f"cannot advertise {host!r}: not an IPv4 address or known host") from None


def _interface_addresses() -> list[str]:
    """Non-loopback, non-link-local IPv4 addresses of this host's interfaces."""
    import ifaddr

    found = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                address = ipaddress.IPv4Address(ip.ip)
                if not (address.is_loopback or address.is_link_local):
                    found.append(str(address))
    return found


def instance_name(base: str, kind: str) -> str:
    return f"{base}-{kind}"


class ZeroconfAdvertiser:
    """Registers one mDNS service per TCP server; ``close`` withdraws them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names: list[str] = []
        self._zeroconf: Any = None

    async def start(self, endpoints: Sequence[Endpoint]) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

        tcp = [endpoint for endpoint in endpoints if endpoint.port is not None]
        if not tcp:
            _LOGGER.info("Zeroconf: nothing to advertise (no TCP servers)")
            return
        self._zeroconf = AsyncZeroconf(ip_version=IPVersion.V4Only)
        host = socket.gethostname().split(".")[0] or "opentalker"
        for endpoint in tcp:
            bind = urlparse(endpoint.uri).hostname or ""
            # A host name override means a DNS lookup: not on the event loop.
            address = await asyncio.to_thread(advertised_address, bind, self.settings.zeroconf_host)
            name = instance_name(self.settings.zeroconf_name, endpoint.kind)
            info = AsyncServiceInfo(
                SERVICE_TYPE,
                f"{name}.{SERVICE_TYPE}",
                addresses=[socket.inet_aton(address)],
                port=endpoint.port,
                server=f"{host}.local.",
                properties={"service": endpoint.kind},
            )
            await self._zeroconf.async_register_service(info, allow_name_change=True)
            self.names.append(info.name)
            _LOGGER.info(
                "Zeroconf: advertising %s at %s:%d", info.name, address, endpoint.port or 0
            )

    async def close(self) -> None:
        if self._zeroconf is None:
            return
        try:
            await self._zeroconf.async_unregister_all_services()  # goodbye packets
        finally:
            await self._zeroconf.async_close()
            self._zeroconf = None
            _LOGGER.info("Zeroconf: withdrawn %s", ", ".join(self.names))


async def announce_to_supervisor(endpoints: Sequence[Endpoint], token: str) -> list[str]:
    """Inside a Home Assistant add-on: once each server answers ``describe``, tell the
    Supervisor its URI (the add-on's hostname is what Home Assistant can reach)."""
    import aiohttp

    from .client import describe

    api = os.environ.get("SUPERVISOR_API", SUPERVISOR_API)
    hostname = socket.gethostname()
    announced = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for endpoint in endpoints:
            if endpoint.port is None:
                continue
            for _ in range(100):  # the server is already listening; this is a courtesy
                try:
                    await describe(endpoint.port)
                    break
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.1)
            uri = f"tcp://{hostname}:{endpoint.port}"
            body = {"service": "wyoming", "config": {"uri": uri}}
            try:
                async with session.post(
                    f"{api}/discovery",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    response.raise_for_status()
            except (aiohttp.ClientError, TimeoutError) as err:
                _LOGGER.error("Discovery message to Home Assistant failed for %s: %s", uri, err)
                continue
            _LOGGER.info("Announced %s (%s) to Home Assistant", uri, endpoint.kind.upper())
            announced.append(uri)
    return announced
