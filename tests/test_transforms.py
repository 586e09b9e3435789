"""Input transformations of GPT-1 and BERT: exact token layouts, truncation, collation, batching."""

from __future__ import annotations

import dataclasses
import random
import warnings
from pathlib import Path

import pytest
import torch

from pretune.data.batching import Collator, FinetuneBatches
from pretune.errors import PretuneError
from pretune.tasks import TaskSpec, get_family
from pretune.tasks.base import IGNORE, truncate_pair
from pretune.tasks.choice import ChoiceExample, choice_features
from pretune.tasks.classification import TextExample, bert_features, gpt_features
from pretune.tasks.qa import QAExample, qa_features
from pretune.tasks.tagging import TaggingExample, tagging_features
from pretune.tokenizer import train_tokenizer

# The layouts by name, as the papers describe them (each family module builds them).


def gpt_classification(tok, examples, max_seq_len, targets, no_truncate=False):
    return gpt_features(tok, examples, targets, max_seq_len, "entailment", no_truncate)


def gpt_entailment(tok, examples, max_seq_len, targets, no_truncate=False):
    return gpt_features(tok, examples, targets, max_seq_len, "entailment", no_truncate)


def gpt_similarity(tok, examples, max_seq_len, targets, no_truncate=False):
    return gpt_features(tok, examples, targets, max_seq_len, "similarity", no_truncate)


def _with_targets(examples, targets):
    return [dataclasses.replace(e, label=t) for e, t in zip(examples, targets)]


def gpt_multiple_choice(tok, examples, max_seq_len, targets, no_truncate=False):
    return choice_features(tok, _with_targets(examples, targets), max_seq_len, no_truncate,
                           [tok.start_id], [tok.delim_id], [tok.extract_id], segments=False)


def bert_multiple_choice(tok, examples, max_seq_len, targets, no_truncate=False):
    return choice_features(tok, _with_targets(examples, targets), max_seq_len, no_truncate,
                           [tok.cls_id], [tok.sep_id], [tok.sep_id], segments=True)


def bert_classification(tok, examples, max_seq_len, targets, no_truncate=False):
    return bert_features(tok, examples, targets, max_seq_len, no_truncate)


def gpt_tagging(tok, examples, max_seq_len, labels, no_truncate=False):
    return tagging_features(tok, examples, max_seq_len, labels, no_truncate, "gpt")


def bert_tagging(tok, examples, max_seq_len, labels, no_truncate=False):
    return tagging_features(tok, examples, max_seq_len, labels, no_truncate, "bert")


bert_qa = qa_features


def build_features(examples, *, family, model_family, tokenizer, max_seq_len, labels=None, pair_mode="entailment",
                   no_truncate=False, doc_stride=128, max_query_len=64, train=False):
    fam = get_family(family)
    spec = TaskSpec(recipe=family, family=family, metric_names=list(fam.metric_names[:1]),
                    main_metric=fam.metric_names[0], labels=labels, max_seq_len=max_seq_len, pair_mode=pair_mode,
                    doc_stride=doc_stride, max_query_len=max_query_len)
    return fam.features(examples, spec, tokenizer, model_family, train=train, no_truncate=no_truncate)


WORDS = "the cat sat on a mat dog ran far away paris london is big small red blue green why who".split()



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(400)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wp(corpus: Path):
    return train_tokenizer([corpus], "wordpiece", 120, lowercase=True, show_progress=False)


@pytest.fixture(scope="module")
def bpe(corpus: Path):
    tok = train_tokenizer([corpus], "bpe", 300, show_progress=False)
    tok.ensure_gpt_special_tokens()
    return tok


def T(text: str, label=None, pair: str | None = None, source: str = "f.tsv:2") -> TextExample:
    return TextExample(text, pair, label, source)


# --------------------------------------------------------------------------------------------
# GPT-1: start text extract; start premise delim hypothesis extract; both orderings; choices


def test_gpt_classification_layout(bpe) -> None:
    fs = gpt_classification(bpe, [T("the cat sat")], 64, [1])
    enc = bpe.encode("the cat sat")
    assert fs.features[0]["input_ids"] == [bpe.start_id, *enc, bpe.extract_id]
    assert fs.features[0]["label"] == 1 and fs.truncated == 0
    assert bpe.convert_ids_to_tokens(fs.features[0]["input_ids"])[0] == "<|start|>"
    assert bpe.convert_ids_to_tokens(fs.features[0]["input_ids"])[-1] == "<|extract|>"


def test_gpt_entailment_layout(bpe) -> None:
    fs = gpt_entailment(bpe, [T("the cat sat", pair="a dog ran")], 64, [0])
    a, b = bpe.encode("the cat sat"), bpe.encode("a dog ran")
    assert fs.features[0]["input_ids"] == [bpe.start_id, *a, bpe.delim_id, *b, bpe.extract_id]


def test_gpt_similarity_both_orderings(bpe) -> None:
    fs = gpt_similarity(bpe, [T("the cat sat", pair="a dog ran")], 64, [2.5])
    a, b = bpe.encode("the cat sat"), bpe.encode("a dog ran")
    s, d, e = bpe.start_id, bpe.delim_id, bpe.extract_id
    assert fs.features[0]["input_ids"] == [[s, *a, d, *b, e], [s, *b, d, *a, e]]
    assert fs.features[0]["label"] == 2.5


def test_gpt_multiple_choice_one_sequence_per_choice(bpe) -> None:
    ex = ChoiceExample("the cat sat on a mat", ["red", "blue green", "why"], 1, "f.csv:2")
    fs = gpt_multiple_choice(bpe, [ex], 64, [1])
    ctx = bpe.encode("the cat sat on a mat")
    s, d, e = bpe.start_id, bpe.delim_id, bpe.extract_id
    assert fs.features[0]["input_ids"] == [[s, *ctx, d, *bpe.encode(c), e] for c in ex.choices]
    assert fs.features[0]["label"] == 1


def test_gpt_pair_mode_dispatch(bpe) -> None:
    ex = [T("the cat", 0.5, pair="a dog")]
    sim = build_features(ex, family="regression", model_family="gpt", tokenizer=bpe, max_seq_len=32, pair_mode="similarity")
    ent = build_features(ex, family="regression", model_family="gpt", tokenizer=bpe, max_seq_len=32, pair_mode="entailment")
    assert len(sim.features[0]["input_ids"]) == 2 and isinstance(ent.features[0]["input_ids"][0], int)


def test_gpt_tagging_first_subtoken(bpe) -> None:
    ex = TaggingExample(["paris", "is", "big"], ["B-LOC", "O", "O"], "f.conll:1")
    fs = gpt_tagging(bpe, [ex], 64, ["O", "B-LOC"])
    f = fs.features[0]
    assert f["input_ids"][0] == bpe.start_id and f["input_ids"][-1] == bpe.extract_id
    starts = f["word_starts"]
    assert [f["tags"][p] for p in starts] == [1, 0, 0]
    assert sum(t != IGNORE for t in f["tags"]) == 3


def test_qa_is_bert_only(bpe) -> None:
    ex = QAExample("q1", "who", "paris is big", [("paris", 0)], "f.json")
    with pytest.raises(PretuneError, match="span QA is BERT-only"):
        build_features([ex], family="qa", model_family="gpt", tokenizer=bpe, max_seq_len=32)


# --------------------------------------------------------------------------------------------
# BERT: [CLS] A [SEP] (B [SEP]) with segments; choices; QA windows; tagging


def test_bert_single_and_pair_layout(wp) -> None:
    fs = bert_classification(wp, [T("the cat sat"), T("the cat sat", pair="a dog ran")], 64, [0, 1])
    a, b = wp.encode("the cat sat"), wp.encode("a dog ran")
    cls, sep = wp.cls_id, wp.sep_id
    single, pair = fs.features
    assert single["input_ids"] == [cls, *a, sep] and single["token_type_ids"] == [0] * (len(a) + 2)
    assert pair["input_ids"] == [cls, *a, sep, *b, sep]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert wp.convert_ids_to_tokens(pair["input_ids"])[:2] == ["[CLS]", "the"]


def test_bert_multiple_choice_layout(wp) -> None:
    ex = ChoiceExample("the cat sat", ["red", "blue"], 0, "f.csv:2")
    fs = bert_multiple_choice(wp, [ex], 64, [0])
    ctx = wp.encode("the cat sat")
    cls, sep = wp.cls_id, wp.sep_id
    assert fs.features[0]["input_ids"] == [[cls, *ctx, sep, *wp.encode(c), sep] for c in ex.choices]
    assert fs.features[0]["token_type_ids"][1] == [0] * (len(ctx) + 2) + [1] * 2


def test_bert_tagging_labels_on_first_subtoken(wp) -> None:
    ex = TaggingExample(["paris", "catdog", "big"], ["B-LOC", "B-MISC", "O"], "f.conll:3")
    fs = bert_tagging(wp, [ex], 64, ["O", "B-LOC", "B-MISC"])
    f = fs.features[0]
    pieces = wp.encode("catdog")
    assert len(pieces) > 1  # a word cut into several sub-tokens
    assert f["input_ids"][0] == wp.cls_id and f["input_ids"][-1] == wp.sep_id
    assert [f["tags"][p] for p in f["word_starts"]] == [1, 2, 0]
    assert f["tags"][0] == IGNORE and f["tags"][-1] == IGNORE
    second = f["word_starts"][1]
    assert f["tags"][second + 1 : second + len(pieces)] == [IGNORE] * (len(pieces) - 1)


def test_bert_tagging_unseen_tag_names_the_line(wp) -> None:
    ex = TaggingExample(["paris"], ["B-XYZ"], "dev.conll:7")
    with pytest.raises(PretuneError, match=r"dev\.conll:7.*B-XYZ"):
        bert_tagging(wp, [ex], 64, ["O", "B-LOC"])


def _qa_example(wp) -> QAExample:
    words = [WORDS[i % len(WORDS)] for i in range(60)]
    words[45] = "london"
    context = " ".join(words)
    start = context.index("london")
    return QAExample("q1", "who is red", context, [("london", start)], "f.json (question q1)")


def test_bert_qa_windows_and_answer_positions(wp) -> None:
    ex = _qa_example(wp)
    fs = bert_qa(wp, [ex], 32, doc_stride=8, max_query_len=16, train=True)
    q = wp.encode("who is red")
    ctx_ids = wp.encode(ex.context)
    window = 32 - len(q) - 3
    assert len(fs.features) == 1 + -(-(len(ctx_ids) - window) // 8)
    hits = 0
    for k, f in enumerate(fs.features):
        assert f["input_ids"][: len(q) + 2] == [wp.cls_id, *q, wp.sep_id] and f["input_ids"][-1] == wp.sep_id
        assert f["input_ids"][len(q) + 2 : -1] == ctx_ids[8 * k : 8 * k + window]
        assert f["token_type_ids"] == [0] * (len(q) + 2) + [1] * (len(f["input_ids"]) - len(q) - 2)
        s, t = f["start_positions"], f["end_positions"]
        if s == 0:
            assert t == 0  # the answer is not in this window: point at [CLS]
            continue
        hits += 1
        assert wp.decode(f["input_ids"][s : t + 1]) == "london"
        o = f["offsets"]
        cs = f["context_start"]
        assert ex.context[o[s - cs][0] : o[t - cs][1]] == "london"
    assert hits >= 1 and hits < len(fs.features)


def test_bert_qa_question_truncation_counted_or_error(wp) -> None:
    ex = _qa_example(wp)
    fs = bert_qa(wp, [ex], 32, max_query_len=2)
    assert fs.truncated == 1
    with pytest.raises(PretuneError, match="--max-query-len"):
        bert_qa(wp, [ex], 32, max_query_len=2, no_truncate=True)


# --------------------------------------------------------------------------------------------
# Truncation


def _iterative(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    a, b = list(a), list(b)
    while len(a) + len(b) > budget:
        (a if len(a) > len(b) else b).pop()
    return a, b


def test_truncate_pair_matches_bert_longest_first() -> None:
    rng = random.Random(1)
    for _ in range(500):
        a, b = list(range(rng.randint(0, 40))), list(range(100, 100 + rng.randint(0, 40)))
        budget = rng.randint(2, 60)
        assert truncate_pair(a, b, budget) == _iterative(a, b, budget)


def test_truncation_is_counted_and_warned(wp) -> None:
    long = " ".join(["cat"] * 50)
    fs = bert_classification(wp, [T(long, source="a.tsv:2"), T("cat", source="a.tsv:3"), T(long, source="a.tsv:4")], 16, [0, 0, 0])
    assert fs.truncated == 2 and fs.truncated_sources == ["a.tsv:2", "a.tsv:4"]
    assert all(len(f["input_ids"]) <= 16 for f in fs.features)
    with pytest.warns(UserWarning, match="2 of 3 examples were longer than --max-seq-len"):
        fs.report()


def test_no_truncate_fails_naming_the_example(wp, bpe) -> None:
    long = " ".join(["cat"] * 50)
    with pytest.raises(PretuneError, match=r"a\.tsv:9: the input is \d+ tokens, longer than --max-seq-len 16"):
        bert_classification(wp, [T(long, source="a.tsv:9")], 16, [0], no_truncate=True)
    with pytest.raises(PretuneError, match="--no-truncate"):
        gpt_entailment(bpe, [T(long, pair="dog", source="a.tsv:9")], 16, [0], no_truncate=True)


def test_multiple_choice_context_cut_from_the_left(wp) -> None:
    ctx = " ".join(WORDS)
    ex = ChoiceExample(ctx, ["red", "blue"], 0, "s.csv:2")
    fs = bert_multiple_choice(wp, [ex], 12, [0])
    ids = fs.features[0]["input_ids"][0]
    assert len(ids) == 12 and fs.truncated == 1
    ctx_ids = wp.encode(ctx)
    assert ids[1:-3] == ctx_ids[-(12 - 3 - 1) :]  # the end of the context is kept


def test_unseen_label_names_file_and_line(wp) -> None:
    ex = [T("cat", "maybe", source="dev.tsv:12")]
    with pytest.raises(PretuneError, match=r"dev\.tsv:12: label 'maybe' was never seen in the training data"):
        build_features(ex, family="classification", model_family="bert", tokenizer=wp, max_seq_len=16, labels=["no", "yes"])


# --------------------------------------------------------------------------------------------
# Collation and batches


def test_collate_pads_to_longest_and_omits_mask_without_padding() -> None:
    c = Collator(pad_id=0)
    same = c([{"input_ids": [5, 6, 7], "label": 1}, {"input_ids": [8, 9, 10], "label": 0}])
    assert "padding_mask" not in same and same["input_ids"].shape == (2, 3)
    mixed = c([{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "label": 1.5},
               {"input_ids": [8], "token_type_ids": [0], "label": 0.5}])
    assert mixed["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mixed["padding_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert mixed["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert mixed["labels"].dtype == torch.float32


def test_collate_nested_choices_and_extract_positions() -> None:
    c = Collator(pad_id=3, extract=True)
    batch = c([{"input_ids": [[1, 2, 9], [1, 9]], "label": 0}, {"input_ids": [[1, 2, 2, 9], [1, 2, 9]], "label": 1}])
    assert batch["input_ids"].shape == (2, 2, 4)
    assert batch["extract_pos"].tolist() == [[2, 1], [3, 2]]
    assert batch["padding_mask"].shape == (2, 2, 4)
    ids = batch["input_ids"]
    assert (ids.gather(2, batch["extract_pos"].unsqueeze(-1)) == 9).all()


def test_collate_tags_padded_with_ignore() -> None:
    batch = Collator(0)([{"input_ids": [1, 2, 3], "tags": [IGNORE, 1, IGNORE]}, {"input_ids": [1, 3], "tags": [IGNORE, IGNORE]}])
    assert batch["labels"].tolist() == [[IGNORE, 1, IGNORE], [IGNORE, IGNORE, IGNORE]]


def _feats(n: int) -> list[dict]:
    return [{"input_ids": list(range(1 + i % 7)), "label": i} for i in range(n)]


def test_batches_seeded_epochs_cover_everything() -> None:
    feats = _feats(50)
    a = FinetuneBatches(feats, 8, Collator(0), seed=3)
    b = FinetuneBatches(feats, 8, Collator(0), seed=3)
    assert len(a) == 7
    it_a, it_b = iter(a), iter(b)
    epoch0 = [next(it_a)["labels"].tolist() for _ in range(7)]
    assert epoch0 == [next(it_b)["labels"].tolist() for _ in range(7)]
    assert sorted(x for batch in epoch0 for x in batch) == list(range(50))
    epoch1 = [next(it_a)["labels"].tolist() for _ in range(7)]
    assert epoch1 != epoch0 and sorted(x for batch in epoch1 for x in batch) == list(range(50))
    c = FinetuneBatches(feats, 8, Collator(0), seed=4)
    assert [next(iter(c))["labels"].tolist()] != epoch0[:1]


def test_batches_resume_exactly() -> None:
    feats = _feats(30)
    full = FinetuneBatches(feats, 4, Collator(0), seed=1)
    it = iter(full)
    seen = [next(it)["labels"].tolist() for _ in range(20)]
    part = FinetuneBatches(feats, 4, Collator(0), seed=1)
    it = iter(part)
    for _ in range(11):
        next(it)
    state = part.state_dict()
    resumed = FinetuneBatches(feats, 4, Collator(0), seed=1)
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert [next(it)["labels"].tolist() for _ in range(9)] == seen[11:]
    with pytest.raises(PretuneError, match="--seed"):
        FinetuneBatches(feats, 4, Collator(0), seed=2).load_state_dict(state)


def test_batches_rank_takes_contiguous_slice_of_global_batch() -> None:
    feats = _feats(40)
    whole = FinetuneBatches(feats, 8, Collator(0), seed=5, world_size=2)  # same order, rank slices
    order = whole.epoch_order(0)
    for rank in (0, 1):
        shard = FinetuneBatches(feats, 8, Collator(0), seed=5, rank=rank, world_size=2)
        it = iter(shard)
        for k in range(len(order)):
            assert next(it)["labels"].tolist() == order[k][4 * rank : 4 * rank + 4]
    with pytest.raises(PretuneError, match="divisible"):
        FinetuneBatches(feats, 7, Collator(0), world_size=2)


def test_group_by_length_reduces_padding() -> None:
    rng = random.Random(0)
    feats = [{"input_ids": [1] * rng.randint(1, 60), "label": 0} for _ in range(400)]

    def padded(batches: FinetuneBatches) -> int:
        it = iter(batches)
        return sum(int(next(it)["input_ids"].numel()) for _ in range(len(batches)))

    plain = padded(FinetuneBatches(feats, 16, Collator(0), seed=0))
    grouped = padded(FinetuneBatches(feats, 16, Collator(0), seed=0, group_by_length=True))
    assert grouped < 0.7 * plain
    g = FinetuneBatches(feats, 16, Collator(0), seed=0, group_by_length=True)
    assert sorted(i for b in g.epoch_order(0) for i in b) == list(range(400))


def test_feature_builders_never_warn_without_truncation(wp) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fs = bert_classification(wp, [T("the cat")], 16, [0])
        fs.report()
