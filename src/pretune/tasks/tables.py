"""Reading task files: text with one-line errors, and TSV / CSV / JSON-lines tables (or data sets of
the ``datasets`` library, :mod:`pretune.tasks.sources`) by column.

The table families (classification, regression, multiple choice) pick their columns with
:func:`read_rows`; every row keeps its ``file:line`` for later messages.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pretune.errors import PretuneError, where
from pretune.io import read_text_file
from pretune.tasks.sources import cell, is_dataset, load_table

Col = int | str
Cols = Col | Sequence[Col]

DELIMITERS = {".tsv": "\t", ".txt": "\t", ".csv": ",", ".jsonl": "json"}


def read_text(path: str | Path, encoding: str = "utf-8-sig") -> str:
    """A task file's text (:func:`pretune.io.read_text_file`); an empty file is an error too."""
    text = read_text_file(path, encoding=encoding)
    if not text.strip():
        raise PretuneError(f"{path}: file is empty")
    return text


def preview(value: object, n: int = 40) -> str:
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def as_list(cols: Cols | None) -> list[Col]:
    if cols is None:
        return []
    return [cols] if isinstance(cols, (int, str)) else list(cols)


def split_list(value: Any) -> Any:
    """A comma-separated string of column names (from the command line) as a list."""
    if isinstance(value, str) and "," in value:
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _json_rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    for i, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise PretuneError(f"{where(path, i)}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, (dict, list)):
            raise PretuneError(f"{where(path, i)}: expected a JSON object or array, got {type(obj).__name__}")
        yield i, obj


def _csv_rows(path: Path, text: str, delimiter: str, quoting: int | None) -> Iterator[tuple[int, list[str]]]:
    if quoting is None:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    line = 1
    try:
        for fields in reader:
            start, line = line, reader.line_num + 1
            if any(f.strip() for f in fields):
                yield start, fields
    except csv.Error as e:
        raise PretuneError(f"{where(path, reader.line_num)}: cannot parse row ({e})") from None


def _resolve(col: Col, names: list[str] | None, width: int, path: Path) -> int:
    """Map a column name or 0-based index (int or digit string) to a field index."""
    if names is not None and isinstance(col, str) and col in names:
        return names.index(col)
    if isinstance(col, int) or (isinstance(col, str) and col.isdigit()):
        if int(col) < width:
            return int(col)
        raise PretuneError(f"{path}: column {col} not found: rows have {width} columns (0..{width - 1})")
    if names is None:
        raise PretuneError(
            f"{path}: column {col!r} given by name but the file has no header; give a 0-based index "
            f"or drop --no-header"
        )
    raise PretuneError(f"{path}: column {col!r} not found; columns are {names}")


def _json_field(obj: dict | list, col: Col, src: str) -> str:
    key = int(col) if isinstance(obj, list) and str(col).isdigit() else col
    try:
        value = obj[key]
    except (KeyError, IndexError, TypeError):
        found = list(obj) if isinstance(obj, dict) else f"{len(obj)} array items"
        raise PretuneError(f"{src}: column {col!r} not found; columns are {found}") from None
    return "" if value is None else str(value)


def read_rows(
    path: str | Path,
    wanted: dict[str, list[Col]],
    *,
    header: bool = True,
    delimiter: str | None = None,
    quoting: int | None = None,
    encoding: str = "utf-8-sig",
    allow_extra_fields: bool = False,
) -> list[tuple[str, dict[str, list[str]]]]:
    """``(file:line, {key: [field, ...]})`` for every non-blank row, with the columns ``wanted``.

    Columns are names (with ``header``) or 0-based indexes (ints or digit strings); JSON lines use
    keys, and so do the data sets of :mod:`pretune.tasks.sources` (``hf:NAME``, parquet, arrow,
    ``save_to_disk`` directories; the layout options do not apply). ``delimiter`` defaults from the extension (.tsv/.txt: tab, .csv: comma, .jsonl: JSON
    lines); TSV ignores quotes (``QUOTE_NONE``), CSV uses normal quoting. A row may have more
    fields than the header (or the first row) only with ``allow_extra_fields``.
    """
    if is_dataset(path):  # a data set of the datasets library: named columns, as in JSON lines
        table = load_table(path, [str(c) for cols in wanted.values() for c in cols])
        return [(table.source(i), {k: [cell(row[str(c)]) for c in v] for k, v in wanted.items()})
                for i, row in enumerate(table.rows)]
    path = Path(path)
    if delimiter is None:
        delimiter = DELIMITERS.get(path.suffix.lower())
        if delimiter is None:
            raise PretuneError(f"{path}: cannot tell the delimiter from extension {path.suffix!r}; use .tsv, .csv or .jsonl")
    text = read_text(path, encoding)
    if delimiter == "json":
        out = [(where(path, line), {k: [_json_field(obj, c, where(path, line)) for c in v] for k, v in wanted.items()})
               for line, obj in _json_rows(path, text)]
    else:
        out = _table_rows(path, text, wanted, header, delimiter, quoting, allow_extra_fields)
    if not out:
        raise PretuneError(f"{path}: no rows" + (" after the header" if header and delimiter != "json" else ""))
    return out


def _table_rows(
    path: Path, text: str, wanted: dict[str, list[Col]], header: bool, delimiter: str, quoting: int | None,
    allow_extra_fields: bool,
) -> list[tuple[str, dict[str, list[str]]]]:
    rows = _csv_rows(path, text, delimiter, quoting)
    names = None
    if header:
        first = next(rows, None)
        if first is None:
            raise PretuneError(f"{path}: file is empty")
        names = [f.strip() for f in first[1]]
    out: list[tuple[str, dict[str, list[str]]]] = []
    cols: dict[str, list[int]] = {}
    width = 0
    for line, fields in rows:
        src = where(path, line)
        if not cols:  # first data row: resolve the columns against the header (or this row's width)
            width = len(names) if names is not None else len(fields)
            cols = {k: [_resolve(c, names, width, path) for c in v] for k, v in wanted.items()}
        if len(fields) < width or (len(fields) > width and not allow_extra_fields):
            raise PretuneError(
                f"{src}: row has {len(fields)} fields, expected {width} (separated by {delimiter!r}); "
                f"a stray delimiter, a line break inside a field, or a missing column?"
            )
        out.append((src, {k: [fields[i] for i in v] for k, v in cols.items()}))
    return out


def header_names(path: str | Path, delimiter: str = "\t") -> list[str]:
    """The fields of a table's first line (to tell a file's layout)."""
    return read_text(path).split("\n", 1)[0].rstrip("\r").split(delimiter)


__all__ = ["Col", "Cols", "as_list", "header_names", "preview", "read_rows", "read_text", "split_list"]
