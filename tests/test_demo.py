"""The main job end to end on a very small budget: every output file is written and well formed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretune.apps.demo import DemoSettings, run_demo
from pretune.cli import main
from pretune.errors import PretuneError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "nsmc" / "train.tsv").is_file(), reason=f"{DATA}/nsmc is missing")
def test_demo_pipeline_writes_results_plots_and_report(tmp_path: Path) -> None:
    s = DemoSettings(
        out=str(tmp_path / "demo"), data_dir=str(DATA), budgets=[64], test_sample=64, validation_size=64,
        corpus_lines=3000, tokenizer_lines=3000, vocab_size=1500, pretrain_seconds=4, seq_len=64,
        finetune_seq_len=32, finetune_epochs={64: 1}, pretrain_batch=16, progress=False, finetune_lrs=[3e-4, 1e-3],
    )
    results = run_demo(s, command="pretune demo (test)")
    out = Path(s.out)
    for name in ("results.json", "report.md", "learning_curve.png", "pretrain_loss.png", "senses_accuracy.png",
                 "senses_byeol_accuracy.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["test_size"] == 64
    runs = {(r["model"], r["init"], r["labels"]) for r in saved["runs"]}
    assert runs == {("bert", "pretrained", 64), ("bert", "scratch", 64)}
    for r in saved["runs"]:
        assert set(r) >= {"model", "init", "labels", "accuracy", "seconds"} and 0.0 <= r["accuracy"] <= 1.0
        # one run per learning rate; the kept one is the best on validation, and its test accuracy is reported
        cands = r["lr_candidates"]
        assert [c["lr"] for c in cands] == s.finetune_lrs
        best = max(cands, key=lambda c: c["validation"])
        assert (r["lr"], r["accuracy"], r["validation"]) == (best["lr"], best["test"], best["validation"])
        run_dir = out / "finetune" / f"bert-{r['init']}-64"
        kept = {d.name for d in run_dir.iterdir() if any(d.rglob("model.safetensors"))}
        assert kept == {f"lr-{r['lr']:g}"}  # the other rate's weights are deleted
    emb = saved["contextual_embedding"]
    assert len(emb["cosine"]) == 6 and all(abs(emb["cosine"][i][i] - 1) < 1e-5 for i in range(6))
    report = (out / "report.md").read_text()
    assert "| bert | pretrained | 64 |" in report and "눈이 와서 너무 좋다" in report and "learning_curve.png" in report
    # why 눈 as snow cannot be learned here, and the corpus counts of the senses of the probed words
    words = " ".join(report.split())
    assert "Of the 662,387 lines of NSMC's unlabeled reviews" in words and "about 110 use 눈 as snow" in words
    assert "(별 5개, 별 반개도 아깝다) in about 1,575 lines" in words and "(별 기대 없이, 별 내용 없다), in about 1,936" in words
    assert '"눈" in 48 sentences' in report and '"별" in 96 sentences' in report
    assert results["pretrain"]["bert"]["steps"] >= 1
    # A second run with the same --out reuses the tokenizer and the pretrained model.
    tok_mtime = (out / "tokenizer" / "tokenizer.json").stat().st_mtime_ns
    model_mtime = (out / "pretrain-bert" / "model.safetensors").stat().st_mtime_ns
    run_demo(s)
    assert (out / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == tok_mtime
    assert (out / "pretrain-bert" / "model.safetensors").stat().st_mtime_ns == model_mtime


NEAR_TIE = 1e-4  # decisions this close may flip between two float orders of the same computation


def _accuracy_range(margins: list[float], right: list[bool]) -> tuple[float, float]:
    """The accuracy of decisions made with these margins, where a near-tie may go either way."""
    sure = sum(r for m, r in zip(margins, right) if abs(m) >= NEAR_TIE)
    near = sum(abs(m) < NEAR_TIE for m in margins)
    return sure / len(right), (sure + near) / len(right)


def _zero_shot_by_hand(model_dir: Path, rows: list[tuple[str, str]]) -> tuple[float, float]:
    """GPT-1's zero-shot sentiment written out: log p(" 최고의 영화" | review) against log p(" 최악의 영화" | review)
    from the full softmax of the model's logits; the review's label is 1 when the first wins."""
    from pretune.apps.demo.probes import ZERO_SHOT
    from pretune.checkpoint import load_model

    loaded = load_model(model_dir)
    model, tok = loaded.model.eval(), loaded.tokenizer
    margins, right = [], []
    for text, label in rows:
        prefix = tok.encode(text)[: model.cfg.max_positions - 8]
        logp = {}
        for name, words in ZERO_SHOT.items():
            ids = prefix + tok.encode(words)
            with torch.no_grad():
                lp = model.lm_logits(model.body(torch.tensor([ids]))[0])[0].double().log_softmax(-1)
            logp[name] = sum(float(lp[t - 1, ids[t]]) for t in range(len(prefix), len(ids)))
        margins.append(logp["positive"] - logp["negative"])
        right.append(("1" if margins[-1] > 0 else "0") == label)
    return _accuracy_range(margins, right)


@pytest.mark.skipif(not (DATA / "nsmc" / "train.tsv").is_file(), reason=f"{DATA}/nsmc is missing")
def test_demo_gpt_analysis_layers_transferred_and_zero_shot_over_steps(tmp_path: Path, monkeypatch) -> None:
    """GPT-1's figure 2: run k keeps the pretrained GPT's first k blocks (and re-initialises the
    rest) and reports its fine-tuned test accuracy; the zero-shot accuracy at each pretraining
    checkpoint is what the checkpoint's language model prefers, recomputed here by hand."""
    import pretune.train.finetune as ft
    from pretune.apps.demo.probes import zero_shot_accuracy
    from pretune.inference import predict

    transfer, kept = ft.transfer_layers, {}

    def watched(model, k: int) -> int:  # which blocks are the pretrained ones after the surgery
        before = [[p.detach().clone() for p in b.parameters()] for b in model.body.blocks]
        n = transfer(model, k)
        kept[k] = [all(torch.equal(a, b) for a, b in zip(old, blk.parameters())) for old, blk in zip(before, model.body.blocks)]
        return n

    monkeypatch.setattr(ft, "transfer_layers", watched)
    s = DemoSettings(
        out=str(tmp_path / "demo"), data_dir=str(DATA), budgets=[64], test_sample=48, validation_size=32,
        corpus_lines=2000, tokenizer_lines=2000, vocab_size=1000, pretrain_seconds=3, seq_len=32,
        finetune_seq_len=32, finetune_epochs={64: 1}, pretrain_batch=8, progress=False, analysis=True,
        gpt_model="gpt-tiny", analysis_save_every=3,
    )
    results = run_demo(s, command="pretune demo --analysis (test)")
    out = Path(s.out)
    runs = {(r["model"], r["init"]) for r in results["runs"]}
    assert runs == {("bert", "pretrained"), ("bert", "scratch"), ("gpt", "pretrained"), ("gpt", "scratch")}
    a = results["analysis"]
    n_layers = results["pretrain"]["gpt"]["model"]["n_layers"]
    assert sorted(a["layers_transferred"]) == sorted(kept) == list(range(n_layers + 1))  # 0 (nothing) ... all layers
    test_tsv = next(out.rglob("test_sample.tsv"))
    rows = [tuple(line.split("\t")[1:]) for line in test_tsv.read_text(encoding="utf-8").splitlines()[1:]]
    assert len(rows) == 48
    for k, accuracy in a["layers_transferred"].items():
        assert kept[k] == [True] * k + [False] * (n_layers - k)
        predict(out / "analysis" / f"transfer-{k}", test_tsv, tmp_path / f"t{k}.jsonl", progress=False)
        preds = [json.loads(line) for line in (tmp_path / f"t{k}.jsonl").read_text().splitlines()]
        lo, hi = _accuracy_range([p["probabilities"]["1"] - p["probabilities"]["0"] for p in preds],
                                 [p["label"] == label for p, (_, label) in zip(preds, rows)])
        assert lo - 1e-9 <= accuracy <= hi + 1e-9, (k, accuracy, lo, hi)
    # every checkpoint along the way (each 3 steps), and the end; the time budget sets how many there
    # are: a loaded machine may manage fewer than 3 steps, leaving only the end
    steps = results["pretrain"]["gpt"]["steps"]
    zero = a["zero_shot"]
    assert list(zero) == [*range(3, steps, 3), steps]
    model_dir = {step: out / "analysis" / f"zero-shot-step-{step}" for step in zero} | {steps: out / "pretrain-gpt"}
    for step in sorted({min(zero), list(zero)[len(zero) // 2], steps}):  # the first, one midway, the end
        lo, hi = _zero_shot_by_hand(model_dir[step], rows)
        assert lo - 1e-9 <= zero[step] <= hi + 1e-9, (step, zero[step], lo, hi)
    # the test sample is balanced, where a model with one fixed preference scores 0.5 whichever way the
    # labels are read: on reviews all labelled 1 it scores how often it prefers the positive ending
    ones = tmp_path / "ones.tsv"
    ones.write_text("id\tdocument\tlabel\n" + "".join(f"{k}\t{text}\t1\n" for k, (text, _) in enumerate(rows)),
                    encoding="utf-8")
    lo, hi = _zero_shot_by_hand(model_dir[steps], [(text, "1") for text, _ in rows])
    assert lo - 1e-9 <= zero_shot_accuracy(model_dir[steps], ones) <= hi + 1e-9
    for name in ("layers_transferred.png", "zero_shot.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "layers transferred" in report and "zero-shot" in report


def test_demo_names_the_download_command_when_data_is_missing(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pretune data download nsmc" in err


def test_demo_precision_is_the_librarys_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo trains in whatever ``--precision`` resolves to by the library's one rule."""
    import pretune.precision as precision
    from pretune.apps.demo import demo_precision

    asked = []

    def rule(name: str, device: torch.device) -> str:
        asked.append((name, device.type))
        return {"auto": "bf16"}.get(name, name)

    monkeypatch.setattr(precision, "resolve_precision", rule)
    assert demo_precision(DemoSettings(device="cpu")) == "bf16"
    assert demo_precision(DemoSettings(device="cpu", precision="fp32")) == "fp32"
    assert asked == [("auto", "cpu"), ("fp32", "cpu")]


def test_both_twins_fine_tune_with_identical_settings_and_keep_the_best_lr_on_validation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import dataclasses

    import pretune.train.finetune as ft
    from pretune.apps.demo import finetune_best_lr, finetune_stage

    seen: list[ft.FinetuneSettings] = []
    # validation prefers the lower rate for the "pretrained" model and the higher one for "scratch";
    # the test accuracy would say the opposite and must not be what chooses
    val = {("pretrain-bert", 3e-4): 0.80, ("pretrain-bert", 1e-3): 0.79, ("scratch.json", 3e-4): 0.75, ("scratch.json", 1e-3): 0.76}

    def fake_finetune(settings: ft.FinetuneSettings) -> dict:
        seen.append(settings)
        Path(settings.out).mkdir(parents=True)
        (Path(settings.out) / "model.safetensors").write_bytes(b"w")
        v = val.get((settings.model, settings.trainer.lr), 0.5)
        return {"validation": {"accuracy": v}, "test": {"accuracy": 1 - v}, "best_epoch": 1}

    monkeypatch.setattr(ft, "finetune", fake_finetune)
    splits = {"budgets": {2000: tmp_path / "train.tsv"}, "validation": tmp_path / "v.tsv", "test": tmp_path / "t.tsv"}
    s = DemoSettings(precision="fp32", finetune_lrs=[3e-4, 1e-3])
    pre = finetune_best_lr("pretrain-bert", tmp_path / "tok", splits, 2000, tmp_path / "a", s)
    scr = finetune_best_lr("scratch.json", tmp_path / "tok", splits, 2000, tmp_path / "b", s)
    assert (pre["lr"], pre["test"]["accuracy"]) == (3e-4, pytest.approx(0.20))
    assert (scr["lr"], scr["test"]["accuracy"]) == (1e-3, pytest.approx(0.24))
    assert [c["lr"] for c in pre["candidates"]] == s.finetune_lrs and pre["candidates"][1]["validation"] == 0.79
    # only the chosen run keeps its weights
    assert (tmp_path / "a" / "lr-0.0003" / "model.safetensors").is_file()
    assert not (tmp_path / "a" / "lr-0.001" / "model.safetensors").exists()
    # the twins ran the same settings at each rate: only the model and the output folder differ
    runs = [dataclasses.asdict(x) for x in seen]
    for a, b in zip(runs[:2], runs[2:]):
        assert {k for k in a if a[k] != b[k]} == {"model", "out"}
        assert a["group_by_length"] is True and a["epochs"] == 10.0
    assert [r["trainer"]["lr"] for r in runs] == [3e-4, 1e-3, 3e-4, 1e-3]
    finetune_stage("gpt", None, splits, 2000, tmp_path / "c", s, 1e-3, transfer_layers=1)
    assert seen[-1].transfer_layers == 1 and seen[-1].tokenizer is None and runs[0]["transfer_layers"] is None
    with pytest.raises(PretuneError, match="finetune_lrs"):
        finetune_best_lr("m", None, splits, 2000, tmp_path / "d", DemoSettings(finetune_lrs=[]))
