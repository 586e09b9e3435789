"""What the pretrained models learned, measured: the "눈" example, the sense probes of 눈 and 별,
GPT-1's zero-shot sentiment and its layers-transferred analysis (figure 2)."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from typing import Any

import torch

from pretune.apps.demo.data import reviews
from pretune.apps.demo.settings import DemoSettings
from pretune.apps.demo.stages import finetune_stage
from pretune.checkpoint import load_model
from pretune.report import plot_lines, read_metrics
from pretune.senses import SENSE_SETS, plot_probes, read_senses, sense_probe, untrained_twin
from pretune.train.trainer import checkpoint_dirs

# The sense probe's sentences: 24 uses of "눈" as snow and 24 as eye (see the file's header).
SENSE_WORD, SENSES_DATA = SENSE_SETS["nun-ko"]

# The demo probes two words (their sets' names -> the stem of their plots' names): 눈, whose snow
# sense NSMC's reviews hardly use, and 별, whose two senses they use often and whose sentences are
# lines of the pretraining corpus itself.
PROBE_SETS = {"nun-ko": "senses", "byeol-ko": "senses_byeol"}
# Lines of NSMC's unlabeled corpus (all of it; non-blank lines) whose sense a pattern of
# benchmarks/count_senses.py sees (docs/demo.md: the patterns' precision, checked by hand).
CORPUS_LINES = 662_387
SENSE_LINES = {"nun-ko": {"snow": 110, "eye": 2_547}, "byeol-ko": {"star": 1_575, "particular": 1_936}}

# Senses of "눈" for the contextual-embedding example: snow and eye.
SNOW = ["눈이 와서 너무 좋다", "밤새 눈이 내려 길이 하얗다", "겨울에는 눈이 많이 온다"]
EYE = ["너의 눈이 너무 예쁘다", "그 배우는 눈이 정말 크다", "눈이 아파서 안과에 갔다"]

# Zero-shot sentiment for GPT: which continuation does the language model find more likely?
ZERO_SHOT = {"positive": " 최고의 영화", "negative": " 최악의 영화"}


def contextual_embedding_table(model_dir: Path) -> dict[str, Any]:
    """Cosine similarity between the vectors of "눈" in snow and eye sentences (final layer)."""
    from pretune.embed import embed, word_vector

    loaded = load_model(model_dir)
    items = embed(loaded.model, loaded.tokenizer, SNOW + EYE)
    vectors = [word_vector(item, "눈") for item in items]
    senses = ["snow"] * len(SNOW) + ["eye"] * len(EYE)
    n = len(vectors)
    sim = [[torch.nn.functional.cosine_similarity(vectors[i], vectors[j], dim=0).item() for j in range(n)] for i in range(n)]
    same = [sim[i][j] for i, j in itertools.combinations(range(n), 2) if senses[i] == senses[j]]
    cross = [sim[i][j] for i, j in itertools.combinations(range(n), 2) if senses[i] != senses[j]]
    return {
        "sentences": SNOW + EYE, "senses": senses, "tokens": [item.tokens for item in items], "cosine": sim,
        "same_sense_mean": sum(same) / len(same), "cross_sense_mean": sum(cross) / len(cross),
    }


def fitting_rows(model: Any, tokenizer: Any, rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``(sense, sentence)`` rows whose sentence the model takes whole: a demo run with short
    ``--seq-len`` and ``--finetune-seq-len`` gives its model few positions."""
    from pretune.embed import encode_for_model
    from pretune.errors import PretuneError

    kept = []
    for sense, text in rows:
        try:
            encode_for_model(model, tokenizer, text)
        except PretuneError:  # longer than the model's positions
            continue
        kept.append((sense, text))
    return kept


def contextual_embedding_stage(model_dir: Path, out: Path, s: DemoSettings) -> dict[str, Any]:
    """The "눈" example (:func:`contextual_embedding_table`) and the sense probes of
    :data:`PROBE_SETS`: the pretrained model at every layer (layer 0, the embeddings, is the
    near-static baseline) against its untrained twin (same config, fresh weights, ``s.seed``);
    plots ``<stem>_accuracy.png`` and ``<stem>_cosine.png`` of each set into ``out``. Sentences
    longer than the model's positions are left out (counted in ``left_out``); a set left with fewer
    than two sentences of a sense is not probed."""
    loaded = load_model(model_dir)
    models = {"pretrained": loaded.model, "untrained": untrained_twin(loaded.model, s.seed)}
    probes, left_out = {}, {}
    for name, stem in PROBE_SETS.items():
        word, path = SENSE_SETS[name]
        rows = read_senses(path)
        kept = fitting_rows(loaded.model, loaded.tokenizer, rows)
        left_out[name] = len(rows) - len(kept)
        if min(sum(x == sense for x, _ in kept) for sense in {x for x, _ in rows}) < 2:
            continue
        probes[name] = {k: sense_probe(model, loaded.tokenizer, kept, word) for k, model in models.items()}
        plot_probes(probes[name], out, stem)
    return {**contextual_embedding_table(model_dir), "probes": probes, "left_out": left_out}


@torch.no_grad()
def continuation_logprob(model: torch.nn.Module, prefix: list[int], continuation: list[int]) -> float:
    """log p(continuation | prefix) from the model's own language-model loss."""
    ids = torch.tensor([prefix + continuation])
    labels = torch.tensor([[-100] * len(prefix) + continuation])
    return -float(model(ids, labels=labels).loss) * len(continuation)


@torch.no_grad()
def zero_shot_accuracy(model_dir: Path, test_tsv: Path, limit: int = 500) -> float:
    """Sentiment from the pretrained GPT alone: the more likely continuation wins."""
    loaded = load_model(model_dir)
    model, tok = loaded.model.eval(), loaded.tokenizer
    rows = reviews(test_tsv)[:limit]
    cont = {k: tok.encode(v) for k, v in ZERO_SHOT.items()}
    correct = 0
    for e in rows:
        prefix = tok.encode(e.text)[: model.cfg.max_positions - 8]
        scores = {k: continuation_logprob(model, prefix, ids) for k, ids in cont.items()}
        correct += ("1" if scores["positive"] > scores["negative"] else "0") == e.label
    return correct / max(len(rows), 1)


def _checkpoint_as_model(gpt_dir: Path, ckpt: Path, target: Path) -> Path:
    """A model directory of a pretraining checkpoint: its weights with the run's config and tokenizer."""
    if not target.exists():
        target.mkdir(parents=True)
        for f in gpt_dir.iterdir():
            if f.is_file() and (f.suffix == ".json" and f.name != "pretrain_results.json" or f.name == "merges.txt"):
                shutil.copyfile(f, target / f.name)
        shutil.copyfile(ckpt / "model.safetensors", target / "model.safetensors")
    return target


def gpt_analysis(gpt_dir: Path, splits: dict[str, Any], out: Path, s: DemoSettings, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy against layers transferred (0..L) and zero-shot accuracy against pretraining steps.

    The transfer runs use the learning rate the pretrained GPT chose on validation at that budget.
    """
    n_layers = load_model(gpt_dir).config.n_layers
    labels = 2000 if 2000 in splits["budgets"] else s.budgets[0]
    lr = next(r["lr"] for r in runs if (r["model"], r["init"], r["labels"]) == ("gpt", "pretrained", labels))
    layers = {k: finetune_stage(str(gpt_dir), None, splits, labels, out / "analysis" / f"transfer-{k}", s, lr,
                                transfer_layers=k)["test"]["accuracy"] for k in range(n_layers + 1)}
    plot_lines({"gpt": (list(layers), list(layers.values()))}, out / "layers_transferred.png",
               title=f"NSMC accuracy vs layers transferred ({labels:,} labels)", xlabel="layers transferred", ylabel="accuracy")
    zero: dict[int, float] = {}
    for ckpt in checkpoint_dirs(gpt_dir):
        step = int(ckpt.name.split("-")[1])
        zero[step] = zero_shot_accuracy(_checkpoint_as_model(gpt_dir, ckpt, out / "analysis" / f"zero-shot-{ckpt.name}"), splits["test"])
    zero[int(read_metrics(gpt_dir / "metrics.jsonl")[-1]["step"])] = zero_shot_accuracy(gpt_dir, splits["test"])
    plot_lines({"gpt zero-shot": (list(zero), list(zero.values()))}, out / "zero_shot.png",
               title="zero-shot sentiment vs pretraining steps", xlabel="pretraining step", ylabel="accuracy")
    return {"layers_transferred": layers, "zero_shot": dict(sorted(zero.items())), "labels": labels}


__all__ = ["CORPUS_LINES", "EYE", "PROBE_SETS", "SENSES_DATA", "SENSE_LINES", "SENSE_WORD", "SNOW", "ZERO_SHOT",
           "contextual_embedding_stage", "contextual_embedding_table", "fitting_rows", "gpt_analysis", "zero_shot_accuracy"]
