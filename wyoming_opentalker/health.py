"""``python -m wyoming_opentalker.health``: exit 0 when every configured server answers
``describe`` within Home Assistant's 1 s limit, else 1 with one line saying which did not.

Reads the same settings as the server (environment, flags), so a container's health check
follows whatever ports and services it was started with.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from urllib.parse import urlparse

from .client import describe
from .settings import SettingsError, load_settings

DEADLINE = 1.0


async def check(uris: Sequence[str]) -> list[str]:
    """The problems found, one line each (empty when all answered)."""
    problems = []
    for uri in uris:
        parsed = urlparse(uri)
        if parsed.scheme != "tcp" or parsed.port is None:
            continue  # unix sockets are not reachable from a health probe's view
        host = parsed.hostname or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        try:
            await asyncio.wait_for(describe(parsed.port, host), DEADLINE)
        except (OSError, TimeoutError, RuntimeError) as err:
            problems.append(f"{uri}: no info within {DEADLINE:g} s ({type(err).__name__})")
    return problems


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(argv)
    except SettingsError as err:
        print(f"health: {err}", file=sys.stderr)
        sys.exit(2)
    uris = [settings.asr_uri if kind == "asr" else settings.tts_uri for kind in settings.services]
    problems = asyncio.run(check(uris))
    if problems:
        print("unhealthy: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"healthy: {', '.join(uris)}")


if __name__ == "__main__":
    main()
