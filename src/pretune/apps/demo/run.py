"""The main job: show on real Korean data that pretraining on unlabeled text pays off.

1. train a WordPiece tokenizer on the NSMC unlabeled corpus (which holds no test review);
2. pretrain a small BERT (masked LM + NSP) on it for a fixed time (and a small GPT with ``--gpt``);
3. fine-tune on NSMC sentiment with several label budgets, each twice with identical settings:
   from the pretrained weights and from scratch (same shape, random initialisation);
4. score every run on the same fixed sample of test.tsv;
5. write ``results.json``, plots and ``report.md``, including the contextual-embedding example of
   the seeds ("눈" as snow and as eye).

A second run with the same ``--out`` reuses the tokenizer and the pretrained model unless
``--fresh``. ``--analysis`` adds GPT-1's figure 2.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pretune.apps.demo.data import corpus_slice, make_splits, nsmc_files
from pretune.apps.demo.probes import contextual_embedding_stage, gpt_analysis
from pretune.apps.demo.report import write_report
from pretune.apps.demo.settings import PRETRAIN_SHARE, DemoSettings, epochs_for
from pretune.apps.demo.stages import (
    demo_precision,
    finetune_best_lr,
    pretrain_stage,
    scratch_config,
    tokenizer_stage,
)
from pretune.data.download import data_dir
from pretune.io import write_json
from pretune.report import machine, plot_lines


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


def _pretrain_all(corpus: Path, out: Path, s: DemoSettings, timer: Timer, results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Tokenizers and pretraining (BERT, and the GPT when asked); the (family, model dir, preset) to fine-tune."""
    seconds = s.pretrain_seconds if s.pretrain_seconds is not None else max(60.0, 60 * s.minutes * PRETRAIN_SHARE)
    tokenizer = timer.run("tokenizer", lambda: tokenizer_stage("wordpiece", corpus, out, s))
    bert_dir = timer.run("pretrain bert", lambda: pretrain_stage("bert", corpus, tokenizer, out, seconds, s))
    results["pretrain"]["bert"] = json.loads((bert_dir / "pretrain_results.json").read_text())
    if (bert_dir / "loss.png").exists():
        shutil.copyfile(bert_dir / "loss.png", out / "pretrain_loss.png")
    models = [("bert", str(bert_dir), s.model)]
    if s.gpt or s.analysis:
        bpe = timer.run("gpt tokenizer", lambda: tokenizer_stage("bpe", corpus, out, s))
        gpt_dir = timer.run("pretrain gpt", lambda: pretrain_stage("gpt", corpus, bpe, out, seconds, s))
        results["pretrain"]["gpt"] = json.loads((gpt_dir / "pretrain_results.json").read_text())
        models.append(("gpt", str(gpt_dir), s.gpt_model))
    return models


def _finetune_all(models: list[tuple[str, str, str]], splits: dict[str, Any], out: Path, s: DemoSettings, timer: Timer) -> list[dict]:
    """Each label budget, each twin: pretrained and scratch with the same settings."""
    runs = []
    for family, pretrained, preset_name in models:
        tok_dir = out / ("tokenizer" if family == "bert" else "tokenizer-bpe")
        scratch = scratch_config(preset_name, tok_dir, s, out / "work", family)
        for labels in s.budgets:
            for init, spec in (("pretrained", pretrained), ("scratch", scratch)):
                with timer.stage(f"finetune {family} {init} {labels}") as took:
                    summary = finetune_best_lr(spec, tok_dir, splits, labels, out / "finetune" / f"{family}-{init}-{labels}", s)
                runs.append({
                    "model": family, "init": init, "labels": labels, "accuracy": summary["test"]["accuracy"],
                    "seconds": took(), "lr": summary["lr"], "validation": summary["validation"]["accuracy"],
                    "best_epoch": summary.get("best_epoch"), "lr_candidates": summary["candidates"],
                })
    return runs


def _learning_curve(runs: list[dict[str, Any]], out: Path) -> None:
    series = {}
    for family in sorted({r["model"] for r in runs}):
        for init in ("pretrained", "scratch"):
            pts = sorted((r["labels"], r["accuracy"]) for r in runs if r["model"] == family and r["init"] == init)
            if pts:
                series[f"{family} {init}"] = ([p[0] for p in pts], [p[1] for p in pts])
    plot_lines(series, out / "learning_curve.png", title="NSMC test accuracy", xlabel="labelled reviews",
               ylabel="accuracy", logx=True)


def run_demo(s: DemoSettings, command: str = "pretune demo") -> dict[str, Any]:
    """The whole demo; writes ``results.json``, ``report.md`` and the plots into ``s.out``."""
    from pretune.tokenizer import Tokenizer

    started = time.perf_counter()
    out = Path(s.out)
    (out / "work").mkdir(parents=True, exist_ok=True)
    files = nsmc_files(data_dir(s.data_dir))
    timer = Timer()
    corpus = corpus_slice(files["unlabeled"], out / "work", s.corpus_lines)
    results: dict[str, Any] = {"runs": [], "pretrain": {}}
    models = _pretrain_all(corpus, out, s, timer, results)
    splits = timer.run("label budgets and test sample", lambda: make_splits(files, out / "work", s))
    results["runs"] = _finetune_all(models, splits, out, s, timer)
    results["contextual_embedding"] = timer.run("contextual embeddings", lambda: contextual_embedding_stage(Path(models[0][1]), out, s))
    if s.analysis:
        gpt_dir = Path(next(m[1] for m in models if m[0] == "gpt"))
        results["analysis"] = timer.run("gpt-1 analyses", lambda: gpt_analysis(gpt_dir, splits, out, s, results["runs"]))
    _learning_curve(results["runs"], out)
    timer.stages["total"] = round(time.perf_counter() - started, 1)
    results.update(
        test_size=splits["test_size"], vocab_size=Tokenizer.load(out / "tokenizer").vocab_size,
        corpus=f"{corpus.name}, {corpus.stat().st_size / 1e6:.1f} MB",
        epochs={n: s.finetune_epochs.get(n, epochs_for(n)) for n in s.budgets}, precision=demo_precision(s),
        settings=dataclasses.asdict(s), timings_s=timer.stages, machine=machine(), date=time.strftime("%Y-%m-%d"),
        command=command,
    )
    write_json(out / "results.json", results)
    report = write_report(out, results)
    print(f"\nwrote {out / 'results.json'}, {report}")
    return results


__all__ = ["Timer", "run_demo"]
