"""What every task family shares: the task spec saved with a model, the family protocol, features.

A *task family* (classification, regression, multiple choice, extractive QA, tagging) is one
module of ``pretune/tasks/`` holding everything specific to it: its example record and file
reader, the GPT-1 and BERT input layouts, the head's forward and loss, decoding, metrics and
prediction records. Each module defines one :class:`TaskFamily` subclass and registers it in
``tasks/__init__.py``; nothing outside ``tasks/`` compares a family name.

A :class:`TaskSpec` is what a fine-tuned model was trained for (recipe, family, labels, lengths,
metrics); it is saved as ``task`` in the model's ``config.json`` and read back with
:meth:`TaskSpec.from_dict`, which also reads the plain dicts of earlier versions.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from pretune.errors import PretuneError

Feature = dict[str, Any]
IGNORE = -100
PAIR_MODES = ("entailment", "similarity")


@dataclass
class TaskSpec:
    """A task as a fine-tuned model records it (``task`` in ``config.json``)."""

    recipe: str
    family: str
    metric_names: list[str]
    main_metric: str
    labels: list[str] | None = None  # class names (classification) or tag names (tagging)
    columns: dict[str, Any] = field(default_factory=dict)  # reader options the model was trained with
    max_seq_len: int = 512
    pair_mode: str = "entailment"  # GPT sentence pairs: one ordering, or both added (similarity)
    lm_coef: float = 0.0  # GPT: weight of the auxiliary LM loss; BERT: 0
    doc_stride: int = 128  # QA
    max_query_len: int = 64  # QA
    max_answer_len: int = 30  # QA
    qa_style: str = "squad"  # QA: whose official evaluation scores it (squad | korquad)
    head_dropout: float | None = None  # default: the model's dropout

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> TaskSpec:
        """Read a saved task (unknown keys are an error naming them; missing optional ones default)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PretuneError(f"{source}: unknown task field(s) {unknown}; valid: {sorted(names)}")
        missing = [n for n in ("recipe", "family", "metric_names", "main_metric") if n not in data]
        if missing:
            raise PretuneError(f"{source}: the task is missing field(s) {missing}")
        return cls(**data)

    def replace(self, **changes: Any) -> TaskSpec:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# --------------------------------------------------------------------------------------------
# Features and truncation bookkeeping


@dataclass
class FeatureSet:
    """Features built from examples, plus how many examples had to be truncated.

    ``features[i]["example"]`` is the index of the example a feature came from (QA makes several
    features per example: one per window).
    """

    features: list[Feature]
    n_examples: int
    truncated: int = 0
    truncated_sources: list[str] = field(default_factory=list)

    def report(self, what: str = "examples", setting: str = "--max-seq-len") -> None:
        """Warn with the count of truncated examples (nothing when none were)."""
        if self.truncated:
            first = f" (first: {self.truncated_sources[0]})" if self.truncated_sources else ""
            warnings.warn(
                f"{self.truncated:,} of {self.n_examples:,} {what} were longer than {setting} allows "
                f"and were truncated{first}; raise {setting} or pass --no-truncate to fail instead",
                stacklevel=2,
            )


class Cut:
    """Counts truncations; raises at the first one when truncation is not allowed."""

    def __init__(self, no_truncate: bool, max_len: int, setting: str = "--max-seq-len") -> None:
        self.no_truncate = no_truncate
        self.max_len = max_len
        self.setting = setting
        self.count = 0
        self.sources: list[str] = []

    def hit(self, source: str, length: int) -> None:
        if self.no_truncate:
            raise PretuneError(
                f"{source}: the input is {length} tokens, longer than {self.setting} {self.max_len} "
                f"allows; raise {self.setting} or drop --no-truncate to cut long inputs"
            )
        self.count += 1
        if len(self.sources) < 5:
            self.sources.append(source)

    def result(self, features: list[Feature], n_examples: int) -> FeatureSet:
        return FeatureSet(features, n_examples, self.count, self.sources)

    def ids(self, ids: list[int], budget: int, source: str, n_special: int) -> list[int]:
        """``ids`` cut to ``budget`` tokens (counted)."""
        if len(ids) > budget:
            self.hit(source, len(ids) + n_special)
            return ids[:budget]
        return ids

    def pair(
        self, a: list[int], b: list[int], budget: int, source: str, n_special: int, a_from_left: bool = False
    ) -> tuple[list[int], list[int]]:
        """``a`` and ``b`` cut to ``budget`` tokens together, longest first (counted)."""
        if len(a) + len(b) > budget:
            self.hit(source, len(a) + len(b) + n_special)
            return truncate_pair(a, b, budget, a_from_left=a_from_left)
        return a, b


def budget(max_seq_len: int, n_special: int) -> int:
    """Tokens left for the text once the special tokens of a layout are placed."""
    left = max_seq_len - n_special
    if left < 2:
        raise PretuneError(f"--max-seq-len {max_seq_len} is too small: it must leave room for the text")
    return left


def truncate_pair(a: list[int], b: list[int], budget: int, *, a_from_left: bool = False) -> tuple[list[int], list[int]]:
    """Cut ``a`` and ``b`` to ``budget`` tokens together, longest first (ties: cut ``b``).

    The same result as removing one token at a time from the longer sequence (BERT's
    ``_truncate_seq_pair``), computed directly. ``a_from_left`` cuts ``a`` at its start instead of
    its end (a multiple-choice context keeps the part next to the answer).
    """
    la, lb = len(a), len(b)
    excess = la + lb - budget
    if excess <= 0:
        return a, b
    if la > lb and la - excess >= lb:
        na, nb = la - excess, lb
    elif lb >= la and lb - excess >= la:
        na, nb = la, lb - excess
    else:
        na, nb = (budget + 1) // 2, budget // 2
    return (a[la - na :] if a_from_left else a[:na]), b[:nb]


def with_label(feature: Feature, label: Any) -> Feature:
    if label is not None:
        feature["label"] = label
    return feature


# --------------------------------------------------------------------------------------------
# Outputs


@dataclass
class Predictions:
    """Model outputs for a set of examples, decoded by their family."""

    values: Any  # class ids | scores | choice indexes | id -> (text, start, score) | tag lists
    probabilities: list[list[float]] | None = None


def split_examples(examples: Sequence[Any], fraction: float, seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Deterministically split into ``(rest, held_out)`` with ``fraction`` held out (original order kept)."""
    check_fraction(fraction, "--validation-split")
    n = len(examples)
    if n < 2:
        raise PretuneError(f"cannot split {n} example(s); need at least two")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[: min(n - 1, max(1, round(fraction * n)))])
    rest = [e for i, e in enumerate(examples) if i not in held]
    return rest, [e for i, e in enumerate(examples) if i in held]


def check_fraction(fraction: float, setting: str) -> None:
    if not 0.0 < fraction < 1.0:
        raise PretuneError(f"{setting} {fraction} must be between 0 and 1 (exclusive)")


# --------------------------------------------------------------------------------------------
# The family protocol


class TaskFamily:
    """What a task family provides. Subclasses override what is specific to them.

    Readers take ``(path, **options)`` (column names and the like, as in :class:`Recipe`) and
    return example records that keep ``source`` (``file:line``) for error messages.
    """

    name: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]  # the metrics it can compute
    per_token: ClassVar[bool] = False  # logits per token (variable width) rather than per example
    uses_pooler: ClassVar[bool] = False  # BERT: reads the pooled [CLS] state
    default_pair_mode: ClassVar[str] = "entailment"  # GPT-1's layout for sentence pairs

    # --- data ---------------------------------------------------------------------------
    def read(self, path: str | Path, options: dict[str, Any], *, train: bool = False) -> list[Any]:
        raise NotImplementedError

    def read_unlabeled(self, path: str | Path, options: dict[str, Any]) -> list[Any]:
        """The file read without its label column (for ``predict`` on unlabeled files)."""
        return self.read(path, {**options, "label_col": None})

    def option_names(self) -> list[str]:
        """Reader options a recipe or the command line may set."""
        raise NotImplementedError

    def is_labelled(self, examples: Sequence[Any]) -> bool:
        return all(e.label is not None for e in examples)

    def label_names(self, train: Sequence[Any], given: list[str] | None) -> list[str] | None:
        """Class or tag names from the training data (or the recipe's ``given`` ones)."""
        return None

    def split(self, examples: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
        """Training examples and a held-out validation part."""
        return split_examples(examples, fraction, seed)

    # --- model --------------------------------------------------------------------------
    def check_model(self, model_family: str) -> None:
        """Raise when a model family cannot do this task."""

    def head_outputs(self, spec: TaskSpec) -> int:
        raise NotImplementedError

    def head_dropout(self, default: float) -> float:
        return default

    def features(
        self, examples: Sequence[Any], spec: TaskSpec, tokenizer: Any, model_family: str, *,
        train: bool = False, no_truncate: bool = False,
    ) -> FeatureSet:
        """The input transformation of GPT-1 or BERT for these examples."""
        raise NotImplementedError

    def forward(self, model: Any, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """``(logits, task loss or None)`` from the body's hidden states (see :class:`TaskModel`)."""
        raise NotImplementedError

    def loss_items(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Token-level losses: the number of labelled tokens in ``batch`` (the trainer normalises
        by their global count). None: the loss is a mean over examples."""
        return None

    # --- outputs ------------------------------------------------------------------------
    def decode(self, spec: TaskSpec, examples: Sequence[Any], fs: FeatureSet, logits: list[Tensor]) -> Predictions:
        raise NotImplementedError

    def score(self, spec: TaskSpec, examples: Sequence[Any], preds: Predictions) -> dict[str, float | None]:
        raise NotImplementedError

    def records(self, spec: TaskSpec, examples: Sequence[Any], preds: Predictions) -> list[dict[str, Any]]:
        """One JSON-ready prediction record per example (``source`` first)."""
        raise NotImplementedError

    def scored_with(self, spec: TaskSpec) -> str:
        """Whose metric code scores this task, for the results files."""
        return "scikit-learn / scipy"


def softmax_predictions(logits: list[Tensor]) -> Predictions:
    """Argmax class / choice and the softmax probabilities of per-example logits."""
    probs = torch.stack(logits).float().softmax(-1)
    return Predictions(probs.argmax(-1).tolist(), probs.tolist())


__all__ = [
    "IGNORE", "PAIR_MODES", "Cut", "Feature", "FeatureSet", "Predictions", "TaskFamily", "TaskSpec",
    "budget", "check_fraction", "softmax_predictions", "split_examples", "truncate_pair", "with_label",
]
