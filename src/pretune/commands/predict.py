"""`pretune predict`: one JSON line of predictions per input, from a fine-tuned model."""

from __future__ import annotations

import argparse

from pretune.cli import apply_run_config
from pretune.commands.finetune import TASK_HELP, add_data_flags, cli_warnings, columns_from
from pretune.errors import PretuneError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="predict with a fine-tuned model, one JSON line per input",
        description="Write predictions for FILE (labels optional): label and probabilities, score, chosen "
        "answer, answer text, or tags, with each input's source file:line.",
    )
    p.add_argument("--config", help="YAML/JSON file of flag values (command-line flags win)")
    p.add_argument("--model", help="fine-tuned model directory")
    p.add_argument("--task", help=TASK_HELP + " (default: the one the model was fine-tuned on)")
    p.add_argument("--data", help="input file in the task's layout (the label column may be absent)")
    p.add_argument("--out", help="predictions file (.jsonl)")
    add_data_flags(p, batch_default=64)
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    args = apply_run_config(args, args._parser)
    from pretune.inference import predict

    for flag in ("model", "data", "out"):
        if not getattr(args, flag):
            raise PretuneError(f"--{flag} is required (on the command line or in --config)")
    with cli_warnings("predict"):
        n = predict(
            args.model, args.data, args.out, task_name=args.task, columns=columns_from(args),
            batch_size=args.batch_size, limit=args.limit, max_seq_len=args.max_seq_len,
            no_truncate=args.no_truncate, device=args.device, progress=not args.no_progress,
        )
    print(f"wrote {n} predictions to {args.out}")
    return 0
