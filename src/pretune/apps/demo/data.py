"""The demo's data: NSMC read with the library's ``nsmc`` recipe, cut into label budgets, a
validation slice and a fixed test sample, written as TSV files the recipe reads back."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pretune.apps.demo.settings import DemoSettings
from pretune.data.corpus import iter_lines
from pretune.data.download import require
from pretune.errors import PretuneError
from pretune.io import atomic_path, write_text
from pretune.tasks import RECIPES
from pretune.tasks.classification import TextExample


def nsmc_files(root: Path) -> dict[str, Path]:
    """The NSMC files (or a one-line error naming the download command)."""
    files = {"unlabeled": root / "nsmc" / "unlabeled.txt.gz", "train": root / "nsmc" / "train.tsv", "test": root / "nsmc" / "test.tsv"}
    for path in files.values():
        require(path, "nsmc")
    return files


def reviews(path: Path) -> list[TextExample]:
    """The labelled reviews of an NSMC file that have text."""
    return [e for e in RECIPES["nsmc"].read(path) if e.text.strip()]


def write_tsv(path: Path, rows: Sequence[TextExample]) -> Path:
    """Reviews in NSMC's own layout (id, document, label); the id is the source line."""
    lines = ["id\tdocument\tlabel"] + [f"{e.source.rsplit(':', 1)[-1]}\t{e.text}\t{e.label}" for e in rows]
    return write_text(path, "\n".join(lines) + "\n")


def make_splits(files: dict[str, Path], work: Path, s: DemoSettings) -> dict[str, Any]:
    """Label budgets (nested samples of train.tsv), a validation slice and the fixed test sample."""
    train, test = reviews(files["train"]), reviews(files["test"])
    random.Random(s.seed).shuffle(train)
    val, pool = train[: s.validation_size], train[s.validation_size :]
    if max(s.budgets) > len(pool):
        raise PretuneError(f"a label budget of {max(s.budgets)} needs more than the {len(pool)} training reviews available")
    test_rows = test if s.full_test else random.Random(s.seed + 1).sample(test, min(s.test_sample, len(test)))
    return {
        "validation": write_tsv(work / "validation.tsv", val),
        "test": write_tsv(work / "test_sample.tsv", test_rows),
        "test_size": len(test_rows),
        "budgets": {n: write_tsv(work / f"train_{n}.tsv", pool[:n]) for n in s.budgets},
    }


def corpus_slice(path: Path, work: Path, lines: int | None) -> Path:
    """The corpus itself, or its first ``lines`` lines (ending at a document boundary)."""
    if lines is None:
        return path
    target = work / f"{path.name.split('.')[0]}_{lines}.txt"
    if not target.exists():
        with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as g:
            for number, line in iter_lines(path):
                if number > lines and not line.strip():
                    break
                g.write(line + "\n")
    return target


__all__ = ["corpus_slice", "make_splits", "nsmc_files", "reviews"]
