"""Single-sentence and sentence-pair tasks: classification (classes) and regression (a score).

Layouts (GPT-1, Radford et al. 2018, figure 1; ``s`` start, ``$`` delim, ``e`` extract):

* GPT classification: ``s text e``; entailment (a pair): ``s premise $ hypothesis e``;
  similarity: both orderings ``s A $ B e`` and ``s B $ A e``, their extract states added
  before the linear head.
* BERT (Devlin et al. 2019, figure 4): ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]`` with
  segment ids 0 / 1; the head reads the pooled ``[CLS]`` state.

Classification labels stay strings in the examples; the sorted training labels (numbers sorted
numerically) are the classes. Metrics: accuracy, binary F1 (class "1"), Matthews correlation;
regression: Pearson and Spearman correlation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pretune import metrics as m
from pretune.errors import PretuneError
from pretune.tasks.base import (
    PAIR_MODES,
    Cut,
    FeatureSet,
    Predictions,
    TaskFamily,
    TaskSpec,
    budget,
    softmax_predictions,
    with_label,
)
from pretune.tasks.tables import Col, Cols, as_list, preview, read_rows


@dataclass(frozen=True, slots=True)
class TextExample:
    """One sentence (or pair) with a class label (str), a score (float), or no label."""

    text: str
    text_pair: str | None
    label: str | float | None
    source: str


TABLE_OPTIONS = ["text_col", "text_pair_col", "label_col", "header", "delimiter", "quoting", "encoding",
                 "allow_extra_fields"]


def read_table(
    path: str | Path,
    *,
    text_col: Cols | None = None,
    text_pair_col: Col | None = None,
    label_col: Col | None = None,
    regression: bool = False,
    **table: Any,
) -> list[TextExample]:
    """Read a TSV/CSV/JSONL table into :class:`TextExample` records.

    ``text_col`` may list several columns, joined with single spaces; ``label_col=None`` reads
    unlabeled rows. Regression labels must be numbers. ``table`` holds the layout options of
    :func:`pretune.tasks.tables.read_rows` (``header``, ``delimiter``, ``allow_extra_fields``, ...).
    """
    if not as_list(text_col):
        raise PretuneError("a text task needs --text-col: the column(s) holding the text")
    wanted = {"text": as_list(text_col), "pair": as_list(text_pair_col), "label": as_list(label_col)}
    return [_example(row, src, regression) for src, row in read_rows(path, wanted, **table)]


def _example(row: dict[str, list[str]], src: str, regression: bool) -> TextExample:
    raw = row["label"][0].strip() if row["label"] else None
    label: str | float | None = raw
    if raw is not None and regression:
        try:
            label = float(raw)
        except ValueError:
            label = math.nan
        if not math.isfinite(label):
            raise PretuneError(f"{src}: regression label {preview(raw)} is not a number")
    elif raw == "":
        raise PretuneError(f"{src}: empty label")
    return TextExample(" ".join(row["text"]), row["pair"][0] if row["pair"] else None, label, src)


def _label_key(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def build_label_map(examples: Sequence[TextExample]) -> list[str]:
    """The sorted class labels seen in ``examples`` (numbers sorted numerically); index = class id."""
    labels = {e.label for e in examples if e.label is not None}
    if not labels:
        raise PretuneError("no labels in the training data: set --label-col to the column with the classes")
    bad = next((e for e in examples if e.label is not None and not isinstance(e.label, str)), None)
    if bad is not None:
        raise PretuneError(f"{bad.source}: label {bad.label!r} is not a class name; is this a regression task?")
    return sorted(labels, key=_label_key)


def class_ids(examples: Sequence[TextExample], labels: list[str]) -> list[int | None]:
    """Each example's class index in ``labels`` (None when unlabeled); an unseen label is an error."""
    index = {name: i for i, name in enumerate(labels)}
    out: list[int | None] = []
    for e in examples:
        if e.label is not None and e.label not in index:
            raise PretuneError(
                f"{e.source}: label {e.label!r} was never seen in the training data (training labels: {labels})"
            )
        out.append(None if e.label is None else index[e.label])
    return out


# --------------------------------------------------------------------------------------------
# Input layouts


def gpt_features(tok: Any, examples: Sequence[TextExample], targets: list[Any], max_seq_len: int,
                 pair_mode: str, no_truncate: bool) -> FeatureSet:
    """GPT-1: ``s text e``; a pair as ``s A $ B e`` (entailment) or both orderings (similarity)."""
    if pair_mode not in PAIR_MODES:
        raise PretuneError(f"--pair-mode must be one of {', '.join(PAIR_MODES)}, got {pair_mode!r}")
    pairs = [e.text_pair is not None for e in examples]
    if any(pairs) and not all(pairs):
        raise PretuneError("some examples have a second text and some do not; check --text-pair-col")
    start, delim, extract = tok.start_id, tok.delim_id, tok.extract_id
    cut = Cut(no_truncate, max_seq_len)
    a_ids = tok.encode_batch([e.text for e in examples])
    b_ids = tok.encode_batch([e.text_pair for e in examples]) if all(pairs) and examples else [None] * len(examples)
    feats = []
    for i, (e, a, b, y) in enumerate(zip(examples, a_ids, b_ids, targets)):
        if b is None:
            ids: Any = [start, *cut.ids(a, budget(max_seq_len, 2), e.source, 2), extract]
        else:
            a, b = cut.pair(a, b, budget(max_seq_len, 3), e.source, 3)
            ids = [start, *a, delim, *b, extract]
            if pair_mode == "similarity":
                ids = [ids, [start, *b, delim, *a, extract]]
        feats.append(with_label({"input_ids": ids, "example": i}, y))
    return cut.result(feats, len(examples))


def bert_features(tok: Any, examples: Sequence[TextExample], targets: list[Any], max_seq_len: int,
                  no_truncate: bool) -> FeatureSet:
    """BERT: ``[CLS] A [SEP]`` (segment 0) or ``[CLS] A [SEP] B [SEP]`` (B and its [SEP] in segment 1)."""
    cls, sep = tok.cls_id, tok.sep_id
    cut = Cut(no_truncate, max_seq_len)
    a_ids = tok.encode_batch([e.text for e in examples])
    pairs = any(e.text_pair is not None for e in examples)
    b_ids = tok.encode_batch([e.text_pair or "" for e in examples]) if pairs else [None] * len(examples)
    feats = []
    for i, (e, a, b, y) in enumerate(zip(examples, a_ids, b_ids, targets)):
        if e.text_pair is None:
            a = cut.ids(a, budget(max_seq_len, 2), e.source, 2)
            ids, types = [cls, *a, sep], [0] * (len(a) + 2)
        else:
            a, b = cut.pair(a, b, budget(max_seq_len, 3), e.source, 3)
            ids, types = [cls, *a, sep, *b, sep], [0] * (len(a) + 2) + [1] * (len(b) + 1)
        feats.append(with_label({"input_ids": ids, "token_type_ids": types, "example": i}, y))
    return cut.result(feats, len(examples))


# --------------------------------------------------------------------------------------------
# The families


class Classification(TaskFamily):
    """Classes of one sentence or a pair: NSMC, KorNLI, CoLA, MRPC, any labelled table."""

    name = "classification"
    metric_names = ("accuracy", "f1", "mcc")
    uses_pooler = True
    regression = False

    def read(self, path: str | Path, options: dict[str, Any], *, train: bool = False) -> list[TextExample]:
        return read_table(path, regression=self.regression, **options)

    def option_names(self) -> list[str]:
        return list(TABLE_OPTIONS)

    def label_names(self, train: Sequence[TextExample], given: list[str] | None) -> list[str] | None:
        return list(given) if given else build_label_map(train)

    def head_outputs(self, spec: TaskSpec) -> int:
        if not spec.labels:
            raise PretuneError("a classification task needs its class names (labels) in the task settings")
        return len(spec.labels)

    def targets(self, examples: Sequence[TextExample], spec: TaskSpec) -> list[Any]:
        return class_ids(examples, spec.labels or [])

    def features(self, examples, spec, tokenizer, model_family, *, train=False, no_truncate=False) -> FeatureSet:
        targets = self.targets(examples, spec)
        if model_family == "gpt":
            return gpt_features(tokenizer, examples, targets, spec.max_seq_len, spec.pair_mode, no_truncate)
        return bert_features(tokenizer, examples, targets, spec.max_seq_len, no_truncate)

    def forward(self, model: Any, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        rep = model.sentence_rep(hidden, batch)
        if rep.dim() == 3:  # GPT similarity: the two orderings' extract states, added
            rep = rep.sum(1)
        logits = model.head(rep)
        return self._loss(logits, batch.get("labels"))

    def _loss(self, logits: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return logits, None if labels is None else F.cross_entropy(logits.float(), labels)

    def decode(self, spec, examples, fs, logits) -> Predictions:
        return softmax_predictions(logits)

    def gold(self, spec: TaskSpec, examples: Sequence[TextExample]) -> list[Any]:
        return self.targets(examples, spec)

    def score(self, spec, examples, preds) -> dict[str, float | None]:
        gold = self.gold(spec, examples)
        return {name: m.LABEL_METRICS[name](preds.values, gold) for name in spec.metric_names}

    def records(self, spec, examples, preds) -> list[dict[str, Any]]:
        labels = spec.labels or []
        return [
            {"source": e.source, "label": labels[k],
             "probabilities": {name: round(p, 6) for name, p in zip(labels, probs)}}
            for e, k, probs in zip(examples, preds.values, preds.probabilities or [])
        ]


class Regression(Classification):
    """A score for a sentence pair (or one sentence): STS-B, KorSTS; Pearson and Spearman."""

    name = "regression"
    metric_names = ("pearson", "spearman")
    regression = True
    default_pair_mode = "similarity"  # a symmetric score: both orderings, added (GPT-1)

    def label_names(self, train, given) -> None:
        return None

    def head_outputs(self, spec: TaskSpec) -> int:
        return 1

    def targets(self, examples: Sequence[TextExample], spec: TaskSpec) -> list[Any]:
        return [None if e.label is None else float(e.label) for e in examples]

    def _loss(self, logits: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        scores = logits.squeeze(-1)
        return scores, None if labels is None else F.mse_loss(scores.float(), labels.float())

    def decode(self, spec, examples, fs, logits) -> Predictions:
        return Predictions(torch.stack(logits).float().tolist())

    def records(self, spec, examples, preds) -> list[dict[str, Any]]:
        return [{"source": e.source, "score": score} for e, score in zip(examples, preds.values)]


__all__ = [
    "Classification", "Regression", "TextExample", "bert_features", "build_label_map", "class_ids",
    "gpt_features", "read_table",
]
