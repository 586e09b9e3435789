"""Hugging Face Hub ids as ``--model`` / ``--tokenizer`` values: ``org/name[@revision]`` -> a local snapshot.

A value that is no existing path and has the form of a Hub repository id (``org/name``, or a
legacy bare id such as ``bert-base-uncased``; ``@revision`` pins a branch, tag or commit) is
fetched with ``huggingface_hub.snapshot_download`` -- only the config, weight and tokenizer
files -- into the Hugging Face cache, and the snapshot directory is then read like any Hugging
Face directory. The cache and offline mode are Hugging Face's own: ``HF_HUB_CACHE`` /
``HF_HOME`` say where, ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) reads the cache only.
Both are read when a value is resolved, not when the module is imported. Anything that goes
wrong is one :class:`PretuneError` line saying what to do.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from pretune.errors import PretuneError

TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                      "vocab.json", "merges.txt", "added_tokens.json")
MODEL_PATTERNS = ("config.json", "model.safetensors", *TOKENIZER_PATTERNS)
FALLBACK_WEIGHTS = "pytorch_model.bin"  # fetched only when a repository has no model.safetensors

# org/name or a bare legacy name, each part as the Hub allows it; @revision: a branch, tag or commit
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?)(?:@(?P<revision>[\w./-]+))?")
_TRUE = {"1", "ON", "YES", "TRUE"}


def parse(value: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``value`` has the form of a Hub id, else None.

    A value ending in ``.json`` (a config file) or with any other path syntax (``./x``, ``a/b/c``,
    ``~/x``, an absolute path) is never a Hub id.
    """
    m = _HUB_ID.fullmatch(value)
    if m is None or m["repo"].endswith((".json", ".")) or ".." in m["repo"] or "--" in m["repo"]:
        return None
    return m["repo"], m["revision"]


def offline_flag() -> str | None:
    """The environment variable that puts Hugging Face in offline mode (``HF_HUB_OFFLINE=1``), or None."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in _TRUE:
            return f"{name}={os.environ[name].strip()}"
    return None


def cache_dir() -> Path:
    """Where ``huggingface_hub`` keeps its snapshots, as its own variables say at this moment."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface" / "hub"


def resolve(value: str, flag: str, *, weights: bool = True, other: str = "") -> Path | None:
    """The local snapshot directory of the Hub id ``value`` (downloading what is missing), or None
    when ``value`` is not of the form of a Hub id. ``weights``: a model (config, weights and
    tokenizer); otherwise a tokenizer's files only."""
    parsed = parse(value)
    if parsed is None:
        return None
    repo, revision = parsed
    return _snapshot(repo, revision, flag, weights, str(cache_dir()), offline_flag(), other)


@functools.lru_cache(maxsize=32)
def _snapshot(repo: str, revision: str | None, flag: str, weights: bool, cache: str, offline: str | None,
              other: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # a dependency of pretune; missing only in a broken environment
        raise PretuneError(f"{flag} {repo}: reading Hugging Face Hub ids needs huggingface_hub "
                           f"(pip install huggingface_hub), or pass a local directory") from None

    def fetch(patterns: tuple[str, ...]) -> Path:
        return Path(snapshot_download(repo, revision=revision, cache_dir=cache, local_files_only=offline is not None,
                                      allow_patterns=list(patterns)))

    try:
        path = fetch(MODEL_PATTERNS if weights else TOKENIZER_PATTERNS)
        if weights and (path / "config.json").is_file() and not (path / "model.safetensors").is_file():
            path = fetch((FALLBACK_WEIGHTS,))  # an older repository: weights only as a PyTorch pickle
    except Exception as exc:  # noqa: BLE001 -- every failure of the download becomes one line
        raise PretuneError(_failure(exc, repo, revision, f"{flag} {_named(repo, revision)}: no such local directory or "
                                    f"file{other}", Path(cache), offline)) from None
    if weights and (path / "config.json").is_file() and not any((path / n).is_file() for n in (
            "model.safetensors", FALLBACK_WEIGHTS)):
        why = (f"the Hugging Face cache holds no weights for it and {offline} is set; run once online, or pass a "
               f"local directory") if offline else "the repository has neither (pretune reads single-file weights)"
        raise PretuneError(f"{flag} {_named(repo, revision)}: no model.safetensors or {FALLBACK_WEIGHTS}: {why}")
    return path


def _named(repo: str, revision: str | None) -> str:
    return repo if revision is None else f"{repo}@{revision}"


def _failure(exc: Exception, repo: str, revision: str | None, lead: str, cache: Path, offline: str | None) -> str:
    """One line for a failed snapshot: what is missing, and what to do. ``lead``: "FLAG VALUE: not ..."."""
    from huggingface_hub.utils import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, HFValidationError):
        return f"{lead}, and not a valid Hugging Face repository id"
    if isinstance(exc, GatedRepoError):
        return (f"{lead}; the Hugging Face repository {repo} is gated: accept its terms on its page and log in "
                f"(`hf auth login` or HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return f"{lead}; the Hugging Face repository {repo} has no revision {revision!r}"
    if isinstance(exc, RepositoryNotFoundError):
        return f"{lead}, and no repository {repo} on the Hugging Face Hub (a private one needs `hf auth login` or HF_TOKEN)"
    if isinstance(exc, LocalEntryNotFoundError):
        cached = (cache / ("models--" + repo.replace("/", "--"))).is_dir()
        what = f"revision {revision!r} of {repo} is" if cached and revision else f"{repo} is"
        if offline:
            return (f"{lead}, and {what} not in the Hugging Face cache ({cache}) while {offline} is set; run once "
                    f"online to download it, or pass a local directory")
        return (f"{lead}; the Hugging Face Hub cannot be reached and {what} not in the cache ({cache}): check the "
                f"network (or HF_ENDPOINT), or pass a local directory")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"{lead}; downloading it from the Hugging Face Hub failed ({first})"


__all__ = ["MODEL_PATTERNS", "TOKENIZER_PATTERNS", "cache_dir", "offline_flag", "parse", "resolve"]
