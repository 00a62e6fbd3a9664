"""Hugging Face Hub access shared by the timm and Hugging Face backends: a local save_pretrained folder, whether the Hub can be reached, and a download that says what to place where when it fails."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from core.errors import ConfigError, WeightsUnavailable

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


_REACHABLE: dict[str, bool] = {}



def local_folder(id_or_path: str) -> Path | None:
    """The folder for a local model (one holding config.json), None for a hub id.

    A path that exists but is not such a folder is a ``ConfigError``.
    """
    p = Path(id_or_path).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return p
        raise ConfigError(f"{id_or_path}: no config.json in this folder; pass a folder written by save_pretrained or a hub id")
    if p.exists():
        raise ConfigError(f"{id_or_path}: a file, not a Hugging Face model folder; pass the folder holding config.json")
    if id_or_path.startswith((".", "/", "~")) or id_or_path.count("/") > 1 or not _REPO_ID.fullmatch(id_or_path) or ".." in id_or_path or "--" in id_or_path:
        raise ConfigError(f"{id_or_path}: no such folder, and not a Hugging Face hub id (owner/name)")
    return None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def unavailable(repo_id: str, why: str) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"hf:{repo_id} is not in the Hugging Face cache ({_cache_dir()}) and {why}; run it once with network "
        f"access, or `hf download {repo_id}` where there is network and copy the cache, or pass a local folder "
        "written by save_pretrained"
    )


def hub_reachable() -> bool:
    """One quick request to the Hub (through the Hub's own HTTP session and proxies), remembered.

    Without it a missing network costs minutes: huggingface_hub retries every file with backoff.
    """
    from huggingface_hub import constants

    if constants.ENDPOINT not in _REACHABLE:
        try:
            from huggingface_hub.utils import get_session

            get_session().head(constants.ENDPOINT, timeout=5.0)
            _REACHABLE[constants.ENDPOINT] = True
        except Exception:  # DNS failure, refused connection, timeout, proxy error
            _REACHABLE[constants.ENDPOINT] = False
    return _REACHABLE[constants.ENDPOINT]


def _not_found(exc: BaseException) -> bool:
    """Whether a loading error says the repository does not exist (or is private or gated)."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (RepositoryNotFoundError, GatedRepoError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return "not a valid model identifier" in str(exc)


def fetch(repo_id: str, load: Callable[..., Any]) -> Any:
    """``load(local_files_only=...)`` for a hub id: the cache first, then the network.

    Raises ``WeightsUnavailable`` when the files are not cached and cannot be downloaded,
    ``ConfigError`` when the Hub says there is no such model.
    """
    from huggingface_hub import constants

    try:
        return load(local_files_only=True)
    except OSError:
        pass  # not (fully) cached: try the Hub
    if constants.is_offline_mode():
        raise unavailable(repo_id, "HF_HUB_OFFLINE=1 forbids downloading it (unset it to download)")
    if not hub_reachable():
        raise unavailable(repo_id, f"{constants.ENDPOINT} cannot be reached (no network?)")
    try:
        return load(local_files_only=False)
    except OSError as exc:
        if _not_found(exc):
            raise ConfigError(
                f"hf:{repo_id}: no such model on the Hugging Face Hub (or it is private or gated: run `hf auth login`)"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsUnavailable(f"hf:{repo_id}: download failed ({first}); check the network and try again") from None


def cache_hint(repo_id: str) -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub ships with timm
        HF_HUB_CACHE = "~/.cache/huggingface/hub"
    return f"with network access run it once to fill {HF_HUB_CACHE} (Hugging Face repo {repo_id})"
