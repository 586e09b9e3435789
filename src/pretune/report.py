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


HELD_OUT_NAMES = {
    "val_mlm_loss": "held-out MLM loss", "val_mlm_accuracy": "held-out MLM accuracy",
    "val_nsp_accuracy": "held-out NSP accuracy", "val_loss": "held-out LM loss", "val_perplexity": "held-out perplexity",
}


def metric_label(key: str) -> str:
    """What a logged metric is, in words (``val_accuracy`` -> ``validation accuracy``)."""
    return HELD_OUT_NAMES.get(key, key.replace("val_", "validation ", 1).replace("eval_", "evaluation ", 1).replace("_", " "))


def train_loss_label(keys: set[str]) -> str:
    """What the logged training loss is: the objective, named from what the run evaluates."""
    if "val_nsp_accuracy" in keys:
        return "train loss (MLM + NSP)"
    if "val_mlm_loss" in keys:
        return "train loss (MLM)"
    if "val_perplexity" in keys:
        return "train loss (next-token LM)"
    return "train loss (the fine-tuning objective)"


def _axis_of(key: str) -> int:
    """0: losses, 1: accuracies and other scores, 2: perplexity (its own log axis)."""
    return 2 if key.endswith("perplexity") else 0 if key.endswith("loss") else 1


def training_figure(records: Sequence[dict[str, Any]], title: str = "training", start: dict[str, Any] | None = None):
    """The figure of :func:`plot_training`: losses, scores and perplexity on separate axes."""
    plt = _pyplot()
    evals = [{"step": 0, **start}, *records] if start else list(records)
    eval_keys = sorted({k for r in evals for k in r if k.startswith(("val_", "eval_")) and r[k] is not None})
    used = sorted({0} | {_axis_of(k) for k in eval_keys})
    fig, axes = plt.subplots(1, len(used), figsize=(5.5 * len(used), 4), squeeze=False)
    ax_of = {a: axes[0][i] for i, a in enumerate(used)}
    train = [r for r in records if "loss" in r]
    ax_of[0].plot([r["step"] for r in train], [r["loss"] for r in train], label=train_loss_label(set(eval_keys)))
    for key in eval_keys:
        points = [(r["step"], r[key]) for r in evals if r.get(key) is not None]
        ax_of[_axis_of(key)].plot(*zip(*points), marker="o", label=metric_label(key))
    names = {0: "loss", 1: "accuracy / score", 2: "perplexity"}
    for a, ax in ax_of.items():
        ax.set_xlabel("step")
        ax.set_ylabel(names[a])
        ax.set_title(title if a == 0 else f"held-out {names[a]}")
        ax.set_yscale("log" if a == 2 else "linear")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_training(records: Sequence[dict[str, Any]], out_png: str | Path, title: str = "training",
                  start: dict[str, Any] | None = None) -> Path | None:
    """Losses, scores and perplexity on separate axes, every curve labelled with what it is.

    ``records`` are the trainer's log (``loss`` per logged step, ``val_*`` at evaluations);
    ``start`` is the evaluation before the first step (plotted at step 0) when there was one.
    """
    if not records:
        return None
    fig = training_figure(records, title, start)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _pyplot().close(fig)
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
