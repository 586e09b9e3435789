"""`pretune finetune`: a pretrained model (or a preset, the from-scratch baseline) + a labelled task
-> the best fine-tuned checkpoint, ``eval_results.json`` and a printed table of metrics."""

from __future__ import annotations

import argparse

from pretune.settings import add_command, require
from pretune.train.settings import FinetuneSettings


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "finetune", FinetuneSettings, run,
                help="fine-tune a pretrained model (or a preset from scratch) on a labelled task",
                description="Fine-tune with the input transformations of GPT-1 and BERT. Validates after every "
                "epoch, keeps the best checkpoint by the task's main metric in --out, writes eval_results.json.")


def run(s: FinetuneSettings) -> int:
    from pretune.train.finetune import finetune

    require(s, "model", "task", "train", "out")
    summary = finetune(s)
    if summary:
        print(f"best checkpoint (epoch {summary['best_epoch']}, step {summary['best_step']}) saved in {s.out}")
    return 0
