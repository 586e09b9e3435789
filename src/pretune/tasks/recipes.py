"""Named recipes: a task family, the columns of the data set's files, and how it is scored.

A recipe is data. Adding a data set whose files a family already reads is one entry here; the
command line's column flags (``--text-col`` ...) override a recipe's options, and the generic
recipes (one per family) take them from the user.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretune.errors import PretuneError
from pretune.tasks.base import TaskSpec
from pretune.tasks.registry import get_family
from pretune.tasks.sources import is_dataset, with_split
from pretune.tasks.tables import header_names, split_list


@dataclass(frozen=True)
class Recipe:
    """A named task: its family, its reader options, and its metrics."""

    name: str
    family: str
    options: dict[str, Any]  # reader options: columns, header, delimiter, ...
    metric_names: tuple[str, ...]
    main_metric: str
    label_names: tuple[str, ...] | None = None  # class names as they appear in the files, in class-id order
    pair_mode: str | None = None  # GPT sentence pairs (None: the family's default)
    qa_style: str = "squad"  # QA: whose official evaluation scores it
    # reader options for files whose header does not name ``options["text_col"]`` (STS-B's originals)
    alternate: dict[str, Any] | None = None
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)  # options the user changed (saved with a model)

    def __post_init__(self) -> None:
        fam = get_family(self.family)
        assert self.main_metric in self.metric_names, self.name
        assert set(self.metric_names) <= set(fam.metric_names), self.name

    def read(self, path: str | Path, *, train: bool = False) -> list[Any]:
        """The examples of a file in this recipe's layout."""
        return get_family(self.family).read(path, self._options_for(path), train=train)

    def read_unlabeled(self, path: str | Path) -> list[Any]:
        """The examples of a file that may lack the label column (``predict``)."""
        return get_family(self.family).read_unlabeled(path, self._options_for(path))

    def _options_for(self, path: str | Path) -> dict[str, Any]:
        if self.alternate is not None and Path(path).is_file() and not is_dataset(path):
            if str(self.options.get("text_col")) not in header_names(path):
                return dict(self.alternate)
        return dict(self.options)

    def with_options(self, **overrides: Any) -> Recipe:
        """This recipe with some reader options replaced (``None`` values are ignored)."""
        given = {k: split_list(v) for k, v in overrides.items() if v is not None}
        if not given:
            return self
        valid = get_family(self.family).option_names()
        unknown = sorted(set(given) - set(valid))
        if unknown:
            shown = ", ".join(valid) if valid else "none"
            raise PretuneError(f"task {self.name!r} does not take {', '.join(unknown)}; its settings are {shown}")
        return dataclasses.replace(self, options={**self.options, **given}, alternate=None,
                                   overrides={**self.overrides, **given})

    @property
    def default_pair_mode(self) -> str:
        return self.pair_mode or get_family(self.family).default_pair_mode

    def spec(self, train: list[Any], **fields: Any) -> TaskSpec:
        """The task a model fine-tuned on ``train`` records: this recipe, the labels found in the
        training data (or the recipe's own), and ``fields`` (lengths, GPT settings)."""
        labels = get_family(self.family).label_names(train, list(self.label_names) if self.label_names else None)
        return TaskSpec(
            recipe=self.name, family=self.family, metric_names=list(self.metric_names),
            main_metric=self.main_metric, labels=labels, columns=dict(self.overrides), qa_style=self.qa_style,
            **fields,
        )


def read_examples(recipe: Recipe, path: str | Path, *, limit: int | None = None, train: bool = False,
                  unlabeled_ok: bool = False, split: str | None = None) -> list[Any]:
    """A task file's (or data set's) examples (the first ``limit`` when given); with ``unlabeled_ok``
    a file without the label column is read as unlabeled (``predict``). ``split``: the split to
    read from a data set of several that names none (``train`` for --train, ...)."""
    if limit is not None and limit < 1:
        raise PretuneError(f"--limit must be at least 1, got {limit}")
    path = with_split(path, split)
    try:
        examples = recipe.read(path, train=train)
    except PretuneError:
        if not unlabeled_ok:
            raise
        try:
            examples = recipe.read_unlabeled(path)
        except PretuneError:
            examples = recipe.read(path, train=train)  # raise the first error
    return examples[:limit] if limit is not None else examples


_PAIR = {"text_col": "sentence1", "text_pair_col": "sentence2"}
_STORY = [f"InputSentence{i}" for i in range(1, 5)]
_ACC, _CORR = ("accuracy",), ("pearson", "spearman")

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    # Named recipes for the data sets in ../shared/data (see its README for sources and sizes).
    Recipe("nsmc", "classification", {"text_col": "document", "label_col": "label"}, _ACC, "accuracy",
           label_names=("0", "1"),
           description="NSMC movie-review sentiment (Korean), id/document/label; 0 negative, 1 positive"),
    Recipe("kornli", "classification", {**_PAIR, "label_col": "gold_label"}, _ACC, "accuracy",
           label_names=("contradiction", "entailment", "neutral"),
           description="KorNLI premise/hypothesis (Korean), sentence1/sentence2/gold_label"),
    Recipe("korsts", "regression", {**_PAIR, "label_col": "score"}, _CORR, "spearman",
           description="KorSTS similarity (Korean), score 0-5 with sentence1/sentence2"),
    Recipe("cola", "classification", {"header": False, "text_col": 3, "label_col": 1}, ("mcc", "accuracy"), "mcc",
           label_names=("0", "1"),
           description="CoLA acceptability, no header: source, label, mark, sentence; 1 acceptable"),
    Recipe("stsb", "regression", {**_PAIR, "label_col": "score", "allow_extra_fields": True}, _CORR, "pearson",
           alternate={"header": False, "text_col": 5, "text_pair_col": 6, "label_col": 4,
                      "allow_extra_fields": True, "delimiter": "\t"},
           description="STS-B similarity 0-5: GLUE tsv (header) or the STS Benchmark sts-*.tsv"),
    Recipe("mrpc", "classification",
           {"text_col": "#1 String", "text_pair_col": "#2 String", "label_col": "Quality", "delimiter": "\t"},
           ("accuracy", "f1"), "f1", label_names=("0", "1"), pair_mode="similarity",
           description="MRPC paraphrase pairs (msr_paraphrase_*.txt or GLUE tsv); 1 paraphrase"),
    Recipe("storycloze", "multiple-choice",
           {"context_col": _STORY, "label_col": "AnswerRightEnding",
            "choice_cols": ["RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2"], "choice_label_base": 1},
           _ACC, "accuracy", description="Story Cloze: four-sentence story, pick ending 1 or 2"),
    Recipe("korquad", "qa", {}, ("exact_match", "f1"), "f1", qa_style="korquad",
           description="KorQuAD 1.0 (SQuAD v1.1 JSON), scored by KorQuAD 1.0's official evaluation"),
    # Generic recipes: point them at your own columns with the column flags.
    Recipe("classification", "classification", {"text_col": "text", "label_col": "label"}, _ACC, "accuracy",
           description="any table: text_col [text_pair_col] label_col (class names)"),
    Recipe("regression", "regression", {"text_col": "text", "label_col": "label"}, _CORR, "spearman",
           description="any table: text_col [text_pair_col] label_col (numbers)"),
    Recipe("multiple-choice", "multiple-choice", {"context_col": "context", "label_col": "label"}, _ACC,
           "accuracy", description="any table: context_col, choice_cols, label_col (choice index from choice_label_base)"),
    Recipe("qa", "qa", {}, ("exact_match", "f1"), "f1",
           description="SQuAD v1.1 JSON extractive QA, scored by SQuAD v1.1's official evaluation"),
    Recipe("tagging", "tagging", {}, ("precision", "recall", "f1"), "f1",
           description="CoNLL token<TAB>tag lines, blank line between sentences; entity-level scores"),
]}  # fmt: skip


def get_recipe(name: str, **options: Any) -> Recipe:
    """A recipe by name, with reader options overridden (``None`` values are ignored), e.g.
    ``get_recipe("classification", text_col="review", label_col="stars")``."""
    if name not in RECIPES:
        raise PretuneError(f"unknown task {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name].with_options(**options)


__all__ = ["RECIPES", "Recipe", "get_recipe", "read_examples"]

