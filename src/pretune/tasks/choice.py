"""Multiple choice: a context and candidate answers, one sequence per answer, softmax across them.

Layouts: GPT-1 ``s context $ answer_k e`` and BERT ``[CLS] context [SEP] answer_k [SEP]`` for each
choice k. Each sequence gets one score from the head (GPT: at the extract token; BERT: the pooled
``[CLS]``); the scores of an example's sequences go through one softmax. A context too long for a
sequence loses its beginning, the part farthest from the answer. Metric: accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from pretune import metrics as m
from pretune.errors import PretuneError
from pretune.tasks.base import (
    Cut,
    FeatureSet,
    Predictions,
    TaskFamily,
    TaskSpec,
    budget,
    softmax_predictions,
    truncate_pair,
    with_label,
)
from pretune.tasks.tables import Col, Cols, as_list, preview, read_rows


@dataclass(frozen=True, slots=True)
class ChoiceExample:
    """A context and candidate continuations; ``label`` is the 0-based index of the right one."""

    context: str
    choices: list[str]
    label: int | None
    source: str


def read_choices(
    path: str | Path,
    *,
    context_col: Cols | None = None,
    choice_cols: Sequence[Col] | None = None,
    label_col: Col | None = None,
    choice_label_base: int = 0,
    **table: Any,
) -> list[ChoiceExample]:
    """Read a table into :class:`ChoiceExample` records.

    ``context_col`` may list several columns (joined with spaces); ``choice_cols`` names two or
    more answer columns; the label is a choice number counted from ``choice_label_base``.
    """
    if not as_list(context_col):
        raise PretuneError("multiple-choice needs --context-col: the column(s) holding the context")
    if len(as_list(choice_cols)) < 2:
        raise PretuneError("multiple-choice needs --choice-cols: two or more columns holding the candidate answers")
    wanted = {"text": as_list(context_col), "choices": as_list(choice_cols), "label": as_list(label_col)}
    return [_example(row, src, choice_label_base) for src, row in read_rows(path, wanted, **table)]


def _example(row: dict[str, list[str]], src: str, base: int) -> ChoiceExample:
    choices, label = row["choices"], None
    raw = row["label"][0].strip() if row["label"] else None
    if raw is not None:
        label = int(raw) - base if raw.lstrip("-").isdigit() else -1
        if not 0 <= label < len(choices):
            raise PretuneError(
                f"{src}: label {preview(raw)} is not a choice number {base}..{base + len(choices) - 1} "
                f"(set choice_label_base if choices are counted from {1 - base})"
            )
    return ChoiceExample(" ".join(row["text"]), choices, label, src)


def choice_features(tok: Any, examples: Sequence[ChoiceExample], max_seq_len: int, no_truncate: bool,
                    first: list[int], middle: list[int], last: list[int], segments: bool) -> FeatureSet:
    """``first context middle answer_k last`` for each choice k (segments: BERT's 0 / 1 ids)."""
    n_special = len(first) + len(middle) + len(last)
    room, cut = budget(max_seq_len, n_special), Cut(no_truncate, max_seq_len)
    contexts = tok.encode_batch([e.context for e in examples])
    answers = tok.encode_batch([c for e in examples for c in e.choices])
    feats, k = [], 0
    for i, (e, ctx) in enumerate(zip(examples, contexts)):
        seqs, types = [], []
        for ans in answers[k : k + len(e.choices)]:
            if len(ctx) + len(ans) > room and not seqs:
                cut.hit(e.source, len(ctx) + len(ans) + n_special)  # counted once per example
            c, a = truncate_pair(ctx, ans, room, a_from_left=True)
            seqs.append([*first, *c, *middle, *a, *last])
            types.append([0] * (len(first) + len(c) + len(middle)) + [1] * (len(a) + len(last)))
        k += len(e.choices)
        feat = {"input_ids": seqs, "example": i}
        if segments:
            feat["token_type_ids"] = types
        feats.append(with_label(feat, e.label))
    return cut.result(feats, len(examples))


class MultipleChoice(TaskFamily):
    """Pick one of several answers: Story Cloze, any table with choice columns."""

    name = "multiple-choice"
    metric_names = ("accuracy",)
    uses_pooler = True

    def read(self, path: str | Path, options: dict[str, Any], *, train: bool = False) -> list[ChoiceExample]:
        return read_choices(path, **options)

    def option_names(self) -> list[str]:
        return ["context_col", "choice_cols", "label_col", "choice_label_base", "header", "delimiter", "quoting",
                "encoding", "allow_extra_fields"]

    def head_outputs(self, spec: TaskSpec) -> int:
        return 1  # one score per sequence

    def features(self, examples, spec, tokenizer, model_family, *, train=False, no_truncate=False) -> FeatureSet:
        if model_family == "gpt":
            tok = tokenizer
            return choice_features(tok, examples, spec.max_seq_len, no_truncate,
                                   [tok.start_id], [tok.delim_id], [tok.extract_id], segments=False)
        return choice_features(tokenizer, examples, spec.max_seq_len, no_truncate,
                               [tokenizer.cls_id], [tokenizer.sep_id], [tokenizer.sep_id], segments=True)

    def forward(self, model: Any, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        rep = model.sentence_rep(hidden, batch)  # (b, n, h): one state per choice
        logits = model.head(rep).squeeze(-1)  # (b, n): one score per choice
        labels = batch.get("labels")
        return logits, None if labels is None else F.cross_entropy(logits.float(), labels)

    def decode(self, spec, examples, fs, logits) -> Predictions:
        return softmax_predictions(logits)

    def score(self, spec, examples, preds) -> dict[str, float | None]:
        gold = [e.label for e in examples]
        return {name: m.LABEL_METRICS[name](preds.values, gold) for name in spec.metric_names}

    def records(self, spec, examples, preds) -> list[dict[str, Any]]:
        return [
            {"source": e.source, "choice": k, "answer": e.choices[k], "probabilities": [round(p, 6) for p in probs]}
            for e, k, probs in zip(examples, preds.values, preds.probabilities or [])
        ]


__all__ = ["ChoiceExample", "MultipleChoice", "choice_features", "read_choices"]
