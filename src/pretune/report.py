"""Plots (matplotlib, Agg backend) of training runs and results, written atomically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pretune.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_training(records: Sequence[dict[str, Any]], out_png: str | Path, title: str = "training") -> Path | None:
    """Training loss per logged step, and every evaluation metric measured, side by side."""
    if not records:
        return None
    plt = _pyplot()
    eval_keys = sorted({k for r in records for k in r if k.startswith(("val_", "eval_"))})
    fig, axes = plt.subplots(1, 1 + bool(eval_keys), figsize=(11 if eval_keys else 6, 4), squeeze=False)
    train = [r for r in records if "loss" in r]
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    for key in (k for k in eval_keys if k.endswith("loss")):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points), marker="o", label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    if eval_keys:
        ax2 = axes[0][1]
        for key in eval_keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            ax2.plot(*zip(*points), marker="o", label=key)
        ax2.set_xlabel("step")
        ax2.set_title("held-out metrics")
        ax2.set_yscale("log" if any("perplexity" in k for k in eval_keys) else "linear")
        ax2.legend()
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out_png)


def plot_lines(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    out_png: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
) -> Path:
    """A simple line plot of named (x, y) series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(out_png)


def machine() -> str:
    """The machine a figure was measured on: the GPU, or the CPU model, core count and bf16 features."""
    import os
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    from pretune.precision import cpu_bf16_features, cpu_model_name

    features = sorted(cpu_bf16_features())
    bf16 = f", {'/'.join(features)}" if features else ", no bf16 instructions"
    return f"{cpu_model_name()} ({os.cpu_count()} cores, {platform.machine()}{bf16}), torch {torch.__version__}"
