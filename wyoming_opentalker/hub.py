"""Downloads from the Hugging Face hub or a mirror (``HF_ENDPOINT``), into the hub's own
cache layout (``models--org--name/blobs``, ``snapshots/<commit>``, ``refs``), so caches
made by Hugging Face's tools and by earlier versions of this product keep working.

Written here rather than left to ``huggingface_hub`` because a home server needs what it
does not give: every file checked against the hub's digest before it is kept (a copy
damaged in flight is fetched again once, then refused); a download that stops making
progress (``DOWNLOAD_STALL_SECONDS``) or runs past ``DOWNLOAD_DEADLINE_SECONDS`` ends
with one line; ``Retry-After`` honoured within that deadline; a start that is stopped
(SIGTERM, Ctrl-C) stops at once, the partial file kept for resuming (HTTP ranges); two
processes sharing one cache download each file once (a lock per file); and every failure
named by its real cause — network, HTTP status, disk full (with the space needed), a
cache that cannot be written.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import fcntl
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from .integrity import Digest, matches, move_aside

_LOGGER = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
CONNECT_SECONDS = 10.0
CHUNK = 1 << 16
MIN_PROGRESS_BYTES = 64 * 1024  # less than this within the stall time is no progress
PROGRESS_SECONDS = 2.0  # how often a download in progress is logged
SERVER_ERROR_RETRIES = 3

# Set by the signal handler when a start is stopped: every download ends within a
# fraction of a second, keeping its partial file.
STOP = threading.Event()


class HubError(RuntimeError):
    """A download failed; the message is one line naming the cause."""

    def __init__(self, text: str, status: int | None = None) -> None:
        super().__init__(text)
        self.status = status  # the HTTP status that ended it, if one did


class Stopped(HubError):
    """The start was stopped while downloading."""


@dataclass(frozen=True)
class Limits:
    stall_seconds: float = 60.0
    deadline_seconds: float = 7200.0


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    etag: str  # the blob name: SHA-256 (LFS files) or git SHA-1
    commit: str


def repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}"


def _snapshot_link(snapshot: Path, name: str, blob: Path) -> None:
    link = snapshot / name
    link.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, link.parent)
    with contextlib.suppress(FileNotFoundError):
        if link.is_symlink() and os.readlink(link) == target:
            return
        link.unlink()
    try:
        link.symlink_to(target)
    except OSError:  # no symlinks (some network shares): a copy
        shutil.copyfile(blob, link)


def cached_file(cache: Path, repo_id: str, name: str, revision: str = "main") -> Path | None:
    """``name`` of ``repo_id`` in the cache: in the snapshot ``refs/revision`` names, else
    in any snapshot (newest first); None if absent."""
    folder = repo_folder(cache, repo_id)
    snapshots = folder / "snapshots"
    preferred: list[Path] = []
    with contextlib.suppress(OSError):
        commit = (folder / "refs" / revision).read_text().strip()
        preferred.append(snapshots / commit)
    with contextlib.suppress(OSError):
        others = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        preferred += [p for p in others if p not in preferred]
    for snapshot in preferred:
        path = snapshot / name
        if path.exists():
            return path
    return None


def cached_snapshot(cache: Path, repo_id: str, revision: str = "main") -> Path | None:
    """The complete snapshot ``refs/revision`` points at (written only once every file
    of a download is in place), or None."""
    folder = repo_folder(cache, repo_id)
    try:
        commit = (folder / "refs" / revision).read_text().strip()
    except OSError:
        return None
    snapshot = folder / "snapshots" / commit
    return snapshot if snapshot.is_dir() and any(snapshot.iterdir()) else None


class Hub:
    """One start's conversation with one endpoint, under one deadline."""

    def __init__(
        self, endpoint: str | None, cache: Path, limits: Limits, token: str | None = None
    ) -> None:
        self.endpoint = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self.cache = cache
        self.limits = limits
        self.deadline = time.monotonic() + limits.deadline_seconds
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "wyoming-opentalker"
        token = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    # --- requests with the deadline, retries and plain-language failures

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    def _wait(self, seconds: float, why: str) -> None:
        if seconds > self._left():
            raise HubError(
                f"{why}; waiting {seconds:.0f} s more would pass the "
                f"{self.limits.deadline_seconds:g} s download deadline (DOWNLOAD_DEADLINE_SECONDS)"
            )
        _LOGGER.warning("%s; trying again in %.0f s", why, seconds)
        if STOP.wait(seconds):
            raise Stopped("stopped while waiting to download")

    def request(self, method: str, url: str, what: str, **kwargs: Any) -> requests.Response:
        """``method url``: 2xx/3xx returned; 429 waits for ``Retry-After`` and 5xx retries
        (within the deadline); anything else is a ``HubError`` naming the cause."""
        failures = 0
        while True:
            if STOP.is_set():
                raise Stopped("stopped before a download")
            try:
                response = self.session.request(
                    method,
                    url,
                    # the watchdog ends a stalled body first, with a better reason
                    timeout=(CONNECT_SECONDS, self.limits.stall_seconds + 5.0),
                    **kwargs,
                )
            except requests.RequestException as err:
                raise HubError(f"cannot reach {self.endpoint} ({_network_reason(err)})") from None
            status = response.status_code
            if status < 400:
                return response
            response.close()
            if status == 429:
                wait = _retry_after(response.headers.get("Retry-After"))
                self._wait(wait, f"{self.endpoint} asks to slow down (HTTP 429) for {what}")
                continue
            if status >= 500 and failures < SERVER_ERROR_RETRIES:
                failures += 1
                wait = _retry_after(response.headers.get("Retry-After"), 2.0**failures)
                self._wait(wait, f"{self.endpoint} failed (HTTP {status}) for {what}")
                continue
            raise HubError(_status_reason(status, self.endpoint, what), status)

    # --- what the hub has

    def list_files(self, repo_id: str, revision: str = "main") -> tuple[str, list[str]]:
        """The commit ``revision`` is at, and the repository's file names."""
        url = f"{self.endpoint}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
        response = self.request("GET", url, f"model {repo_id}")
        try:
            info = response.json()
            return str(info["sha"]), [str(s["rfilename"]) for s in info["siblings"]]
        except (ValueError, KeyError, TypeError):
            raise HubError(f"{self.endpoint} gave an unreadable answer for {repo_id}") from None

    def describe(self, repo_id: str, name: str, revision: str = "main") -> RemoteFile:
        """Size, digest and commit of one file, from a HEAD of its download URL (not
        following the redirect to a CDN, whose headers lack them)."""
        url = f"{self.endpoint}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(name)}"
        for _ in range(5):  # relative redirects: a renamed repository
            try:
                response = self.request(
                    "HEAD",
                    url,
                    f"{name} of {repo_id}",
                    allow_redirects=False,
                    headers={"Accept-Encoding": "identity"},
                )
            except HubError as err:
                if err.status == 404:
                    raise HubError(
                        f"{repo_id} at {self.endpoint} has no file {name}", 404
                    ) from None
                raise
            location = response.headers.get("Location", "")
            if 300 <= response.status_code < 400 and location.startswith("/"):
                url = f"{self.endpoint}{location}"
                continue
            break
        headers = response.headers
        etag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip()
        etag = etag.removeprefix("W/").strip('"')
        commit = headers.get("X-Repo-Commit", "")
        size = headers.get("X-Linked-Size") or headers.get("Content-Length") or ""
        if not etag or not commit or not size.isdigit() or Digest.of_blob(Path(etag)) is None:
            raise HubError(
                f"{self.endpoint} does not say what {name} of {repo_id} should contain "
                "(no commit, size or checksum headers): is HF_ENDPOINT a Hugging Face mirror?"
            )
        return RemoteFile(name, int(size), etag, commit)

    # --- downloading

    def fetch(self, repo_id: str, remote: RemoteFile, revision: str = "main") -> Path:
        """The file's blob, downloaded (or finished, or found) and checked; linked into
        its snapshot. One process downloads a file at a time; others wait for it."""
        folder = repo_folder(self.cache, repo_id)
        blob = folder / "blobs" / remote.etag
        digest = Digest.of_blob(blob)
        assert digest is not None
        digest = Digest(digest.algorithm, digest.hexdigest, remote.size)
        try:
            blob.parent.mkdir(parents=True, exist_ok=True)
            with self._locked(folder.name, remote.etag):
                if not (blob.exists() and matches(blob, digest)):
                    if blob.exists():
                        move_aside(blob)
                    self._download(repo_id, remote, blob, digest)
                _snapshot_link(folder / "snapshots" / remote.commit, remote.name, blob)
        except OSError as err:
            raise HubError(_disk_reason(err, self.cache)) from None
        return blob

    def set_ref(self, repo_id: str, revision: str, commit: str) -> None:
        refs = repo_folder(self.cache, repo_id) / "refs" / revision
        try:
            refs.parent.mkdir(parents=True, exist_ok=True)
            temporary = refs.with_name(f"{refs.name}.{os.getpid()}.tmp")
            temporary.write_text(commit)
            os.replace(temporary, refs)
        except OSError as err:
            raise HubError(_disk_reason(err, self.cache)) from None

    @contextlib.contextmanager
    def _locked(self, folder: str, etag: str) -> Iterator[None]:
        lock = self.cache / ".locks" / folder / f"{etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as handle:
            waited = False
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited:
                        _LOGGER.info("Another process is downloading %s; waiting for it", etag)
                        waited = True
                    if self._left() <= 0:
                        raise HubError(
                            "another process kept downloading past the deadline"
                        ) from None
                    if STOP.wait(0.1):
                        raise Stopped("stopped while waiting for another download") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _download(self, repo_id: str, remote: RemoteFile, blob: Path, digest: Digest) -> None:
        partial = blob.with_name(f"{blob.name}.incomplete")
        for attempt in (1, 2):
            self._transfer(repo_id, remote, partial)
            if matches(partial, digest):
                os.replace(partial, blob)
                return
            partial.unlink(missing_ok=True)
            if attempt == 1:
                _LOGGER.warning(
                    "%s of %s arrived damaged (its checksum does not match the hub's); "
                    "downloading it again",
                    remote.name,
                    repo_id,
                )
        raise HubError(
            f"{remote.name} of {repo_id} arrived damaged twice from {self.endpoint} (its "
            "checksum does not match the hub's): try another HF_ENDPOINT"
        )

    def _transfer(self, repo_id: str, remote: RemoteFile, partial: Path) -> None:
        """Append the rest of the file to ``partial`` (resuming what is there)."""
        have = partial.stat().st_size if partial.exists() else 0
        if have > remote.size:
            partial.unlink()
            have = 0
        _check_space(partial.parent, remote.size - have, remote.name)
        if have == remote.size:
            return
        url = f"{self.endpoint}/{repo_id}/resolve/{remote.commit}/{quote(remote.name)}"
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
            _LOGGER.info("Resuming %s at %.1f MiB", remote.name, have / 2**20)
        what = f"{remote.name} of {repo_id}"
        response = self.request("GET", url, what, stream=True, headers=headers)
        with response:
            if have and response.status_code != 206:
                have = 0  # the server sends the whole file again
            mode = "ab" if have else "wb"
            try:
                with partial.open(mode) as out, _Watch(self, response, remote, have) as watch:
                    for block in response.iter_content(CHUNK):
                        out.write(block)
                        watch.arrived(len(block))
            except requests.RequestException as err:
                raise HubError(
                    f"the download of {what} from {self.endpoint} broke off "
                    f"({_network_reason(err)}); the next start resumes it"
                ) from None
        if partial.stat().st_size < remote.size:
            raise HubError(
                f"{self.endpoint} ended {remote.name} of {repo_id} early "
                f"({partial.stat().st_size} of {remote.size} bytes); the next start resumes it"
            )


class _Watch:
    """A download's watchdog: logs progress, and aborts the transfer (shutting its socket
    from this thread, which wakes a blocked read) when it stalls, passes the deadline, or
    the start is stopped."""

    def __init__(
        self, hub: Hub, response: requests.Response, remote: RemoteFile, have: int
    ) -> None:
        self.hub = hub
        self.response = response
        self.remote = remote
        self.done = have
        self.started = time.monotonic()
        self.start_bytes = have
        self.window: list[tuple[float, int]] = [(self.started, have)]
        self.reason: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="download-watch", daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.reason is not None:  # we aborted it (a read error, or a quiet end): say why
            if self.reason.startswith("stopped"):
                raise Stopped(self.reason) from None
            raise HubError(self.reason) from None

    def arrived(self, count: int) -> None:
        with self._lock:
            self.done += count

    def _abort(self, reason: str) -> None:
        self.reason = reason
        with contextlib.suppress(Exception):
            connection = getattr(self.response.raw, "connection", None)
            sock = getattr(connection, "sock", None)
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.response.close()

    def _run(self) -> None:
        stall = self.hub.limits.stall_seconds
        last_log = self.started
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                done = self.done
            self.window.append((now, done))
            while len(self.window) > 2 and self.window[1][0] <= now - stall:
                self.window.pop(0)
            name = self.remote.name
            if STOP.is_set():
                self._abort(f"stopped while downloading {name}; the next start resumes it")
                return
            if self.hub._left() <= 0:
                self._abort(
                    f"downloading {name} passed the {self.hub.limits.deadline_seconds:g} s "
                    "deadline (DOWNLOAD_DEADLINE_SECONDS); the next start resumes it"
                )
                return
            first_at, first_done = self.window[0]
            if now - first_at >= stall and done - first_done < MIN_PROGRESS_BYTES:
                self._abort(
                    f"the download of {name} from {self.hub.endpoint} stalled: "
                    f"{done - first_done} bytes in the last {stall:g} s "
                    "(DOWNLOAD_STALL_SECONDS); the next start resumes it"
                )
                return
            if now - last_log >= PROGRESS_SECONDS:
                last_log = now
                rate = (done - self.start_bytes) / 2**20 / (now - self.started)
                _LOGGER.info(
                    "Downloading %s: %.0f%% of %.1f MiB (%.1f MiB/s)",
                    name.rsplit("/", 1)[-1],
                    100 * done / max(1, self.remote.size),
                    self.remote.size / 2**20,
                    rate,
                )


def download(
    hub: Hub,
    repo_id: str,
    names: Sequence[str] | None,
    *,
    patterns: Sequence[str] | None = None,
    revision: str = "main",
) -> Path:
    """Download ``names`` of ``repo_id`` (None: every file matching ``patterns``), check
    each, and return the snapshot folder; ``refs/revision`` is written last, so a
    snapshot it names is complete."""
    if names is None:
        commit, listed = hub.list_files(repo_id, revision)
        names = [n for n in listed if patterns is None or any(fnmatch(n, p) for p in patterns)]
        if not names:
            raise HubError(f"{repo_id} at {hub.endpoint} has no model files")
    else:
        commit = ""
    remotes = [hub.describe(repo_id, name, commit or revision) for name in names]
    commit = commit or remotes[0].commit
    _check_writable(repo_folder(hub.cache, repo_id) / "blobs", hub.cache)
    need = sum(r.size for r in remotes if not _have(hub.cache, repo_id, r))
    _check_space(repo_folder(hub.cache, repo_id), need, repo_id)
    for remote in remotes:
        hub.fetch(repo_id, RemoteFile(remote.name, remote.size, remote.etag, commit), revision)
    hub.set_ref(repo_id, revision, commit)
    return repo_folder(hub.cache, repo_id) / "snapshots" / commit


def _have(cache: Path, repo_id: str, remote: RemoteFile) -> bool:
    blob = repo_folder(cache, repo_id) / "blobs" / remote.etag
    return blob.exists() and blob.stat().st_size == remote.size


# --- plain-language causes


def _retry_after(value: str | None, default: float = 5.0) -> float:
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return default


def _status_reason(status: int, endpoint: str, what: str) -> str:
    if status == 404:
        return f"{endpoint} has no {what} (HTTP 404): check the name"  # e.g. "model org/x"
    if status in (401, 403):
        return (
            f"{endpoint} refused {what} (HTTP {status}): the model may be gated or private; "
            "set HF_TOKEN, or download it elsewhere and give a local path"
        )
    if status == 429:
        return f"{endpoint} keeps refusing {what} (HTTP 429, too many requests): try later"
    return f"{endpoint} failed for {what} (HTTP {status}): try later or set HF_ENDPOINT to a mirror"


def _network_reason(err: BaseException) -> str:
    text = repr(err)
    for needle, reason in (
        ("NameResolutionError", "the name does not resolve (DNS)"),
        ("Name or service not known", "the name does not resolve (DNS)"),
        ("Temporary failure in name resolution", "the name does not resolve (DNS)"),
        ("Connection refused", "connection refused"),
        ("ConnectTimeout", f"no connection within {CONNECT_SECONDS:g} s"),
        ("ReadTimeout", "the server stopped answering"),
        ("Connection reset", "the connection was reset"),
        ("RemoteDisconnected", "the server closed the connection"),
        ("SSLError", "the TLS connection failed (certificate or proxy)"),
        ("ProxyError", "the proxy failed"),
        ("Network is unreachable", "the network is unreachable"),
    ):
        if needle in text:
            return reason
    return type(err).__name__


def _disk_reason(err: OSError, cache: Path) -> str:
    if err.errno == errno.ENOSPC:
        return f"the disk holding the model cache {cache} is full (set MODEL_CACHE_DIR elsewhere)"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"the model cache {cache} cannot be written ({os.strerror(err.errno or 0).lower()}): "
            "set MODEL_CACHE_DIR to a writable folder"
        )
    return f"the model cache {cache} failed: {err.strerror or err}"


def _check_writable(folder: Path, cache: Path) -> None:
    """Fail now, and say so, if nothing can be written where the download would go."""
    probe = folder / f".write-test.{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise HubError(_disk_reason(err, cache)) from None


def _check_space(folder: Path, need: int, what: str) -> None:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if need > 0 and free < need + 16 * 2**20:
        raise HubError(
            f"not enough disk space for {what}: it needs {need / 2**20:.0f} MiB more and "
            f"{probe} has {free / 2**20:.0f} MiB free (set MODEL_CACHE_DIR elsewhere)"
        )
