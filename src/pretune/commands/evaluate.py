"""`pretune evaluate`: score a fine-tuned model on a labelled file with its task's metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pretune.cli import apply_run_config
from pretune.commands.finetune import TASK_HELP, add_data_flags, cli_warnings, columns_from
from pretune.errors import PretuneError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a fine-tuned model on a labelled file",
        description="Print the task's metrics for a fine-tuned model on FILE and write them as JSON.",
    )
    p.add_argument("--config", help="YAML/JSON file of flag values (command-line flags win)")
    p.add_argument("--model", help="fine-tuned model directory")
    p.add_argument("--task", help=TASK_HELP + " (default: the one the model was fine-tuned on)")
    p.add_argument("--data", help="labelled file in the task's layout")
    p.add_argument("--out", help="metrics JSON to write (default: MODEL/eval_<data file name>.json)")
    add_data_flags(p, batch_default=64)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    args = apply_run_config(args, args._parser)
    from pretune.inference import evaluate
    from pretune.io import write_json

    for flag in ("model", "data"):
        if not getattr(args, flag):
            raise PretuneError(f"--{flag} is required (on the command line or in --config)")
    with cli_warnings("evaluate"):
        metrics = evaluate(
            args.model, args.data, task_name=args.task, columns=columns_from(args), batch_size=args.batch_size,
            limit=args.limit, max_seq_len=args.max_seq_len, no_truncate=args.no_truncate, device=args.device,
            progress=not args.no_progress,
        )
    out = Path(args.out) if args.out else Path(args.model) / f"eval_{Path(args.data).name}.json"
    write_json(out, metrics)
    width = max(len(k) for k in metrics)
    for name, value in metrics.items():
        print(f"{name.ljust(width)}  {value:.4f}")
    print(json.dumps({"written": str(out)}))
    return 0
