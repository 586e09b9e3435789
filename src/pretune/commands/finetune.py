"""`pretune finetune`: a pretrained model (or a preset, the from-scratch baseline) + a labelled task
-> the best fine-tuned checkpoint, ``eval_results.json`` and a printed table of metrics."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from pretune.cli import apply_run_config
from pretune.errors import PretuneError

TASK_HELP = (
    "a recipe: nsmc, kornli, korsts, cola, stsb, mrpc, storycloze, korquad, or a generic family "
    "(classification, regression, multiple-choice, qa, tagging) with the column flags"
)


def add_data_flags(p: argparse.ArgumentParser, *, batch_default: int) -> None:
    """Flags shared by finetune, evaluate and predict: columns, lengths, device, limits."""
    g = p.add_argument_group("columns (override the recipe's; names with a header, 0-based indexes without)")
    g.add_argument("--text-col", help="text column (several: comma-separated, joined with spaces)")
    g.add_argument("--text-pair-col", help="second text column: a sentence pair")
    g.add_argument("--label-col", help="label column: class names, numbers (regression) or the choice number")
    g.add_argument("--choice-cols", help="multiple choice: comma-separated candidate answer columns")
    g.add_argument("--context-col", help="multiple choice: the context column(s), comma-separated")
    g.add_argument("--no-header", action="store_true", help="the table has no header row: columns by index")
    g = p.add_argument_group("inputs")
    g.add_argument("--max-seq-len", type=int, help="tokens per sequence, special tokens included (default: the model's maximum)")
    g.add_argument("--no-truncate", action="store_true", help="fail on a too-long input instead of truncating (and counting) it")
    g.add_argument("--limit", type=int, metavar="N", help="use only the first N examples of each file (quick runs)")
    g.add_argument("--batch-size", type=int, default=batch_default)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def columns_from(args: argparse.Namespace) -> dict[str, Any]:
    cols = {k: getattr(args, k) for k in ("text_col", "text_pair_col", "label_col", "choice_cols", "context_col")}
    if args.no_header:
        cols["header"] = False
    return {k: v for k, v in cols.items() if v is not None}


@contextlib.contextmanager
def cli_warnings(command: str) -> Iterator[None]:
    """Show Python warnings as one line each: ``pretune COMMAND: warning: ...``."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        print(f"pretune {command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained model (or a preset from scratch) on a labelled task",
        description="Fine-tune with the input transformations of GPT-1 and BERT. Validates after every "
        "epoch, keeps the best checkpoint by the task's main metric in --out, writes eval_results.json.",
    )
    p.add_argument("--config", help="YAML/JSON file of flag values (command-line flags win)")
    p.add_argument("--model", help="preset (from scratch), pretune model directory, or Hugging Face directory")
    p.add_argument("--tokenizer", help="tokenizer directory (required with a preset; default: the model's)")
    p.add_argument("--task", help=TASK_HELP)
    p.add_argument("--train", help="training file (TSV/CSV/JSONL, SQuAD JSON, CoNLL)")
    p.add_argument("--validation", help="validation file (evaluated after every epoch)")
    p.add_argument("--validation-split", type=float, metavar="FRACTION",
                   help="hold out this fraction of --train for validation instead (QA: by article)")
    p.add_argument("--test", help="test file, scored once with the best checkpoint")
    p.add_argument("--out", help="run directory: the best fine-tuned model and its results")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--eval-batch-size", type=int, help="default: twice --batch-size")
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate of the pretrained body")
    p.add_argument("--head-lr", type=float, help="learning rate of the new layers (task head; default: --lr)")
    p.add_argument("--layer-decay", type=float, help="layer-wise LR decay: layer l from the top gets lr * decay**l")
    p.add_argument("--freeze-layers", type=int, default=0, metavar="K", help="freeze the embeddings and the first K layers")
    p.add_argument("--transfer-layers", type=int, metavar="K",
                   help="keep the first K pretrained layers, re-initialise the rest (GPT-1's analysis)")
    p.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of the steps spent warming up")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--schedule", choices=["linear", "cosine", "constant"], default="linear")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--lm-coef", type=float, help="GPT: weight of the auxiliary LM loss (default 0.5; 0 = off); BERT: ignored")
    p.add_argument("--pair-mode", choices=["auto", "entailment", "similarity"], default="auto",
                   help="GPT sentence pairs: one ordered sequence, or both orderings added (auto: similarity "
                   "for regression and mrpc)")
    p.add_argument("--patience", type=int, default=0, help="stop after K evaluations without improvement (0: never)")
    p.add_argument("--group-by-length", action="store_true", help="batch examples of similar length (less padding)")
    p.add_argument("--doc-stride", type=int, default=128, help="QA: tokens between the starts of context windows")
    p.add_argument("--max-query-len", type=int, default=64, help="QA: question tokens kept")
    p.add_argument("--max-answer-len", type=int, default=30, help="QA: longest answer span, in tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="model config overrides, e.g. dropout=0.2 (shapes only for a preset: n_layers=4)")
    add_data_flags(p, batch_default=32)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    args = apply_run_config(args, args._parser)
    from pretune.config import parse_overrides
    from pretune.train.finetune import FinetuneSettings, finetune

    for flag in ("model", "task", "train", "out"):
        if not getattr(args, flag):
            raise PretuneError(f"--{flag} is required (on the command line or in --config)")
    fields = FinetuneSettings.__dataclass_fields__
    settings = FinetuneSettings(
        **{k: v for k, v in vars(args).items() if k in fields and k not in ("columns", "progress", "override")},
        columns=columns_from(args),
        override=parse_overrides(args.set),
        progress=not args.no_progress,
    )
    with cli_warnings("finetune"):
        summary = finetune(settings)
    if summary:
        print(f"best checkpoint (epoch {summary['best_epoch']}, step {summary['best_step']}) saved in {args.out}")
    return 0
