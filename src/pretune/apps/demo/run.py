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
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretune.apps.demo.clock import (
    FINETUNE_SHARE,
    MIN_PRETRAIN_S,
    PRETRAIN_OVERHEAD_S,
    PRIOR,
    PROBES_S,
    Clock,
    fit_epochs,
)
from pretune.apps.demo.data import corpus_slice, make_splits, nsmc_files
from pretune.apps.demo.probes import contextual_embedding_stage, gpt_analysis
from pretune.apps.demo.report import write_report
from pretune.apps.demo.settings import (
    FULL_CORPUS_MINUTES,
    LINES_PER_MINUTE,
    DemoSettings,
    corpus_lines_for,
    epochs_for,
)
from pretune.apps.demo.stages import (
    demo_precision,
    finetune_best_lr,
    prepare_stage,
    pretrain_stage,
    pretrained_exists,
    scratch_config,
    tokenizer_stage,
)
from pretune.data.download import data_dir
from pretune.io import check_out_place, write_json
from pretune.report import machine, plot_lines, plot_training, read_metrics


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


@dataclass
class Twin:
    """One model family of the demo: its tokenizer, the preset both twins share, its pretrained run."""

    family: str
    tokenizer: Path
    preset: str
    pretrained: Path


def _setup(corpus: Path, out: Path, s: DemoSettings, timer: Timer) -> list[Twin]:
    """Tokenizers and corpus preparation for each model family (the measured set-up)."""
    twins = []
    for family in ("bert", "gpt") if s.gpt or s.analysis else ("bert",):
        kind = "wordpiece" if family == "bert" else "bpe"
        tokenizer = timer.run(f"{family} tokenizer", lambda kind=kind: tokenizer_stage(kind, corpus, out, s))
        if not pretrained_exists(family, out, s):
            timer.run(f"prepare corpus for {family}", lambda f=family, t=tokenizer: prepare_stage(f, corpus, t, out, s))
        twins.append(Twin(family, tokenizer, s.model if family == "bert" else s.gpt_model, out / f"pretrain-{family}"))
    return twins


def _finetune_runs(twins: list[Twin], init: str, labels: int, epochs: float, splits: dict[str, Any], out: Path,
                   s: DemoSettings, timer: Timer) -> list[dict[str, Any]]:
    """One label budget, one initialisation, every model family: the same settings for both twins."""
    runs = []
    for twin in twins:
        spec = str(twin.pretrained) if init == "pretrained" else scratch_config(twin.preset, twin.tokenizer, s, out / "work",
                                                                                twin.family)
        with timer.stage(f"finetune {twin.family} {init} {labels}") as took:
            summary = finetune_best_lr(spec, twin.tokenizer, splits, labels, out / "finetune" / f"{twin.family}-{init}-{labels}",
                                       s, epochs)
        runs.append({
            "model": twin.family, "init": init, "labels": labels, "accuracy": summary["test"]["accuracy"],
            "seconds": took(), "lr": summary["lr"], "validation": summary["validation"]["accuracy"], "epochs": epochs,
            "best_epoch": summary.get("best_epoch"), "lr_candidates": summary["candidates"],
        })
    return runs


def _scratch_first(twins: list[Twin], splits: dict[str, Any], out: Path, s: DemoSettings, timer: Timer,
                   clock: Clock) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """The from-scratch twins, smallest label budget first; each budget's epochs are fitted to the
    fine-tuning time left, from the cost of the runs measured so far (the prior for the first)."""
    wanted = {n: s.finetune_epochs.get(n, epochs_for(n)) for n in sorted(s.budgets)}
    copies = len(twins) * len(s.finetune_lrs)  # per initialisation
    full_s = 2 * copies * sum(PRIOR.seconds(n, e, s.validation_size, splits["test_size"]) for n, e in wanted.items())
    pretrain_s = (s.pretrain_seconds + PRETRAIN_OVERHEAD_S) * len(twins) if s.pretrain_seconds else 0.0
    # at most FINETUNE_SHARE of the time left: epochs are scaled down only when the runs, as measured,
    # would take more (not when they are slower than the prior: it is only the first run's guess)
    budget = (clock.left() - PROBES_S - pretrain_s) if s.pretrain_seconds else FINETUNE_SHARE * (clock.left() - PROBES_S)
    least_s = fit_epochs(wanted, 2 * copies, 0.0, PRIOR, s.validation_size, splits["test_size"])[1]
    clock.say("finetune_s", round(max(budget, least_s)), f"fine-tuning: {2 * copies * len(wanted)} runs, at most "
              + (f"{budget:.0f} s (at full epochs about {full_s:.0f} s on an idle machine)" if budget >= least_s else
                 f"{least_s:.0f} s at one epoch per label budget, the least it can take"))
    runs: list[dict[str, Any]] = []
    epochs: dict[int, float] = {}
    cost, spent, predicted = PRIOR, 0.0, 0.0
    for n in wanted:
        if s.finetune_epochs:  # given in code: used as given
            epochs[n] = wanted[n]
        else:
            left = budget - 2 * spent
            fitted, _ = fit_epochs({m: wanted[m] for m in wanted if m >= n}, 2 * copies, left, cost, s.validation_size,
                                   splits["test_size"])
            epochs[n] = fitted[n]
        done = _finetune_runs(twins, "scratch", n, epochs[n], splits, out, s, timer)
        runs += done
        spent += sum(r["seconds"] for r in done)
        predicted += copies * PRIOR.seconds(n, epochs[n], s.validation_size, splits["test_size"])
        cost = PRIOR.scaled(spent / predicted)
    clock.say("epochs", epochs, "epochs per label budget: " + ", ".join(f"{n:,} labels {e:g}" for n, e in epochs.items())
              + f" (wanted: {', '.join(f'{e:g}' for e in wanted.values())}); the scratch twins took {spent:.0f} s")
    return runs, epochs


def _pretrain_all(corpus: Path, twins: list[Twin], out: Path, s: DemoSettings, timer: Timer, clock: Clock,
                  finetune_s: float, results: dict[str, Any]) -> None:
    """Pretraining, each model for its share of what the clock leaves after the pretrained twins'
    fine-tuning (as long as the scratch twins', measured) and the probes."""
    todo = [t for t in twins if not pretrained_exists(t.family, out, s)]
    free = clock.left() - finetune_s - PROBES_S - PRETRAIN_OVERHEAD_S * len(todo)
    seconds = s.pretrain_seconds or max(MIN_PRETRAIN_S, free / max(len(todo), 1))
    if todo:
        clock.say("pretrain_s", round(seconds, 1), f"pretraining: {seconds:.0f} s for each of {', '.join(t.family for t in todo)}"
                  + ("" if s.pretrain_seconds or free / len(todo) >= MIN_PRETRAIN_S else " (the minimum: the time is short)"))
    for twin in twins:
        timer.run(f"pretrain {twin.family}", lambda t=twin: pretrain_stage(t.family, corpus, t.tokenizer, out, seconds, s))
        results["pretrain"][twin.family] = json.loads((twin.pretrained / "pretrain_results.json").read_text())
    bert = twins[0].pretrained
    plot_training(read_metrics(bert / "metrics.jsonl"), out / "pretrain_loss.png", title="pretraining BERT",
                  start=results["pretrain"]["bert"].get("eval_at_start"))


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
    """The whole demo within ``s.minutes`` (see :mod:`pretune.apps.demo.clock`); writes
    ``results.json``, ``report.md`` and the plots into ``s.out``."""
    from pretune.tokenizer import Tokenizer

    clock = Clock(60 * s.minutes)
    out = check_out_place(s.out)
    files = nsmc_files(data_dir(s.data_dir))
    (out / "work").mkdir(parents=True, exist_ok=True)
    timer = Timer()
    lines = s.corpus_lines or corpus_lines_for(s.minutes)
    corpus = corpus_slice(files["unlabeled"], out / "work", lines)
    clock.say("corpus_lines", lines, f"unlabeled corpus: {'all of it' if lines is None else f'its first {lines:,} lines'}"
              + ("" if s.corpus_lines else f" ({LINES_PER_MINUTE:,} per minute of --minutes, all from "
                 f"{FULL_CORPUS_MINUTES:g} minutes on)"))
    results: dict[str, Any] = {"runs": [], "pretrain": {}}
    twins = _setup(corpus, out, s, timer)
    splits = timer.run("label budgets and test sample", lambda: make_splits(files, out / "work", s))
    clock.say("setup_s", round(clock.elapsed()), f"set-up took {clock.elapsed():.0f} s of the {clock.total_s:.0f} s")
    scratch, epochs = _scratch_first(twins, splits, out, s, timer, clock)
    _pretrain_all(corpus, twins, out, s, timer, clock, sum(r["seconds"] for r in scratch), results)
    pretrained = [r for n in epochs for r in _finetune_runs(twins, "pretrained", n, epochs[n], splits, out, s, timer)]
    results["runs"] = sorted(pretrained + scratch, key=lambda r: (r["model"], r["labels"], r["init"] != "pretrained"))
    results["contextual_embedding"] = timer.run("contextual embeddings", lambda: contextual_embedding_stage(twins[0].pretrained, out, s))
    if s.analysis:  # not bounded by --minutes: its own fine-tuning runs and zero-shot scoring
        gpt_dir = next(t.pretrained for t in twins if t.family == "gpt")
        results["analysis"] = timer.run("gpt-1 analyses", lambda: gpt_analysis(gpt_dir, splits, out, s, results["runs"]))
    _learning_curve(results["runs"], out)
    timer.stages["total"] = round(time.perf_counter() - clock.started, 1)
    results.update(
        test_size=splits["test_size"], vocab_size=Tokenizer.load(out / "tokenizer").vocab_size,
        corpus=f"{corpus.name}, {corpus.stat().st_size / 1e6:.1f} MB", epochs=epochs, precision=demo_precision(s),
        settings=dataclasses.asdict(s), timings_s=timer.stages, clock={"minutes": s.minutes, **clock.given},
        machine=machine(), date=time.strftime("%Y-%m-%d"), command=command,
    )
    write_json(out / "results.json", results)
    report = write_report(out, results)
    print(f"\nwrote {out / 'results.json'}, {report} in {clock.elapsed():.0f} s (--minutes {s.minutes:g}: {clock.total_s:.0f} s)")
    return results


__all__ = ["Timer", "run_demo"]
