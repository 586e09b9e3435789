"""Evaluation metrics, computed with established code and reported as fractions.

Every score is a plain ``float`` on the scale of its definition, never multiplied by 100:
accuracy, F1, precision, recall and exact match in 0..1; Matthews, Pearson and Spearman
correlation in -1..1. (Papers and the official SQuAD / KorQuAD scripts print x 100.)

* labels: :func:`accuracy`, :func:`f1_binary` (positive class 1), :func:`matthews` (scikit-learn)
* scores: :func:`pearson`, :func:`spearman` (scipy). Correlation is undefined when either side is
  constant (or has fewer than two values): we then return 0.0 and warn instead of NaN, so that a
  collapsed model reads as "no correlation" and never poisons best-checkpoint selection.
* extractive QA: :func:`squad_scores` re-implements the official SQuAD v1.1 evaluation (normalise:
  lower-case, drop punctuation, drop English articles a/an/the, collapse whitespace; exact match and
  token F1, max over the gold answers, mean over questions; a question with no prediction scores 0).
  :func:`korquad_char_f1` is KorQuAD 1.0's own F1: its normalisation, then F1 over characters
  with spaces removed.
* tagging: :func:`entity_scores` uses seqeval's entity-level precision / recall / F1 in its
  default conlleval-compatible mode (an ``I-`` tag after ``O`` opens an entity; an entity counts
  only when both boundaries and type match).
"""

from __future__ import annotations

import re
import string
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from pretune.errors import PretuneError


def _pair(predictions: Sequence, references: Sequence) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(predictions), np.asarray(references)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and references {r.shape} must be 1-D and the same length")
    if p.size == 0:
        raise ValueError("no examples to score")
    return p, r


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Fraction of predictions equal to the reference label."""
    return float(skm.accuracy_score(*_pair(references, predictions)))


def f1_binary(predictions: Sequence[int], references: Sequence[int], pos_label: int = 1) -> float:
    """F1 of the positive class (``pos_label``); 0.0 when it is never predicted nor present."""
    r, p = _pair(references, predictions)
    return float(skm.f1_score(r, p, pos_label=pos_label, average="binary", zero_division=0))


def matthews(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Matthews correlation coefficient (0.0 when predictions or references are constant)."""
    return float(skm.matthews_corrcoef(*_pair(references, predictions)))


def _correlation(fn: Callable, name: str, predictions: Sequence[float], references: Sequence[float]) -> float:
    p, r = _pair(predictions, references)
    p, r = p.astype(float), r.astype(float)
    if p.size < 2 or np.all(p == p[0]) or np.all(r == r[0]):
        which = "fewer than two examples" if p.size < 2 else "constant predictions or references"
        warnings.warn(
            f"{name} correlation is undefined for {which}; reporting 0.0", RuntimeWarning, stacklevel=3
        )
        return 0.0
    return float(fn(p, r)[0])


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Pearson correlation; 0.0 with a warning when undefined (a constant side)."""
    return _correlation(stats.pearsonr, "Pearson", predictions, references)


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Spearman rank correlation; 0.0 with a warning when undefined (a constant side)."""
    return _correlation(stats.spearmanr, "Spearman", predictions, references)


# --------------------------------------------------------------------------------------------
# Extractive QA (SQuAD v1.1 and KorQuAD 1.0 evaluation scripts)

_PUNCT = set(string.punctuation)
_KORQUAD_SYMBOLS = re.compile("['\"《》<>〈〉()‘’]")


def normalize_answer(s: str) -> str:
    """SQuAD v1.1: lower-case, remove punctuation, remove articles a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def normalize_korquad(s: str) -> str:
    """KorQuAD 1.0: quotes, brackets and parentheses to spaces, lower-case, remove punctuation, collapse whitespace."""
    s = _KORQUAD_SYMBOLS.sub(" ", s).lower()
    return " ".join("".join(ch for ch in s if ch not in _PUNCT).split())


def _overlap_f1(pred: Sequence[str], gold: Sequence[str]) -> float:
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _token_f1(pred: str, gold: str) -> float:
    return _overlap_f1(normalize_answer(pred).split(), normalize_answer(gold).split())


def _char_f1(pred: str, gold: str) -> float:
    return _overlap_f1(
        list(normalize_korquad(pred).replace(" ", "")), list(normalize_korquad(gold).replace(" ", ""))
    )


def _exact(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def _qa_mean(
    fn: Callable[[str, str], float], pred_texts: Mapping[str, str], gold: Mapping[str, Sequence[str]]
) -> float:
    """Mean over gold questions of the best score against any gold answer (missing prediction or no gold: 0)."""
    if not gold:
        raise ValueError("no questions to score")
    total = 0.0
    for qid, answers in gold.items():
        if qid in pred_texts and answers:
            total += max(fn(pred_texts[qid], a) for a in answers)
    return total / len(gold)


def _warn_missing(pred_texts: Mapping[str, str], gold: Mapping[str, Sequence[str]]) -> None:
    missing = sum(1 for qid in gold if qid not in pred_texts)
    if missing:
        warnings.warn(f"{missing} of {len(gold)} questions have no prediction; they score 0", stacklevel=3)


def squad_scores(pred_texts: Mapping[str, str], gold: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 ``{"exact_match", "f1"}`` in 0..1 for predictions keyed by question id."""
    _warn_missing(pred_texts, gold)
    return {"exact_match": _qa_mean(_exact, pred_texts, gold), "f1": _qa_mean(_token_f1, pred_texts, gold)}


def korquad_char_f1(pred_texts: Mapping[str, str], gold: Mapping[str, Sequence[str]]) -> float:
    """KorQuAD 1.0's F1 (character level, spaces removed, its own normalisation), in 0..1."""
    _warn_missing(pred_texts, gold)
    return _qa_mean(_char_f1, pred_texts, gold)


# --------------------------------------------------------------------------------------------
# Tagging


def entity_scores(pred_tags: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level ``{"precision", "recall", "f1"}`` over BIO/IOB2 tags (seqeval, conlleval mode)."""
    from seqeval import metrics as sq  # imported lazily: seqeval is only needed for tagging

    pred, ref = [list(s) for s in pred_tags], [list(s) for s in gold]
    if len(pred) != len(ref) or any(len(p) != len(r) for p, r in zip(pred, ref)):
        raise ValueError("predicted and gold tag sequences must have the same number of sentences and tokens")
    return {
        "precision": float(sq.precision_score(ref, pred, zero_division=0)),
        "recall": float(sq.recall_score(ref, pred, zero_division=0)),
        "f1": float(sq.f1_score(ref, pred, zero_division=0)),
    }


# --------------------------------------------------------------------------------------------
# By name

LABEL_METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "mcc": matthews,
    "pearson": pearson,
    "spearman": spearman,
}
QA_METRICS = ("exact_match", "f1", "char_f1")
TAGGING_METRICS = ("precision", "recall", "f1")


def compute_metrics(
    names: Sequence[str], predictions: Sequence | Mapping, references: Sequence | Mapping
) -> dict[str, float]:
    """Compute the named metrics; the kind of input picks the family.

    * ``predictions`` a mapping (question id -> answer text), ``references`` id -> gold answers:
      QA metrics ``exact_match``, ``f1`` (SQuAD v1.1) and ``char_f1`` (KorQuAD).
    * sequences of tag sequences: tagging metrics ``precision``, ``recall``, ``f1`` (entity level).
    * otherwise labels or scores: ``accuracy``, ``f1`` (binary, class 1), ``mcc``, ``pearson``, ``spearman``.
    """
    if isinstance(predictions, Mapping):
        kind, valid = "question answering", QA_METRICS
    elif len(predictions) and isinstance(predictions[0], (list, tuple)):
        kind, valid = "tagging", TAGGING_METRICS
    else:
        kind, valid = "label", tuple(LABEL_METRICS)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise PretuneError(f"unknown {kind} metric(s) {', '.join(unknown)}; choose from {', '.join(valid)}")
    if kind == "label":
        return {n: LABEL_METRICS[n](predictions, references) for n in names}
    if kind == "tagging":
        scores = entity_scores(predictions, references)
    else:
        scores = squad_scores(predictions, references) if {"exact_match", "f1"} & set(names) else {}
        if "char_f1" in names:
            scores["char_f1"] = korquad_char_f1(predictions, references)
    return {n: scores[n] for n in names}
