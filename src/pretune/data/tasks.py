"""Fine-tuning tasks: task families, example records, file readers and named recipes.

Five families, one reader each:

* ``classification`` (one sentence or a pair) and ``regression``: :func:`read_table` -> :class:`TextExample`
* ``multiple-choice``: :func:`read_table` with ``choice_cols`` -> :class:`ChoiceExample`
* ``qa`` (extractive, SQuAD v1.1 JSON): :func:`read_squad` -> :class:`QAExample`
* ``tagging`` (CoNLL columns): :func:`read_conll` -> :class:`TaggingExample`

Every example keeps ``source`` (``file:line``) so that later errors can point at the input. No
tokenization happens here. Classification labels stay strings; :func:`build_label_map` turns the
training labels into the class list and :func:`encode_labels` maps examples onto it.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import inspect
import io
import json
import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretune.errors import PretuneError, where

FAMILIES = ("classification", "regression", "multiple-choice", "qa", "tagging")

Col = int | str
Cols = Col | Sequence[Col]


@dataclass(frozen=True, slots=True)
class TextExample:
    """One sentence (or pair) with a class label (str), a score (float), or no label."""

    text: str
    text_pair: str | None
    label: str | float | None
    source: str


@dataclass(frozen=True, slots=True)
class ChoiceExample:
    """A context and candidate continuations; ``label`` is the 0-based index of the right one."""

    context: str
    choices: list[str]
    label: int | None
    source: str


@dataclass(frozen=True, slots=True)
class QAExample:
    """An extractive question; ``answers`` are ``(text, char_start)`` pairs into ``context``."""

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]
    source: str
    title: str = ""


@dataclass(frozen=True, slots=True)
class TaggingExample:
    """A tokenized sentence with one tag per token (``tags`` is None for unlabeled text)."""

    tokens: list[str]
    tags: list[str] | None
    source: str


Example = TextExample | ChoiceExample | QAExample | TaggingExample


# --------------------------------------------------------------------------------------------
# Shared helpers


def _read_text(path: str | Path, encoding: str) -> str:
    """Return a file's text; missing, unreadable, undecodable or empty files are PretuneErrors."""
    p = Path(path)
    if not p.is_file():
        raise PretuneError(f"{p}: file not found" + (" (it is a directory)" if p.is_dir() else ""))
    data = p.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PretuneError(
            f"{where(p, line)}: not valid {encoding} text ({e.reason}); set encoding"
        ) from None
    if not text.strip():
        raise PretuneError(f"{p}: file is empty")
    return text


def _preview(value: object, n: int = 40) -> str:
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def _check_fraction(fraction: float, setting: str) -> None:
    if not 0.0 < fraction < 1.0:
        raise PretuneError(f"{setting}={fraction} must be between 0 and 1 (exclusive)")


# --------------------------------------------------------------------------------------------
# Tables: classification, regression, multiple-choice

_DELIMITERS = {".tsv": "\t", ".txt": "\t", ".csv": ",", ".jsonl": "json"}


def _rows(path: Path, text: str, delimiter: str, quoting: int | None):
    """Yield ``(line, fields)`` for each non-blank record; fields is a list, or a dict for JSON lines."""
    if delimiter == "json":
        for i, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise PretuneError(f"{where(path, i)}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, (dict, list)):
                raise PretuneError(
                    f"{where(path, i)}: expected a JSON object or array, got {type(obj).__name__}"
                )
            yield i, obj
        return
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
            f"{path}: column {col!r} given by name but the file has no header; "
            f"give a 0-based index or set header=True"
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


def _as_list(cols: Cols | None) -> list[Col]:
    if cols is None:
        return []
    return [cols] if isinstance(cols, (int, str)) else list(cols)


def read_table(
    path: str | Path,
    *,
    text_col: Cols | None = None,
    text_pair_col: Col | None = None,
    label_col: Col | None = None,
    choice_cols: Sequence[Col] | None = None,
    context_col: Cols | None = None,
    header: bool = True,
    delimiter: str | None = None,
    quoting: int | None = None,
    encoding: str = "utf-8-sig",
    family: str = "classification",
    allow_extra_fields: bool = False,
    choice_label_base: int = 0,
) -> list[Any]:
    """Read a TSV/CSV/JSONL table into :class:`TextExample` (or :class:`ChoiceExample`) records.

    Columns are names (with ``header``) or 0-based indexes (ints or digit strings); JSON lines use
    keys. ``text_col`` / ``context_col`` may list several columns, joined with single spaces.
    ``delimiter`` defaults from the extension (.tsv/.txt: tab, .csv: comma, .jsonl: JSON lines);
    TSV ignores quotes (``QUOTE_NONE``), CSV uses normal quoting. A row may have more fields than
    the header (or the first row) only with ``allow_extra_fields``. ``family`` is classification
    (labels kept as strings), regression (float labels) or multiple-choice (``choice_cols``; the
    label is a choice number counted from ``choice_label_base``). ``label_col=None``: unlabeled.
    """
    path = Path(path)
    mc = family == "multiple-choice"
    if family not in ("classification", "regression", "multiple-choice"):
        raise PretuneError(f"read_table reads classification, regression or multiple-choice, not {family!r}")
    if delimiter is None:
        delimiter = _DELIMITERS.get(path.suffix.lower())
        if delimiter is None:
            raise PretuneError(
                f"{path}: cannot tell the delimiter from extension {path.suffix!r}; set delimiter"
            )
    text_cols = _as_list(context_col if mc and context_col is not None else text_col)
    if not text_cols:
        raise PretuneError(
            f"{family} needs {'context_col' if mc else 'text_col'}: the column(s) holding the text"
        )
    if mc and len(_as_list(choice_cols)) < 2:
        raise PretuneError(
            "multiple-choice needs choice_cols: two or more columns holding the candidate answers"
        )
    wanted = {
        "text": text_cols,
        "pair": _as_list(text_pair_col),
        "label": _as_list(label_col),
        "choices": _as_list(choice_cols),
    }
    rows = _rows(path, _read_text(path, encoding), delimiter, quoting)
    names = None
    if delimiter != "json" and header:
        first = next(rows, None)
        if first is None:
            raise PretuneError(f"{path}: file is empty")
        names = [f.strip() for f in first[1]]
    examples: list[Any] = []
    cols: dict[str, list[int]] = {}
    width = 0
    for line, fields in rows:
        src = where(path, line)
        if delimiter == "json":
            row = {k: [_json_field(fields, c, src) for c in v] for k, v in wanted.items()}
        else:
            if not cols:  # first data row: resolve the columns against the header (or this row's width)
                width = len(names) if names is not None else len(fields)
                cols = {k: [_resolve(c, names, width, path) for c in v] for k, v in wanted.items()}
            if len(fields) < width or (len(fields) > width and not allow_extra_fields):
                raise PretuneError(
                    f"{src}: row has {len(fields)} fields, expected {width} (separated by {delimiter!r}); "
                    f"a stray delimiter, a line break inside a field, or a missing column?"
                )
            row = {k: [fields[i] for i in v] for k, v in cols.items()}
        examples.append(_make_example(family, row, src, choice_label_base))
    if not examples:
        raise PretuneError(f"{path}: no rows" + (" after the header" if names is not None else ""))
    return examples


def _make_example(family: str, row: dict[str, list[str]], src: str, base: int) -> Any:
    """Build one example from the selected fields of a row."""
    text = " ".join(row["text"])
    raw = row["label"][0].strip() if row["label"] else None
    if family == "multiple-choice":
        choices, label = row["choices"], None
        if raw is not None:
            label = int(raw) - base if raw.lstrip("-").isdigit() else -1
            if not 0 <= label < len(choices):
                raise PretuneError(
                    f"{src}: label {_preview(raw)} is not a choice number {base}..{base + len(choices) - 1} "
                    f"(set choice_label_base if choices are counted from {1 - base})"
                )
        return ChoiceExample(text, choices, label, src)
    pair = row["pair"][0] if row["pair"] else None
    label: str | float | None = raw
    if raw is not None and family == "regression":
        try:
            label = float(raw)
        except ValueError:
            label = math.nan
        if not math.isfinite(label):
            raise PretuneError(f"{src}: regression label {_preview(raw)} is not a number")
    elif raw == "":
        raise PretuneError(f"{src}: empty label")
    return TextExample(text, pair, label, src)


def _label_key(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def build_label_map(examples: Sequence[TextExample]) -> list[str]:
    """The sorted class labels seen in ``examples`` (numbers sorted numerically); index = class id."""
    labels = {e.label for e in examples if e.label is not None}
    if not labels:
        raise PretuneError("no labels in the training data: set label_col to the column with the classes")
    bad = next((e for e in examples if e.label is not None and not isinstance(e.label, str)), None)
    if bad is not None:
        raise PretuneError(
            f"{bad.source}: label {bad.label!r} is not a class name; is this a regression task?"
        )
    return sorted(labels, key=_label_key)


def encode_labels(examples: Sequence[TextExample], labels: list[str]) -> list[int]:
    """Map each example's label to its index in ``labels`` (from :func:`build_label_map`)."""
    ids = {label: i for i, label in enumerate(labels)}
    out = []
    for e in examples:
        if e.label is None:
            raise PretuneError(f"{e.source}: example has no label; set label_col")
        if e.label not in ids:
            raise PretuneError(f"label {e.label!r} at {e.source} was not in the training labels {labels}")
        out.append(ids[e.label])
    return out


# --------------------------------------------------------------------------------------------
# Extractive QA: SQuAD v1.1 JSON


def read_squad(path: str | Path, *, train: bool = False) -> list[QAExample]:
    """Read SQuAD v1.1 JSON (``data[].paragraphs[].qas[]``), checking every answer offset.

    An answer whose ``context[start:start + len(text)]`` differs from its text is dropped, with one
    warning giving the count; with ``train=True`` questions left without answers are dropped too.
    If every answer is bad the file is rejected.
    """
    path = Path(path)
    text = _read_text(path, "utf-8-sig")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PretuneError(f"{where(path, e.lineno)}: not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise PretuneError(f"{path}: not SQuAD v1.1 JSON: expected an object with a 'data' list of articles")
    examples: list[QAExample] = []
    total = bad = dropped = 0
    try:
        for a, article in enumerate(doc["data"]):
            title = str(article.get("title", f"article {a}"))
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    qid = str(qa["id"])
                    answers = []
                    for ans in qa.get("answers", []):
                        total += 1
                        start, ans_text = int(ans["answer_start"]), ans["text"]
                        if start >= 0 and context[start : start + len(ans_text)] == ans_text:
                            answers.append((ans_text, start))
                        else:
                            bad += 1
                    if train and not answers:
                        dropped += 1
                        continue
                    examples.append(
                        QAExample(qid, qa["question"], context, answers, f"{path} (question {qid})", title)
                    )
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise PretuneError(f"{path}: not SQuAD v1.1 JSON: missing or malformed field {e}") from None
    if total and bad == total:
        raise PretuneError(
            f"{path}: all {total} answers have answer_start offsets that do not match their text "
            f"(expected character offsets into the context)"
        )
    if train and total == 0:
        raise PretuneError(
            f"{path}: no answers found; training needs 'answers' with 'text' and 'answer_start'"
        )
    if bad:
        warnings.warn(
            f"{path}: skipped {bad} of {total} answers whose text does not match context[answer_start:]"
            + (f" ({dropped} questions left without an answer were dropped)" if dropped else ""),
            stacklevel=2,
        )
    if not examples:
        raise PretuneError(f"{path}: no questions found")
    return examples


def split_squad_by_article(
    path_or_examples: str | Path | Sequence[QAExample], dev_fraction: float, seed: int = 0
) -> tuple[list[QAExample], list[QAExample]]:
    """Split QA examples into ``(train, dev)`` by article title, so no article is in both.

    Titles are shuffled with ``seed`` and moved to dev until it holds ``dev_fraction`` of the
    questions (at least one article on each side). Both parts keep the original order.
    """
    _check_fraction(dev_fraction, "dev_fraction")
    examples = (
        read_squad(path_or_examples) if isinstance(path_or_examples, (str, Path)) else list(path_or_examples)
    )
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.title] = counts.get(e.title, 0) + 1
    if len(counts) < 2:
        raise PretuneError(f"cannot split by article: only {len(counts)} article title(s); need two or more")
    titles = sorted(counts)
    random.Random(seed).shuffle(titles)
    dev_titles: set[str] = set()
    target, n = dev_fraction * len(examples), 0
    for t in titles[:-1]:
        if n >= target and dev_titles:
            break
        dev_titles.add(t)
        n += counts[t]
    return [e for e in examples if e.title not in dev_titles], [e for e in examples if e.title in dev_titles]


# --------------------------------------------------------------------------------------------
# Tagging: CoNLL columns


def read_conll(
    path: str | Path, token_col: int = 0, tag_col: int | None = -1, *, encoding: str = "utf-8-sig"
) -> list[TaggingExample]:
    """Read CoNLL-style tagging data: one ``token<TAB>tag`` (or whitespace-separated) line per token.

    A blank line ends a sentence; ``-DOCSTART-`` lines and comment lines starting with ``#`` are
    skipped (a ``#`` token in a tab-separated file, ``#<TAB>tag``, is kept). ``tag_col=None`` reads
    untagged tokens. Every token line must have the same number of fields.
    """
    path = Path(path)
    text = _read_text(path, encoding)
    examples: list[TaggingExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    width: int | None = None
    need = 1 if tag_col is None else 2

    def flush() -> None:
        if tokens:
            examples.append(
                TaggingExample(list(tokens), None if tag_col is None else list(tags), where(path, start))
            )
            tokens.clear()
            tags.clear()

    for i, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.startswith("-DOCSTART-"):
            flush()
            continue
        if line.startswith("#") and not line.startswith("#\t"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        width = width or len(fields)
        cols = [c if c >= 0 else len(fields) + c for c in (token_col, tag_col) if c is not None]
        if len(fields) < need or len(fields) != width or any(not 0 <= c < len(fields) for c in cols):
            raise PretuneError(
                f"{where(path, i)}: malformed line {_preview(line)}: expected {width if width >= need else need} "
                f"fields (token and tag separated by a tab or spaces), found {len(fields)}"
            )
        if not tokens:
            start = i
        tokens.append(fields[token_col])
        if tag_col is not None:
            tags.append(fields[tag_col])
    flush()
    if not examples:
        raise PretuneError(f"{path}: no sentences found")
    return examples


# --------------------------------------------------------------------------------------------
# Splits


def split_examples(examples: Sequence[Any], fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Deterministically split into ``(rest, held_out)`` with ``fraction`` held out (original order kept)."""
    _check_fraction(fraction, "fraction")
    n = len(examples)
    if n < 2:
        raise PretuneError(f"cannot split {n} example(s); need at least two")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[: min(n - 1, max(1, round(fraction * n)))])
    rest = [e for i, e in enumerate(examples) if i not in held]
    return rest, [e for i, e in enumerate(examples) if i in held]


# --------------------------------------------------------------------------------------------
# Recipes


@dataclass(frozen=True)
class Recipe:
    """A named task: its family, how to read its files, and how to score it."""

    name: str
    family: str
    reader: Callable[..., list]  # reader(path) -> list[Example]; a functools.partial over a read_* function
    metric_names: list[str]
    main_metric: str
    num_labels: int | None = None  # None: from the training data (classes, or choices per example)
    description: str = ""
    label_names: list[str] | None = None  # class id -> label string as it appears in the files

    def __post_init__(self) -> None:
        assert self.family in FAMILIES and self.main_metric in self.metric_names, self.name


def read_stsb(path: str | Path) -> list[TextExample]:
    """STS-B: GLUE's ``*.tsv`` (header with sentence1/sentence2/score) or the STS Benchmark
    originals ``sts-*.tsv`` (no header; score, s1, s2 in columns 4, 5, 6; extra trailing columns)."""
    first = _read_text(path, "utf-8-sig").split("\n", 1)[0].split("\t")
    if "sentence1" in first:
        return read_table(
            path,
            text_col="sentence1",
            text_pair_col="sentence2",
            family="regression",
            label_col="score" if "score" in first else None,
            allow_extra_fields=True,
        )
    return read_table(
        path,
        header=False,
        text_col=5,
        text_pair_col=6,
        label_col=4,
        family="regression",
        allow_extra_fields=True,
        delimiter="\t",
    )


def _table(**kw: Any) -> functools.partial:
    return functools.partial(read_table, **kw)


_STORY = [f"InputSentence{i}" for i in range(1, 5)]
_PAIR = {"text_col": "sentence1", "text_pair_col": "sentence2"}
_ACC, _CORR = ["accuracy"], ["pearson", "spearman"]

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        # Named recipes for the data sets in ../shared/data (see its README for sources and sizes).
        Recipe("nsmc", "classification", _table(text_col="document", label_col="label"), _ACC, "accuracy",
               num_labels=2, label_names=["0", "1"],
               description="NSMC movie-review sentiment (Korean), id/document/label; 0 negative, 1 positive"),
        Recipe("kornli", "classification", _table(**_PAIR, label_col="gold_label"), _ACC, "accuracy",
               num_labels=3, label_names=["contradiction", "entailment", "neutral"],
               description="KorNLI premise/hypothesis (Korean), sentence1/sentence2/gold_label"),
        Recipe("korsts", "regression", _table(**_PAIR, label_col="score", family="regression"), _CORR,
               "spearman", num_labels=1,
               description="KorSTS similarity (Korean), score 0-5 with sentence1/sentence2"),
        Recipe("cola", "classification", _table(header=False, text_col=3, label_col=1), ["mcc", "accuracy"],
               "mcc", num_labels=2, label_names=["0", "1"],
               description="CoLA acceptability, no header: source, label, mark, sentence; 1 acceptable"),
        Recipe("stsb", "regression", functools.partial(read_stsb), _CORR, "pearson", num_labels=1,
               description="STS-B similarity 0-5: GLUE tsv (header) or the STS Benchmark sts-*.tsv"),
        Recipe("mrpc", "classification",
               _table(text_col="#1 String", text_pair_col="#2 String", label_col="Quality", delimiter="\t"),
               ["accuracy", "f1"], "f1", num_labels=2, label_names=["0", "1"],
               description="MRPC paraphrase pairs (msr_paraphrase_*.txt or GLUE tsv); 1 paraphrase"),
        Recipe("storycloze", "multiple-choice",
               _table(family="multiple-choice", context_col=_STORY, label_col="AnswerRightEnding",
                      choice_cols=["RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2"], choice_label_base=1),
               _ACC, "accuracy", num_labels=2,
               description="Story Cloze: four-sentence story, pick ending 1 or 2"),
        Recipe("korquad", "qa", functools.partial(read_squad), ["exact_match", "f1", "char_f1"], "f1",
               description="KorQuAD 1.0 (SQuAD v1.1 JSON); char_f1 is KorQuAD's own character-level F1"),
        # Generic recipes: point them at your own columns with get_recipe(name, text_col=...).
        Recipe("classification", "classification", _table(text_col="text", label_col="label"), _ACC,
               "accuracy", description="any table: text_col [text_pair_col] label_col (class names)"),
        Recipe("regression", "regression", _table(text_col="text", label_col="label", family="regression"),
               _CORR, "spearman", num_labels=1, description="any table: text_col [text_pair_col] label_col (numbers)"),
        Recipe("multiple-choice", "multiple-choice",
               _table(family="multiple-choice", context_col="context", label_col="label"), _ACC, "accuracy",
               description="any table: context_col, choice_cols, label_col (choice index from choice_label_base)"),
        Recipe("qa", "qa", functools.partial(read_squad), ["exact_match", "f1"], "f1",
               description="SQuAD v1.1 JSON extractive QA"),
        Recipe("tagging", "tagging", functools.partial(read_conll), ["precision", "recall", "f1"], "f1",
               description="CoNLL token<TAB>tag lines, blank line between sentences; entity-level scores"),
    ]
}  # fmt: skip


def get_recipe(name: str, **column_overrides: Any) -> Recipe:
    """Look up a recipe by name, optionally overriding its reader's arguments.

    ``column_overrides`` are keyword arguments of the recipe's reader (``read_table``, ``read_squad``,
    ``read_conll``), e.g. ``get_recipe("classification", text_col="review", label_col="stars")``;
    ``None`` values are ignored so that unset CLI options can be passed straight through.
    """
    if name not in RECIPES:
        raise PretuneError(f"unknown task {name!r}; choose one of {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    overrides = {k: v for k, v in column_overrides.items() if v is not None}
    if not overrides:
        return recipe
    base = recipe.reader
    params = [p for p in inspect.signature(base.func).parameters if p != "path"]
    unknown = sorted(set(overrides) - set(params))
    if unknown:
        raise PretuneError(
            f"task {name!r} does not take {', '.join(unknown)}; its settings are {', '.join(params)}"
        )
    reader = functools.partial(base.func, *base.args, **{**base.keywords, **overrides})
    return dataclasses.replace(recipe, reader=reader)
