"""`pretune demo`: the main job (see ``pretune/apps/demo/``)."""

from __future__ import annotations

import argparse
import shlex
import sys

from pretune.apps.demo.settings import DemoSettings
from pretune.settings import add_command


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "demo", DemoSettings, run,
                help="pretrain on unlabeled Korean reviews, fine-tune with few labels, compare with scratch",
                description="Train a tokenizer and a small BERT on NSMC's unlabeled reviews, fine-tune it and an "
                "identical randomly initialised BERT on 500/2,000/10,000 labels, score both on a fixed test sample, "
                "and write results.json, plots and report.md, all within --minutes: the set-up is measured, the "
                "from-scratch twins fine-tune first (epochs scaled down when time is short), pretraining gets what "
                "is left after their pretrained twins' equal share, and the plan is printed.")


def run(s: DemoSettings) -> int:
    from pretune.apps.demo import run_demo

    given = sys.argv[sys.argv.index("demo") + 1 :] if "demo" in sys.argv else []
    run_demo(s, command=shlex.join(["pretune", "demo", *given]))
    return 0
