"""Pretraining examples from prepared shards: BERT segment pairs with masking, and GPT windows.

BERT instances follow google-research/bert ``create_pretraining_data.py``: walk a document's
sentences, accumulate them up to a target length (``seq_len - 3``; with probability
``short_seq_prob`` a random target in ``[2, seq_len - 3]``, drawn once per document as the
original does), split the chunk at a random sentence boundary into A and B, and with probability
1/2 replace B by a random span of another document (putting the unused sentences back), then
truncate the longer segment from the front or the back at random. An instance is
``[CLS] A [SEP] B [SEP]`` with segment ids 0 then 1 and an NSP label (0: B follows A, 1: B is
random). With ``nsp=False`` an instance is ``[CLS] A [SEP]`` with A a contiguous run of up to
``seq_len - 2`` tokens of one document.

Differences from the original, all deliberate: a chunk of a single sentence (a one-sentence
document, the last sentence of a document, or one sentence longer than the target) is not
forced to a random next segment: with probability 1/2 it is cut at a random token into A and
its continuation B, so NSP labels stay balanced (the original gives 55% random next on NSMC,
whose documents end in many one-sentence chunks); the random document is drawn uniformly from
the *other* documents (the original retries 10 times and may keep the same one); the number of
masked tokens is ``round(mask_prob * real tokens)`` (the original counts [CLS]/[SEP] too); the
random replacement token comes from the non-special vocabulary; in whole-word masking a ``##``
piece right after a special token starts a new word (the original would join it to the word
before [SEP]).

**Determinism and resumption.** Every random choice is a pure function of ``seed`` and a
position: documents are shuffled per epoch, cut into *units* of ``chunk_docs`` documents,
instances of a unit are created with a generator seeded by (seed, epoch, unit) and shuffled
within the unit, and each instance carries a 64-bit mask seed from which its masking is derived
by a counter-based hash. The stream's whole state is therefore the cursor (epoch, unit,
offset) and a resumed stream yields bit-identical batches. Units keep memory bounded (instances
are token *ranges* into the memory-mapped shard: 48 bytes each) and let the first batch come at
once; shuffling is global over documents and within a unit over instances.

**Dynamic masking** (default): instances and their masks are re-drawn every epoch.
**Static masking**: ``dupe_factor`` copies of the instances are created once with fixed masks;
an epoch visits all copies, units in a new order each epoch.

**Ranks.** ``batch_size`` is the global batch: step ``k`` uses instances ``[k*B, (k+1)*B)`` of the
single-process order and rank ``r`` of ``W`` yields the ``r``-th contiguous slice of ``B / W`` of
them. The union of the ranks' batches at a step is exactly the one-process batch, and the state
dict is the same on every rank (a checkpoint saved by rank 0 resumes all of them).

GPT: the split's token stream (documents separated by the end-of-text id) is cut into windows
of ``seq_len`` tokens that overlap by one: window ``w`` starts at token ``w * (seq_len - 1)``
(the tail shorter than a step is dropped); each epoch visits the windows in a new order.
``input_ids`` and ``labels`` are both the window and the model shifts (position t predicts t+1,
as in Hugging Face's LM heads), so a window has ``seq_len - 1`` targets: the overlap makes the
last token of one window the first input of the next, and every token of the stream but the very
first is a target exactly once per epoch (back-to-back windows never predicted their first
token). nanoGPT gets the same by taking ``seq_len + 1`` tokens and shifting them outside the
model; here the model's input stays within ``seq_len`` (its ``max_positions``). Held-out batches
use the same windows in order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pretune.data.settings import MaskingSettings
from pretune.data.shards import PreparedCorpus, splitmix64, tokenizer_digest
from pretune.errors import PretuneError

STATE_VERSION = 1
GPT_WINDOWS = "overlap-1"  # the GPT window layout, part of a stream's identity: a checkpoint of another is refused
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# seed-sequence tags: keep every random source independent
_TAG_DOC_PERM, _TAG_CREATE, _TAG_UNIT_SHUFFLE, _TAG_STATIC_ORDER, _TAG_EVAL, _TAG_GPT = range(1, 7)


# --- configuration ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class BertInstanceConfig(MaskingSettings):
    """How BERT pretraining instances are built and masked: the user's masking settings (one
    declaration, in :class:`pretune.data.settings.MaskingSettings`) plus the sequence length."""

    seq_len: int
    chunk_docs: int = 1024  # documents per unit of lazy instance creation
    # of the tokens chosen for prediction: the share shown as [MASK], the share replaced by a random
    # token, the rest kept (BERT 80/10/10; ELECTRA's generator input 85/0/15)
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    # ELECTRA: one uniform number per prediction slot, from the instance's seed, from which the
    # generator's replacement is sampled (a function of the data: the same for any number of processes)
    sample_uniforms: bool = False

    def __post_init__(self) -> None:
        minimum = 5 if self.nsp else 3
        if int(self.seq_len) < minimum:
            raise PretuneError(f"--seq-len must be at least {minimum} for BERT {'with' if self.nsp else 'without'} NSP, got {self.seq_len}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise PretuneError(f"short_seq_prob must be in [0, 1], got {self.short_seq_prob}")
        if not 0.0 < self.mask_prob < 1.0:
            raise PretuneError(f"--mask-prob must be in (0, 1), got {self.mask_prob}")
        if self.max_predictions is None:
            self.max_predictions = max(1, math.ceil(self.seq_len * self.mask_prob))
        if int(self.max_predictions) < 1:
            raise PretuneError(f"--max-predictions must be at least 1, got {self.max_predictions}")
        if int(self.dupe_factor) < 1:
            raise PretuneError(f"--dupe-factor must be at least 1, got {self.dupe_factor}")
        if int(self.chunk_docs) < 1:
            raise PretuneError(f"chunk_docs must be at least 1, got {self.chunk_docs}")
        if not (0.0 <= self.mask_fraction and 0.0 <= self.random_fraction and self.mask_fraction + self.random_fraction <= 1.0):
            raise PretuneError(f"mask_fraction {self.mask_fraction} and random_fraction {self.random_fraction} must be "
                               "non-negative and add up to at most 1")

    @property
    def max_tokens(self) -> int:
        """Tokens of A + B (without [CLS]/[SEP])."""
        return self.seq_len - 3 if self.nsp else self.seq_len - 2


# --- instances -------------------------------------------------------------------------------


@dataclass
class Instances:
    """BERT instances as token ranges into a split's flat token array (no B: ``b_len == 0``)."""

    a_start: np.ndarray  # int64
    a_len: np.ndarray  # int64
    b_start: np.ndarray  # int64
    b_len: np.ndarray  # int64
    nsp: np.ndarray  # int64: 0 IsNext, 1 random next, -1 no NSP
    seed: np.ndarray  # uint64 mask seed

    def __len__(self) -> int:
        return int(self.a_start.size)

    def take(self, index: np.ndarray | slice) -> Instances:
        return Instances(*(getattr(self, f)[index] for f in _FIELDS))

    @staticmethod
    def concat(parts: Sequence[Instances]) -> Instances:
        if len(parts) == 1:
            return parts[0]
        return Instances(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("a_start", "a_len", "b_start", "b_len", "nsp", "seed")


def _truncate_counts(la: int, lb: int, max_tokens: int) -> tuple[int, int]:
    """Tokens the original's loop removes from A and B: always from the longer one, B on ties."""
    excess = la + lb - max_tokens
    if excess <= 0:
        return 0, 0
    if la > lb:
        first = min(excess, la - lb)
        ka, kb = first, 0
    else:
        first = min(excess, lb - la)
        ka, kb = 0, first
    rest = excess - first
    return ka + rest // 2, kb + (rest + 1) // 2


def _front_count(k: int, rnd: random.Random) -> int:
    """How many of ``k`` removals are from the front (each one a fair coin): Binomial(k, 1/2)."""
    return bin(rnd.getrandbits(k)).count("1") if k > 0 else 0


class _Rows:
    """Instance fields collected as Python lists, then turned into an :class:`Instances`."""

    def __init__(self) -> None:
        self.a0: list[int] = []
        self.al: list[int] = []
        self.b0: list[int] = []
        self.bl: list[int] = []
        self.lab: list[int] = []

    def instances(self, nsp: bool) -> Instances:
        n = len(self.a0)
        if nsp:
            b_start, b_len, labels = (np.array(x, np.int64) for x in (self.b0, self.bl, self.lab))
        else:
            b_start, b_len, labels = np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, -1, np.int64)
        return Instances(np.array(self.a0, np.int64), np.array(self.al, np.int64), b_start, b_len, labels,
                         np.zeros(n, np.uint64))


def create_instances(
    sentences: np.ndarray,
    documents: np.ndarray,
    doc_ids: Sequence[int] | np.ndarray,
    cfg: BertInstanceConfig,
    rnd: random.Random,
) -> Instances:
    """Instances from the documents ``doc_ids`` (in that order) of one split.

    ``sentences``/``documents`` are the split's CSR offsets (``PreparedCorpus.sentences/documents``);
    random next segments come from any other document of the split. Mask seeds are left at 0.
    """
    rows = _Rows()
    for d in doc_ids:
        d = int(d)
        s0, s1 = int(documents[d]), int(documents[d + 1])
        target = cfg.max_tokens
        if rnd.random() < cfg.short_seq_prob:
            target = rnd.randint(2, cfg.max_tokens)
        if not cfg.nsp:
            lo, hi = int(sentences[s0]), int(sentences[s1])
            for start in range(lo, hi, target):
                rows.a0.append(start)
                rows.al.append(min(target, hi - start))
            continue
        _segment_pairs(sentences, documents, d, target, cfg.max_tokens, rnd, rows)
    return rows.instances(cfg.nsp)


def _segment_pairs(sentences: np.ndarray, documents: np.ndarray, d: int, target: int, max_tokens: int,
                   rnd: random.Random, rows: _Rows) -> None:
    """google-research/bert's walk over one document: chunks of sentences up to ``target`` tokens,
    each split into A and B (B the continuation, or with probability 1/2 a random segment)."""
    s0, s1 = int(documents[d]), int(documents[d + 1])
    offs = sentences[s0 : s1 + 1].tolist()
    n = s1 - s0
    i = chunk = length = 0
    while i < n:
        length += offs[i + 1] - offs[i]
        if i == n - 1 or length >= target:
            k = i - chunk + 1
            a_end = chunk + (rnd.randint(1, k - 1) if k >= 2 else 1)
            a_lo, a_hi = offs[chunk], offs[a_end]
            can_follow = k >= 2 or a_hi - a_lo >= 2
            if not can_follow or rnd.random() < 0.5:
                label = 1
                b_lo, b_hi = _random_segment(sentences, documents, d, target - (a_hi - a_lo), rnd)
                i = a_end - 1  # put the unused sentences back
            else:
                label = 0
                if k == 1:  # one sentence: B is its tail, cut at a random token
                    a_hi = rnd.randint(a_lo + 1, a_hi - 1)
                b_lo, b_hi = a_hi, offs[i + 1]
            ka, kb = _truncate_counts(a_hi - a_lo, b_hi - b_lo, max_tokens)
            fa, fb = _front_count(ka, rnd), _front_count(kb, rnd)
            rows.a0.append(a_lo + fa)
            rows.al.append(a_hi - a_lo - ka)
            rows.b0.append(b_lo + fb)
            rows.bl.append(b_hi - b_lo - kb)
            rows.lab.append(label)
            chunk = i + 1
            length = 0
        i += 1


def _random_segment(sentences: np.ndarray, documents: np.ndarray, d: int, target_b: int,
                    rnd: random.Random) -> tuple[int, int]:
    """A random next segment: sentences of another document from a random start, up to ``target_b`` tokens."""
    n_docs = len(documents) - 1
    if n_docs > 1:
        other = rnd.randrange(n_docs - 1)
        other += other >= d
    else:  # a one-document split: the original falls back to the same document
        other = d
    r0, r1 = int(documents[other]), int(documents[other + 1])
    start = r0 + rnd.randint(0, r1 - r0 - 1)
    b_lo = int(sentences[start])
    ends = sentences[start + 1 : r1 + 1]
    j = min(int(np.searchsorted(ends, b_lo + target_b, side="left")), len(ends) - 1)
    return b_lo, int(ends[j])


# --- masking ---------------------------------------------------------------------------------


def _num_to_predict(special_mask: np.ndarray, mask_prob: float, max_predictions: int) -> np.ndarray:
    n_real = (~special_mask).sum(axis=1)
    k = np.minimum(max_predictions, np.maximum(1, np.rint(n_real * mask_prob).astype(np.int64)))
    return np.minimum(k, n_real)


def _select_positions(
    special_mask: np.ndarray,
    keys: np.ndarray,
    k: np.ndarray,
    max_predictions: int,
    word_starts: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions (n, P) and their validity: ``k`` random non-special tokens per row (whole
    words when ``word_starts`` is given), chosen in the order of ``keys``."""
    n, t = special_mask.shape
    p = max_predictions
    slot = np.arange(p)
    if word_starts is None:
        order = np.argsort(np.where(special_mask, 2.0, keys), axis=1, kind="stable")[:, :p]
        if order.shape[1] < p:
            order = np.pad(order, ((0, 0), (0, p - order.shape[1])))
        valid = slot[None, :] < k[:, None]
        pos = np.sort(np.where(valid, order, t), axis=1)
        return np.where(valid, pos, 0), valid
    cand = ~special_mask
    prev_special = np.ones_like(special_mask)
    prev_special[:, 1:] = special_mask[:, :-1]
    starts = cand & (word_starts | prev_special)
    unit = np.cumsum(starts, axis=1) - 1
    pos = np.zeros((n, p), np.int64)
    count = np.zeros(n, np.int64)
    for r in range(n):
        st = np.flatnonzero(starts[r])
        if st.size == 0 or k[r] == 0:
            continue
        sizes = np.bincount(unit[r][cand[r]], minlength=st.size)
        order = np.argsort(keys[r, st], kind="stable")
        cs = np.cumsum(sizes[order])
        m = int(np.searchsorted(cs, k[r], side="right"))  # whole prefix that fits
        chosen = np.zeros(st.size, bool)
        chosen[order[:m]] = True
        total = int(cs[m - 1]) if m else 0
        for u in order[m + 1 :]:  # as the original: skip words that overflow, keep filling
            if total >= k[r]:
                break
            if total + sizes[u] <= k[r]:
                chosen[u] = True
                total += int(sizes[u])
        sel = np.flatnonzero(cand[r] & chosen[unit[r]])
        pos[r, : sel.size] = sel
        count[r] = sel.size
    return pos, slot[None, :] < count[:, None]


def _apply_masks(
    ids: np.ndarray,
    pos: np.ndarray,
    valid: np.ndarray,
    u: np.ndarray,
    r: np.ndarray,
    mask_id: int,
    random_ids: np.ndarray,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """80% [MASK], 10% a random non-special token, 10% unchanged (other shares as given; ELECTRA
    85/0/15); labels -100 in unused slots."""
    rows = np.arange(ids.shape[0])[:, None]
    original = ids[rows, pos]
    labels = np.where(valid, original, -100).astype(np.int64)
    rand = random_ids[np.minimum((r * random_ids.size).astype(np.int64), random_ids.size - 1)]
    # u in [mask_fraction, 1 - random_fraction) keeps the token: BERT's default draws as before
    new = np.where(u < mask_fraction, mask_id, np.where(u < 1.0 - random_fraction, original, rand))
    out = ids.copy()
    rr, cc = np.nonzero(valid)
    out[rr, pos[rr, cc]] = new[rr, cc]
    return out, labels


def mask_tokens(
    ids: np.ndarray,
    special_mask: np.ndarray,
    rng: np.random.Generator,
    *,
    mask_id: int,
    random_ids: np.ndarray,
    mask_prob: float = 0.15,
    max_predictions: int = 20,
    word_starts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BERT's masked-LM corruption of ``ids`` (shape (t,) or (n, t)); a pure function of ``rng``.

    Chooses ``min(max_predictions, max(1, round(n_real * mask_prob)))`` positions among the
    tokens where ``special_mask`` is False (whole words when ``word_starts`` marks where words
    begin); of those 80% become ``mask_id``, 10% a token drawn from ``random_ids``, 10% stay.
    Returns ``(masked_ids, positions, labels)``; positions and labels have ``max_predictions``
    slots, unused ones holding position 0 and label -100.
    """
    ids = np.asarray(ids)
    single = ids.ndim == 1
    ids2 = np.atleast_2d(ids)
    special = np.atleast_2d(np.asarray(special_mask, bool))
    starts = None if word_starts is None else np.atleast_2d(np.asarray(word_starts, bool))
    n, t = ids2.shape
    keys, u, r = rng.random((n, t)), rng.random((n, max_predictions)), rng.random((n, max_predictions))
    k = _num_to_predict(special, mask_prob, max_predictions)
    pos, valid = _select_positions(special, keys, k, max_predictions, starts)
    out, labels = _apply_masks(ids2, pos, valid, u, r, mask_id, np.asarray(random_ids))
    if single:
        return out[0], pos[0], labels[0]
    return out, pos, labels


def _uniforms(seeds: np.ndarray, n: int, salt: int) -> np.ndarray:
    """(len(seeds), n) uniforms in [0, 1): a counter-based hash of (seed, salt, column)."""
    with np.errstate(over="ignore"):
        base = splitmix64(seeds.astype(np.uint64) + np.uint64(salt) * _GOLDEN)
        x = splitmix64(base[:, None] + (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)[None, :])
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _seed_int(*entropy: int) -> int:
    """A 64-bit integer from a SeedSequence over ``entropy`` (non-negative ints)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0])


def _mask_seeds(unit_seed: int, n: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return splitmix64(np.uint64(unit_seed) + np.arange(n, dtype=np.uint64) * _GOLDEN)


# --- BERT ------------------------------------------------------------------------------------


class _BertBuilder:
    """Turns instances into model batches: token ids, segments, padding, masks."""

    def __init__(self, corpus: PreparedCorpus, split: str, tokenizer: Any, cfg: BertInstanceConfig) -> None:
        _check_corpus(corpus, "bert", tokenizer)
        if tokenizer.kind != "wordpiece":
            raise PretuneError(f"BERT pretraining needs a wordpiece tokenizer, got {tokenizer.kind}")
        self.cfg = cfg
        self.split = split
        self.tokens = corpus.tokens(split)
        self.sentences = corpus.sentences(split)
        self.documents = corpus.documents(split)
        self.n_docs = corpus.num_documents(split)
        self.cls, self.sep, self.pad, self.mask = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id
        vocab = tokenizer.vocab_size
        special = np.zeros(vocab, bool)
        special[list(tokenizer.special_ids)] = True
        self.random_ids = np.flatnonzero(~special)
        self.continuation = None
        if cfg.whole_word_mask:
            self.continuation = np.array(
                [(tok or "").startswith("##") for tok in tokenizer.convert_ids_to_tokens(range(vocab))], bool
            ) & ~special

    def collate(self, inst: Instances) -> dict[str, torch.Tensor | None]:
        cfg = self.cfg
        t = cfg.seq_len
        j = np.arange(t)[None, :]
        la, lb = inst.a_len[:, None], inst.b_len[:, None]
        has_b = lb > 0
        in_a = (j >= 1) & (j <= la)
        in_b = (j >= la + 2) & (j < la + 2 + lb)
        src = np.where(in_a, inst.a_start[:, None] + j - 1, np.where(in_b, inst.b_start[:, None] + j - la - 2, 0))
        ids = np.where(in_a | in_b, self.tokens[src] if self.tokens.size else 0, self.pad).astype(np.int64)
        ids[:, 0] = self.cls
        ids[np.broadcast_to(j == la + 1, ids.shape)] = self.sep
        ids[np.broadcast_to(has_b & (j == la + lb + 2), ids.shape)] = self.sep
        length = la + 2 + np.where(has_b, lb + 1, 0)
        real = j < length
        types = (has_b & (j >= la + 2) & real).astype(np.int64)
        special = ~(in_a | in_b)
        starts = None if self.continuation is None else ~self.continuation[ids]
        seeds = inst.seed
        k = _num_to_predict(special, cfg.mask_prob, cfg.max_predictions)
        pos, valid = _select_positions(special, _uniforms(seeds, t, 1), k, cfg.max_predictions, starts)
        p = cfg.max_predictions
        masked, labels = _apply_masks(ids, pos, valid, _uniforms(seeds, p, 2), _uniforms(seeds, p, 3), self.mask, self.random_ids,
                                      cfg.mask_fraction, cfg.random_fraction)
        batch: dict[str, torch.Tensor | None] = {
            "input_ids": torch.from_numpy(masked),
            "token_type_ids": torch.from_numpy(types),
            "padding_mask": None if real.all() else torch.from_numpy(real.astype(np.int64)),
            "mlm_positions": torch.from_numpy(pos.astype(np.int64)),
            "mlm_labels": torch.from_numpy(labels),
        }
        if cfg.nsp:
            batch["nsp_labels"] = torch.from_numpy(inst.nsp.copy())
        if cfg.sample_uniforms:
            batch["sample_uniforms"] = torch.from_numpy(_uniforms(seeds, p, 4).astype(np.float32))
        return batch

    def create(self, doc_ids: np.ndarray, unit_seed: int) -> Instances:
        """Instances of ``doc_ids`` with a generator and mask seeds derived from ``unit_seed``."""
        inst = create_instances(self.sentences, self.documents, doc_ids, self.cfg, random.Random(unit_seed))
        inst.seed = _mask_seeds(unit_seed, len(inst))
        return inst


class BertPretrainingStream:
    """Endless, resumable stream of BERT pretraining batches (see the module docstring).

    Batches are dicts with the keyword names of ``BERT.forward``: ``input_ids``,
    ``token_type_ids``, ``padding_mask`` (None when no row is padded), ``mlm_positions``,
    ``mlm_labels`` (``max_predictions`` slots, label -100 when unused) and ``nsp_labels`` (absent
    with ``nsp=False``). ``batch_size`` is global; each rank yields ``batch_size // world_size`` rows.
    """

    def __init__(
        self,
        corpus: PreparedCorpus,
        split: str,
        tokenizer: Any,
        cfg: BertInstanceConfig,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.local_batch_size = _check_ranks(batch_size, rank, world_size)
        self.builder = _BertBuilder(corpus, split, tokenizer, cfg)
        if self.builder.n_docs == 0:
            raise PretuneError(f"{corpus.path}: the {split} split has no documents")
        self.corpus, self.split, self.cfg = corpus, split, cfg
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, int(seed), rank, world_size
        self.n_chunks = -(-self.builder.n_docs // cfg.chunk_docs)
        self.units_per_epoch = self.n_chunks * (1 if cfg.dynamic_masking else cfg.dupe_factor)
        self.epoch = self.unit = self.offset = 0
        self._unit_cache: tuple[tuple[int, int], Instances] | None = None
        self._plan_cache: tuple[int, np.ndarray] | None = None
        self._static_perm: np.ndarray | None = None
        self._check_size()

    # -- plan -----------------------------------------------------------------------------
    def _perm(self, *tags: int) -> np.ndarray:
        return np.random.default_rng([self.seed, *tags]).permutation(self.builder.n_docs)

    def _epoch_plan(self, epoch: int) -> np.ndarray:
        """Dynamic: this epoch's document order. Static: this epoch's order of (copy, chunk) units."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            if self.cfg.dynamic_masking:
                plan = self._perm(_TAG_DOC_PERM, epoch)
            else:
                plan = np.random.default_rng([self.seed, _TAG_STATIC_ORDER, epoch]).permutation(self.units_per_epoch)
            self._plan_cache = (epoch, plan)
        return self._plan_cache[1]

    def _make_unit(self, epoch: int, unit: int) -> Instances:
        c, size = self.cfg, self.cfg.chunk_docs
        plan = self._epoch_plan(epoch)
        if c.dynamic_masking:
            docs = plan[unit * size : (unit + 1) * size]
            unit_seed = _seed_int(self.seed, _TAG_CREATE, epoch, unit)
        else:
            copy, chunk = divmod(int(plan[unit]), self.n_chunks)
            if self._static_perm is None:
                self._static_perm = self._perm(_TAG_DOC_PERM, 1 << 31)
            docs = self._static_perm[chunk * size : (chunk + 1) * size]
            unit_seed = _seed_int(self.seed, _TAG_CREATE, 1 << 31, copy, chunk)  # fixed across epochs
        inst = self.builder.create(docs, unit_seed)
        shuffle = np.random.default_rng([self.seed, _TAG_UNIT_SHUFFLE, epoch, unit]).permutation(len(inst))
        return inst.take(shuffle)

    def _current(self) -> Instances:
        key = (self.epoch, self.unit)
        if self._unit_cache is None or self._unit_cache[0] != key:
            self._unit_cache = (key, self._make_unit(*key))
        return self._unit_cache[1]

    def _check_size(self) -> None:
        if self.builder.n_docs >= self.batch_size:
            return  # every document makes at least one instance per unit pass
        total = sum(len(self._make_unit(0, u)) for u in range(self.units_per_epoch))
        if total < self.batch_size:
            b = self.builder
            raise PretuneError(
                f"{self.corpus.path}: the {self.split} split makes only {total} BERT instances per epoch "
                f"({b.tokens.size:,} tokens in {b.n_docs} documents) but one batch needs {self.batch_size}; "
                "lower --batch-size or --seq-len, or add data"
            )

    # -- iteration ------------------------------------------------------------------------
    def __iter__(self) -> BertPretrainingStream:
        return self

    def next_instances(self) -> Instances:
        """The next global batch of instances (all ranks' rows), advancing the cursor."""
        parts, need = [], self.batch_size
        while need:
            inst = self._current()
            take = min(need, len(inst) - self.offset)
            parts.append(inst.take(slice(self.offset, self.offset + take)))
            self.offset += take
            need -= take
            if self.offset >= len(inst):
                self.offset = 0
                self.unit += 1
                if self.unit == self.units_per_epoch:
                    self.unit, self.epoch = 0, self.epoch + 1
        return Instances.concat(parts)

    def __next__(self) -> dict[str, torch.Tensor | None]:
        inst = self.next_instances()
        b = self.local_batch_size
        return self.builder.collate(inst.take(slice(self.rank * b, (self.rank + 1) * b)))

    @staticmethod
    def eval_batches(
        corpus: PreparedCorpus,
        tokenizer: Any,
        cfg: BertInstanceConfig,
        batch_size: int,
        max_batches: int | None = None,
        *,
        split: str = "val",
        seed: int = 0,
    ) -> list[dict[str, torch.Tensor | None]]:
        """A fixed list of evaluation batches (see :func:`iter_eval_batches`)."""
        return list(
            iter_eval_batches(corpus, split, batch_size=batch_size, tokenizer=tokenizer, cfg=cfg, seed=seed, max_batches=max_batches)
        )

    # -- state ----------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"kind": "bert", "corpus": self.corpus.key, "split": self.split, "seed": self.seed, "config": asdict(self.cfg)}

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch yielded; identical on every rank."""
        return {"version": STATE_VERSION, **self._identity(), "epoch": self.epoch, "unit": self.unit, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, self._identity())
        self.epoch, self.unit, self.offset = int(state["epoch"]), int(state["unit"]), int(state["offset"])


# --- GPT -------------------------------------------------------------------------------------


class GPTPretrainingStream:
    """Endless, resumable stream of GPT batches: ``{"input_ids", "labels"}``, both (b, seq_len) int64.

    ``batch_size`` is global; rank ``r`` yields the ``r``-th slice of ``batch_size // world_size``
    windows of each global batch.
    """

    def __init__(
        self,
        corpus: PreparedCorpus,
        split: str,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_corpus(corpus, "gpt", None)
        self.local_batch_size = _check_ranks(batch_size, rank, world_size)
        if seq_len < 2:
            raise PretuneError(f"--seq-len must be at least 2, got {seq_len}")
        self.corpus, self.split = corpus, split
        self.seq_len, self.batch_size, self.seed = int(seq_len), int(batch_size), int(seed)
        self.rank, self.world_size = rank, world_size
        self.tokens = corpus.tokens(split)
        self.n_windows = gpt_windows(self.tokens.size, self.seq_len)
        if self.n_windows < self.batch_size:
            raise PretuneError(
                f"{corpus.path}: the {split} split has {self.tokens.size:,} tokens, {self.n_windows} windows of "
                f"--seq-len {seq_len}, but one batch needs {batch_size}; lower --batch-size or --seq-len, or add data"
            )
        self.epoch = self.cursor = 0
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            self._perm_cache = (epoch, np.random.default_rng([self.seed, _TAG_GPT, epoch]).permutation(self.n_windows))
        return self._perm_cache[1]

    def __iter__(self) -> GPTPretrainingStream:
        return self

    def next_windows(self) -> np.ndarray:
        """Window indices of the next global batch, advancing the cursor."""
        parts, need = [], self.batch_size
        while need:
            take = min(need, self.n_windows - self.cursor)
            parts.append(self._perm(self.epoch)[self.cursor : self.cursor + take])
            self.cursor += take
            need -= take
            if self.cursor == self.n_windows:
                self.cursor, self.epoch = 0, self.epoch + 1
        return np.concatenate(parts)

    def __next__(self) -> dict[str, torch.Tensor]:
        windows = self.next_windows()
        b = self.local_batch_size
        return _gpt_batch(self.tokens, windows[self.rank * b : (self.rank + 1) * b], self.seq_len, self.seq_len - 1)

    @staticmethod
    def eval_batches(
        corpus: PreparedCorpus, seq_len: int, batch_size: int, max_batches: int | None = None, *, split: str = "val"
    ) -> list[dict[str, torch.Tensor]]:
        """A fixed list of evaluation batches (see :func:`iter_eval_batches`)."""
        return list(iter_eval_batches(corpus, split, batch_size=batch_size, seq_len=seq_len, max_batches=max_batches))

    def _identity(self) -> dict[str, Any]:
        return {"kind": "gpt", "corpus": self.corpus.key, "split": self.split, "seed": self.seed, "seq_len": self.seq_len,
                "windows": GPT_WINDOWS}

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, **self._identity(), "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, self._identity())
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def gpt_windows(n_tokens: int, seq_len: int) -> int:
    """Windows of ``seq_len`` tokens, one token of overlap, in a stream of ``n_tokens``."""
    return max(0, n_tokens - 1) // (seq_len - 1)


def _gpt_batch(tokens: np.ndarray, windows: np.ndarray, seq_len: int, stride: int) -> dict[str, torch.Tensor]:
    index = windows.astype(np.int64)[:, None] * stride + np.arange(seq_len)[None, :]
    ids = torch.from_numpy(tokens[index].astype(np.int64))
    return {"input_ids": ids, "labels": ids.clone()}


# --- evaluation ------------------------------------------------------------------------------


def iter_eval_batches(
    corpus: PreparedCorpus,
    split: str = "val",
    *,
    batch_size: int,
    tokenizer: Any = None,
    cfg: BertInstanceConfig | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    max_batches: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, torch.Tensor | None]]:
    """The same fixed batches on every call, for comparable evaluation across steps.

    BERT (``tokenizer`` and ``cfg`` needed): instances of the documents in file order, masks fixed
    by ``seed``. GPT (``seq_len`` needed): the training stream's windows (one token of overlap) in
    order, the tail dropped (a split shorter than one window gives one shorter window). The last batch may be smaller. With
    ``world_size > 1`` rank ``r`` gets batches ``r, r + W, ...`` (sum the metrics over ranks).
    """
    if not 0 <= rank < world_size:
        raise PretuneError(f"rank {rank} is outside world size {world_size}")
    if batch_size < 1:
        raise PretuneError(f"--batch-size must be at least 1, got {batch_size}")
    if corpus.num_documents(split) == 0:
        raise PretuneError(
            f"{corpus.path}: the {split} split is empty; prepare the corpus with a validation fraction above 0"
        )
    batches = _bert_eval(corpus, split, tokenizer, cfg, batch_size, seed) if corpus.mode == "bert" else (
        _gpt_eval(corpus, split, seq_len, batch_size)
    )
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            return
        if i % world_size == rank:
            yield batch


def _bert_eval(
    corpus: PreparedCorpus, split: str, tokenizer: Any, cfg: BertInstanceConfig | None, batch_size: int, seed: int
) -> Iterator[dict[str, torch.Tensor | None]]:
    if tokenizer is None or cfg is None:
        raise PretuneError("BERT evaluation batches need the tokenizer and the instance config")
    builder = _BertBuilder(corpus, split, tokenizer, cfg)
    pending: list[Instances] = []
    have = 0
    for start in range(0, builder.n_docs, cfg.chunk_docs):
        docs = np.arange(start, min(start + cfg.chunk_docs, builder.n_docs))
        inst = builder.create(docs, _seed_int(seed, _TAG_EVAL, start))
        pending.append(inst)
        have += len(inst)
        while have >= batch_size:
            allinst = Instances.concat(pending)
            yield builder.collate(allinst.take(slice(0, batch_size)))
            rest = allinst.take(slice(batch_size, None))
            pending, have = [rest], len(rest)
    if have:
        yield builder.collate(Instances.concat(pending))


def _gpt_eval(corpus: PreparedCorpus, split: str, seq_len: int | None, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    if seq_len is None or seq_len < 2:
        raise PretuneError("GPT evaluation batches need seq_len (at least 2)")
    tokens = corpus.tokens(split)
    n = gpt_windows(tokens.size, seq_len)
    if n == 0:
        yield _gpt_batch(tokens, np.zeros(1, np.int64), tokens.size, 0)
        return
    for start in range(0, n, batch_size):
        yield _gpt_batch(tokens, np.arange(start, min(start + batch_size, n)), seq_len, seq_len - 1)


# --- checks ----------------------------------------------------------------------------------


def _check_ranks(batch_size: int, rank: int, world_size: int) -> int:
    if batch_size < 1:
        raise PretuneError(f"--batch-size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise PretuneError(f"rank {rank} is outside world size {world_size}")
    if batch_size % world_size:
        raise PretuneError(
            f"--batch-size {batch_size} (the global batch) must be divisible by the number of processes ({world_size})"
        )
    return batch_size // world_size


def _check_corpus(corpus: PreparedCorpus, mode: str, tokenizer: Any) -> None:
    if corpus.mode != mode:
        raise PretuneError(
            f"{corpus.path}: prepared for {corpus.mode} pretraining, but {mode} needs a corpus prepared with mode={mode!r}"
        )
    if tokenizer is not None and corpus.meta["tokenizer"]["sha256"] != tokenizer_digest(tokenizer):
        raise PretuneError(f"{corpus.path}: prepared with a different tokenizer; prepare the corpus again with this one")


def _check_state(state: dict[str, Any], identity: dict[str, Any]) -> None:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise PretuneError("the checkpoint's data position has an unknown format; start without --resume")
    for key, value in identity.items():
        if state.get(key) != value:
            raise PretuneError(
                f"the checkpoint's data position was saved with {key}={state.get(key)!r}, this run has {value!r}; "
                "resume with the same corpus, tokenizer, seed and data settings"
            )
