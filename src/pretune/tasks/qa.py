"""Extractive question answering (SQuAD v1.1 JSON: SQuAD, KorQuAD 1.0), BERT only.

Layout (BERT, figure 4c): ``[CLS] question [SEP] context window [SEP]``, the question cut to
``max_query_len`` tokens, the context in windows ``doc_stride`` tokens apart (as
google-research/bert's ``run_squad.py``). The head gives a start and an end logit per token; in
training an answer outside a window points at ``[CLS]`` (index 0). Decoding takes, over all
windows of a question, the best valid span: start <= end, at most ``max_answer_len`` tokens,
inside the context. Scoring follows the official script named by the task's ``qa_style``
(SQuAD v1.1 or KorQuAD 1.0, see :mod:`pretune.metrics`). GPT reads left to right and the GPT-1
recipe has no span head, so QA is refused for GPT models.
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pretune import metrics as m
from pretune.errors import PretuneError, where
from pretune.tasks.base import Cut, Feature, FeatureSet, Predictions, TaskFamily, TaskSpec, check_fraction
from pretune.tasks.sources import cell, is_dataset, load_table
from pretune.tasks.tables import read_text


@dataclass(frozen=True, slots=True)
class QAExample:
    """An extractive question; ``answers`` are ``(text, char_start)`` pairs into ``context``."""

    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]
    source: str
    title: str = ""


def read_squad(path: str | Path, *, train: bool = False) -> list[QAExample]:
    """Read SQuAD v1.1 JSON (``data[].paragraphs[].qas[]``), checking every answer offset.

    An answer whose ``context[start:start + len(text)]`` differs from its text is dropped, with one
    warning giving the count and the first such question; with ``train=True`` questions left
    without answers are dropped too. If every answer is bad the file is rejected.
    """
    doc = _dataset_doc(str(path)) if is_dataset(path) else _json_doc(Path(path))
    path = path if is_dataset(path) else Path(path)
    try:
        examples, total, bad, dropped = _squad_examples(doc, path, train)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise PretuneError(f"{path}: not SQuAD v1.1 JSON: missing or malformed field {e}") from None
    if total and len(bad) == total:
        raise PretuneError(
            f"{path}: all {total} answers have answer_start offsets that do not match their text "
            f"(expected character offsets into the context; first: question {bad[0]})"
        )
    if train and total == 0:
        raise PretuneError(f"{path}: no answers found; training needs 'answers' with 'text' and 'answer_start'")
    if bad:
        note = f" ({dropped} questions left without an answer were dropped)" if dropped else ""
        warnings.warn(
            f"{path}: skipped {len(bad)} of {total} answers whose text does not match context[answer_start:] "
            f"(first: question {bad[0]}){note}",
            stacklevel=2,
        )
    if not examples:
        raise PretuneError(f"{path}: no questions found")
    return examples


def _json_doc(path: Path) -> dict:
    try:
        doc = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise PretuneError(f"{where(path, e.lineno)}: not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise PretuneError(f"{path}: not SQuAD v1.1 JSON: expected an object with a 'data' list of articles")
    return doc


SQUAD_COLUMNS = ["id", "title", "context", "question", "answers"]  # a SQuAD-style data set (squad, korquad, ...)


def _dataset_doc(value: str) -> dict:
    """A SQuAD-style ``datasets`` data set (one row per question; ``answers`` holds the lists ``text``
    and ``answer_start``) as the SQuAD v1.1 document the JSON reader checks."""
    table = load_table(value, SQUAD_COLUMNS)
    articles: dict[str, list[dict]] = {}
    for row in table.rows:
        answers = row["answers"] or {"text": [], "answer_start": []}
        qa = {"id": row["id"], "question": row["question"],
              "answers": [{"text": t, "answer_start": a} for t, a in zip(answers["text"], answers["answer_start"])]}
        articles.setdefault(cell(row["title"]), []).append({"context": row["context"], "qas": [qa]})
    return {"data": [{"title": title, "paragraphs": paragraphs} for title, paragraphs in articles.items()]}


def _squad_examples(doc: dict, path: Path, train: bool) -> tuple[list[QAExample], int, list[str], int]:
    """Examples, the number of answers, the ids of questions with a mismatched answer, and the
    number of questions dropped for having no valid answer (``train``)."""
    examples: list[QAExample] = []
    total, bad, dropped = 0, [], 0
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
                        bad.append(qid)
                if train and not answers:
                    dropped += 1
                    continue
                examples.append(QAExample(qid, qa["question"], context, answers, f"{path} (question {qid})", title))
    return examples, total, bad, dropped


def split_squad_by_article(examples: Sequence[QAExample], dev_fraction: float, seed: int = 0) -> tuple[list[QAExample], list[QAExample]]:
    """Split QA examples into ``(train, dev)`` by article title, so no article is in both.

    Titles are shuffled with ``seed`` and moved to dev until it holds ``dev_fraction`` of the
    questions (at least one article on each side). Both parts keep the original order.
    """
    check_fraction(dev_fraction, "--validation-split")
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.title] = counts.get(e.title, 0) + 1
    if len(counts) < 2:
        raise PretuneError(f"--validation-split: QA is split by article, and the file has only {len(counts)} article "
                           f"title(s); give --validation FILE instead")
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
# Features: question + context windows


def qa_features(tok: Any, examples: Sequence[QAExample], max_seq_len: int, *, doc_stride: int = 128,
                max_query_len: int = 64, train: bool = False, no_truncate: bool = False) -> FeatureSet:
    """``[CLS] question [SEP] window [SEP]`` features, windows starting ``doc_stride`` tokens apart.

    Each feature keeps ``offsets`` (character span in the context of every window token) and
    ``context_start`` (position of the first window token). With ``train`` the first answer gives
    ``start_positions`` / ``end_positions``; a window that does not hold the whole answer points
    both at ``[CLS]`` (0). Questions longer than ``max_query_len`` tokens are cut (and counted).
    """
    if doc_stride < 1:
        raise PretuneError(f"--doc-stride must be at least 1, got {doc_stride}")
    if max_query_len < 1:
        raise PretuneError(f"--max-query-len must be at least 1, got {max_query_len}")
    cut = Cut(no_truncate, max_query_len, "--max-query-len")
    questions = tok.encode_batch([e.question for e in examples])
    unique = list(dict.fromkeys(e.context for e in examples))
    ctx_enc = dict(zip(unique, tok.backend.encode_batch(unique, add_special_tokens=False)))
    feats: list[Feature] = []
    for i, (e, q) in enumerate(zip(examples, questions)):
        if len(q) > max_query_len:
            cut.hit(e.source, len(q))
            q = q[:max_query_len]
        window = max_seq_len - len(q) - 3
        if window < 1:
            raise PretuneError(
                f"--max-seq-len {max_seq_len} leaves no room for the context after a {len(q)}-token question; "
                f"raise --max-seq-len or lower --max-query-len"
            )
        feats += _windows(tok, e, i, q, ctx_enc[e.context], window, min(doc_stride, window), train)
    return cut.result(feats, len(examples))


def _windows(tok: Any, e: QAExample, i: int, q: list[int], enc: Any, window: int, stride: int, train: bool) -> list[Feature]:
    ids, offsets = enc.ids, enc.offsets
    answer = _answer_tokens(e, offsets) if train and e.answers else None
    context_start = len(q) + 2
    feats, begin = [], 0
    while True:
        end = min(begin + window, len(ids))
        feat: Feature = {
            "input_ids": [tok.cls_id, *q, tok.sep_id, *ids[begin:end], tok.sep_id],
            "token_type_ids": [0] * context_start + [1] * (end - begin + 1),
            "example": i,
            "offsets": [tuple(o) for o in offsets[begin:end]],
            "context_start": context_start,
        }
        if train:
            s = t = 0
            if answer is not None and begin <= answer[0] and answer[1] < end:
                s, t = answer[0] - begin + context_start, answer[1] - begin + context_start
            feat["start_positions"], feat["end_positions"] = s, t
        feats.append(feat)
        if end >= len(ids):
            return feats
        begin += stride


def _answer_tokens(e: QAExample, offsets: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """First and last context token overlapping the first answer's character span."""
    text, char_start = e.answers[0]
    char_end = char_start + len(text)
    hits = [j for j, (s, t) in enumerate(offsets) if t > char_start and s < char_end and t > s]
    return (hits[0], hits[-1]) if hits else None


# --------------------------------------------------------------------------------------------
# Decoding


def best_spans(examples: Sequence[QAExample], features: Sequence[Feature], logits: Sequence[Tensor],
               max_answer_len: int = 30) -> dict[str, tuple[str, int, float]]:
    """Best valid span per question over all its windows: start <= end, at most ``max_answer_len``
    tokens, inside the context. Returns ``id -> (answer text, char start, score)``; a question
    without any window scores ``("", -1, -inf)``."""
    best: dict[int, tuple[float, int, int]] = {}
    for feat, lg in zip(features, logits):
        cs, offsets = feat["context_start"], feat["offsets"]
        n = len(offsets)
        if n == 0:
            continue
        scores = lg[cs : cs + n, 0][:, None] + lg[cs : cs + n, 1][None, :]
        ones = torch.ones(n, n, dtype=torch.bool)
        valid = torch.triu(ones) & ~torch.triu(ones, diagonal=max_answer_len)
        scores = scores.masked_fill(~valid, float("-inf"))
        i, j = divmod(int(scores.argmax()), n)
        value, ex = float(scores[i, j]), feat["example"]
        if ex not in best or value > best[ex][0]:
            best[ex] = (value, offsets[i][0], offsets[j][1])
    out = {}
    for ex, (value, s, t) in best.items():
        e = examples[ex]
        out[e.id] = (e.context[s:t], s, value)
    for e in examples:
        out.setdefault(e.id, ("", -1, float("-inf")))
    return out


class QuestionAnswering(TaskFamily):
    """Answer spans in a context: SQuAD v1.1 JSON files (KorQuAD 1.0, SQuAD)."""

    name = "qa"
    metric_names = ("exact_match", "f1", "char_f1")
    per_token = True

    def read(self, path: str | Path, options: dict[str, Any], *, train: bool = False) -> list[QAExample]:
        if options:
            raise PretuneError(f"qa reads SQuAD v1.1 JSON and takes no column settings (got {', '.join(options)})")
        return read_squad(path, train=train)

    def read_unlabeled(self, path: str | Path, options: dict[str, Any]) -> list[QAExample]:
        return self.read(path, options)

    def option_names(self) -> list[str]:
        return []

    def is_labelled(self, examples: Sequence[QAExample]) -> bool:
        return any(e.answers for e in examples)

    def split(self, examples, fraction, seed):
        return split_squad_by_article(examples, fraction, seed)

    def check_model(self, model_family: str) -> None:
        if model_family == "gpt":
            raise PretuneError(
                "span QA is BERT-only: a GPT reads left to right and the GPT-1 recipe has no start/end "
                "span head; fine-tune a BERT model for qa / korquad"
            )

    def head_outputs(self, spec: TaskSpec) -> int:
        return 2  # start and end logits

    def head_dropout(self, default: float) -> float:
        return 0.0  # as run_squad.py: no dropout before the span layer

    def features(self, examples, spec, tokenizer, model_family, *, train=False, no_truncate=False) -> FeatureSet:
        self.check_model(model_family)
        return qa_features(tokenizer, examples, spec.max_seq_len, doc_stride=spec.doc_stride,
                           max_query_len=spec.max_query_len, train=train, no_truncate=no_truncate)

    def forward(self, model: Any, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        logits = model.head(hidden)  # (b, t, 2)
        mask = batch.get("padding_mask")
        if mask is not None:
            logits = logits.masked_fill(~mask.bool().unsqueeze(-1), -1e4)
        starts, ends = batch.get("start_positions"), batch.get("end_positions")
        if starts is None or ends is None:
            return logits, None
        loss = (F.cross_entropy(logits[..., 0].float(), starts) + F.cross_entropy(logits[..., 1].float(), ends)) / 2
        return logits, loss

    def decode(self, spec, examples, fs, logits) -> Predictions:
        return Predictions(best_spans(examples, fs.features, logits, spec.max_answer_len))

    def score(self, spec, examples, preds) -> dict[str, float | None]:
        gold = {e.id: [a for a, _ in e.answers] for e in examples if e.answers}
        if not gold:
            raise PretuneError("no answers to score against: the questions have no (valid) answers")
        predicted = {qid: text for qid, (text, _, _) in preds.values.items()}
        return m.compute_metrics(spec.metric_names, predicted, gold, qa_style=spec.qa_style)

    def scored_with(self, spec: TaskSpec) -> str:
        return m.QA_STYLES[spec.qa_style]

    def records(self, spec, examples, preds) -> list[dict[str, Any]]:
        out = []
        for e in examples:
            text, start, value = preds.values[e.id]
            out.append({"source": e.source, "id": e.id, "answer": text, "start": start,
                        "score": value if math.isfinite(value) else None})
        return out


__all__ = ["QAExample", "QuestionAnswering", "best_spans", "qa_features", "read_squad", "split_squad_by_article"]
