"""Browse ``_wyoming._tcp.local.`` and print one JSON line per change, for the discovery
test. Runs in its own network namespace (the "Home Assistant host") until killed."""

from __future__ import annotations

import json
import socket
import sys
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceListener, Zeroconf

SERVICE_TYPE = "_wyoming._tcp.local."


class Printer(ServiceListener):
    def _emit(self, zc: Zeroconf, change: str, name: str) -> None:
        record: dict[str, object] = {"change": change, "name": name}
        if change != "removed":
            info = zc.get_service_info(SERVICE_TYPE, name, timeout=3000)
            if info is not None:
                record["port"] = info.port
                record["addresses"] = [socket.inet_ntoa(a) for a in info.addresses]
        print(json.dumps(record), flush=True)

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._emit(zc, "added", name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._emit(zc, "updated", name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._emit(zc, "removed", name)


def main() -> None:
    zc = Zeroconf(ip_version=IPVersion.V4Only)
    ServiceBrowser(zc, SERVICE_TYPE, Printer())
    print(json.dumps({"change": "ready"}), flush=True)
    deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 120)
    try:
        while time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        zc.close()


if __name__ == "__main__":
    main()
