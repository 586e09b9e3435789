"""`pretune demo`: the main job (see ``pretune/demo.py``)."""

from __future__ import annotations

import argparse
import shlex
import sys

from pretune.demo import DemoSettings, run_demo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="pretrain on unlabeled Korean reviews, fine-tune with few labels, compare with scratch",
        description="Train a tokenizer and a small BERT on NSMC's unlabeled reviews, fine-tune it and an identical "
        "randomly initialised BERT on 500/2,000/10,000 labels, score both on a fixed test sample, and write "
        "results.json, plots and report.md.",
    )
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--data-dir", help="data root holding nsmc/ (default: $PRETUNE_DATA, ../shared/data, ~/.cache/pretune/data)")
    p.add_argument(
        "--minutes", type=float, default=13.0,
        help="time target for the whole demo (default 13); pretraining gets 82%% of it, per model",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--fresh", action="store_true", help="retrain the tokenizer and the pretrained model")
    p.add_argument("--gpt", action="store_true", help="also pretrain and fine-tune a small GPT")
    p.add_argument("--analysis", action="store_true", help="GPT-1 figure 2: layers transferred, zero-shot vs steps")
    p.add_argument("--full-test", action="store_true", help="score on all 50,000 test reviews")
    p.add_argument("--budgets", type=int, nargs="+", help="label budgets (default 500 2000 10000)")
    p.add_argument("--test-sample", type=int, help="test reviews scored (default 5000)")
    p.add_argument("--pretrain-seconds", type=float, help="pretraining time (default: from --minutes)")
    p.add_argument("--model", help="BERT preset to pretrain and compare (default bert-tiny)")
    p.add_argument("--corpus-lines", type=int, help="use only the first N lines of the unlabeled corpus")
    p.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default="auto",
        help="auto: bf16 autocast on CUDA and on CPUs with AMX (faster there), else fp32",
    )
    p.add_argument(
        "--finetune-lr", type=float, nargs="+",
        help="fine-tuning learning rate of both twins (default 3e-4); with several, each twin keeps its best on validation",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    s = DemoSettings(
        out=args.out, data_dir=args.data_dir, minutes=args.minutes, device=args.device, fresh=args.fresh,
        gpt=args.gpt, analysis=args.analysis, full_test=args.full_test, progress=not args.no_progress,
        pretrain_seconds=args.pretrain_seconds, corpus_lines=args.corpus_lines,
        precision=args.precision,
    )
    if args.model:
        s.model = args.model
    if args.budgets:
        s.budgets = sorted(args.budgets)
    if args.test_sample:
        s.test_sample = args.test_sample
    if args.finetune_lr:
        s.finetune_lrs = list(args.finetune_lr)
    given = sys.argv[sys.argv.index("demo") + 1 :] if "demo" in sys.argv else []
    run_demo(s, command=shlex.join(["pretune", "demo", *given]))
    return 0
