"""The main job end to end on a very small budget: every output file is written and well formed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretune.cli import main
from pretune.demo import DemoSettings, run_demo

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "nsmc" / "train.tsv").is_file(), reason=f"{DATA}/nsmc is missing")
def test_demo_pipeline_writes_results_plots_and_report(tmp_path: Path) -> None:
    s = DemoSettings(
        out=str(tmp_path / "demo"), data_dir=str(DATA), budgets=[64], test_sample=64, validation_size=64,
        corpus_lines=3000, tokenizer_lines=3000, vocab_size=1500, pretrain_seconds=4, seq_len=64,
        finetune_seq_len=32, finetune_epochs={64: 1}, pretrain_batch=16, progress=False,
    )
    results = run_demo(s, command="pretune demo (test)")
    out = Path(s.out)
    for name in ("results.json", "report.md", "learning_curve.png", "pretrain_loss.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["test_size"] == 64
    runs = {(r["model"], r["init"], r["labels"]) for r in saved["runs"]}
    assert runs == {("bert", "pretrained", 64), ("bert", "scratch", 64)}
    for r in saved["runs"]:
        assert set(r) >= {"model", "init", "labels", "accuracy", "seconds"} and 0.0 <= r["accuracy"] <= 1.0
    emb = saved["contextual_embedding"]
    assert len(emb["cosine"]) == 6 and all(abs(emb["cosine"][i][i] - 1) < 1e-5 for i in range(6))
    report = (out / "report.md").read_text()
    assert "| bert | pretrained | 64 |" in report and "눈이 와서 너무 좋다" in report and "learning_curve.png" in report
    assert results["pretrain"]["bert"]["steps"] >= 1
    # A second run with the same --out reuses the tokenizer and the pretrained model.
    tok_mtime = (out / "tokenizer" / "tokenizer.json").stat().st_mtime_ns
    model_mtime = (out / "pretrain-bert" / "model.safetensors").stat().st_mtime_ns
    run_demo(s)
    assert (out / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == tok_mtime
    assert (out / "pretrain-bert" / "model.safetensors").stat().st_mtime_ns == model_mtime


@pytest.mark.skipif(not (DATA / "nsmc" / "train.tsv").is_file(), reason=f"{DATA}/nsmc is missing")
def test_demo_gpt_analysis_layers_transferred_and_zero_shot_over_steps(tmp_path: Path) -> None:
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
    assert sorted(a["layers_transferred"]) == list(range(n_layers + 1))  # 0 (nothing) ... all layers
    steps = results["pretrain"]["gpt"]["steps"]
    assert steps in a["zero_shot"] and len(a["zero_shot"]) >= 2  # checkpoints along the way, and the end
    assert all(0.0 <= v <= 1.0 for v in [*a["layers_transferred"].values(), *a["zero_shot"].values()])
    for name in ("layers_transferred.png", "zero_shot.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "report.md").read_text()
    assert "layers transferred" in report and "zero-shot" in report


def test_demo_names_the_download_command_when_data_is_missing(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--data-dir", str(tmp_path / "nodata"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pretune data download nsmc" in err


def test_demo_precision_is_bf16_on_cuda_and_amx_cpus_and_fp32_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    import pretune.train.trainer as trainer
    from pretune.demo import demo_precision

    monkeypatch.setattr(trainer.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer, "cpu_has_amx", lambda: True)
    assert demo_precision(DemoSettings()) == "bf16"
    assert demo_precision(DemoSettings(precision="fp32")) == "fp32"
    monkeypatch.setattr(trainer, "cpu_has_amx", lambda: False)
    assert demo_precision(DemoSettings()) == "fp32"
    assert demo_precision(DemoSettings(precision="bf16")) == "bf16"
    # the library's own auto keeps fp32 on every CPU, AMX or not
    monkeypatch.setattr(trainer, "cpu_has_amx", lambda: True)
    assert trainer.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(trainer.torch.cuda, "is_available", lambda: True)
    assert demo_precision(DemoSettings()) == "bf16"  # CUDA
    assert demo_precision(DemoSettings(precision="fp32", device="cuda")) == "fp32"
    assert trainer.resolve_precision("auto", torch.device("cuda")) == "bf16"


def test_both_twins_fine_tune_with_identical_settings_grouped_by_length(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import dataclasses

    import pretune.train.finetune as ft
    from pretune.demo import finetune_stage

    seen: list[ft.FinetuneSettings] = []
    monkeypatch.setattr(ft, "finetune", lambda settings: seen.append(settings) or {})
    splits = {"budgets": {2000: tmp_path / "train.tsv"}, "validation": tmp_path / "v.tsv", "test": tmp_path / "t.tsv"}
    s = DemoSettings(precision="fp32")
    finetune_stage("pretrain-bert", tmp_path / "tok", splits, 2000, tmp_path / "a", s)
    finetune_stage("scratch.json", tmp_path / "tok", splits, 2000, tmp_path / "b", s)
    finetune_stage("gpt", None, splits, 2000, tmp_path / "c", s, transfer_layers=1)
    first, second, gpt = (dataclasses.asdict(x) for x in seen)
    assert first["group_by_length"] is True and first["epochs"] == 10.0 and first["lr"] == s.finetune_lr
    differ = {k for k in first if first[k] != second[k]}
    assert differ == {"model", "out"}
    assert gpt["transfer_layers"] == 1 and gpt["tokenizer"] is None and first["transfer_layers"] is None
