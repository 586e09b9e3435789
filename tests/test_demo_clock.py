"""The demo's clock: --minutes bounds the whole demo. Epochs are fitted to the time left (one factor
for every label budget, never under one pass), a short demo prepares a slice of the corpus, and a
real (tiny) demo prints and records what each stage got."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretune.apps.demo import DemoSettings, run_demo
from pretune.apps.demo.clock import PRIOR, FinetuneCost, fit_epochs, scaled_epochs
from pretune.apps.demo.settings import FULL_CORPUS_MINUTES, corpus_lines_for

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WANTED = {500: 10.0, 2000: 10.0, 10000: 2.0}  # the demo's default label budgets and epochs


def test_full_epochs_when_they_fit() -> None:
    epochs, seconds = fit_epochs(WANTED, 2, 10_000, PRIOR, 500, 5000)
    assert epochs == WANTED
    assert seconds == pytest.approx(2 * sum(PRIOR.seconds(n, e, 500, 5000) for n, e in WANTED.items()))


def test_short_time_scales_every_budget_by_one_factor_and_fits() -> None:
    full = fit_epochs(WANTED, 2, 10_000, PRIOR, 500, 5000)[1]
    epochs, seconds = fit_epochs(WANTED, 2, 0.8 * full, PRIOR, 500, 5000)
    assert seconds <= 0.8 * full
    factors = {round(epochs[n] / WANTED[n], 1) for n in WANTED}
    assert len(factors) == 1 and 0.5 < factors.pop() < 1.0  # the same factor for every budget


def test_never_under_one_pass_over_the_labels() -> None:
    epochs, seconds = fit_epochs(WANTED, 2, 1.0, PRIOR, 500, 5000)
    assert epochs == {500: 1.0, 2000: 1.0, 10000: 1.0}
    assert seconds > 1.0  # the least it can take, said as such
    assert scaled_epochs({64: 0.5}, 0.1) == {64: 0.5}  # fewer than one epoch asked: kept


def test_the_cost_of_a_run() -> None:
    cost = FinetuneCost(train_s=0.01, score_s=0.001, run_s=2.0)
    # 100 labels x 3 epochs, validation 50 after each of 3 epochs and again at the end, test 200
    assert cost.seconds(100, 3, 50, 200) == pytest.approx(3.0 + 0.4 + 2.0)
    assert cost.scaled(2.0).seconds(100, 3, 50, 200) == pytest.approx(2 * 5.4)


def test_a_short_demo_prepares_a_slice_of_the_corpus() -> None:
    assert corpus_lines_for(2) == 120_000
    assert corpus_lines_for(FULL_CORPUS_MINUTES) is None and corpus_lines_for(13) is None  # `make demo`: all of it


@pytest.mark.skipif(not (DATA / "nsmc" / "train.tsv").is_file(), reason=f"{DATA}/nsmc is missing")
def test_a_tiny_demo_on_the_clock_records_what_each_stage_got(tmp_path: Path, monkeypatch, capsys) -> None:
    from pretune.apps.demo import run as demo_run

    monkeypatch.setattr(demo_run, "MIN_PRETRAIN_S", 2.0)  # a test cannot wait the real minimum
    s = DemoSettings(
        out=str(tmp_path / "demo"), data_dir=str(DATA), minutes=0.01, budgets=[64, 128], test_sample=64,
        validation_size=32, corpus_lines=2000, tokenizer_lines=2000, vocab_size=1000, seq_len=32, finetune_seq_len=32,
        pretrain_batch=16, progress=False,
    )
    results = run_demo(s, command="pretune demo (test)")
    printed = capsys.readouterr().out
    clock = json.loads((tmp_path / "demo" / "results.json").read_text())["clock"]
    assert set(clock) >= {"minutes", "corpus_lines", "setup_s", "finetune_s", "epochs", "pretrain_s"}
    # 0.6 s cannot hold the wanted 10 epochs on any machine: one pass each
    assert clock["epochs"] == {"64": 1.0, "128": 1.0}
    assert {r["epochs"] for r in results["runs"]} == {1.0}  # both twins alike
    assert clock["pretrain_s"] >= 2.0
    assert "[clock" in printed and "pretraining:" in printed and "epochs per label budget" in printed
