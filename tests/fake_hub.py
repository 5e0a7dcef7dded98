"""A minimal Hugging Face-compatible file server on 127.0.0.1, for the download path.

It answers the two calls ``snapshot_download`` makes: the revision info and each file's
``resolve`` URL (HEAD then GET), so ``HF_ENDPOINT`` handling is tested for real without
reaching the internet.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SHA = "0123456789abcdef0123456789abcdef01234567"


@contextmanager
def fake_hub(repos: dict[str, dict[str, bytes]]) -> Iterator[tuple[str, list[str]]]:
    """Serve ``{repo_id: {filename: content}}``; yields (endpoint, request log)."""
    log: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _file(self) -> tuple[str, bytes] | None:
            for repo, files in repos.items():
                prefix = f"/{repo}/resolve/"
                if self.path.startswith(prefix):
                    name = self.path[len(prefix) :].split("/", 1)[1].split("?")[0]
                    if name in files:
                        return name, files[name]
            return None

        def _send_file_headers(self, content: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(content)))
            self.send_header("X-Repo-Commit", SHA)
            self.send_header("ETag", f'"{hashlib.sha1(content).hexdigest()}"')
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()

        def do_HEAD(self) -> None:
            log.append(f"HEAD {self.path}")
            found = self._file()
            if found is None:
                self.send_error(404)
                return
            self._send_file_headers(found[1])

        def do_GET(self) -> None:
            log.append(f"GET {self.path}")
            for repo, files in repos.items():
                body = None
                if self.path.startswith(f"/api/models/{repo}/revision/"):
                    body = json.dumps(
                        {"id": repo, "sha": SHA, "siblings": [{"rfilename": f} for f in files]}
                    ).encode()
                elif self.path.startswith(f"/api/models/{repo}/tree/"):
                    body = json.dumps(
                        [
                            {
                                "type": "file",
                                "path": name,
                                "size": len(content),
                                "oid": hashlib.sha1(content).hexdigest(),
                            }
                            for name, content in files.items()
                        ]
                    ).encode()
                if body is not None:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
            found = self._file()
            if found is None:
                self.send_error(404)
                return
            self._send_file_headers(found[1])
            self.wfile.write(found[1])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
