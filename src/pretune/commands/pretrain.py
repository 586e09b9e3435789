"""`pretune pretrain`: raw text -> pretrained BERT (MLM + NSP) or GPT (causal LM)."""

from __future__ import annotations

import argparse
import json

from pretune.cli import apply_run_config
from pretune.config import parse_overrides
from pretune.train.pretrain import PretrainSettings, pretrain


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a BERT or GPT on raw text",
        description="Pretrain on unlabeled text. BERT: masked LM + next-sentence prediction; GPT: causal LM. "
        "Runs unchanged under `torchrun --nproc_per_node N` (DDP; --fsdp to shard).",
    )
    p.add_argument("--config", help="YAML/JSON file of flag values (command-line flags win)")
    p.add_argument("--model", help="preset (bert-tiny ... gpt1), config .json, or model directory to continue")
    p.add_argument("--tokenizer", help="tokenizer directory (default: the model directory's)")
    p.add_argument("--data", nargs="+", help=".txt/.txt.gz/.jsonl files; BERT: one sentence per line, blank line between documents")
    p.add_argument("--out", help="run directory (becomes a model directory)")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32, help="global batch (sequences per optimizer step, per accumulation step)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--schedule", choices=["linear", "cosine", "constant"], help="default: linear (BERT), cosine (GPT)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every K steps (0: only at the end)")
    p.add_argument("--eval-every", type=int, default=0, help="evaluate on held-out text every K steps (0: at the end)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--keep-last", type=int, default=2, help="checkpoints to keep")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--no-nsp", action="store_true", help="BERT: masked LM only, on contiguous full-length segments")
    p.add_argument("--whole-word-mask", action="store_true", help="BERT: mask whole words (WordPiece ## pieces, Korean eojeol)")
    p.add_argument("--static-masking", action="store_true", help="BERT: fix masks at creation (dupe-factor copies)")
    p.add_argument("--dupe-factor", type=int, default=5)
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--max-predictions", type=int, help="cap on masked tokens per sequence (default 15%% of --seq-len)")
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    p.add_argument(
        "--output-bias", choices=["unigram", "zero"], default="unigram",
        help="fresh BERT: start the MLM output bias at the corpus's log unigram frequencies (default) or at zero",
    )
    p.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents held out")
    p.add_argument("--skip-bad-lines", action="store_true", help="skip non-UTF-8 lines (counted) instead of failing")
    p.add_argument("--cache-dir", help="where token shards are cached (default: RUN_DIR/data-cache)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard the model with FSDP instead of DDP")
    p.add_argument("--time-budget", type=float, default=0.0, dest="time_budget_s", help="stop after this many seconds")
    p.add_argument("--workers", type=int, help="processes for tokenization")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="model config overrides, e.g. hidden=256")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    args = apply_run_config(args, args._parser)
    from pretune.errors import PretuneError

    for flag in ("model", "data", "out"):
        if not getattr(args, flag):
            raise PretuneError(f"--{flag} is required (on the command line or in --config)")
    settings = PretrainSettings(
        **{k: v for k, v in vars(args).items() if k in PretrainSettings.__dataclass_fields__ and k != "override"},
        override=parse_overrides(args.set),
    )
    settings.progress = not args.no_progress
    summary = pretrain(settings)
    if summary:
        print(json.dumps({k: v for k, v in summary.items() if k != "model"}, indent=2, ensure_ascii=False))
    return 0
