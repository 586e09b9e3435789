"""Token shards and pretraining instances on real text: masking, NSP, GPT windows, cache, resumption."""

from __future__ import annotations

import gzip
import itertools
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pretune.data import shards
from pretune.data.pretraining import (
    BertInstanceConfig,
    BertPretrainingStream,
    GPTPretrainingStream,
    Instances,
    _truncate_counts,
    create_instances,
    iter_eval_batches,
    mask_tokens,
)
from pretune.data.shards import PreparedCorpus, is_val_document, prepare_corpus, token_dtype
from pretune.errors import PretuneError
from pretune.tokenizer import Tokenizer, train_tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NSMC_UNLABELED = DATA / "nsmc" / "unlabeled.txt.gz"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"data file not found: {path} (see shared/data/README.md)")
    return path


# --- fixtures: a real Korean slice (BERT) and a Shakespeare slice (GPT) ------------------------


@pytest.fixture(scope="module")
def nsmc_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 30,000 lines of the NSMC unlabeled corpus: ~650 movies (documents) of reviews."""
    with gzip.open(need(NSMC_UNLABELED), "rt", encoding="utf-8") as fh:
        lines = list(itertools.islice(fh, 30_000))
    path = tmp_path_factory.mktemp("nsmc") / "slice.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wordpiece(nsmc_file: Path) -> Tokenizer:
    return train_tokenizer([nsmc_file], "wordpiece", 8000, show_progress=False)


@pytest.fixture(scope="module")
def bert_corpus(nsmc_file: Path, wordpiece: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> PreparedCorpus:
    return prepare_corpus([nsmc_file], wordpiece, tmp_path_factory.mktemp("cache"), mode="bert", progress=False)


@pytest.fixture(scope="module")
def shakespeare_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shakespeare") / "slice.txt"
    path.write_bytes(need(SHAKESPEARE).read_bytes()[:200_000])
    return path


@pytest.fixture(scope="module")
def bpe(shakespeare_file: Path) -> Tokenizer:
    return train_tokenizer([shakespeare_file], "bpe", 1000, show_progress=False)


@pytest.fixture(scope="module")
def gpt_corpus(shakespeare_file: Path, bpe: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> PreparedCorpus:
    return prepare_corpus([shakespeare_file], bpe, tmp_path_factory.mktemp("cache"), mode="gpt", progress=False)


def documents_of(path: Path) -> list[list[str]]:
    from pretune.data.corpus import iter_documents

    return list(iter_documents([path]))


def special_mask(ids: np.ndarray, tok: Tokenizer) -> np.ndarray:
    return np.isin(ids, list(tok.special_ids))


def unmask(batch: dict) -> np.ndarray:
    """The instance's token ids before masking (labels put back at the predicted positions)."""
    ids = batch["input_ids"].numpy().copy()
    pos, lab = batch["mlm_positions"].numpy(), batch["mlm_labels"].numpy()
    rows, cols = np.nonzero(lab != -100)
    ids[rows, pos[rows, cols]] = lab[rows, cols]
    return ids


def collect(stream, n: int) -> list[dict]:
    return [next(stream) for _ in range(n)]


def same_batches(a: list[dict], b: list[dict]) -> bool:
    for x, y in zip(a, b, strict=True):
        if x.keys() != y.keys():
            return False
        for k in x:
            if (x[k] is None) != (y[k] is None) or (x[k] is not None and not torch.equal(x[k], y[k])):
                return False
    return True


# --- shards ----------------------------------------------------------------------------------


def test_shards_hold_every_sentence_of_every_document(nsmc_file: Path, wordpiece: Tokenizer, bert_corpus: PreparedCorpus) -> None:
    docs = documents_of(nsmc_file)
    meta = bert_corpus.meta
    assert meta["documents_read"] == len(docs)
    assert bert_corpus.num_documents("train") + bert_corpus.num_documents("val") == len(docs)
    val = is_val_document(np.arange(len(docs)), 0.01)
    for split, want in (("train", [d for d, v in zip(docs, val) if not v]), ("val", [d for d, v in zip(docs, val) if v])):
        toks, sent, doc = bert_corpus.tokens(split), bert_corpus.sentences(split), bert_corpus.documents(split)
        assert len(doc) == len(want) + 1 and sent[-1] == toks.size == bert_corpus.num_tokens(split)
        for d in [0, len(want) // 2, len(want) - 1]:
            got = [toks[sent[s] : sent[s + 1]].tolist() for s in range(doc[d], doc[d + 1])]
            assert got == wordpiece.encode_batch(want[d])


def test_validation_split_is_disjoint_stable_and_nonempty(nsmc_file: Path, wordpiece: Tokenizer, bert_corpus: PreparedCorpus, tmp_path: Path) -> None:
    frac = is_val_document(np.arange(200_000), 0.05).mean()
    assert abs(frac - 0.05) < 0.003
    assert np.array_equal(is_val_document(np.arange(1000), 0.2), is_val_document(np.arange(1000), 0.2))
    # a fresh preparation elsewhere (with the worker pool) gives the same split, byte for byte
    again = prepare_corpus([nsmc_file], wordpiece, tmp_path, mode="bert", workers=2, batch_docs=64, progress=False)
    assert again.path != bert_corpus.path
    for split in ("train", "val"):
        assert np.array_equal(again.tokens(split), bert_corpus.tokens(split))
        assert np.array_equal(again.sentences(split), bert_corpus.sentences(split))
        assert np.array_equal(again.documents(split), bert_corpus.documents(split))
    # no document text is in both splits
    def doc_texts(c: PreparedCorpus, split: str) -> set[bytes]:
        t, s, d = c.tokens(split), c.sentences(split), c.documents(split)
        return {t[s[d[i]] : s[d[i + 1]]].tobytes() for i in range(len(d) - 1)}

    assert not doc_texts(bert_corpus, "train") & doc_texts(bert_corpus, "val")
    # a tiny corpus still gets one validation document
    small = tmp_path / "small.txt"
    small.write_text("가 나\n\n다 라\n\n마 바\n", encoding="utf-8")
    c = prepare_corpus([small], wordpiece, tmp_path / "c2", progress=False)
    assert (c.num_documents("train"), c.num_documents("val")) == (2, 1)


def test_cache_reuse_skips_tokenization(nsmc_file: Path, wordpiece: Tokenizer, bert_corpus: PreparedCorpus, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*a: object, **k: object) -> None:
        raise AssertionError("tokenized again")

    monkeypatch.setattr(shards, "_encode", fail)
    monkeypatch.setattr(shards.corpus, "iter_documents", fail)
    t0 = time.perf_counter()
    again = prepare_corpus([nsmc_file], wordpiece, bert_corpus.path.parent, mode="bert", progress=False)
    assert time.perf_counter() - t0 < 1.0
    assert again.path == bert_corpus.path and again.meta == bert_corpus.meta
    # the key changes with the settings and the tokenizer's content, not with the file's identity only
    key = shards.cache_key([nsmc_file], wordpiece, mode="bert", val_fraction=0.01, skip_bad_lines=False)
    assert key == bert_corpus.key
    assert shards.cache_key([nsmc_file], wordpiece, mode="gpt", val_fraction=0.01, skip_bad_lines=False) != key
    assert shards.cache_key([nsmc_file], wordpiece, mode="bert", val_fraction=0.02, skip_bad_lines=False) != key
    other = Tokenizer.load(str(wordpiece.save(bert_corpus.path.parent / "tok")))
    other.add_special_tokens(["[NEW]"])
    assert shards.cache_key([nsmc_file], other, mode="bert", val_fraction=0.01, skip_bad_lines=False) != key


class BigVocab:
    """A tokenizer that reports a vocabulary over 65,535 ids (to force uint32 storage)."""

    def __init__(self, tok: Tokenizer) -> None:
        self._tok = tok

    def __getattr__(self, name: str) -> object:
        return getattr(self._tok, name)

    vocab_size = 70_000


def test_token_dtype_uint16_or_uint32(tmp_path: Path, wordpiece: Tokenizer) -> None:
    assert token_dtype(65_535) == np.uint16 and token_dtype(65_536) == np.uint32
    path = tmp_path / "c.txt"
    path.write_text("영화 정말 재밌다\n배우 연기 최고\n\n스토리 별로\n", encoding="utf-8")
    small = prepare_corpus([path], wordpiece, tmp_path / "a", progress=False)
    big = prepare_corpus([path], BigVocab(wordpiece), tmp_path / "b", progress=False)
    assert small.tokens("train").dtype == np.uint16 and big.tokens("train").dtype == np.uint32
    assert np.array_equal(small.tokens("train"), big.tokens("train"))


def test_empty_or_unusable_corpus_is_an_error(tmp_path: Path, wordpiece: Tokenizer) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(PretuneError, match="empty.txt"):
        prepare_corpus([empty], wordpiece, tmp_path / "c", progress=False)
    junk = tmp_path / "junk.txt"
    junk.write_text("\x01\x02\n\n\x03\n", encoding="utf-8")  # control characters: no tokens at all
    with pytest.raises(PretuneError, match="no usable document.*junk.txt"):
        prepare_corpus([junk], wordpiece, tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()  # no leftovers: not even the lock or the cache folder it made


def test_interrupted_preparation_leaves_no_cache(tmp_path: Path, nsmc_file: Path, wordpiece: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def boom(*args: object) -> None:
        calls.append(1)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(shards, "_store", boom)
        with pytest.raises(KeyboardInterrupt):
            prepare_corpus([nsmc_file], wordpiece, tmp_path, batch_docs=16, progress=False)
    assert calls and not [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]
    (tmp_path / ".tmp-stale").mkdir()  # what a killed run leaves is cleaned up by the next one
    key = shards.cache_key([nsmc_file], wordpiece, mode="bert", val_fraction=0.01, skip_bad_lines=False)
    (tmp_path / f".tmp-{key[:16]}-1-dead").mkdir()
    c = prepare_corpus([nsmc_file], wordpiece, tmp_path, batch_docs=16, progress=False)
    assert c.num_documents("train") > 0 and not (tmp_path / f".tmp-{key[:16]}-1-dead").exists()


# --- masking ---------------------------------------------------------------------------------


def test_mask_ratios_and_80_10_10(wordpiece: Tokenizer) -> None:
    rng = np.random.default_rng(0)
    n, t, vocab = 4000, 128, wordpiece.vocab_size
    lengths = rng.integers(20, t - 2, n)
    j = np.arange(t)[None, :]
    ids = rng.integers(5, vocab, (n, t))
    ids[:, 0] = wordpiece.cls_id
    ids[j == lengths[:, None] + 1] = wordpiece.sep_id
    ids[j > lengths[:, None] + 1] = wordpiece.pad_id
    special = special_mask(ids, wordpiece)
    random_ids = np.arange(5, vocab)
    out, pos, lab = mask_tokens(ids, special, rng, mask_id=wordpiece.mask_id, random_ids=random_ids, max_predictions=t)
    chosen = lab != -100
    n_real = (~special).sum(1)
    assert np.array_equal(chosen.sum(1), np.rint(n_real * 0.15))
    assert abs(chosen.sum() / n_real.sum() - 0.15) < 0.01
    rows, cols = np.nonzero(chosen)
    p = pos[rows, cols]
    assert not special[rows, p].any()  # never [CLS]/[SEP]/[PAD]
    assert np.array_equal(lab[rows, cols], ids[rows, p])
    new = out[rows, p]
    masked, kept = (new == wordpiece.mask_id).mean(), (new == ids[rows, p]).mean()
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(1 - masked - kept - 0.1) < 0.01
    assert not np.isin(new, list(wordpiece.special_ids - {wordpiece.mask_id})).any()
    untouched = np.ones_like(special)
    untouched[rows, p] = False
    assert np.array_equal(out[untouched], ids[untouched])
    # the cap and the 1-D form
    o1, p1, l1 = mask_tokens(ids[0], special[0], np.random.default_rng(1), mask_id=4, random_ids=random_ids, max_predictions=3)
    assert p1.shape == l1.shape == (3,) and (l1 != -100).sum() == 3 and np.all(np.diff(p1) > 0)


def test_stream_masking_statistics(bert_corpus: PreparedCorpus, wordpiece: Tokenizer) -> None:
    cfg = BertInstanceConfig(seq_len=128)
    assert cfg.max_predictions == 20
    stream = BertPretrainingStream(bert_corpus, "train", wordpiece, cfg, batch_size=64, seed=3)
    sel = real = masked = kept = 0
    for batch in collect(stream, 60):
        orig = unmask(batch)
        special = special_mask(orig, wordpiece)
        lab, pos = batch["mlm_labels"].numpy(), batch["mlm_positions"].numpy()
        rows, cols = np.nonzero(lab != -100)
        p = pos[rows, cols]
        assert not special[rows, p].any()
        assert np.array_equal(batch["input_ids"].numpy()[special], orig[special])  # specials untouched
        assert (orig[:, 0] == wordpiece.cls_id).all()
        sel += rows.size
        real += (~special).sum()
        new = batch["input_ids"].numpy()[rows, p]
        masked += (new == wordpiece.mask_id).sum()
        kept += (new == orig[rows, p]).sum()
    assert abs(sel / real - 0.15) < 0.01
    assert abs(masked / sel - 0.8) < 0.01 and abs(kept / sel - 0.1) < 0.01


def test_whole_word_masking_keeps_words_together(bert_corpus: PreparedCorpus, wordpiece: Tokenizer) -> None:
    # Korean: WordPiece splits each eojeol (space-separated word) into a first piece + ## pieces
    for text in ["이 영화 정말 재밌었어요 배우들의 연기가 최고", "스토리가 너무 지루하고 결말이 허무했다"]:
        pieces = wordpiece.tokenize(text)
        assert sum(not p.startswith("##") for p in pieces) == len(text.split())
    cfg = BertInstanceConfig(seq_len=128, whole_word_mask=True)
    stream = BertPretrainingStream(bert_corpus, "train", wordpiece, cfg, batch_size=64, seed=5)
    cont = np.array([(t or "").startswith("##") for t in wordpiece.convert_ids_to_tokens(range(wordpiece.vocab_size))])
    multi = sel = real = 0
    for batch in collect(stream, 20):
        orig = unmask(batch)
        special = special_mask(orig, wordpiece)
        chosen = np.zeros(orig.shape, bool)
        lab, pos = batch["mlm_labels"].numpy(), batch["mlm_positions"].numpy()
        rows, cols = np.nonzero(lab != -100)
        chosen[rows, pos[rows, cols]] = True
        starts = ~cont[orig] | special | np.pad(special[:, :-1], ((0, 0), (1, 0)), constant_values=True)
        word = np.cumsum(starts, axis=1)
        for r in range(orig.shape[0]):
            for w in np.unique(word[r][chosen[r]]):
                members = (word[r] == w) & ~special[r]
                assert chosen[r][members].all()  # every piece of a chosen word is chosen
                multi += members.sum() > 1
        sel += rows.size
        real += (~special).sum()
    assert multi > 50  # multi-piece words were masked whole
    assert abs(sel / real - 0.15) < 0.015  # the original's greedy fill keeps the ratio


# --- instances -------------------------------------------------------------------------------


def test_truncation_matches_the_original_loop() -> None:
    def loop(la: int, lb: int, m: int) -> tuple[int, int]:
        ka = kb = 0
        while la + lb > m:
            if la > lb:
                la, ka = la - 1, ka + 1
            else:
                lb, kb = lb - 1, kb + 1
        return ka, kb

    rnd = random.Random(0)
    for _ in range(2000):
        la, lb, m = rnd.randint(1, 200), rnd.randint(1, 200), rnd.randint(2, 200)
        assert _truncate_counts(la, lb, m) == loop(la, lb, m)


def instance_docs(c: PreparedCorpus, split: str, starts: np.ndarray) -> np.ndarray:
    """Document index of token offsets."""
    sent_doc = np.repeat(np.arange(c.num_documents(split)), np.diff(c.documents(split)))
    return sent_doc[np.searchsorted(c.sentences(split), starts, side="right") - 1]


def test_nsp_pairs_follow_the_original(bert_corpus: PreparedCorpus) -> None:
    cfg = BertInstanceConfig(seq_len=128)
    sent, docs = bert_corpus.sentences("train"), bert_corpus.documents("train")
    inst = create_instances(sent, docs, range(bert_corpus.num_documents("train")), cfg, random.Random(0))
    assert len(inst) > 4000
    # NSP stays balanced: a one-sentence chunk is not forced to a random next as in the original but,
    # half the time, cut inside its sentence into A and its continuation B (a deliberate deviation,
    # see the docstring of pretune/data/pretraining.py)
    assert abs((inst.nsp == 1).mean() - 0.5) < 0.02
    assert (inst.a_len >= 1).all() and (inst.b_len >= 1).all()
    assert (inst.a_len + inst.b_len <= cfg.seq_len - 3).all()
    da = instance_docs(bert_corpus, "train", inst.a_start)
    db = instance_docs(bert_corpus, "train", inst.b_start)
    assert np.array_equal(da, instance_docs(bert_corpus, "train", inst.a_start + inst.a_len - 1))
    nxt, rnd = inst.nsp == 0, inst.nsp == 1
    assert (da[nxt] == db[nxt]).all() and (da[rnd] != db[rnd]).all()
    # IsNext: B is exactly the text after A, unless truncation cut tokens in between
    full = inst.a_len + inst.b_len < cfg.seq_len - 3
    assert (inst.b_start[nxt & full] == (inst.a_start + inst.a_len)[nxt & full]).all()
    cut_inside = nxt & full & ~np.isin(inst.b_start, sent)  # an untruncated B starting mid-sentence
    assert cut_inside.sum() > 0.05 * nxt.sum()  # the original makes none: it never cuts a sentence
    assert (inst.b_start[nxt] >= (inst.a_start + inst.a_len)[nxt]).all()
    # A starts at a sentence boundary unless it was truncated from the front
    assert np.isin(inst.a_start[full], sent).mean() > 0.99


def test_batch_layout_segment_ids_and_lengths(bert_corpus: PreparedCorpus, wordpiece: Tokenizer) -> None:
    cfg = BertInstanceConfig(seq_len=64)
    stream = BertPretrainingStream(bert_corpus, "train", wordpiece, cfg, batch_size=32, seed=0)
    inst = stream.next_instances()
    batch = stream.builder.collate(inst)
    assert set(batch) == {"input_ids", "token_type_ids", "padding_mask", "mlm_positions", "mlm_labels", "nsp_labels"}
    ids, types = unmask(batch), batch["token_type_ids"].numpy()
    pad = batch["padding_mask"].numpy() if batch["padding_mask"] is not None else np.ones_like(ids)
    toks = bert_corpus.tokens("train")
    for r in range(len(inst)):
        a = toks[inst.a_start[r] : inst.a_start[r] + inst.a_len[r]].tolist()
        b = toks[inst.b_start[r] : inst.b_start[r] + inst.b_len[r]].tolist()
        want = [wordpiece.cls_id, *a, wordpiece.sep_id, *b, wordpiece.sep_id]
        assert len(want) <= 64
        n = len(want)
        assert ids[r, :n].tolist() == want and (ids[r, n:] == wordpiece.pad_id).all()
        assert types[r].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (64 - n)
        assert pad[r].tolist() == [1] * n + [0] * (64 - n)
    assert batch["nsp_labels"].tolist() == inst.nsp.tolist()
    for key in ("input_ids", "token_type_ids", "mlm_positions", "mlm_labels", "nsp_labels"):
        assert batch[key].dtype == torch.int64


def test_short_seq_prob(bert_corpus: PreparedCorpus) -> None:
    sent, docs = bert_corpus.sentences("train"), bert_corpus.documents("train")
    lengths = {}
    for p in (0.0, 0.1, 1.0):
        inst = create_instances(sent, docs, range(300), BertInstanceConfig(seq_len=128, short_seq_prob=p), random.Random(1))
        total = inst.a_len + inst.b_len
        assert (total <= 125).all()
        lengths[p] = (total < 100).mean()
    assert lengths[0.0] < lengths[0.1] < lengths[1.0]


def test_no_nsp_mode(bert_corpus: PreparedCorpus, wordpiece: Tokenizer) -> None:
    cfg = BertInstanceConfig(seq_len=64, nsp=False, short_seq_prob=0.0)
    stream = BertPretrainingStream(bert_corpus, "train", wordpiece, cfg, batch_size=32, seed=0)
    inst = stream.next_instances()
    batch = stream.builder.collate(inst)
    assert "nsp_labels" not in batch and (batch["token_type_ids"] == 0).all()
    assert (inst.b_len == 0).all() and (inst.a_len <= 62).all() and (inst.a_len == 62).mean() > 0.7
    da = instance_docs(bert_corpus, "train", inst.a_start)
    assert np.array_equal(da, instance_docs(bert_corpus, "train", inst.a_start + inst.a_len - 1))
    ids = unmask(batch)
    toks = bert_corpus.tokens("train")
    for r in range(len(inst)):
        a = toks[inst.a_start[r] : inst.a_start[r] + inst.a_len[r]].tolist()
        assert ids[r, : len(a) + 2].tolist() == [wordpiece.cls_id, *a, wordpiece.sep_id]
    # every token of a document is in exactly one segment
    all_inst = create_instances(bert_corpus.sentences("train"), bert_corpus.documents("train"), [0, 1], cfg, random.Random(0))
    assert all_inst.a_len.sum() == bert_corpus.sentences("train")[bert_corpus.documents("train")[2]]


# --- streams ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [True, False])
def test_bert_stream_resumes_bit_exactly(bert_corpus: PreparedCorpus, wordpiece: Tokenizer, dynamic: bool) -> None:
    # small units and a small split so that the run crosses unit and epoch boundaries
    cfg = BertInstanceConfig(seq_len=64, dynamic_masking=dynamic, dupe_factor=2, chunk_docs=3)
    make = lambda: BertPretrainingStream(bert_corpus, "val", wordpiece, cfg, batch_size=16, seed=7)  # noqa: E731
    straight = make()
    reference = collect(straight, 40)
    assert straight.epoch >= 1
    first = make()
    collect(first, 17)
    state = first.state_dict()
    resumed = make()
    resumed.load_state_dict(torch.load(_roundtrip(state), weights_only=False))
    assert same_batches(collect(resumed, 23), reference[17:])
    # another seed is another stream, and a state saved under one seed is refused by the other
    # (what another epoch does to the masks: test_masks_are_redrawn_each_epoch_only_with_dynamic_masking)
    other = BertPretrainingStream(bert_corpus, "val", wordpiece, cfg, batch_size=16, seed=8)
    assert not same_batches(collect(other, 3), reference[:3])
    with pytest.raises(PretuneError, match="seed"):
        other.load_state_dict(state)


def _masked_by_epoch(stream: BertPretrainingStream, epochs: int) -> list[list[tuple]]:
    """Per epoch, sorted ``((a_start, a_len), masked input ids)`` of every instance the stream yields."""
    parts: list[list[Instances]] = [[] for _ in range(epochs)]
    while stream.epoch < epochs:
        epoch = stream.epoch  # a batch of one instance: the epoch it belongs to is the one before the call
        parts[epoch].append(stream.next_instances())
    out = []
    for chunks in parts:
        inst = Instances.concat(chunks)
        ids = stream.builder.collate(inst)["input_ids"].tolist()
        out.append(sorted(zip(zip(inst.a_start.tolist(), inst.a_len.tolist()), map(tuple, ids))))
    return out


@pytest.mark.parametrize("dynamic", [True, False])
def test_masks_are_redrawn_each_epoch_only_with_dynamic_masking(bert_corpus: PreparedCorpus, wordpiece: Tokenizer,
                                                                dynamic: bool) -> None:
    """Without NSP and short sequences every epoch makes the same instances (fixed runs of each
    document), so one instance's masks can be compared across epochs: dynamic masking (RoBERTa's)
    draws new ones every epoch; static masking (BERT's) visits the same dupe_factor copies again."""
    cfg = BertInstanceConfig(seq_len=64, nsp=False, short_seq_prob=0.0, dynamic_masking=dynamic, dupe_factor=2,
                             chunk_docs=3)
    first, second = _masked_by_epoch(BertPretrainingStream(bert_corpus, "val", wordpiece, cfg, batch_size=1, seed=7), 2)
    keys = [k for k, _ in first]
    assert keys == [k for k, _ in second] and len(set(keys)) > 100  # the same instances each epoch
    copies = 1 if dynamic else cfg.dupe_factor
    assert len(keys) == copies * len(set(keys))
    tokens = bert_corpus.tokens("val")
    assert all(ids[1:1 + n] != tuple(tokens[a:a + n].tolist()) for (a, n), ids in first)  # each has masked tokens
    same = sum(a == b for a, b in zip(first, second))
    if dynamic:
        assert same < len(keys) / 20  # new masks for (almost) every instance
    else:
        assert first == second  # the same masked copies, visited again
        pairs = {}
        for key, ids in first:
            pairs.setdefault(key, set()).add(ids)
        assert sum(len(v) == copies for v in pairs.values()) > 0.95 * len(pairs)  # the copies' masks differ


def _roundtrip(state: dict) -> object:
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_bert_ranks_split_the_global_batch(bert_corpus: PreparedCorpus, wordpiece: Tokenizer) -> None:
    cfg = BertInstanceConfig(seq_len=64, chunk_docs=50)
    one = BertPretrainingStream(bert_corpus, "train", wordpiece, cfg, batch_size=32, seed=1)
    ranks = [BertPretrainingStream(bert_corpus, "train", wordpiece, cfg, 32, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(30):
        full = next(one)
        parts = [next(s) for s in ranks]
        for key, value in full.items():
            if key == "padding_mask":
                value = value if value is not None else torch.ones_like(full["input_ids"])
                got = [p[key] if p[key] is not None else torch.ones_like(p["input_ids"]) for p in parts]
            else:
                got = [p[key] for p in parts]
            assert torch.equal(torch.cat(got), value), key
    assert ranks[0].state_dict() == ranks[1].state_dict() == one.state_dict()
    with pytest.raises(PretuneError, match="divisible"):
        BertPretrainingStream(bert_corpus, "train", wordpiece, cfg, 33, rank=0, world_size=2)


def test_gpt_windows_are_contiguous_with_eos_between_documents(shakespeare_file: Path, bpe: Tokenizer, gpt_corpus: PreparedCorpus) -> None:
    docs = documents_of(shakespeare_file)
    val = is_val_document(np.arange(len(docs)), 0.01)
    want = []
    for doc, v in zip(docs, val):
        if not v:
            want += bpe.encode("\n".join(doc)) + [bpe.eos_id]
    toks = gpt_corpus.tokens("train")
    assert toks.tolist() == want
    assert gpt_corpus.sentences("train").size == gpt_corpus.num_documents("train") + 1  # one text per document
    t, b = 64, 8
    stream = GPTPretrainingStream(gpt_corpus, "train", seq_len=t, batch_size=b, seed=0)
    n, step = stream.n_windows, t - 1  # windows overlap by one token
    assert n == (len(want) - 1) // step
    starts = np.lib.stride_tricks.sliding_window_view(toks, t)[::step][:n]
    seen, targets = [], Counter()
    for _ in range(-(-n // b)):
        batch = next(stream)
        assert set(batch) == {"input_ids", "labels"} and torch.equal(batch["input_ids"], batch["labels"])
        for row in batch["input_ids"].numpy():
            w = int(np.flatnonzero(np.all(starts == row, axis=1))[0])
            seen.append(w)
            if len(seen) <= n:
                targets.update(range(w * step + 1, w * step + t))  # the model predicts positions 1..t-1
    assert sorted(seen[:n]) == list(range(n))  # every window once per epoch
    assert seen[: n // 2] != sorted(seen[: n // 2])  # in shuffled order
    # every token but the stream's first is a target exactly once an epoch (up to the dropped tail)
    assert targets == Counter(range(1, n * step + 1)) and len(want) - 1 - n * step < step
    assert (toks == bpe.eos_id).sum() == gpt_corpus.num_documents("train")
    assert stream.state_dict()["windows"] == "overlap-1"


def test_gpt_stream_resume_and_ranks(gpt_corpus: PreparedCorpus) -> None:
    one = GPTPretrainingStream(gpt_corpus, "train", 64, 8, seed=2)
    reference = collect(one, 250)  # crosses an epoch
    assert one.epoch >= 1
    first = GPTPretrainingStream(gpt_corpus, "train", 64, 8, seed=2)
    collect(first, 101)
    resumed = GPTPretrainingStream(gpt_corpus, "train", 64, 8, seed=2)
    resumed.load_state_dict(first.state_dict())
    assert same_batches(collect(resumed, 149), reference[101:])
    ranks = [GPTPretrainingStream(gpt_corpus, "train", 64, 8, seed=2, rank=r, world_size=2) for r in range(2)]
    for step in range(20):
        parts = [next(s) for s in ranks]
        assert torch.equal(torch.cat([p["input_ids"] for p in parts]), reference[step]["input_ids"])


def test_eval_batches_are_fixed(bert_corpus: PreparedCorpus, wordpiece: Tokenizer, gpt_corpus: PreparedCorpus) -> None:
    cfg = BertInstanceConfig(seq_len=64)
    a = list(iter_eval_batches(bert_corpus, "val", batch_size=16, tokenizer=wordpiece, cfg=cfg))
    b = list(iter_eval_batches(bert_corpus, "val", batch_size=16, tokenizer=wordpiece, cfg=cfg))
    assert len(a) > 2 and same_batches(a, b)
    two = [list(iter_eval_batches(bert_corpus, "val", batch_size=16, tokenizer=wordpiece, cfg=cfg, rank=r, world_size=2)) for r in range(2)]
    assert same_batches(two[0] + two[1], a[0::2] + a[1::2])
    assert len(list(iter_eval_batches(bert_corpus, "val", batch_size=16, tokenizer=wordpiece, cfg=cfg, max_batches=2))) == 2
    assert same_batches(BertPretrainingStream.eval_batches(bert_corpus, wordpiece, cfg, 16, 2), a[:2])
    g = list(iter_eval_batches(gpt_corpus, "val", batch_size=4, seq_len=32))
    assert same_batches(GPTPretrainingStream.eval_batches(gpt_corpus, 32, 4), g)
    val = gpt_corpus.tokens("val")
    n = (val.size - 1) // 31  # the training windows' layout: 32 tokens, one of overlap
    rows = torch.cat([x["input_ids"] for x in g])
    assert rows.shape == (n, 32)
    assert rows[:, 1:].flatten().tolist() == val[1 : n * 31 + 1].tolist()  # every token after the first predicted once
    assert rows[0].tolist() == val[:32].tolist() and rows[1, 0] == rows[0, -1]


def test_too_small_corpus_and_wrong_inputs(tmp_path: Path, wordpiece: Tokenizer, bert_corpus: PreparedCorpus, gpt_corpus: PreparedCorpus) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text("영화 정말 재밌다\n배우 연기 최고\n\n스토리 별로\n결말 허무\n\n음악 좋다\n", encoding="utf-8")
    tiny = prepare_corpus([path], wordpiece, tmp_path / "c", progress=False)
    with pytest.raises(PretuneError, match=r"only \d+ BERT instances.*--batch-size"):
        BertPretrainingStream(tiny, "train", wordpiece, BertInstanceConfig(seq_len=128), batch_size=64)
    with pytest.raises(PretuneError, match=r"windows of --seq-len 1024.*--batch-size"):
        GPTPretrainingStream(gpt_corpus, "val", seq_len=1024, batch_size=64, seed=0)
    with pytest.raises(PretuneError, match="mode='gpt'"):
        GPTPretrainingStream(bert_corpus, "train", 64, 8, seed=0)
    other = Tokenizer.load(str(_other_tokenizer(wordpiece, tmp_path)))
    with pytest.raises(PretuneError, match="different tokenizer"):
        BertPretrainingStream(tiny, "train", other, BertInstanceConfig(seq_len=128), batch_size=1)
    with pytest.raises(PretuneError, match="seq-len"):
        BertInstanceConfig(seq_len=4)


def _other_tokenizer(tok: Tokenizer, tmp_path: Path) -> Path:
    other = Tokenizer.load(str(tok.save(tmp_path / "tok")))
    other.add_special_tokens(["[NEW]"])
    return other.save(tmp_path / "tok2")
