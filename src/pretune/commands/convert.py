"""`pretune convert`: Hugging Face checkpoints to pretune model directories and back."""

from __future__ import annotations

import argparse

from pretune.checkpoint import export_hf, load_model, save_model
from pretune.errors import PretuneError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert between Hugging Face and pretune checkpoints")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-hf", metavar="HF_DIR", help="a BERT or OpenAI GPT directory of transformers")
    src.add_argument("--to-hf", metavar="DIR", help="a pretune model directory to export")
    p.add_argument("--out", required=True, help="directory to write (replaced atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.from_hf:
        loaded = load_model(args.from_hf)
        if loaded.source != "huggingface":
            raise PretuneError(f"--from-hf {args.from_hf}: not a Hugging Face directory (config.json has no model_type)")
        save_model(args.out, loaded.model, loaded.tokenizer, exclude=loaded.missing)
    else:
        loaded = load_model(args.to_hf)
        if loaded.source != "pretune":
            raise PretuneError(f"--to-hf {args.to_hf}: not a pretune model directory")
        export_hf(loaded.model, args.out, loaded.tokenizer, exclude=loaded.missing)
    what = f"{loaded.config.family} ({loaded.config.n_layers} layers, hidden {loaded.config.hidden})"
    absent = sorted({name.split(".")[0] for name in loaded.missing})
    print(f"wrote {args.out}: {what}" + (f" (the source has no {', '.join(absent)} weights)" if absent else ""))
    return 0
