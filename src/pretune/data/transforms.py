"""Input transformations for fine-tuning: examples -> token-id features -> padded batches.

One function per task family per model family, building exactly the layouts of the papers:

GPT-1 (Radford et al., 2018, figure 1), with ``s`` = start, ``$`` = delim, ``e`` = extract:

* classification: ``s text e``
* entailment (a sentence pair): ``s premise $ hypothesis e``
* similarity: both orderings, ``s A $ B e`` and ``s B $ A e`` (their extract states are added)
* multiple choice: ``s context $ answer_k e``, one sequence per choice
* tagging: ``s tokens e`` (labels on each word's first sub-token; context is left-to-right only)

BERT (Devlin et al., 2019, figure 4):

* classification / regression: ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]`` with segment ids 0 / 1
* multiple choice: ``[CLS] context [SEP] choice_k [SEP]``, one sequence per choice
* extractive QA: ``[CLS] question [SEP] context window [SEP]``, the question cut to
  ``max_query_len`` tokens, the context in windows ``doc_stride`` tokens apart; answers outside a
  window point at ``[CLS]`` (index 0)
* tagging: ``[CLS] tokens [SEP]``, labels on each word's first sub-token, -100 elsewhere

A feature is a dict of plain ints / lists of ints. Texts longer than ``max_seq_len`` are cut
(longest-first for pairs; a multiple-choice context loses its beginning, the part farthest from
the answer) and counted; with ``no_truncate`` the first such example is a :class:`PretuneError`.

:class:`Collator` pads a list of features to the longest sequence of the batch, and
:class:`FinetuneBatches` is the shuffled, seeded, resumable batch stream the trainer consumes.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from pretune.data.tasks import ChoiceExample, QAExample, TaggingExample, TextExample
from pretune.errors import PretuneError

Feature = dict[str, Any]
IGNORE = -100
PAIR_MODES = ("entailment", "similarity")


# --------------------------------------------------------------------------------------------
# Results and truncation bookkeeping


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
                f"{self.truncated} of {self.n_examples} {what} were longer than {setting} allows "
                f"and were truncated{first}; raise {setting} or pass --no-truncate to fail instead",
                stacklevel=2,
            )


class _Cut:
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


def _budget(max_seq_len: int, n_special: int) -> int:
    budget = max_seq_len - n_special
    if budget < 2:
        raise PretuneError(f"--max-seq-len {max_seq_len} is too small: it must leave room for the text")
    return budget


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


def _cut(ids: list[int], budget: int, source: str, cut: _Cut, n_special: int) -> list[int]:
    if len(ids) > budget:
        cut.hit(source, len(ids) + n_special)
        return ids[:budget]
    return ids


def _cut_pair(
    a: list[int], b: list[int], budget: int, source: str, cut: _Cut, n_special: int, a_from_left: bool = False
) -> tuple[list[int], list[int]]:
    if len(a) + len(b) > budget:
        cut.hit(source, len(a) + len(b) + n_special)
        return truncate_pair(a, b, budget, a_from_left=a_from_left)
    return a, b


# --------------------------------------------------------------------------------------------
# Labels


def _label_ids(examples: Sequence[Any], family: str, labels: list[str] | None) -> list[Any]:
    """The target of each example (None when unlabeled): class id, float score or choice index."""
    out: list[Any] = []
    index = {name: i for i, name in enumerate(labels or [])}
    for e in examples:
        if e.label is None:
            out.append(None)
        elif family == "regression":
            out.append(float(e.label))
        elif family == "multiple-choice":
            out.append(int(e.label))
        else:
            if e.label not in index:
                raise PretuneError(
                    f"{e.source}: label {e.label!r} was never seen in the training data "
                    f"(training labels: {labels})"
                )
            out.append(index[e.label])
    return out


def _with_label(feature: Feature, label: Any) -> Feature:
    if label is not None:
        feature["label"] = label
    return feature


# --------------------------------------------------------------------------------------------
# GPT-1


def _gpt_ids(tok: Any) -> tuple[int, int, int]:
    return tok.start_id, tok.delim_id, tok.extract_id


def gpt_classification(
    tok: Any, examples: Sequence[TextExample], max_seq_len: int, labels: list[Any], no_truncate: bool = False
) -> FeatureSet:
    """``start text extract`` per example."""
    start, _, extract = _gpt_ids(tok)
    budget, cut = _budget(max_seq_len, 2), _Cut(no_truncate, max_seq_len)
    feats = []
    for i, (e, ids, y) in enumerate(zip(examples, tok.encode_batch([e.text for e in examples]), labels)):
        ids = _cut(ids, budget, e.source, cut, 2)
        feats.append(_with_label({"input_ids": [start, *ids, extract], "example": i}, y))
    return cut.result(feats, len(examples))


def gpt_entailment(
    tok: Any, examples: Sequence[TextExample], max_seq_len: int, labels: list[Any], no_truncate: bool = False
) -> FeatureSet:
    """``start premise delim hypothesis extract`` per example."""
    return _gpt_pairs(tok, examples, max_seq_len, labels, no_truncate, both_orders=False)


def gpt_similarity(
    tok: Any, examples: Sequence[TextExample], max_seq_len: int, labels: list[Any], no_truncate: bool = False
) -> FeatureSet:
    """Both orderings, ``[start A delim B extract, start B delim A extract]``, per example."""
    return _gpt_pairs(tok, examples, max_seq_len, labels, no_truncate, both_orders=True)


def _gpt_pairs(
    tok: Any, examples: Sequence[TextExample], max_seq_len: int, labels: list[Any], no_truncate: bool, both_orders: bool
) -> FeatureSet:
    start, delim, extract = _gpt_ids(tok)
    budget, cut = _budget(max_seq_len, 3), _Cut(no_truncate, max_seq_len)
    a_ids = tok.encode_batch([e.text for e in examples])
    b_ids = tok.encode_batch([e.text_pair or "" for e in examples])
    feats = []
    for i, (e, a, b, y) in enumerate(zip(examples, a_ids, b_ids, labels)):
        a, b = _cut_pair(a, b, budget, e.source, cut, 3)
        ids: list[int] | list[list[int]] = [start, *a, delim, *b, extract]
        if both_orders:
            ids = [ids, [start, *b, delim, *a, extract]]
        feats.append(_with_label({"input_ids": ids, "example": i}, y))
    return cut.result(feats, len(examples))


def gpt_multiple_choice(
    tok: Any, examples: Sequence[ChoiceExample], max_seq_len: int, labels: list[Any], no_truncate: bool = False
) -> FeatureSet:
    """``start context delim answer_k extract`` for each choice k."""
    start, delim, extract = _gpt_ids(tok)
    budget, cut = _budget(max_seq_len, 3), _Cut(no_truncate, max_seq_len)
    contexts = tok.encode_batch([e.context for e in examples])
    choices = tok.encode_batch([c for e in examples for c in e.choices])
    feats, k = [], 0
    for i, (e, ctx, y) in enumerate(zip(examples, contexts, labels)):
        seqs, hit = [], False
        for ans in choices[k : k + len(e.choices)]:
            if len(ctx) + len(ans) > budget and not hit:
                cut.hit(e.source, len(ctx) + len(ans) + 3)
                hit = True
            c, a = truncate_pair(ctx, ans, budget, a_from_left=True)
            seqs.append([start, *c, delim, *a, extract])
        k += len(e.choices)
        feats.append(_with_label({"input_ids": seqs, "example": i}, y))
    return cut.result(feats, len(examples))


def gpt_tagging(
    tok: Any, examples: Sequence[TaggingExample], max_seq_len: int, labels: list[str] | None, no_truncate: bool = False
) -> FeatureSet:
    """``start tokens extract``; a word's tag sits on its first sub-token (causal: left context only)."""
    start, _, extract = _gpt_ids(tok)
    return _tagging(tok, examples, max_seq_len, labels, no_truncate, [start], [extract])


# --------------------------------------------------------------------------------------------
# BERT


def bert_classification(
    tok: Any, examples: Sequence[TextExample], max_seq_len: int, labels: list[Any], no_truncate: bool = False
) -> FeatureSet:
    """``[CLS] A [SEP]`` (segment 0) or ``[CLS] A [SEP] B [SEP]`` (B and its [SEP] in segment 1)."""
    cls, sep = tok.cls_id, tok.sep_id
    cut = _Cut(no_truncate, max_seq_len)
    a_ids = tok.encode_batch([e.text for e in examples])
    pairs = any(e.text_pair is not None for e in examples)
    b_ids = tok.encode_batch([e.text_pair or "" for e in examples]) if pairs else [None] * len(examples)
    feats = []
    for i, (e, a, b, y) in enumerate(zip(examples, a_ids, b_ids, labels)):
        if e.text_pair is None:
            a = _cut(a, _budget(max_seq_len, 2), e.source, cut, 2)
            ids, types = [cls, *a, sep], [0] * (len(a) + 2)
        else:
            a, b = _cut_pair(a, b, _budget(max_seq_len, 3), e.source, cut, 3)
            ids, types = [cls, *a, sep, *b, sep], [0] * (len(a) + 2) + [1] * (len(b) + 1)
        feats.append(_with_label({"input_ids": ids, "token_type_ids": types, "example": i}, y))
    return cut.result(feats, len(examples))


def bert_multiple_choice(
    tok: Any, examples: Sequence[ChoiceExample], max_seq_len: int, labels: list[Any], no_truncate: bool = False
) -> FeatureSet:
    """``[CLS] context [SEP] choice_k [SEP]`` for each choice k, with segment ids."""
    cls, sep = tok.cls_id, tok.sep_id
    budget, cut = _budget(max_seq_len, 3), _Cut(no_truncate, max_seq_len)
    contexts = tok.encode_batch([e.context for e in examples])
    choices = tok.encode_batch([c for e in examples for c in e.choices])
    feats, k = [], 0
    for i, (e, ctx, y) in enumerate(zip(examples, contexts, labels)):
        seqs, types, hit = [], [], False
        for ans in choices[k : k + len(e.choices)]:
            if len(ctx) + len(ans) > budget and not hit:
                cut.hit(e.source, len(ctx) + len(ans) + 3)
                hit = True
            c, a = truncate_pair(ctx, ans, budget, a_from_left=True)
            seqs.append([cls, *c, sep, *a, sep])
            types.append([0] * (len(c) + 2) + [1] * (len(a) + 1))
        k += len(e.choices)
        feats.append(_with_label({"input_ids": seqs, "token_type_ids": types, "example": i}, y))
    return cut.result(feats, len(examples))


def bert_tagging(
    tok: Any, examples: Sequence[TaggingExample], max_seq_len: int, labels: list[str] | None, no_truncate: bool = False
) -> FeatureSet:
    """``[CLS] tokens [SEP]``; a word's tag on its first sub-token, -100 on the rest and on specials."""
    return _tagging(tok, examples, max_seq_len, labels, no_truncate, [tok.cls_id], [tok.sep_id], segments=True)


def _tagging(
    tok: Any,
    examples: Sequence[TaggingExample],
    max_seq_len: int,
    labels: list[str] | None,
    no_truncate: bool,
    prefix: list[int],
    suffix: list[int],
    segments: bool = False,
) -> FeatureSet:
    """Shared by both families: words are encoded pre-split, so sub-tokens map back to words.

    ``features[i]["word_starts"]`` holds, per word, the position of its first sub-token (-1 for a
    word that was cut off or produced no token); predictions are read there.
    """
    n_special = len(prefix) + len(suffix)
    budget, cut = _budget(max_seq_len, n_special), _Cut(no_truncate, max_seq_len)
    index = {t: i for i, t in enumerate(labels or [])}
    encodings = tok.backend.encode_batch([list(e.tokens) for e in examples], is_pretokenized=True, add_special_tokens=False)
    feats = []
    for i, (e, enc) in enumerate(zip(examples, encodings)):
        ids, word_ids = enc.ids, enc.word_ids
        if len(ids) > budget:
            cut.hit(e.source, len(ids) + n_special)
            ids, word_ids = ids[:budget], word_ids[:budget]
        starts = [-1] * len(e.tokens)
        tags = [IGNORE] * (len(ids) + n_special)
        previous = None
        for pos, w in enumerate(word_ids):
            if w is not None and w != previous:
                starts[w] = pos + len(prefix)
                if e.tags is not None:
                    tag = e.tags[w]
                    if tag not in index:
                        raise PretuneError(
                            f"{e.source}: tag {tag!r} (word {w + 1} of the sentence starting on this line) "
                            f"was never seen in the training data (training tags: {labels})"
                        )
                    tags[pos + len(prefix)] = index[tag]
            previous = w
        full = [*prefix, *ids, *suffix]
        feat: Feature = {"input_ids": full, "example": i, "word_starts": starts}
        if segments:
            feat["token_type_ids"] = [0] * len(full)
        if e.tags is not None:
            feat["tags"] = tags
        feats.append(feat)
    return cut.result(feats, len(examples))


def bert_qa(
    tok: Any,
    examples: Sequence[QAExample],
    max_seq_len: int,
    *,
    doc_stride: int = 128,
    max_query_len: int = 64,
    train: bool = False,
    no_truncate: bool = False,
) -> FeatureSet:
    """``[CLS] question [SEP] window [SEP]`` features, windows starting ``doc_stride`` tokens apart.

    Each feature keeps ``offsets`` (character span in the context of every window token; None for
    the question and special tokens) and ``context_start`` (position of the first window token).
    With ``train`` the first answer gives ``start_positions`` / ``end_positions``; a window that
    does not hold the whole answer points both at ``[CLS]`` (0). Questions longer than
    ``max_query_len`` tokens are cut (and counted as truncated).
    """
    if doc_stride < 1:
        raise PretuneError(f"--doc-stride must be at least 1, got {doc_stride}")
    if max_query_len < 1:
        raise PretuneError(f"--max-query-len must be at least 1, got {max_query_len}")
    cls, sep = tok.cls_id, tok.sep_id
    cut = _Cut(no_truncate, max_query_len, "--max-query-len")
    questions = tok.encode_batch([e.question for e in examples])
    unique = list(dict.fromkeys(e.context for e in examples))
    ctx_enc = dict(zip(unique, tok.backend.encode_batch(unique, add_special_tokens=False)))
    feats: list[Feature] = []
    for i, (e, q) in enumerate(zip(examples, questions)):
        if len(q) > max_query_len:
            cut.hit(e.source, len(q))
            q = q[:max_query_len]
        enc = ctx_enc[e.context]
        ids, offsets = enc.ids, enc.offsets
        window = max_seq_len - len(q) - 3
        if window < 1:
            raise PretuneError(
                f"--max-seq-len {max_seq_len} leaves no room for the context after a {len(q)}-token question; "
                f"raise --max-seq-len or lower --max-query-len"
            )
        answer_tokens = _answer_tokens(e, offsets) if train and e.answers else None
        begin = 0
        while True:
            end = min(begin + window, len(ids))
            input_ids = [cls, *q, sep, *ids[begin:end], sep]
            context_start = len(q) + 2
            feat: Feature = {
                "input_ids": input_ids,
                "token_type_ids": [0] * context_start + [1] * (end - begin + 1),
                "example": i,
                "offsets": [tuple(o) for o in offsets[begin:end]],
                "context_start": context_start,
            }
            if train:
                s = t = 0
                if answer_tokens is not None:
                    a_start, a_end = answer_tokens
                    if begin <= a_start and a_end < end:
                        s, t = a_start - begin + context_start, a_end - begin + context_start
                feat["start_positions"], feat["end_positions"] = s, t
            feats.append(feat)
            if end >= len(ids):
                break
            begin += min(doc_stride, window)
    return cut.result(feats, len(examples))


def _answer_tokens(e: QAExample, offsets: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """First and last context token overlapping the first answer's character span."""
    text, char_start = e.answers[0]
    char_end = char_start + len(text)
    first = last = None
    for j, (s, t) in enumerate(offsets):
        if t > char_start and s < char_end and t > s:
            if first is None:
                first = j
            last = j
    return None if first is None else (first, last)


# --------------------------------------------------------------------------------------------
# Dispatch


def build_features(
    examples: Sequence[Any],
    *,
    family: str,
    model_family: str,
    tokenizer: Any,
    max_seq_len: int,
    labels: list[str] | None = None,
    pair_mode: str = "entailment",
    no_truncate: bool = False,
    doc_stride: int = 128,
    max_query_len: int = 64,
    train: bool = False,
) -> FeatureSet:
    """Features for ``examples`` of a task family, in the layout of the model family.

    ``pair_mode`` picks GPT-1's layout for sentence pairs: ``entailment`` (one ordered sequence)
    or ``similarity`` (both orderings, added). BERT has one pair layout.
    """
    if family == "qa":
        if model_family != "bert":
            raise PretuneError(
                "span QA is BERT-only: a GPT reads left to right and has no per-token start/end head in "
                "the GPT-1 recipe; use a BERT model for --task qa/korquad"
            )
        return bert_qa(
            tokenizer, examples, max_seq_len, doc_stride=doc_stride, max_query_len=max_query_len,
            train=train, no_truncate=no_truncate,
        )
    if family == "tagging":
        fn = bert_tagging if model_family == "bert" else gpt_tagging
        return fn(tokenizer, examples, max_seq_len, labels, no_truncate)
    targets = _label_ids(examples, family, labels)
    if family == "multiple-choice":
        fn = bert_multiple_choice if model_family == "bert" else gpt_multiple_choice
        return fn(tokenizer, examples, max_seq_len, targets, no_truncate)
    if family not in ("classification", "regression"):
        raise PretuneError(f"unknown task family {family!r}")
    if model_family == "bert":
        return bert_classification(tokenizer, examples, max_seq_len, targets, no_truncate)
    if pair_mode not in PAIR_MODES:
        raise PretuneError(f"--pair-mode must be one of {', '.join(PAIR_MODES)}, got {pair_mode!r}")
    pairs = [e.text_pair is not None for e in examples]
    if not any(pairs):
        return gpt_classification(tokenizer, examples, max_seq_len, targets, no_truncate)
    if not all(pairs):
        raise PretuneError("some examples have a second text and some do not; check --text-pair-col")
    fn = gpt_similarity if pair_mode == "similarity" else gpt_entailment
    return fn(tokenizer, examples, max_seq_len, targets, no_truncate)


# --------------------------------------------------------------------------------------------
# Batching


def _is_nested(x: Any) -> bool:
    return bool(x) and isinstance(x[0], list)


def feature_length(feature: Feature) -> int:
    """Total tokens of a feature (all choices / orderings together): the cost used to group batches."""
    ids = feature["input_ids"]
    return sum(len(s) for s in ids) if _is_nested(ids) else len(ids)


@dataclass
class Collator:
    """Pad features to the longest sequence in the batch (right padding).

    Produces ``input_ids`` ``(b, t)`` or ``(b, n, t)`` for multi-sequence features (choices, the
    two orderings of GPT similarity), ``padding_mask`` (1 = token) only when something is padded,
    ``token_type_ids`` when the features have them, ``extract_pos`` (index of each sequence's last
    token, GPT's extract token) when ``extract`` is set, ``labels`` (class ids, float scores or
    per-token tags padded with -100) and ``start_positions`` / ``end_positions`` for QA.
    """

    pad_id: int
    extract: bool = False

    def __call__(self, features: Sequence[Feature]) -> dict[str, Tensor]:
        first = features[0]["input_ids"]
        nested = _is_nested(first)
        seqs: list[list[int]] = [s for f in features for s in f["input_ids"]] if nested else [f["input_ids"] for f in features]
        if nested and len({len(f["input_ids"]) for f in features}) > 1:
            raise PretuneError("every example in a batch must have the same number of choices")
        lengths = [len(s) for s in seqs]
        width = max(lengths)
        shape = (len(features), len(first), width) if nested else (len(features), width)
        batch: dict[str, Tensor] = {"input_ids": torch.tensor(_pad(seqs, width, self.pad_id)).view(shape)}
        if min(lengths) < width:
            mask = [[1] * n + [0] * (width - n) for n in lengths]
            batch["padding_mask"] = torch.tensor(mask, dtype=torch.long).view(shape)
        if "token_type_ids" in features[0]:
            types = [s for f in features for s in f["token_type_ids"]] if nested else [f["token_type_ids"] for f in features]
            batch["token_type_ids"] = torch.tensor(_pad(types, width, 0)).view(shape)
        if self.extract:
            batch["extract_pos"] = torch.tensor([n - 1 for n in lengths]).view(shape[:-1])
        if "tags" in features[0]:
            batch["labels"] = torch.tensor(_pad([f["tags"] for f in features], width, IGNORE))
        elif "label" in features[0]:
            values = [f["label"] for f in features]
            dtype = torch.float32 if isinstance(values[0], float) else torch.long
            batch["labels"] = torch.tensor(values, dtype=dtype)
        if "start_positions" in features[0]:
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
        return batch


def _pad(rows: Sequence[Sequence[int]], width: int, value: int) -> list[list[int]]:
    return [list(r) + [value] * (width - len(r)) for r in rows]


class FinetuneBatches:
    """Shuffled, seeded, resumable batches over a list of features, epoch after epoch.

    Each epoch's order depends only on ``(seed, epoch)``, so :meth:`state_dict` (epoch and
    batch position) resumes exactly. ``batch_size`` is the global batch; with ``world_size`` > 1
    rank ``r`` takes the r-th contiguous slice of each global batch (a last partial global batch
    is then dropped so that every rank steps together). ``group_by_length`` sorts chunks of 50
    batches by length before cutting them into batches (less padding), then shuffles the batches.
    ``epochs=None`` repeats forever; ``shuffle=False`` keeps the order (evaluation).
    """

    def __init__(
        self,
        features: Sequence[Feature],
        batch_size: int,
        collate: Callable[[Sequence[Feature]], dict[str, Tensor]],
        *,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        group_by_length: bool = False,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise PretuneError(f"--batch-size must be at least 1, got {batch_size}")
        if batch_size % world_size:
            raise PretuneError(f"--batch-size {batch_size} must be divisible by the number of processes ({world_size})")
        if not features:
            raise PretuneError("no examples to make batches from")
        self.features = features
        self.batch_size = batch_size
        self.collate = collate
        self.shuffle = shuffle
        self.seed = seed
        self.epochs = epochs
        self.rank = rank
        self.world_size = world_size
        self.group_by_length = group_by_length
        self.drop_last = drop_last or world_size > 1
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.features)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_order(self, epoch: int) -> list[list[int]]:
        """The global batches (lists of feature indices) of ``epoch``."""
        n = len(self.features)
        order = list(range(n))
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if self.shuffle:
            rng.shuffle(order)
        if self.group_by_length:
            chunk = self.batch_size * 50
            order = [
                i
                for k in range(0, n, chunk)
                for i in sorted(order[k : k + chunk], key=lambda j: -feature_length(self.features[j]))
            ]
        batches = [order[k : k + self.batch_size] for k in range(0, n, self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.group_by_length and self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        per_rank = self.batch_size // self.world_size
        while self.epochs is None or self.epoch < self.epochs:
            batches = self.epoch_order(self.epoch)
            while self.position < len(batches):
                ids = batches[self.position]
                self.position += 1
                local = ids[self.rank * per_rank : (self.rank + 1) * per_rank] if self.world_size > 1 else ids
                yield self.collate([self.features[i] for i in local])
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise PretuneError(
                f"cannot resume: the run was started with --seed {state['seed']}, now {self.seed}"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


__all__ = [
    "Collator", "FeatureSet", "FinetuneBatches", "IGNORE", "PAIR_MODES",
    "bert_classification", "bert_multiple_choice", "bert_qa", "bert_tagging", "build_features",
    "feature_length", "gpt_classification", "gpt_entailment", "gpt_multiple_choice",
    "gpt_similarity", "gpt_tagging", "truncate_pair",
]
