"""Atomic writes: the only place in pretune that renames files and directories into place.

Every file pretune writes appears whole or not at all: it is written under a temporary name
beside its target, flushed to disk (``fsync``), given the permissions the user's umask allows
(``mkstemp``/``mkdtemp`` would leave 0600/0700), and renamed over the target in one step; the
directory entry is flushed too. A directory is built the same way under a temporary name and
swapped in as a whole, so a reader sees the old version or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pretune.errors import PretuneError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a new file under the current umask (0644 with the usual 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """Permissions of a new directory under the current umask (0755 with the usual 022)."""
    return 0o777 & ~_umask()


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a directory's entries') data to disk; a no-op where the OS refuses."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def umask_modes(root: str | Path) -> None:
    """Give ``root`` and everything under it the permissions the umask allows (``mkdtemp`` makes
    0700, and some writers, safetensors' ``save_file`` among them, make 0600 files)."""
    os.chmod(root, dir_mode())
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(Path(directory) / name, dir_mode())
        for name in files:
            os.chmod(Path(directory) / name, file_mode())


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root`` (and ``root`` itself)."""
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(directory) / name)
        fsync_path(directory)


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of ``path`` that do not exist yet, deepest first (what a write would create)."""
    missing = []
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            break
        missing.append(parent)
    return missing


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories a failed write created, deepest first, as long as they are empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


@contextmanager
def made_dirs(path: str | Path, *, what: str = "cannot create the directory") -> Iterator[Path]:
    """``mkdir -p path`` for the block (one line, ``PATH: WHAT (reason)``, if it cannot be made);
    if the block fails, the directories it made are removed again as long as they are empty, so a
    failed run leaves no empty folder behind."""
    path = Path(path)
    created = _missing_parents(path / "x")  # path itself and its missing ancestors, deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PretuneError(f"{path}: {what} ({exc.strerror or exc})") from None
    try:
        yield path
    except BaseException:
        _remove_empty(created)
        raise


def _cannot_write(directory: Path, exc: OSError, what: str) -> PretuneError:
    hint = f"; {what}" if what else ""
    return PretuneError(f"cannot write into {directory}: {exc.strerror or exc}{hint}")


@contextmanager
def atomic_path(path: str | Path, *, what: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The caller writes the temporary file (by name, so any library can); on an exception it is
    deleted and ``path`` is left as it was. A directory that cannot be written is a
    :class:`PretuneError` (``what`` says what to do about it).
    """
    path = Path(path)
    created = _missing_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        _remove_empty(created)
        raise _cannot_write(path.parent, exc, what) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_empty(created)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented UTF-8 JSON atomically."""
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name; when complete, swap it in for ``path`` as a whole.

    An existing ``path`` (a directory) is replaced only once the new one is complete and flushed;
    on an exception the temporary directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a directory")
    created = _missing_parents(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        _remove_empty(created)
        raise _cannot_write(path.parent, exc, "") from None
    try:
        yield tmp
        umask_modes(tmp)
        fsync_tree(tmp)
        swap_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise


def swap_dir(new: Path, path: Path) -> None:
    """Put the complete directory ``new`` at ``path``, replacing what was there, in renames only."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}-{new.name[-8:]}")
        os.replace(path, old)
        os.replace(new, path)
        fsync_path(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)
        fsync_path(path.parent)


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a directory (nothing can be made under it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_out_place(out: str | Path, *, inputs: tuple[str | Path, ...] = (), flag: str = "--out") -> Path:
    """Where an output directory may go: not an input, not inside or around one, not a file, not under a file.

    The part of :func:`check_out` that holds whatever the directory holds (training runs check it
    first and let ``--resume`` / ``--overwrite`` decide about a non-empty one).
    """
    path = Path(out)
    resolved = path.resolve()
    for given in inputs:
        source = Path(given).resolve()
        how = "is" if source == resolved else "lies inside" if _inside(resolved, source) else "contains"
        if _inside(resolved, source) or _inside(source, resolved):
            raise PretuneError(f"{flag} {out}: {how} the input {given}; choose another directory")
    if path.exists() and not path.is_dir():
        raise PretuneError(f"{flag} {out}: exists and is a file, not a directory")
    blocker = _file_above(path)
    if blocker is not None:
        raise PretuneError(f"{flag} {out}: {blocker} is a file, so no directory can be made under it")
    return path


def check_out(out: str | Path, *, inputs: tuple[str | Path, ...] = (), overwrite: bool = False,
              flag: str = "--out", allow: str = "--overwrite") -> Path:
    """The one rule for every verb's output directory, checked before any work is done.

    ``out`` may not be, lie inside, or contain an input; may not be a file or lie under one; and,
    when it holds anything, is refused unless ``allow`` (``--overwrite``, or ``--resume`` for
    training) was given.
    """
    path = check_out_place(out, inputs=inputs, flag=flag)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise PretuneError(f"{flag} {out}: the directory is not empty; pass {allow} to replace it, or choose another")
    return path


def check_out_file(out: str | Path, *, inputs: tuple[str | Path, ...] = (), overwrite: bool = False,
                   flag: str = "--out") -> Path:
    """The same rule for an output file: never an input (not even with ``--overwrite``), not a
    directory, not under a file, and an existing file is replaced only with ``--overwrite``."""
    path = Path(out)
    if path.is_dir():
        raise PretuneError(f"{flag} {out}: is a directory; give a file name (e.g. {path / 'predictions.jsonl'})")
    blocker = _file_above(path)
    if blocker is not None:
        raise PretuneError(f"{flag} {out}: {blocker} is a file, so no directory can be made under it")
    resolved = path.resolve()
    for given in inputs:
        if Path(given).resolve() == resolved:
            raise PretuneError(f"{flag} {out}: is an input ({given}); choose another file")
    if path.exists() and not overwrite:
        raise PretuneError(f"{flag} {out}: the file exists; pass --overwrite to replace it, or choose another name")
    return path


def read_text_file(path: str | Path, *, flag: str | None = None, encoding: str = "utf-8") -> str:
    """A text file's contents. A missing file, or one not in ``encoding``, is one line naming the
    file (after ``flag``, the option that named it, when given) and the line of the first bad byte."""
    p = Path(path)
    name = f"{flag} {p}" if flag else str(p)
    if not p.is_file():
        raise PretuneError(f"{name}: file not found" + (" (it is a directory)" if p.is_dir() else ""))
    data = p.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PretuneError(f"{name}:{line}: not valid {encoding} text ({exc.reason}); convert the file to UTF-8 "
                           "(e.g. iconv -f cp949 -t utf-8)") from None


def read_texts(given: list[str] | None) -> list[str]:
    """The texts of the command line, else the non-empty lines of a piped stdin."""
    if given:
        return list(given)
    if sys.stdin is None or sys.stdin.isatty():
        raise PretuneError("no text: give texts as arguments, or pipe them on stdin (one per line)")
    texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise PretuneError("no text on stdin: every line was empty")
    return texts


__all__ = [
    "check_out", "check_out_file", "check_out_place", "made_dirs", "read_text_file", "read_texts",
    "atomic_dir", "atomic_path", "dir_mode", "file_mode", "fsync_path", "fsync_tree", "swap_dir",
    "umask_modes", "write_json", "write_text",
]
