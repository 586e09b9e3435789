"""Evaluation metrics, computed with established code and reported as fractions.

Every score is a plain ``float`` on the scale of its definition, never multiplied by 100:
accuracy, F1, precision, recall and exact match in 0..1; Matthews, Pearson and Spearman
correlation in -1..1. (Papers and the official SQuAD / KorQuAD scripts print x 100.)

What each function follows:

* labels: :func:`accuracy`, :func:`f1_binary` (F1 of class 1) and :func:`matthews` are
  scikit-learn's. Matthews correlation keeps scikit-learn's documented convention of 0.0 when
  either side is constant, as GLUE's own evaluation (which calls scikit-learn) does for CoLA.
* scores: :func:`pearson` and :func:`spearman` are scipy's (Spearman ranks ties by their average
  rank). Correlation is undefined when either side is constant, when there are fewer than two
  values, or when a value is NaN or infinite: we then return ``None`` (JSON ``null``) with one
  ``RuntimeWarning`` saying why, rather than a made-up 0.0 that would read as "no correlation".
* extractive QA: :func:`qa_scores` re-implements an official evaluation script, chosen by
  ``style`` (see :data:`QA_STYLES`). Both take the best score over a question's gold answers and
  the mean over questions; a question with no prediction scores 0 (with a warning, as the scripts
  print one), and so does one with no gold answer (where the scripts would crash).

  - ``"squad"``, SQuAD v1.1's ``evaluate-v1.1.py``: lower-case, drop ASCII punctuation, drop the
    English articles a/an/the, collapse whitespace; exact match of the normalised strings and F1
    over whitespace tokens. Korean brackets such as 《》 are not ASCII punctuation and stay.
  - ``"korquad"``, KorQuAD 1.0's ``evaluate-v1.0.py``: quotes, angle brackets and parentheses
    (``' " 《 》 < > 〈 〉 ( ) ‘ ’``) become spaces, then lower-case, drop ASCII punctuation,
    collapse whitespace (articles stay); exact match of the normalised strings and F1 over the
    characters of the normalised tokens (spaces removed), so a particle such as 에서 costs only
    its characters.

  One quirk of both scripts is kept: F1 is 0 whenever nothing overlaps, even when both answers
  normalise to the empty string (exact match is then 1).
* tagging: :func:`entity_scores` uses seqeval's entity-level precision / recall / F1 in its
  default conlleval-compatible mode (an ``I-`` tag after ``O`` opens an entity; an entity counts
  only when both boundaries and type match).
* by name: :func:`compute_metrics` picks the family from the input; for QA, ``exact_match`` and
  ``f1`` follow its ``qa_style`` and ``char_f1`` is always KorQuAD 1.0's F1 (a name that saved
  korquad checkpoints list and that must keep evaluating).
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
    """F1 of the positive class (``pos_label``); 0.0 when it is never predicted (no true positive)."""
    r, p = _pair(references, predictions)
    return float(skm.f1_score(r, p, pos_label=pos_label, average="binary", zero_division=0))


def matthews(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Matthews correlation coefficient.

    When either side holds a single class the formula divides by zero; scikit-learn documents
    that it then returns 0.0, and GLUE's CoLA score (computed with scikit-learn) does the same,
    so we keep that convention to stay comparable rather than report it as undefined. (When both
    sides hold the same single class scikit-learn also warns about the confusion matrix's shape,
    which a caller cannot act on: that warning is not passed on.)
    """
    r, p = _pair(references, predictions)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        return float(skm.matthews_corrcoef(r, p))


def _undefined_because(p: np.ndarray, r: np.ndarray) -> str | None:
    """Why a correlation of ``p`` and ``r`` is undefined, or None when it is defined."""
    if p.size < 2:
        return f"there is only {p.size} example"
    sides = (("predictions", p), ("references", r))
    bad = [name for name, v in sides if not np.all(np.isfinite(v))]
    if bad:
        return f"the {' and '.join(bad)} contain NaN or infinity"
    constant = [f"the {name} are constant (all {v[0]:g})" for name, v in sides if np.all(v == v[0])]
    return " and ".join(constant) or None


def _correlation(
    fn: Callable, name: str, predictions: Sequence[float], references: Sequence[float]
) -> float | None:
    p, r = _pair(predictions, references)
    p, r = p.astype(float), r.astype(float)
    reason = _undefined_because(p, r)
    if reason:
        warnings.warn(
            f"{name} correlation is undefined: {reason}; reported as null", RuntimeWarning, stacklevel=3
        )
        return None
    return float(fn(p, r)[0])


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float | None:
    """Pearson correlation (scipy); None with a warning when undefined (see the module docstring)."""
    return _correlation(stats.pearsonr, "Pearson", predictions, references)


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float | None:
    """Spearman rank correlation (scipy, ties get their average rank); None with a warning when undefined."""
    return _correlation(stats.spearmanr, "Spearman", predictions, references)


# --------------------------------------------------------------------------------------------
# Extractive QA (SQuAD v1.1 and KorQuAD 1.0 official evaluation scripts)

QA_STYLES: dict[str, str] = {
    "squad": "SQuAD v1.1 official evaluation",
    "korquad": "KorQuAD 1.0 official evaluation",
}

_PUNCT = set(string.punctuation)
_KORQUAD_SYMBOLS = re.compile("['\"《》<>〈〉()‘’]")


def normalize_squad(s: str) -> str:
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


def _squad_exact(pred: str, gold: str) -> float:
    return float(normalize_squad(pred) == normalize_squad(gold))


def _squad_f1(pred: str, gold: str) -> float:
    return _overlap_f1(normalize_squad(pred).split(), normalize_squad(gold).split())


def _korquad_exact(pred: str, gold: str) -> float:
    return float(normalize_korquad(pred) == normalize_korquad(gold))


def _korquad_f1(pred: str, gold: str) -> float:
    return _overlap_f1(normalize_korquad(pred).replace(" ", ""), normalize_korquad(gold).replace(" ", ""))


_QA_SCORERS: dict[str, tuple[Callable[[str, str], float], Callable[[str, str], float]]] = {
    "squad": (_squad_exact, _squad_f1),
    "korquad": (_korquad_exact, _korquad_f1),
}


def _check_qa_style(style: str) -> None:
    if style not in QA_STYLES:
        valid = ", ".join(f"{k} ({v})" for k, v in QA_STYLES.items())
        raise PretuneError(f"unknown QA evaluation style {style!r}; choose from {valid}")


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


def _qa_table(
    pred_texts: Mapping[str, str], gold: Mapping[str, Sequence[str]], style: str
) -> dict[str, float]:
    exact, f1 = _QA_SCORERS[style]
    return {"exact_match": _qa_mean(exact, pred_texts, gold), "f1": _qa_mean(f1, pred_texts, gold)}


def qa_scores(
    pred_texts: Mapping[str, str], gold: Mapping[str, Sequence[str]], style: str = "squad"
) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in 0..1 as the official script of ``style`` computes them.

    ``pred_texts`` maps question id to the predicted answer text, ``gold`` maps question id to its
    gold answer texts. The two styles normalise differently and disagree on Korean answers (see
    the module docstring), so a KorQuAD result is only comparable with published ones when it is
    scored with ``style="korquad"``.
    """
    _check_qa_style(style)
    _warn_missing(pred_texts, gold)
    return _qa_table(pred_texts, gold, style)


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

LABEL_METRICS: dict[str, Callable[[Sequence, Sequence], float | None]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "mcc": matthews,
    "pearson": pearson,
    "spearman": spearman,
}
QA_METRICS = ("exact_match", "f1", "char_f1")
TAGGING_METRICS = ("precision", "recall", "f1")


def _qa_metrics(
    names: Sequence[str], pred_texts: Mapping[str, str], gold: Mapping[str, Sequence[str]], style: str
) -> dict[str, float]:
    """QA metrics by name: ``exact_match`` / ``f1`` in ``style``; ``char_f1`` always KorQuAD's F1.

    ``char_f1`` predates ``qa_style``: checkpoints of the korquad recipe list it beside
    ``exact_match`` and ``f1``, so it stays a name for KorQuAD 1.0's character F1.
    """
    _warn_missing(pred_texts, gold)
    scores = _qa_table(pred_texts, gold, style) if {"exact_match", "f1"} & set(names) else {}
    if "char_f1" in names:
        scores["char_f1"] = _qa_mean(_korquad_f1, pred_texts, gold)
    return scores


def compute_metrics(
    names: Sequence[str],
    predictions: Sequence | Mapping,
    references: Sequence | Mapping,
    *,
    qa_style: str = "squad",
) -> dict[str, float | None]:
    """Compute the named metrics; the kind of input picks the family.

    * ``predictions`` a mapping (question id -> answer text), ``references`` id -> gold answers:
      QA metrics ``exact_match`` and ``f1`` as the official script named by ``qa_style`` computes
      them (a key of :data:`QA_STYLES`), and ``char_f1`` (KorQuAD 1.0's F1, whatever the style).
    * sequences of tag sequences: tagging metrics ``precision``, ``recall``, ``f1`` (entity level).
    * otherwise labels or scores: ``accuracy``, ``f1`` (binary, class 1), ``mcc``, ``pearson``,
      ``spearman``; an undefined correlation is ``None``, which callers must rank below any number.

    ``qa_style`` is checked whatever the input, so a misspelt style fails before any scoring.
    """
    _check_qa_style(qa_style)
    if isinstance(predictions, Mapping):
        kind, valid = "question answering", QA_METRICS
    elif len(predictions) and isinstance(predictions[0], (list, tuple)):
        kind, valid = "entity", TAGGING_METRICS
    else:
        kind, valid = "label", tuple(LABEL_METRICS)
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise PretuneError(f"unknown {kind} metric(s) {', '.join(unknown)}; choose from {', '.join(valid)}")
    if kind == "label":
        return {n: LABEL_METRICS[n](predictions, references) for n in names}
    if kind == "entity":
        scores = entity_scores(predictions, references)
    else:
        scores = _qa_metrics(names, predictions, references, qa_style)
    return {n: scores[n] for n in names}
