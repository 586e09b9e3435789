"""The main job: show on real Korean data that pretraining on unlabeled text pays off.

1. train a WordPiece tokenizer on the NSMC unlabeled corpus (which holds no test review);
2. pretrain a small BERT (masked LM + NSP) on it for a fixed time (and a small GPT with ``--gpt``);
3. fine-tune on NSMC sentiment with several label budgets, each twice with identical settings:
   from the pretrained weights and from scratch (same shape, random initialisation);
4. score every run on the same fixed sample of test.tsv;
5. write ``results.json``, plots and ``report.md``, including the contextual-embedding example of
   the seeds ("눈" as snow and as eye).

A second run with the same ``--out`` reuses the tokenizer and the pretrained model unless
``--fresh``. ``--analysis`` adds GPT-1's figure 2: accuracy against the number of pretrained
layers transferred, and zero-shot sentiment of the pretrained GPT against pretraining steps.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pretune.checkpoint import load_model
from pretune.data.corpus import iter_lines
from pretune.data.download import data_dir, require
from pretune.errors import PretuneError
from pretune.io import atomic_path, write_json, write_text
from pretune.report import plot_lines, read_metrics

# Senses of "눈" for the contextual-embedding example: snow and eye.
SNOW = ["눈이 와서 너무 좋다", "밤새 눈이 내려 길이 하얗다", "겨울에는 눈이 많이 온다"]
EYE = ["너의 눈이 너무 예쁘다", "그 배우는 눈이 정말 크다", "눈이 아파서 안과에 갔다"]

# Zero-shot sentiment for GPT: which continuation does the language model find more likely?
ZERO_SHOT = {"positive": " 최고의 영화", "negative": " 최악의 영화"}


# Share of --minutes given to pretraining (measured in docs/demo.md: the longer, the larger the gain).
# The rest (tokenizer, data, six fine-tuning runs grouped by length, report) took under 2
# minutes on this 2-core CPU in demo 10 (12.5 minutes in all).
PRETRAIN_SHARE = 0.82


@dataclass
class DemoSettings:
    out: str = "demo_out"
    data_dir: str | None = None
    minutes: float = 13.0  # the whole demo's target; pretraining gets PRETRAIN_SHARE of it
    device: str = "auto"
    fresh: bool = False
    gpt: bool = False
    analysis: bool = False
    full_test: bool = False
    budgets: list[int] = field(default_factory=lambda: [500, 2000, 10000])
    test_sample: int = 5000
    validation_size: int = 500
    model: str = "bert-tiny"
    gpt_model: str = "gpt-mini"
    vocab_size: int = 8000
    tokenizer_lines: int = 300_000
    corpus_lines: int | None = None  # use only the first N lines of the corpus (tests)
    # Pretraining settings measured in docs/demo.md: short sequences (reviews are short; more
    # steps per second), no dropout (minutes of data cannot be overfitted), a moderate peak rate
    # with a 300-step warmup, and the MLM output bias started at the unigram prior.
    seq_len: int = 64
    pretrain_batch: int = 32
    pretrain_lr: float = 1e-3
    pretrain_warmup: int = 300
    pretrain_dropout: float = 0.0
    mask_prob: float = 0.15
    pretrain_seconds: float | None = None  # default: from --minutes
    finetune_seq_len: int = 64
    finetune_batch: int = 32
    # Both twins fine-tune at this rate (docs/demo.md: at 2,000 labels both are better at 3e-4 than
    # at 1e-3, on validation and on test). With several rates each twin fine-tunes once per rate
    # and keeps the run with the best validation accuracy (the test sample never chooses).
    finetune_lrs: list[float] = field(default_factory=lambda: [3e-4])
    finetune_dropout: float = 0.1  # both twins fine-tune with the same dropout
    # batches of similar length (less padding): 2.5x faster fine-tuning on this CPU, same accuracy
    # within noise (docs/demo.md); the time saved goes to pretraining
    finetune_group_by_length: bool = True
    finetune_epochs: dict[int, float] = field(default_factory=dict)  # labels -> epochs (default rule below)
    analysis_save_every: int = 100  # --analysis: GPT checkpoints every N steps, for zero-shot vs steps
    # auto: bf16 autocast where it is faster than fp32 (CUDA; a CPU with AMX, see
    # train/trainer.py resolve_precision), else fp32. Pretraining and both twins use the same one.
    precision: str = "auto"
    seed: int = 0
    progress: bool = True


def demo_precision(s: DemoSettings) -> str:
    """The precision the demo trains in: ``s.precision``, with auto resolved for this machine
    (bf16 on CUDA and on a CPU with AMX, else fp32)."""
    from pretune.precision import resolve_precision
    from pretune.train.distributed import resolve_device

    return resolve_precision(s.precision, resolve_device(s.device))


def epochs_for(labels: int) -> float:
    """Fewer labels, more passes: about 20k example-passes, within 2 to 10 epochs."""
    return float(min(10, max(2, round(20_000 / labels))))


class Timer:
    """Wall time of each named stage, for the report."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        with self.stage(name):
            return fn()

    @contextmanager
    def stage(self, name: str) -> Iterator[Callable[[], float]]:
        """Time a block; the yielded function gives the seconds so far."""
        t0 = time.perf_counter()
        print(f"\n=== {name}", flush=True)
        yield lambda: round(time.perf_counter() - t0, 1)
        self.stages[name] = round(time.perf_counter() - t0, 1)
        print(f"=== {name}: {self.stages[name]:.0f} s", flush=True)


# --- data --------------------------------------------------------------------------------------


def _nsmc_files(root: Path) -> dict[str, Path]:
    files = {name: root / "nsmc" / f for name, f in (("unlabeled", "unlabeled.txt.gz"), ("train", "train.tsv"), ("test", "test.tsv"))}
    for path in files.values():
        require(path, "nsmc")
    return files


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return rows[0], [r for r in rows[1:] if len(r) == 3 and r[1].strip()]


def _write_tsv(path: Path, header: list[str], rows: Sequence[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("".join("\t".join(row) + "\n" for row in [header, *rows]), encoding="utf-8")
    return path


def make_splits(files: dict[str, Path], work: Path, s: DemoSettings) -> dict[str, Any]:
    """Label budgets (nested samples of train.tsv), a validation slice and the fixed test sample."""
    header, train = _read_tsv(files["train"])
    _, test = _read_tsv(files["test"])
    rng = random.Random(s.seed)
    rng.shuffle(train)
    val, pool = train[: s.validation_size], train[s.validation_size :]
    if max(s.budgets) > len(pool):
        raise PretuneError(f"a label budget of {max(s.budgets)} needs more than the {len(pool)} training reviews available")
    test_rows = test if s.full_test else random.Random(s.seed + 1).sample(test, min(s.test_sample, len(test)))
    out = {
        "validation": _write_tsv(work / "validation.tsv", header, val),
        "test": _write_tsv(work / "test_sample.tsv", header, test_rows),
        "test_size": len(test_rows),
        "budgets": {n: _write_tsv(work / f"train_{n}.tsv", header, pool[:n]) for n in s.budgets},
    }
    return out


def corpus_slice(path: Path, work: Path, lines: int | None) -> Path:
    """The corpus itself, or its first ``lines`` lines (ending at a document boundary)."""
    if lines is None:
        return path
    target = work / f"{path.name.split('.')[0]}_{lines}.txt"
    if not target.exists():
        with atomic_path(target) as tmp, open(tmp, "w", encoding="utf-8") as g:
            for number, line in iter_lines(path):
                if number > lines and not line.strip():
                    break
                g.write(line + "\n")
    return target


# --- stages ------------------------------------------------------------------------------------


def train_tokenizer_stage(corpus: Path, out: Path, s: DemoSettings) -> Path:
    from pretune.tokenizer import train_tokenizer

    target = out / "tokenizer"
    if (target / "tokenizer.json").is_file() and not s.fresh:
        print(f"reusing {target}")
        return target
    work = out / "work"
    sample = corpus_slice(corpus, work, s.tokenizer_lines)
    tok = train_tokenizer([sample], "wordpiece", s.vocab_size, lowercase=False, show_progress=s.progress)
    if target.exists():
        shutil.rmtree(target)
    tok.save(target)
    print(f"WordPiece vocabulary: {tok.vocab_size} tokens; '눈이 와서 너무 좋다' -> {tok.tokenize('눈이 와서 너무 좋다')}")
    return target


def pretrain_stage(kind: str, corpus: Path, tokenizer_dir: Path, out: Path, seconds: float, s: DemoSettings) -> Path:
    from pretune.train.pretrain import PretrainSettings, pretrain

    run_dir = out / f"pretrain-{kind}"
    if (run_dir / "pretrain_results.json").is_file() and not s.fresh:
        print(f"reusing {run_dir}")
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    settings = PretrainSettings(
        model=s.model if kind == "bert" else s.gpt_model,
        tokenizer=str(tokenizer_dir),
        data=[str(corpus)],
        out=str(run_dir),
        max_steps=1_000_000,  # the time budget ends the run; the schedule follows the clock
        batch_size=s.pretrain_batch,
        seq_len=s.seq_len,
        lr=s.pretrain_lr,
        mask_prob=s.mask_prob,
        warmup_steps=s.pretrain_warmup,
        eval_every=0,
        log_every=10,
        # the zero-shot analysis reads the GPT's checkpoints along the way; otherwise only the end
        save_every=s.analysis_save_every if (kind == "gpt" and s.analysis) else 0,
        keep_last=1_000_000 if (kind == "gpt" and s.analysis) else 1,
        seed=s.seed,
        device=s.device,
        precision=demo_precision(s),
        time_budget_s=seconds,
        progress=s.progress,
        cache_dir=str(out / "data-cache"),
        override={
            "max_positions": max(s.seq_len, s.finetune_seq_len),
            "dropout": s.pretrain_dropout,
            "attn_dropout": s.pretrain_dropout,
        },
    )
    pretrain(settings)
    return run_dir


def finetune_best_lr(
    model: str, tokenizer_dir: Path | None, splits: dict[str, Any], labels: int, out: Path, s: DemoSettings,
) -> dict[str, Any]:
    """Fine-tune once per learning rate of ``s.finetune_lrs`` into ``out/lr-<lr>`` and keep the run
    with the best validation accuracy (the first on ties); the others' weights are deleted.

    Returns the chosen run's summary with ``lr`` and ``candidates`` (lr, validation, test) added.
    """
    if not s.finetune_lrs:
        raise PretuneError("DemoSettings.finetune_lrs is empty: give at least one fine-tuning learning rate")
    shutil.rmtree(out, ignore_errors=True)
    tried = []
    for lr in s.finetune_lrs:
        summary = finetune_stage(model, tokenizer_dir, splits, labels, out / f"lr-{lr:g}", s, lr)
        tried.append((lr, summary))
    best_lr, best = max(tried, key=lambda pair: pair[1]["validation"]["accuracy"])  # max keeps the first of ties
    for lr, _ in tried:
        if lr != best_lr:
            for weights in (out / f"lr-{lr:g}").rglob("*.safetensors"):
                weights.unlink()
    candidates = [{"lr": lr, "validation": r["validation"]["accuracy"], "test": r["test"]["accuracy"]} for lr, r in tried]
    return {**best, "lr": best_lr, "candidates": candidates}


def finetune_stage(
    model: str, tokenizer_dir: Path | None, splits: dict[str, Any], labels: int, out: Path, s: DemoSettings,
    lr: float, **extra: Any,
) -> dict[str, Any]:
    """Fine-tune ``model`` on NSMC at learning rate ``lr`` with the demo's other settings (the same
    for every run); ``extra`` adds FinetuneSettings fields (the GPT analysis's
    ``transfer_layers``). With no ``tokenizer_dir`` the model directory's own tokenizer is used."""
    from pretune.train.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(
        model=model,
        task="nsmc",
        train=str(splits["budgets"][labels]),
        validation=str(splits["validation"]),
        test=str(splits["test"]),
        out=str(out),
        tokenizer=None if tokenizer_dir is None else str(tokenizer_dir),
        epochs=s.finetune_epochs.get(labels, epochs_for(labels)),
        batch_size=s.finetune_batch,
        lr=lr,
        max_seq_len=s.finetune_seq_len,
        group_by_length=s.finetune_group_by_length,
        seed=s.seed,
        device=s.device,
        precision=demo_precision(s),
        progress=s.progress,
        log_every=20,
        override={"dropout": s.finetune_dropout, "attn_dropout": s.finetune_dropout},
        **extra,
    )
    return finetune(settings)


# --- contextual embeddings and zero-shot -------------------------------------------------------


def contextual_embedding_table(model_dir: Path) -> dict[str, Any]:
    """Cosine similarity between the vectors of "눈" in snow and eye sentences."""
    from pretune.embed import embed, token_vector

    loaded = load_model(model_dir)
    items = embed(loaded.model, loaded.tokenizer, SNOW + EYE)
    vectors = [token_vector(item, "눈", prefix=True) for item in items]
    senses = ["snow"] * len(SNOW) + ["eye"] * len(EYE)
    n = len(vectors)
    sim = [[torch.nn.functional.cosine_similarity(vectors[i], vectors[j], dim=0).item() for j in range(n)] for i in range(n)]
    same = [sim[i][j] for i, j in itertools.combinations(range(n), 2) if senses[i] == senses[j]]
    cross = [sim[i][j] for i, j in itertools.combinations(range(n), 2) if senses[i] != senses[j]]
    return {
        "sentences": SNOW + EYE,
        "senses": senses,
        "tokens": [item.tokens for item in items],
        "cosine": sim,
        "same_sense_mean": sum(same) / len(same),
        "cross_sense_mean": sum(cross) / len(cross),
    }


@torch.no_grad()
def zero_shot_accuracy(model_dir: Path, test_tsv: Path, limit: int = 500) -> float:
    """Sentiment from the pretrained GPT alone: the more likely continuation wins."""
    loaded = load_model(model_dir)
    model, tok = loaded.model.eval(), loaded.tokenizer
    _, rows = _read_tsv(test_tsv)
    rows = rows[:limit]
    cont = {k: tok.encode(v) for k, v in ZERO_SHOT.items()}
    correct = 0
    for _id, text, label in rows:
        prefix = tok.encode(text)[: model.cfg.max_positions - 8]
        scores = {}
        for k, ids in cont.items():
            x = torch.tensor([prefix + ids])
            logp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
            targets = x[0, 1:]
            scores[k] = logp[torch.arange(len(targets)), targets][-len(ids) :].sum().item()
        guess = "1" if scores["positive"] > scores["negative"] else "0"
        correct += guess == label
    return correct / max(len(rows), 1)


# --- report ------------------------------------------------------------------------------------


def _runs_table(runs: list[dict[str, Any]]) -> str:
    lines = ["| model | init | labels | accuracy | lr | validation | seconds |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(
            f"| {r['model']} | {r['init']} | {r['labels']:,} | {r['accuracy']:.4f} | {r['lr']:g} | {r['validation']:.4f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def write_report(out: Path, results: dict[str, Any]) -> Path:
    runs = results["runs"]
    by = {(r["model"], r["init"], r["labels"]): r["accuracy"] for r in runs}
    gains = {
        n: by[("bert", "pretrained", n)] - by[("bert", "scratch", n)]
        for n in sorted({r["labels"] for r in runs})
        if ("bert", "pretrained", n) in by and ("bert", "scratch", n) in by
    }
    key = 2000 if 2000 in gains else (sorted(gains)[len(gains) // 2] if gains else None)
    if key is not None:
        verdict = (
            f"beats the same BERT trained from scratch by {100 * gains[key]:.1f} accuracy points"
            if gains[key] > 0
            else f"does not beat the same BERT trained from scratch ({100 * gains[key]:+.1f} points)"
        )
        conclusion = (
            f"With {key:,} labels, the BERT pretrained for {results['pretrain']['bert']['train_seconds']:.0f} s "
            f"on unlabeled reviews {verdict}: {100 * by[('bert', 'pretrained', key)]:.1f}% vs "
            f"{100 * by[('bert', 'scratch', key)]:.1f}% on the test sample."
        )
    else:
        conclusion = "No pretrained/scratch pair was run."
    emb = results["contextual_embedding"]
    n = len(emb["sentences"])
    emb_lines = ["| | " + " | ".join(str(i + 1) for i in range(n)) + " |", "|---" * (n + 1) + "|"]
    for i in range(n):
        emb_lines.append(
            f"| {i + 1}. {emb['sentences'][i]} ({emb['senses'][i]}) | "
            + " | ".join(f"{emb['cosine'][i][j]:.2f}" for j in range(n)) + " |"
        )
    stages = "\n".join(f"| {k} | {v:.0f} |" for k, v in results["timings_s"].items())
    pre = results["pretrain"]["bert"]
    text = f"""# pretune demo: does pretraining on unlabeled text pay off?

**{conclusion}**

Run on {results['machine']} on {results['date']}; whole demo {results['timings_s'].get('total', 0):.0f} s.
Command: `{results['command']}`

## What was run
- **Data**: NSMC (Naver movie reviews, Korean). Pretraining text: `nsmc/unlabeled.txt.gz`
  ({results['corpus']}), which contains no test review. Labels: nested samples of `train.tsv`
  ({', '.join(f'{n:,}' for n in results['settings']['budgets'])} reviews), validation: {results['settings']['validation_size']:,}
  other train reviews, test: a fixed sample of **{results['test_size']:,}** reviews of `test.tsv`.
- **Tokenizer**: WordPiece, {results['vocab_size']:,} tokens, trained on the unlabeled text.
- **Pretraining**: `{results['settings']['model']}` ({pre['model']['n_layers']} layers, hidden {pre['model']['hidden']},
  {pre['model']['n_heads']} heads), masked LM + next-sentence prediction, sequence length {results['settings']['seq_len']},
  batch {results['settings']['pretrain_batch']}, peak learning rate {results['settings']['pretrain_lr']} after
  {results['settings']['pretrain_warmup']} warmup steps, dropout {results['settings']['pretrain_dropout']}, MLM output bias
  started at the corpus's log unigram frequencies (see docs/demo.md), {pre['steps']} steps in {pre['train_seconds']:.0f} s
  ({pre['tokens_per_s'] or 0:,.0f} tokens/s, {_precision_words(results.get('precision', 'fp32'))}). Held-out masked-LM accuracy {_fmt(pre, 'val_mlm_accuracy', 'eval_at_start')} at the start,
  {_fmt(pre, 'val_mlm_accuracy', 'eval_at_end')} at the end; NSP accuracy {_fmt(pre, 'val_nsp_accuracy', 'eval_at_end')}.
- **Fine-tuning**: the same settings for both initialisations: max length {results['settings']['finetune_seq_len']},
  batch {results['settings']['finetune_batch']}{' (grouped by length)' if results['settings'].get('finetune_group_by_length') else ''}, {_lr_words(results['settings']['finetune_lrs'])},
  dropout {results['settings']['finetune_dropout']}, epochs per budget
  {results['epochs']}, best epoch by validation accuracy, {_precision_words(results.get('precision', 'fp32'))}.

## Results (accuracy on the test sample)
{_runs_table(runs)}

![learning curve](learning_curve.png)

![pretraining loss](pretrain_loss.png)

## Contextual embeddings: "눈" (snow) vs "눈" (eye)
Cosine similarity of the final-layer vector of the token "눈" in each sentence. Mean over same-sense
pairs: **{emb['same_sense_mean']:.3f}**; over cross-sense pairs: **{emb['cross_sense_mean']:.3f}**
({"same-sense pairs are closer, as contextual embeddings should make them" if emb['same_sense_mean'] > emb['cross_sense_mean'] else "the model does not separate the senses at this amount of pretraining"}).
A static embedding (Word2Vec, or this model's layer 0) gives 1.00 everywhere.

{chr(10).join(emb_lines)}
"""
    if "analysis" in results:
        a = results["analysis"]
        text += "\n## GPT-1 analyses (figure 2 of the paper)\n"
        text += "| layers transferred | accuracy |\n|---:|---:|\n" + "\n".join(
            f"| {k} | {v:.4f} |" for k, v in a["layers_transferred"].items()
        )
        text += "\n\n![layers transferred](layers_transferred.png)\n\n"
        text += "| pretraining step | zero-shot accuracy |\n|---:|---:|\n" + "\n".join(
            f"| {k} | {v:.4f} |" for k, v in a["zero_shot"].items()
        )
        text += "\n\n![zero-shot](zero_shot.png)\n"
    text += "\n## How long each step took\n| stage | seconds |\n|---|---:|\n" + stages + "\n"
    write_text(out / "report.md", text)
    return out / "report.md"


def _precision_words(precision: str) -> str:
    return "bf16 autocast" if precision == "bf16" else "fp32"


def _lr_words(lrs: list[float]) -> str:
    if len(lrs) == 1:
        return f"learning rate {lrs[0]:g}"
    return f"one run per learning rate in {', '.join(f'{x:g}' for x in lrs)}, the one with the best validation accuracy kept (column `lr`)"


def _fmt(pre: dict[str, Any], key: str, where: str) -> str:
    value = (pre.get(where) or {}).get(key)
    return f"{100 * value:.1f}%" if value is not None else "n/a"


# --- the whole job -----------------------------------------------------------------------------


def run_demo(s: DemoSettings, command: str = "pretune demo") -> dict[str, Any]:
    started = time.perf_counter()
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    root = data_dir(s.data_dir)
    files = _nsmc_files(root)
    timer = Timer()
    corpus = corpus_slice(files["unlabeled"], work, s.corpus_lines)
    tokenizer_dir = timer.run("tokenizer", lambda: train_tokenizer_stage(corpus, out, s))
    splits = timer.run("label budgets and test sample", lambda: make_splits(files, work, s))

    # Budget: pretraining gets PRETRAIN_SHARE of --minutes; tokenizer, data, six fine-tuning runs
    # and the report take the rest.
    pretrain_s = s.pretrain_seconds if s.pretrain_seconds is not None else max(60.0, 60 * s.minutes * PRETRAIN_SHARE)
    bert_dir = timer.run("pretrain bert", lambda: pretrain_stage("bert", corpus, tokenizer_dir, out, pretrain_s, s))
    results: dict[str, Any] = {"runs": [], "pretrain": {}}
    results["pretrain"]["bert"] = json.loads((bert_dir / "pretrain_results.json").read_text())
    shutil.copyfile(bert_dir / "loss.png", out / "pretrain_loss.png") if (bert_dir / "loss.png").exists() else None

    models = [("bert", str(bert_dir), s.model)]
    gpt_dir = None
    if s.gpt or s.analysis:
        gpt_tok = timer.run("gpt tokenizer", lambda: _bpe_tokenizer(corpus, out, s))
        gpt_dir = timer.run("pretrain gpt", lambda: pretrain_stage("gpt", corpus, gpt_tok, out, pretrain_s, s))
        results["pretrain"]["gpt"] = json.loads((gpt_dir / "pretrain_results.json").read_text())
        models.append(("gpt", str(gpt_dir), s.gpt_model))

    for family, pretrained, preset_name in models:
        tok_dir = tokenizer_dir if family == "bert" else out / "tokenizer-bpe"
        scratch = _scratch_config(preset_name, tok_dir, s, work, family)
        for labels in s.budgets:
            for init, spec in (("pretrained", pretrained), ("scratch", scratch)):
                run_out = out / "finetune" / f"{family}-{init}-{labels}"
                with timer.stage(f"finetune {family} {init} {labels}") as took:
                    summary = finetune_best_lr(spec, tok_dir, splits, labels, run_out, s)
                results["runs"].append({
                    "model": family, "init": init, "labels": labels, "accuracy": summary["test"]["accuracy"],
                    "seconds": took(), "lr": summary["lr"], "validation": summary["validation"]["accuracy"],
                    "best_epoch": summary.get("best_epoch"), "lr_candidates": summary["candidates"],
                })

    results["contextual_embedding"] = timer.run("contextual embeddings", lambda: contextual_embedding_table(bert_dir))
    if s.analysis and gpt_dir is not None:
        results["analysis"] = timer.run("gpt-1 analyses", lambda: gpt_analysis(gpt_dir, splits, out, s, results["runs"]))

    # Plots.
    series = {}
    for family in sorted({r["model"] for r in results["runs"]}):
        for init in ("pretrained", "scratch"):
            pts = sorted((r["labels"], r["accuracy"]) for r in results["runs"] if r["model"] == family and r["init"] == init)
            if pts:
                series[f"{family} {init}"] = ([p[0] for p in pts], [p[1] for p in pts])
    plot_lines(series, out / "learning_curve.png", title="NSMC test accuracy", xlabel="labelled reviews", ylabel="accuracy", logx=True)

    timer.stages["total"] = round(time.perf_counter() - started, 1)
    results.update(
        test_size=splits["test_size"],
        vocab_size=_vocab_size(tokenizer_dir),
        corpus=f"{corpus.name}, {corpus.stat().st_size / 1e6:.1f} MB",
        epochs={n: s.finetune_epochs.get(n, epochs_for(n)) for n in s.budgets},
        precision=demo_precision(s),
        settings=asdict(s),
        timings_s=timer.stages,
        machine=_machine(),
        date=time.strftime("%Y-%m-%d"),
        command=command,
    )
    write_json(out / "results.json", results)
    report = write_report(out, results)
    print(f"\nwrote {out / 'results.json'}, {report}")
    return results


def _vocab_size(tokenizer_dir: Path) -> int:
    from pretune.tokenizer import Tokenizer

    return Tokenizer.load(tokenizer_dir).vocab_size


def _scratch_config(preset_name: str, tok_dir: Path, s: DemoSettings, work: Path, family: str) -> str:
    """A config file for the from-scratch twin: the same shape and vocabulary as the pretrained model."""
    from pretune.config import preset
    from pretune.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_dir)
    if family == "gpt":
        tok.ensure_gpt_special_tokens()
    cfg = preset(preset_name, vocab_size=tok.vocab_size, max_positions=max(s.seq_len, s.finetune_seq_len))
    path = work / f"scratch-{family}.json"
    cfg.save(path)
    return str(path)


def _bpe_tokenizer(corpus: Path, out: Path, s: DemoSettings) -> Path:
    from pretune.tokenizer import train_tokenizer

    target = out / "tokenizer-bpe"
    if (target / "tokenizer.json").is_file() and not s.fresh:
        return target
    sample = corpus_slice(corpus, out / "work", s.tokenizer_lines)
    tok = train_tokenizer([sample], "bpe", s.vocab_size, show_progress=s.progress)
    if target.exists():
        shutil.rmtree(target)
    tok.save(target)
    return target


def gpt_analysis(
    gpt_dir: Path, splits: dict[str, Any], out: Path, s: DemoSettings, runs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Accuracy against layers transferred (0..L) and zero-shot accuracy against pretraining steps.

    The transfer runs use the learning rate the pretrained GPT chose on validation at that budget
    (``runs``: the demo's fine-tuning runs)."""
    cfg = json.loads((gpt_dir / "config.json").read_text())
    layers: dict[int, float] = {}
    labels = 2000 if 2000 in splits["budgets"] else s.budgets[0]
    lr = next(r["lr"] for r in runs if (r["model"], r["init"], r["labels"]) == ("gpt", "pretrained", labels))
    for k in range(cfg["n_layers"] + 1):
        summary = finetune_stage(str(gpt_dir), None, splits, labels, out / "analysis" / f"transfer-{k}", s, lr, transfer_layers=k)
        layers[k] = summary["test"]["accuracy"]
    plot_lines({"gpt": (list(layers), list(layers.values()))}, out / "layers_transferred.png",
               title=f"NSMC accuracy vs layers transferred ({labels:,} labels)", xlabel="layers transferred", ylabel="accuracy")
    zero: dict[int, float] = {}
    for ckpt in sorted((gpt_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        step_dir = out / "analysis" / f"zero-shot-{ckpt.name}"
        if not step_dir.exists():
            step_dir.mkdir(parents=True)
            for f in ("config.json", "tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
                if (gpt_dir / f).exists():
                    shutil.copyfile(gpt_dir / f, step_dir / f)
            shutil.copyfile(ckpt / "model.safetensors", step_dir / "model.safetensors")
        zero[int(ckpt.name.split("-")[1])] = zero_shot_accuracy(step_dir, splits["test"])
    zero[int(read_metrics(gpt_dir / "metrics.jsonl")[-1]["step"])] = zero_shot_accuracy(gpt_dir, splits["test"])
    plot_lines({"gpt zero-shot": (list(zero), list(zero.values()))}, out / "zero_shot.png",
               title="zero-shot sentiment vs pretraining steps", xlabel="pretraining step", ylabel="accuracy")
    return {"layers_transferred": layers, "zero_shot": dict(sorted(zero.items())), "labels": labels}


def _machine() -> str:
    import os
    import platform

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__}"


__all__ = ["DemoSettings", "run_demo"]
