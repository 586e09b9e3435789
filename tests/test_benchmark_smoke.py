"""The HF comparison harness on a micro case, and the fast paths it measures against the plain ones."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pretune.config import preset
from pretune.models import build_model, core
from pretune.models.core import _attention_with_dropout, attention_mask, linear_cross_entropy

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


# --- linear_cross_entropy == F.cross_entropy(F.linear(...)) ------------------------------------------


def _dense(h, w, b, t):
    return F.cross_entropy(F.linear(h, w, b), t, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk,block", [(None, None), (1, 1), (7, 3), (16, 16), (100, 100)])
def test_fused_cross_entropy_equals_dense_in_value_and_gradients(with_bias: bool, chunk, block) -> None:
    torch.manual_seed(0)
    n, h, v = 37, 16, 101
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    bias = torch.randn(v, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (n,))
    targets[::4] = -100
    params = [p for p in (hidden, weight, bias) if p is not None]

    ref = _dense(hidden, weight, bias, targets)
    count = (targets != -100).sum()
    (ref / count).backward()
    ref_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    total, got_count, correct = linear_cross_entropy(
        hidden, weight, targets, bias, chunk_rows=chunk, block_rows=block, with_correct=True
    )
    (total / got_count).backward()

    assert got_count == count
    assert abs((total / got_count).item() - (ref / count).item()) <= 1e-5
    for p, g in zip(params, ref_grads):
        assert (p.grad - g).abs().max().item() <= 1e-5
    with torch.no_grad():
        logits = F.linear(hidden, weight, bias)
    assert correct == ((logits.argmax(1) == targets) & (targets != -100)).sum()


def test_fused_cross_entropy_without_grad_and_with_every_row_ignored() -> None:
    torch.manual_seed(1)
    hidden, weight = torch.randn(5, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (5,))
    with torch.no_grad():
        total, _, _ = linear_cross_entropy(hidden, weight, targets)
    assert not total.requires_grad
    assert abs(total.item() - _dense(hidden, weight, None, targets).item()) <= 1e-4
    with torch.inference_mode():
        linear_cross_entropy(hidden, weight, targets)
    total, count, _ = linear_cross_entropy(hidden, weight, torch.full((5,), -100))
    (total / count.clamp(min=1)).backward()
    assert total.item() == 0 and count.item() == 0 and hidden.grad.abs().max() == 0


def test_fused_cross_entropy_under_bf16_autocast_is_close_to_dense() -> None:
    torch.manual_seed(2)
    n, h, v = 40, 16, 300
    hidden, weight = torch.randn(n, h, requires_grad=True), (0.3 * torch.randn(v, h)).requires_grad_()
    bias = torch.randn(v, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    targets[::5] = -100
    params = (hidden, weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, weight, bias).float()
        ref = F.cross_entropy(logits, targets, reduction="sum")
    ref.backward()
    ref_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, count, correct = linear_cross_entropy(hidden, weight, targets, bias, with_correct=True)
    assert abs(total.item() - ref.item()) <= 1e-3 * abs(ref.item())
    assert correct == ((logits.argmax(1) == targets) & (targets != -100)).sum()
    total.backward()
    for p, g in zip(params, ref_grads):
        assert p.grad.dtype == torch.float32
        # both sides multiply in bf16: they agree to bf16's precision, not fp32's
        assert (p.grad - g).abs().max().item() <= 2e-2 * g.abs().max().item()
    assert hidden.grad[::5].abs().max() == 0  # ignored rows get no gradient


def test_attention_runs_in_fp32_under_cpu_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """SDPA's bf16 CPU backward is slow: under CPU bf16 autocast the projections run in bf16 and
    attention in fp32, close to the all-fp32 result."""
    cfg = preset("bert-tiny", vocab_size=100, max_positions=16, dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    pad = torch.ones(2, 16, dtype=torch.long)
    pad[1, 10:] = 0
    dtypes = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(
        core.F, "scaled_dot_product_attention", lambda q, *a, **k: dtypes.append(q.dtype) or original(q, *a, **k)
    )
    ref = model(ids, padding_mask=pad).hidden
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(ids, padding_mask=pad).hidden
    assert dtypes == [torch.float32] * (2 * cfg.n_layers)
    assert (got.float() - ref)[pad.bool()].abs().max().item() <= 0.1  # every real token


def test_gpt_fused_loss_equals_the_logits_path_with_the_same_gradients() -> None:
    cfg = preset("gpt-tiny", vocab_size=300, max_positions=32, dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(0)
    a = build_model(cfg)
    b = build_model(cfg)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 300, (3, 20))
    labels = ids.clone()
    labels[1, 12:] = -100
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    dense = a(ids, padding_mask=mask, labels=labels, return_logits=True)
    fused = b(ids, padding_mask=mask, labels=labels)  # the default in a training step: fused
    with torch.no_grad():
        assert b(ids, padding_mask=mask, labels=labels).logits is not None  # evaluation keeps logits
    assert dense.logits is not None and fused.logits is None
    assert abs(dense.loss.item() - fused.loss.item()) <= 1e-5
    assert dense.metrics["lm_tokens"] == fused.metrics["lm_tokens"]
    dense.loss.backward()
    fused.loss.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad - q.grad).abs().max().item() <= 1e-5, name


def test_bert_fused_mlm_equals_the_logits_path_with_metrics_and_gradients() -> None:
    cfg = preset("bert-tiny", vocab_size=300, max_positions=32, dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(0)
    a = build_model(cfg)
    b = build_model(cfg)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(5, 300, (2, 16))
    positions = torch.tensor([[1, 4, 9, 0], [2, 3, 0, 0]])
    targets = torch.tensor([[7, 8, 9, -100], [10, 11, -100, -100]])
    nsp = torch.tensor([0, 1])
    kw = dict(mlm_positions=positions, mlm_labels=targets, nsp_labels=nsp)
    dense, fused = a(ids, return_logits=True, **kw), b(ids, **kw)  # the default in training: fused
    with torch.no_grad():
        assert b(ids, **kw).mlm_logits is not None
    assert fused.mlm_logits is None and dense.mlm_logits is not None
    assert abs(dense.loss.item() - fused.loss.item()) <= 1e-5
    for key in ("mlm_tokens", "mlm_correct"):
        assert dense.metrics[key] == fused.metrics[key]
    assert abs(dense.metrics["mlm_loss_sum"].item() - fused.metrics["mlm_loss_sum"].item()) <= 1e-4
    dense.loss.backward()
    fused.loss.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad - q.grad).abs().max().item() <= 1e-5, name


# --- CPU attention with dropout == SDPA ---------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_cpu_dropout_attention_equals_sdpa_without_dropout(causal: bool, padded: bool) -> None:
    torch.manual_seed(0)
    b, n, t, d = 3, 2, 7, 4
    q, k, v = (torch.randn(b, n, t, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pad = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]) if padded else None
    mask = attention_mask(pad, causal, t)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
    got = _attention_with_dropout(q, k, v, mask, causal, 0.0)
    keep = torch.ones(b, dtype=torch.bool)[:, None, None, None] if pad is None else pad.bool()[:, None, :, None]
    keep = keep.expand(b, n, t, d)
    assert (ref - got)[keep].abs().max().item() <= 1e-12
    grads_ref = torch.autograd.grad((ref * keep).sum(), (q, k, v))
    grads_got = torch.autograd.grad((got * keep).sum(), (q, k, v))
    for a, g in zip(grads_ref, grads_got):
        assert (a - g).abs().max().item() <= 1e-12


def test_cpu_dropout_attention_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    x = torch.ones(1, 1, 64, 8)
    outs = torch.stack([_attention_with_dropout(x, x, x, None, False, 0.5) for _ in range(400)])
    assert abs(outs.mean().item() - 1.0) < 0.02


def test_training_forward_uses_the_cpu_path_and_matches_sdpa_in_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = preset("bert-tiny", vocab_size=100, max_positions=16)
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = torch.randint(0, 100, (2, 16))
    calls = []
    original = core._attention_with_dropout
    monkeypatch.setattr(core, "_attention_with_dropout", lambda *a: calls.append(1) or original(*a))
    model.train()
    model(ids)
    assert len(calls) == cfg.n_layers
    monkeypatch.setattr(core, "CPU_DROPOUT_ATTENTION", False)
    model(ids)
    assert len(calls) == cfg.n_layers  # SDPA this time
