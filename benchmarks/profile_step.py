"""Where a training (or inference) step's time goes, outside the big matrix multiplications.

Runs pretune's pretraining step (the same objective, batches and optimizer as
``compare_hf.py``) under ``torch.profiler`` and groups the CPU time of the operators into:
matmul (mm/addmm/bmm/baddbmm/linear), attention (SDPA and its kernels), the fused output layer +
cross-entropy (its matmuls are counted as matmul, the rest here), layer norm, GELU, softmax,
dropout (the random draws and the masking), the optimizer, casts and copies, and the rest.
Prints a table and writes JSON (``--out``). Speed figures name the machine; other work on the
cores changes them, so compare shares, not seconds, across runs.

Usage::

    python benchmarks/profile_step.py --models bert-mini gpt-mini --dtypes fp32
    python benchmarks/profile_step.py --models bert-base gpt1 --batch 8 --steps 3 --out profile.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

import compare_hf as harness  # noqa: E402

from pretune.config import preset  # noqa: E402
from pretune.models import build_model  # noqa: E402
from pretune.precision import autocast  # noqa: E402
from pretune.report import machine  # noqa: E402

# operator name fragments -> group; the first match wins
GROUPS = [
    ("optimizer", ("adam", "_foreach", "clip_grad", "norm_")),
    ("attention", ("scaled_dot_product", "_flash_attention", "_efficient_attention", "attention")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")),
    ("layer norm", ("layer_norm",)),
    ("gelu", ("gelu",)),
    ("softmax / cross-entropy", ("softmax", "log_softmax", "nll_loss", "cross_entropy", "gather", "scatter", "amax")),
    ("dropout", ("bernoulli", "dropout", "native_dropout")),
    ("casts and copies", ("aten::copy_", "aten::to", "aten::_to_copy", "contiguous", "clone", "aten::cat")),
    ("embedding", ("embedding",)),
]


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k in low for k in keys):
            return group
    return "other"


def step_fn(model, batch: dict, mode: str, optimizer) -> None:
    if mode == "train":
        loss = harness.pretune_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    else:
        with torch.inference_mode():
            harness.pretune_loss(model, batch)


def profile_case(name: str, mode: str, dtype: str, batch: int, seq: int, steps: int) -> dict:
    cfg = preset(name, max_positions=max(seq, 128))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train(mode == "train")
    optimizer = harness.make_optimizer(model, torch.device("cpu"))
    batches = harness.make_batches(cfg, batch, seq, steps + 2, torch.device("cpu"))
    device = torch.device("cpu")
    with autocast(device, dtype):
        for b in batches[:2]:  # warm-up
            step_fn(model, b, mode, optimizer)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches[2:]:
                step_fn(model, b, mode, optimizer)
    # self CPU time of leaf operators, grouped
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[group_of(event.key)] += event.self_cpu_time_total
    whole = sum(totals.values())
    return {
        "model": name, "mode": mode, "dtype": dtype, "batch": batch, "seq_len": seq, "steps": steps,
        "ms_per_step": round(whole / steps / 1000, 2),
        "share": {k: round(v / whole, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
        "top_ops": [(e.key, round(e.self_cpu_time_total / whole, 4)) for e in
                    sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["bert-mini", "gpt-mini"])
    p.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="JSON file to write")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# {machine()}, {args.threads} threads", file=sys.stderr)
    results = []
    for name in args.models:
        for dtype in args.dtypes:
            for mode in args.modes:
                r = profile_case(name, mode, dtype, args.batch, args.seq_len, args.steps)
                results.append(r)
                shares = "  ".join(f"{k} {100 * v:.1f}%" for k, v in r["share"].items())
                print(f"{name} {mode} {dtype}: {r['ms_per_step']} ms/step; {shares}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine(), "threads": args.threads, "cases": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
