"""The status page: what the box is doing, for people who would rather look than read logs.

Plain HTML, CSS and JavaScript shipped in the package (``web/``): no build step and nothing
fetched from elsewhere, because the box may be offline. The page is a static shell that
reveals nothing; every figure comes from ``status`` (JSON, behind the HTTP API's bearer
token) and the try-it panels call the API's own ``/v1/audio/*`` endpoints, so the page can
show nothing the API would not.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from . import __version__
from .asr.service import AsrService
from .device import Device, memory_report
from .tts.service import TtsService

if TYPE_CHECKING:
    from .plan import Plans

# The files the page is made of, and how each is served.
ASSETS = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "icon.svg": "image/svg+xml",
}
RECENT_SHOWN = 50  # rows of the last-requests table
# Only the page's own files, the API on the same origin, and audio it made itself.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; media-src 'self' blob:; base-uri 'self'; form-action 'none'"
)
# What Home Assistant's Supervisor sends: /api/hassio_ingress/<session token>. Anything
# else in the header is ignored rather than echoed into the page.
_INGRESS_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")


def asset(name: str) -> bytes:
    """One of the page's files, from the installed package."""
    return resources.files("wyoming_opentalker").joinpath("web", name).read_bytes()


def page(ingress_path: str | None) -> str:
    """The page. Its URLs are relative, so it works under any prefix; behind ingress a
    ``<base>`` names the prefix too, for a panel opened without the trailing slash."""
    text = asset("index.html").decode("utf-8")
    base = ""
    if ingress_path and _INGRESS_PATH.match(ingress_path):
        base = f'<base href="{html.escape(ingress_path.rstrip("/"), quote=True)}/">'
    return text.replace("<!--base-->", base)


@dataclass
class StatusSource:
    """What the status is read from: the running services and the start-up plan."""

    asr: AsrService | None
    tts: TtsService | None
    device: Device
    plans: Plans | None = None
    started_at: float = 0.0  # time.monotonic() when serving began

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data. Blocking (reads /proc): call it
        off the event loop."""
        now = time.monotonic()
        services: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        if self.asr is not None:
            services["asr"] = {
                **self._engine(self.asr),
                "languages": list(self.asr.engine.languages),
                "endpointing": self.asr.ends_commands,
            }
            rows += self.asr.recent_rows(now)
        if self.tts is not None:
            engine = self.tts.engine
            services["tts"] = {
                **self._engine(self.tts),
                "voices": [
                    {"name": v.name, "languages": list(v.languages), "speakers": list(v.speakers)}
                    for v in engine.voices
                ],
                "default_voice": engine.default_voice,
                "sample_rate": engine.sample_rate,
                "active_requests": self.tts.active_requests,
            }
            rows += self.tts.recent_rows(now)
        rows.sort(key=lambda row: row["ago"])
        memory = self.plans.memory if self.plans is not None else None
        gpu = self.device.gpu
        return {
            "version": __version__,
            "uptime_seconds": now - self.started_at,
            "device": {
                "name": self.device.name,
                "gpu": None
                if gpu is None
                else {
                    "name": gpu.name,
                    "compute_capability": ".".join(map(str, gpu.capability)),
                    "total_bytes": gpu.total_bytes,
                },
            },
            "services": services,
            "memory": memory_report(self.device),
            "plan": memory.as_dict() if memory is not None else None,
            "recent": rows[:RECENT_SHOWN],
        }

    def _engine(self, service: AsrService | TtsService) -> dict[str, Any]:
        info = service.engine.info
        load = None
        if self.plans is not None:
            load = self.plans.asr if service.kind == "asr" else self.plans.tts
        return {
            "engine": info.engine,
            "model": public_name(info.model),
            "device": info.device,
            "precision": info.precision,
            "quantization": load.quantization if load is not None else "none",
            "weights_bytes": info.weights_bytes,
            "requests_served": service.requests_served,
            "requests_failed": service.requests_failed,
        }


def public_name(model: str) -> str:
    """A model as the page may name it: never a path on this machine (a local model is
    shown by its folder or file name, as the engines already report it)."""
    if model.startswith(("/", "~", "./", "../")) or "\\" in model:
        return PurePosixPath(model.replace("\\", "/")).name or "local model"
    return model
