"""Token tagging (named entities, parts of speech) from CoNLL files: one tag per word.

Layouts: BERT ``[CLS] tokens [SEP]`` (segment 0), GPT-1 ``s tokens e`` (left context only). The
words are encoded pre-split so every sub-token maps back to its word; a word's tag sits on its
first sub-token (-100 on the rest and on the special tokens), and its prediction is read there,
as Hugging Face's ``run_ner`` does. A byte-level BPE tokenizer sees each word after the first
with its leading space (``Ġis``), exactly as in the running text it was pretrained on. Metrics:
entity-level precision, recall and F1 (seqeval, conlleval mode).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from pretune import metrics as m
from pretune.errors import PretuneError, where
from pretune.tasks.base import IGNORE, Cut, Feature, FeatureSet, Predictions, TaskFamily, TaskSpec, budget
from pretune.tasks.sources import cell, is_dataset, load_table, tag_names
from pretune.tasks.tables import preview, read_text


@dataclass(frozen=True, slots=True)
class TaggingExample:
    """A tokenized sentence with one tag per token (``tags`` is None for unlabeled text)."""

    tokens: list[str]
    tags: list[str] | None
    source: str


def read_conll(
    path: str | Path, token_col: int = 0, tag_col: int | None = -1, *, encoding: str = "utf-8-sig"
) -> list[TaggingExample]:
    """Read CoNLL-style tagging data: one ``token<TAB>tag`` (or whitespace-separated) line per token.

    A blank line ends a sentence; ``-DOCSTART-`` lines and comment lines starting with ``#`` are
    skipped (a ``#`` token in a tab-separated file, ``#<TAB>tag``, is kept). ``tag_col=None`` reads
    untagged tokens. Every token line must have the same number of fields.
    """
    if is_dataset(path):
        return _dataset_sentences(str(path), token_col, tag_col)
    path = Path(path)
    examples: list[TaggingExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    start, width = 0, None
    need = 1 if tag_col is None else 2
    for i, raw in enumerate(read_text(path, encoding).splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.startswith("-DOCSTART-"):
            if tokens:
                examples.append(TaggingExample(tokens, None if tag_col is None else tags, where(path, start)))
                tokens, tags = [], []
            continue
        if line.startswith("#") and not line.startswith("#\t"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        width = width or len(fields)
        cols = [c if c >= 0 else len(fields) + c for c in (token_col, tag_col) if c is not None]
        if len(fields) < need or len(fields) != width or any(not 0 <= c < len(fields) for c in cols):
            raise PretuneError(
                f"{where(path, i)}: malformed line {preview(line)}: expected {width if width >= need else need} "
                f"fields (token and tag separated by a tab or spaces), found {len(fields)}"
            )
        start = start if tokens else i
        tokens.append(fields[token_col])
        if tag_col is not None:
            tags.append(fields[tag_col])
    if tokens:
        examples.append(TaggingExample(tokens, None if tag_col is None else tags, where(path, start)))
    if not examples:
        raise PretuneError(f"{path}: no sentences found")
    return examples


DATASET_COLUMNS = ("tokens", "ner_tags")  # a tagging data set's columns where token_col / tag_col are CoNLL indexes


def _dataset_sentences(value: str, token_col: int | str, tag_col: int | str | None) -> list[TaggingExample]:
    """Sentences of a ``datasets`` data set: a column of token lists and one of tag lists (``ClassLabel``
    ids become their names); named by ``token_col`` / ``tag_col``, else ``tokens`` / ``ner_tags``."""
    tokens_name = token_col if isinstance(token_col, str) else DATASET_COLUMNS[0]
    tags_name = None if tag_col is None else tag_col if isinstance(tag_col, str) else DATASET_COLUMNS[1]
    table = load_table(value, [tokens_name] + ([tags_name] if tags_name else []))
    names = tag_names(table, tags_name) if tags_name else None
    examples = []
    for i, row in enumerate(table.rows):
        words, tags = row[tokens_name], row[tags_name] if tags_name else None
        if not isinstance(words, list) or (tags_name and (not isinstance(tags, list) or len(tags) != len(words))):
            raise PretuneError(f"{table.source(i)}: expected a list of tokens in {tokens_name!r} and as many tags in "
                               f"{tags_name!r}")
        if words:
            tags = None if tags is None else [names[t] if names else cell(t) for t in tags]
            examples.append(TaggingExample([cell(w) for w in words], tags, table.source(i)))
    if not examples:
        raise PretuneError(f"{value}: no sentences found")
    return examples


def word_pieces(tok: Any, words: list[str], model_family: str) -> list[str]:
    """The words as the tokenizer should see them pre-split: with a leading space after the first
    word for byte-level BPE (GPT), so each is encoded as in running text (``Ġis``, not ``is``)."""
    if model_family == "gpt" and tok.kind == "bpe":
        return [w if k == 0 else " " + w for k, w in enumerate(words)]
    return list(words)


def tagging_features(tok: Any, examples: Sequence[TaggingExample], max_seq_len: int, labels: list[str] | None,
                     no_truncate: bool, model_family: str) -> FeatureSet:
    """``prefix tokens suffix`` per sentence with each word's tag on its first sub-token.

    ``features[i]["word_starts"]`` holds, per word, the position of its first sub-token (-1 for a
    word that was cut off or produced no token); predictions are read there.
    """
    bert = model_family != "gpt"  # an encoder: [CLS] ... [SEP] (BERT, ELECTRA)
    prefix, suffix = ([tok.cls_id], [tok.sep_id]) if bert else ([tok.start_id], [tok.extract_id])
    n_special = len(prefix) + len(suffix)
    room, cut = budget(max_seq_len, n_special), Cut(no_truncate, max_seq_len)
    index = {t: i for i, t in enumerate(labels or [])}
    pieces = [word_pieces(tok, list(e.tokens), model_family) for e in examples]
    encodings = tok.backend.encode_batch(pieces, is_pretokenized=True, add_special_tokens=False)
    feats = []
    for i, (e, enc) in enumerate(zip(examples, encodings)):
        ids, word_ids = enc.ids, enc.word_ids
        if len(ids) > room:
            cut.hit(e.source, len(ids) + n_special)
            ids, word_ids = ids[:room], word_ids[:room]
        starts, tags = _word_starts(e, word_ids, len(prefix), len(ids) + n_special, index, labels)
        full = [*prefix, *ids, *suffix]
        feat: Feature = {"input_ids": full, "example": i, "word_starts": starts}
        if bert:
            feat["token_type_ids"] = [0] * len(full)
        if e.tags is not None:
            feat["tags"] = tags
        feats.append(feat)
    return cut.result(feats, len(examples))


def _word_starts(e: TaggingExample, word_ids: list[int | None], offset: int, length: int,
                 index: dict[str, int], labels: list[str] | None) -> tuple[list[int], list[int]]:
    starts = [-1] * len(e.tokens)
    tags = [IGNORE] * length
    previous = None
    for pos, w in enumerate(word_ids):
        if w is not None and w != previous:
            starts[w] = pos + offset
            if e.tags is not None:
                if e.tags[w] not in index:
                    raise PretuneError(
                        f"{e.source}: tag {e.tags[w]!r} (word {w + 1} of the sentence starting on this line) "
                        f"was never seen in the training data (training tags: {labels})"
                    )
                tags[pos + offset] = index[e.tags[w]]
        previous = w
    return starts, tags


def word_tags(features: Sequence[Feature], logits: Sequence[Tensor], labels: list[str]) -> list[list[str]]:
    """A tag per word, read at its first sub-token; a word that was cut off gets ``O``."""
    fallback = "O" if "O" in labels else labels[0]
    out: list[list[str]] = []
    for feat, lg in zip(features, logits):
        pred = lg.argmax(-1).tolist()
        out.append([labels[pred[p]] if p >= 0 else fallback for p in feat["word_starts"]])
    return out


class Tagging(TaskFamily):
    """A tag per word: CoNLL ``token<TAB>tag`` files, entity-level scores for BIO tags."""

    name = "tagging"
    metric_names = ("precision", "recall", "f1")
    per_token = True

    def read(self, path: str | Path, options: dict[str, Any], *, train: bool = False) -> list[TaggingExample]:
        return read_conll(path, **options)

    def read_unlabeled(self, path: str | Path, options: dict[str, Any]) -> list[TaggingExample]:
        return read_conll(path, **{**options, "tag_col": None})

    def option_names(self) -> list[str]:
        return ["token_col", "tag_col", "encoding"]

    def is_labelled(self, examples: Sequence[TaggingExample]) -> bool:
        return all(e.tags is not None for e in examples)

    def label_names(self, train: Sequence[TaggingExample], given: list[str] | None) -> list[str]:
        if given:
            return list(given)
        tags = {t for e in train if e.tags for t in e.tags}
        if not tags:
            raise PretuneError("no tags in the training data: expected token<TAB>tag lines")
        return sorted(tags, key=lambda t: (t != "O", t))

    def head_outputs(self, spec: TaskSpec) -> int:
        if not spec.labels:
            raise PretuneError("a tagging task needs its tag names (labels) in the task settings")
        return len(spec.labels)

    def features(self, examples, spec, tokenizer, model_family, *, train=False, no_truncate=False) -> FeatureSet:
        return tagging_features(tokenizer, examples, spec.max_seq_len, spec.labels, no_truncate, model_family)

    def forward(self, model: Any, hidden: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        logits = model.head(hidden)  # (b, t, tags)
        labels = batch.get("labels")
        if labels is None:
            return logits, None
        total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        return logits, total / model.denominator(batch, (labels != IGNORE).sum())

    def loss_items(self, batch: dict[str, Tensor]) -> Tensor | None:
        labels = batch.get("labels")
        return None if labels is None else (labels != IGNORE).sum()

    def decode(self, spec, examples, fs, logits) -> Predictions:
        return Predictions(word_tags(fs.features, logits, spec.labels or []))

    def score(self, spec, examples, preds) -> dict[str, float | None]:
        scores = m.entity_scores(preds.values, [list(e.tags) for e in examples])
        return {name: scores[name] for name in spec.metric_names}

    def scored_with(self, spec: TaskSpec) -> str:
        return "seqeval (conlleval mode)"

    def records(self, spec, examples, preds) -> list[dict[str, Any]]:
        return [{"source": e.source, "tokens": list(e.tokens), "tags": tags} for e, tags in zip(examples, preds.values)]


__all__ = ["Tagging", "TaggingExample", "read_conll", "tagging_features", "word_pieces", "word_tags"]

