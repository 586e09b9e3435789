"""Reading raw text corpora: ``.txt``, ``.jsonl`` and their ``.gz`` forms, streamed line by line.

Files are read as bytes and decoded one line at a time, so an error names the exact line. Layouts:

- plain text: one sentence (or review) per line, a blank line between documents (BERT's
  pretraining layout);
- JSON lines: one record per line with a ``text`` field; each record is one document and its
  text may hold several lines.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pretune.errors import PretuneError, where

PathLike = str | Path


@dataclass
class ReadStats:
    """Counts kept while reading: lines seen and lines skipped as unreadable."""

    lines: int = 0
    bad_lines: int = 0


def is_jsonl(path: PathLike) -> bool:
    """True for ``.jsonl`` and ``.jsonl.gz`` files."""
    name = Path(path).name.lower()
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz")


def _open(path: Path) -> BinaryIO:
    if not path.exists():
        raise PretuneError(f"{path}: no such file")
    if path.is_dir():
        raise PretuneError(f"{path}: is a directory, expected a text file (.txt, .jsonl, .gz)")
    try:
        if path.name.lower().endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return path.open("rb")
    except OSError as exc:
        raise PretuneError(f"{path}: cannot open ({exc.strerror or exc})") from exc


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line ending), streaming; gzip errors become PretuneError."""
    with _open(path) as fh:
        lineno = 0
        try:
            for lineno, raw in enumerate(fh, start=1):
                if raw.endswith(b"\n"):
                    raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
                yield lineno, raw
        except (OSError, EOFError, zlib.error) as exc:
            raise PretuneError(f"{where(path, lineno + 1)}: cannot read gzip data ({exc})") from exc


def iter_lines(
    path: PathLike, *, skip_bad_lines: bool = False, stats: ReadStats | None = None
) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for each line of a text or JSON-lines file (gzipped or not).

    For ``.jsonl`` the text is the record's ``text`` field (it may contain newlines; an empty or
    whitespace-only text yields ``""``); blank JSON lines are skipped. Undecodable lines (and, for
    JSON lines, malformed records) raise :class:`PretuneError` unless ``skip_bad_lines``, in which
    case they are skipped and counted in ``stats.bad_lines``.
    """
    path = Path(path)
    jsonl = is_jsonl(path)
    for lineno, raw in _raw_lines(path):
        if stats is not None:
            stats.lines += 1
        try:
            text = _line_text(raw, lineno, jsonl)
        except _BadLine as exc:
            if not skip_bad_lines:
                raise PretuneError(f"{where(path, lineno)}: {exc} or pass --skip-bad-lines") from None
            if stats is not None:
                stats.bad_lines += 1
            continue
        if text is not None:
            yield lineno, text


class _BadLine(Exception):
    """A line that cannot be read (its message says why and what to do)."""


def _line_text(raw: bytes, lineno: int, jsonl: bool) -> str | None:
    """The text of one raw line (None for a blank JSON line)."""
    try:
        text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise _BadLine(f"not valid UTF-8 ({exc.reason} at byte {exc.start}); re-encode the file") from None
    if not jsonl:
        return text
    if not text.strip():
        return None
    try:
        return _json_text(text)
    except ValueError as exc:
        raise _BadLine(f"{exc}; fix the line") from None


def _json_text(line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict) or "text" not in record:
        keys = ", ".join(record) if isinstance(record, dict) and record else "none"
        raise ValueError(f'JSON record has no "text" field (its fields: {keys})')
    text = record["text"]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f'"text" field is {type(text).__name__}, expected a string')
    return text if text.strip() else ""


def _as_list(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def iter_texts(paths: PathLike | Iterable[PathLike], **kw) -> Iterator[str]:
    """Yield every non-blank line (JSON lines: every non-blank record text) of all files, in order."""
    for path in _as_list(paths):
        for _, text in iter_lines(path, **kw):
            if text.strip():
                yield text


def iter_documents(paths: PathLike | Iterable[PathLike], **kw) -> Iterator[list[str]]:
    """Yield documents as lists of stripped, non-blank lines (BERT pretraining layout).

    Text files: blank lines separate documents, and a file's end ends its last document. JSON
    lines: each record is one document, its ``text`` split on newlines. Empty documents are dropped.
    """
    for path in _as_list(paths):
        if is_jsonl(path):
            for _, text in iter_lines(path, **kw):
                doc = [s.strip() for s in text.splitlines() if s.strip()]
                if doc:
                    yield doc
            continue
        doc: list[str] = []
        for _, text in iter_lines(path, **kw):
            line = text.strip()
            if line:
                doc.append(line)
            elif doc:
                yield doc
                doc = []
        if doc:
            yield doc


def check_paths(paths: PathLike | Iterable[PathLike], skip_bad_lines: bool = False) -> list[Path]:
    """Check that corpus files were given, exist and are not all empty; return them as Paths.

    When no line has text, the first line that cannot be read (not UTF-8, a JSON record without
    ``text``) is the error, unless such lines are skipped (``skip_bad_lines``)."""
    files = _as_list(paths)
    if not files:
        raise PretuneError("no input files given")
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise PretuneError(f"input file(s) not found: {', '.join(missing)}")
    dirs = [str(p) for p in files if p.is_dir()]
    if dirs:
        raise PretuneError(
            f"expected text files, got director{'y' if len(dirs) == 1 else 'ies'}: {', '.join(dirs)}"
        )
    if not any(_has_text(p) for p in files):
        for path in files if not skip_bad_lines else ():  # an unreadable line says more than "empty"
            for _ in iter_lines(path):
                pass
        names = ", ".join(str(p) for p in files)
        raise PretuneError(
            f"input file{'s are' if len(files) > 1 else ' is'} empty (no non-blank lines): {names}"
        )
    return files


def _has_text(path: Path) -> bool:
    if path.stat().st_size == 0:
        return False
    return any(text.strip() for _, text in iter_lines(path, skip_bad_lines=True))
