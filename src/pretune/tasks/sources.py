"""Task data from the ``datasets`` library: ``hf:NAME[:CONFIG][@SPLIT]``, parquet and arrow files, and
``save_to_disk`` directories, read as rows of named columns like JSON lines.

* ``hf:NAME[:CONFIG][@SPLIT]``: ``datasets.load_dataset(NAME, CONFIG)`` -- a Hub data set (from
  the ``datasets`` cache when ``HF_DATASETS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``), or a local folder
  of data files whose names give the splits (``train.parquet``, ``validation.csv``, ...).
* ``FILE.parquet`` / ``FILE.arrow``: one table (the arrow file as ``Dataset.save_to_disk`` writes it).
* ``DIR`` or ``DIR@SPLIT`` where ``DIR`` holds a ``save_to_disk`` data set (a ``DatasetDict``'s
  needs a split).

A source with several splits and none named takes the split of the flag it was given to
(``--train``: train, ``--validation``: validation, ``--test``: test); elsewhere the split must
be named unless there is only one. Columns are picked by name, as in JSON lines; a ``ClassLabel``
column gives its integer ids, as the data set stores them (and as GLUE's files hold them), while a
sequence of ``ClassLabel`` tags (token tagging) gives the tag names. Every row keeps its source as
``VALUE (row N)``. ``datasets`` is an optional dependency: ``pip install 'pretune[hf]'``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretune.errors import PretuneError

PREFIX = "hf:"
FILE_SUFFIXES = (".parquet", ".arrow")
DISK_MARKERS = ("state.json", "dataset_dict.json")  # what save_to_disk writes (a Dataset; a DatasetDict)


@dataclass
class Table:
    """A data set's split as rows: its column names, ``datasets`` features, and rows."""

    value: str  # as the user gave it, for messages
    columns: list[str]
    features: Any
    rows: list[dict[str, Any]]

    def source(self, index: int) -> str:
        return f"{self.value} (row {index})"

    def require(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise PretuneError(f"{self.value}: column {missing[0]!r} not found; columns are {self.columns}")


def _is_disk_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in DISK_MARKERS)


def _split_suffix(value: str) -> tuple[str, str | None]:
    """``value`` without a trailing ``@SPLIT``, and the split (None when not given)."""
    head, at, split = value.rpartition("@")
    return (head, split) if at and split and "/" not in split else (value, None)


def is_dataset(value: str | Path | None) -> bool:
    """Whether a --train/--validation/--test/--data value is read with ``datasets`` (not as a text file)."""
    if value is None:
        return False
    text = str(value)
    if text.startswith(PREFIX):
        return True
    path = Path(text)
    if path.suffix.lower() in FILE_SUFFIXES or _is_disk_dir(path):
        return True
    head, split = _split_suffix(text)
    return split is not None and not path.exists() and _is_disk_dir(Path(head))


def local_path(value: str | Path) -> Path | None:
    """The file or directory a data set value reads on this machine (without ``@SPLIT``); None for
    an ``hf:`` name, which only loading can check."""
    text = str(value)
    if text.startswith(PREFIX):
        return None
    return Path(text) if Path(text).exists() else Path(_split_suffix(text)[0])


def with_split(value: str | Path, split: str | None) -> str | Path:
    """``value`` with ``@split`` added where it is a data set that names no split (files stay as they are)."""
    if split is None or not is_dataset(value) or _split_suffix(str(value))[1] is not None:
        return value
    if Path(str(value)).suffix.lower() in FILE_SUFFIXES:
        return value  # one table, no splits
    return f"{value}@{split}"


def _datasets(value: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise PretuneError(f"{value}: reading Hugging Face datasets needs the datasets library: "
                           f"pip install 'pretune[hf]'") from None
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def _offline() -> str | None:
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name}={os.environ[name].strip()}"
    return None


def _load(value: str) -> Any:
    """The ``Dataset`` or ``DatasetDict`` a value names, and the split it asks for."""
    ds_lib = _datasets(value)
    body, split = _split_suffix(value)
    name = body[len(PREFIX):] if body.startswith(PREFIX) else body
    config = None
    if body.startswith(PREFIX) and ":" in name and not Path(name).exists():
        name, config = name.split(":", 1)
    path = Path(name)
    try:
        if path.suffix.lower() == ".parquet" and path.is_file():
            data = ds_lib.Dataset.from_parquet(str(path), keep_in_memory=True)
        elif path.suffix.lower() == ".arrow" and path.is_file():
            data = ds_lib.Dataset.from_file(str(path), in_memory=True)
        elif _is_disk_dir(path):
            data = ds_lib.load_from_disk(str(path))
        elif not body.startswith(PREFIX):
            raise PretuneError(f"{value}: no such file or data set directory")
        else:
            data = ds_lib.load_dataset(name, config)
    except PretuneError:
        raise
    except Exception as exc:  # noqa: BLE001 -- datasets raises many types; each becomes one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        offline = _offline()
        hint = (f"; {offline} is set: run once online to put it in the datasets cache, or give a local file "
                f"or directory") if offline and body.startswith(PREFIX) and not path.exists() else ""
        raise PretuneError(f"{value}: cannot load the data set ({first}){hint}") from None
    return data, split


def load_table(value: str | Path, columns: list[str] | None = None) -> Table:
    """The rows of the data set split ``value`` names (see the module's help for the forms), with
    only ``columns`` (a column it lacks is a one-line error naming those it has)."""
    value = str(value)
    data, split = _load(value)
    if hasattr(data, "keys"):  # a DatasetDict: its splits
        names = list(data.keys())
        if split is None and len(names) == 1:
            split = names[0]
        if split is None:
            raise PretuneError(f"{value}: the data set has splits {', '.join(names)}; name one: {value}@{names[0]}")
        if split not in data:
            raise PretuneError(f"{value}: no split {split!r}; the data set has {', '.join(names)}")
        data = data[split]
    elif split is not None:
        raise PretuneError(f"{value}: the data set has no splits; drop @{split}")
    if data.num_rows == 0:
        raise PretuneError(f"{value}: no rows")
    table = Table(value, list(data.column_names), data.features, [])
    if columns is not None:
        table.require(columns)
        data = data.select_columns(list(dict.fromkeys(columns)))
    table.rows = data.to_list()
    return table


def tag_names(table: Table, column: str) -> list[str] | None:
    """The class names of a column holding a sequence of ``ClassLabel`` tags, else None."""
    feature = table.features.get(column)
    inner = getattr(feature, "feature", None)
    if inner is None and isinstance(feature, list) and feature:
        inner = feature[0]
    return list(inner.names) if getattr(inner, "names", None) else None


def cell(value: Any) -> str:
    """A table cell as the text a file would hold (None: empty)."""
    return "" if value is None else str(value)


__all__ = ["Table", "cell", "is_dataset", "load_table", "local_path", "tag_names", "with_split"]
