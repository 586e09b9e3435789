"""The HF comparison harness on a micro case: the keys it prints, its FLOP counts and peak probe."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from pretune.config import preset

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "model", "mode", "device", "dtype", "batch", "seq_len", "pretune_tokens_per_s", "hf_tokens_per_s", "ratio",
    "pretune_peak_mem_mb", "hf_peak_mem_mb",
}
FLOP_KEYS = {
    "flops_per_token", "peak_gflops", "peak_shape", "pretune_gflops", "hf_gflops", "pretune_peak_fraction",
    "hf_peak_fraction",
}
MICRO = {"vocab_size": 500, "max_positions": 64}
FAKE_LIMIT = {"gflops": 40.0, "shape": "fake", "per_shape": {"fake": 40.0}}


def _harness():
    spec = importlib.util.spec_from_file_location("compare_hf", ROOT / "benchmarks" / "compare_hf.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_hf"] = module
    spec.loader.exec_module(module)
    return module


def _check_throughput(record: dict, limit_gflops: float) -> None:
    """GFLOP/s = tokens/s x FLOPs/token and fraction = GFLOP/s / peak, up to the record's rounding."""
    for side in ("pretune", "hf"):
        gflops = record[f"{side}_tokens_per_s"] * record["flops_per_token"] / 1e9
        tps_rounding = 0.05 * record["flops_per_token"] / 1e9  # tokens/s are rounded to 0.1
        assert record[f"{side}_gflops"] == pytest.approx(gflops, rel=6e-4, abs=tps_rounding)
        assert record[f"{side}_peak_fraction"] == pytest.approx(record[f"{side}_gflops"] / limit_gflops, rel=2e-3)
    assert record["peak_gflops"] == pytest.approx(limit_gflops, rel=1e-3)


@pytest.mark.parametrize("name", ["bert-tiny", "gpt-tiny"])
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_harness_micro_case_prints_the_keys_and_equal_first_losses(name: str, mode: str) -> None:
    pytest.importorskip("transformers")
    harness = _harness()
    record = harness.run_case(name, mode, 2, 32, warmup=0, repeats=1, overrides=MICRO, matmul_limit=FAKE_LIMIT)
    assert KEYS | FLOP_KEYS <= set(record)
    assert record["model"] == name and record["mode"] == mode and record["batch"] == 2 and record["seq_len"] == 32
    assert record["pretune_tokens_per_s"] > 0 and record["hf_tokens_per_s"] > 0
    assert abs(record["pretune_loss0"] - record["hf_loss0"]) <= 1e-4
    cfg = preset(name, **MICRO)
    assert record["flops_per_token"] == round(harness.model_flops_per_token(cfg, 32, mode))
    _check_throughput(record, FAKE_LIMIT["gflops"])
    assert record["peak_shape"] == "fake" and ("predictions_per_seq" in record) == (name == "bert-tiny")
    if record["pretune_peak_mem_mb"] is not None:
        assert record["pretune_peak_mem_mb"] > 0 and record["hf_peak_mem_mb"] > 0


def test_harness_bf16_case_measures_its_own_peak() -> None:
    pytest.importorskip("transformers")
    harness = _harness()
    harness.PEAK_WIDTHS = ((32, 64), (64, 32))
    harness.peak_rows = lambda dtype, device: 64
    kw = dict(warmup=0, repeats=1, overrides=MICRO, memory=False)
    record = harness.run_case("gpt-tiny", "infer", 2, 16, dtype="bf16", **kw)
    assert record["dtype"] == "bf16" and record["peak_shape"] in ("64x32x64", "64x64x32")
    assert abs(record["pretune_loss0"] - record["hf_loss0"]) <= 5e-2 * record["hf_loss0"]
    _check_throughput(record, record["peak_gflops"])
    fp32 = harness.run_case("gpt-tiny", "infer", 2, 16, dtype="fp32", matmul_limit=FAKE_LIMIT, **kw)
    assert fp32["pretune_loss0"] != record["pretune_loss0"]  # the bf16 case did run under bf16 autocast


# Hand-computed (see docs/benchmarks.md, "Model FLOPs"): L 2, h 8, ffn 32, V 50, T 20, 3 masked.
# BERT: M = 2 (4*64 + 2*8*32) + (3 (64 + 8*50) + 64 + 2*8) / 20 = 1536 + 73.6 = 1609.6;
# GPT: M = 1536 + 8*50 = 1936. Train 6 M + 12*2*8*20 = 6 M + 3840; infer 2 M + 4*2*8*20 = 2 M + 1280.
TINY = {"vocab_size": 50, "n_layers": 2, "hidden": 8, "n_heads": 2}


@pytest.mark.parametrize(
    "family,mode,expected",
    [("bert", "train", 13497.6), ("bert", "infer", 4499.2), ("gpt", "train", 15456.0), ("gpt", "infer", 5152.0)],
)
def test_model_flops_of_a_tiny_config_by_hand(family: str, mode: str, expected: float) -> None:
    harness = _harness()
    cfg = preset(f"{family}-tiny", **TINY)
    assert cfg.ffn == 32 and harness.predictions_per_seq(20) == 3
    assert harness.model_flops_per_token(cfg, 20, mode) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "name,train,infer",
    [
        ("bert-mini", 27_467_712, 9_155_904),
        ("bert-base", 545_193_792, 181_731_264),
        ("gpt-mini", 82_621_440, 27_540_480),
        ("gpt1", 710_286_336, 236_762_112),
    ],
)
def test_model_flops_of_the_presets_at_seq_128_as_documented(name: str, train: int, infer: int) -> None:
    harness = _harness()
    cfg = preset(name)
    assert harness.model_flops_per_token(cfg, 128, "train") == pytest.approx(train, rel=1e-12)
    assert harness.model_flops_per_token(cfg, 128, "infer") == pytest.approx(infer, rel=1e-12)
    text = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert f"{train:,}" in text and f"{infer:,}" in text


def test_peak_probe_returns_the_best_of_its_shapes() -> None:
    harness = _harness()
    seconds = {(256, 512): 0.004, (512, 256): 0.001, (128, 128): 0.002}
    calls = []

    def timer(rows, k, n, dtype, device):
        calls.append((rows, k, n, dtype))
        return seconds[(k, n)]

    peak = harness.matmul_peak("fp32", torch.device("cpu"), rows=100, widths=tuple(seconds), timer=timer)
    assert calls == [(100, k, n, "fp32") for k, n in seconds]
    assert peak["shape"] == "100x512x256"
    assert peak["gflops"] == pytest.approx(2 * 100 * 512 * 256 / 0.001 / 1e9)
    assert peak["per_shape"]["100x256x512"] == pytest.approx(2 * 100 * 256 * 512 / 0.004 / 1e9)

    real = harness.matmul_peak("fp32", torch.device("cpu"), rows=64, widths=((32, 64), (64, 128)))
    assert set(real["per_shape"]) == {"64x32x64", "64x64x128"}
    assert real["gflops"] == max(real["per_shape"].values()) == real["per_shape"][real["shape"]] > 0


def test_harness_can_use_the_trainers_optimizer() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("pretune.train.trainer")
    harness = _harness()
    record = harness.run_case(
        "gpt-tiny", "train", 2, 16, warmup=0, repeats=1, overrides=MICRO, optimizer="trainer", memory=False,
        matmul_limit=FAKE_LIMIT,
    )
    assert record["optimizer"] == "trainer" and record["ratio"] > 0


def test_harness_command_line_prints_one_json_line_per_case(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    import json

    harness = _harness()
    harness.CASES[:] = [("gpt-tiny", 16, 2, 2)]
    harness.PEAK_WIDTHS = ((32, 64),)
    assert harness.main(["--warmup", "0", "--repeats", "1", "--modes", "infer", "--no-memory"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert KEYS | FLOP_KEYS <= set(record) and record["dtype"] == "fp32"


@pytest.mark.parametrize("features", [frozenset(), frozenset({"amx_bf16"})])
def test_quick_runs_both_dtypes_smaller_where_bf16_is_emulated(features, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = _harness()
    calls = []
    monkeypatch.setattr(harness, "cpu_bf16_features", lambda: features)
    monkeypatch.setattr(harness, "run_case", lambda *a, **k: calls.append((*a, k["dtype"])) or {})
    assert harness.main(["--quick", "--modes", "train"]) == 0
    quick = [(name, "train", 32, 128) for name in ("bert-mini", "gpt-mini")]
    bf16 = [(name, "train", 1, 32) for name in ("bert-mini", "gpt-mini")] if not features else quick
    assert calls == [(*c, "fp32") for c in quick] + [(*c, "bf16") for c in bf16]
    calls.clear()
    assert harness.main(["--quick", "--modes", "infer", "--dtype", "fp32"]) == 0
    assert [c[-1] for c in calls] == ["fp32", "fp32"]
    calls.clear()
    harness.CASES[:] = [("gpt-tiny", 16, 2, 2)]
    assert harness.main(["--modes", "infer"]) == 0 and calls == [("gpt-tiny", "infer", 2, 16, "fp32")]


def test_ablation_runs_every_variant() -> None:
    harness = _harness()
    harness.ABLATIONS  # noqa: B018
    record = harness.run_ablation("gpt-tiny", "infer", 2, 16, warmup=0, repeats=1, memory=False)
    assert set(record["ablation"]) == {"logits", "fused_ce"}
