"""`pretune tokenizer train|encode`: train a WordPiece or BPE tokenizer, or inspect an encoding."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pretune.data import corpus
from pretune.errors import PretuneError
from pretune.io import atomic_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a tokenizer or show how text is tokenized")
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    train = sub.add_parser(
        "train",
        help="train a WordPiece (BERT) or byte-level BPE (GPT) tokenizer on text files",
        description="Train a tokenizer on .txt / .jsonl files (gzipped or not) and save it to a directory "
        "that pretune and Hugging Face AutoTokenizer can both load.",
    )
    train.add_argument(
        "files", nargs="+", metavar="FILE", help="training text: .txt, .txt.gz, .jsonl, .jsonl.gz"
    )
    train.add_argument(
        "--kind", required=True, choices=["wordpiece", "bpe"], help="wordpiece for BERT, bpe for GPT"
    )
    train.add_argument(
        "--vocab-size", required=True, type=int, metavar="N", help="vocabulary size, special tokens included"
    )
    train.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    train.add_argument(
        "--lowercase", action="store_true", help="lower-case text first (accents and Hangul kept)"
    )
    train.add_argument(
        "--min-frequency", type=int, default=2, metavar="K", help="keep merges seen at least K times (2)"
    )
    train.add_argument(
        "--skip-bad-lines", action="store_true", help="skip lines that are not UTF-8 instead of stopping"
    )
    train.add_argument("--force", action="store_true", help="replace DIR if it exists and is not empty")

    enc = sub.add_parser("encode", help="print the tokens and ids of texts, one JSON line each")
    enc.add_argument("--tokenizer", required=True, type=Path, metavar="DIR", help="tokenizer directory")
    enc.add_argument("texts", nargs="*", metavar="TEXT", help="texts to encode (default: lines of stdin)")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; returns the exit code."""
    return {"train": run_train, "encode": run_encode}[args.action](args)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PretuneError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise PretuneError(f"--out {out}: directory exists and is not empty; pass --force to replace it")


def run_train(args: argparse.Namespace) -> int:
    from pretune.tokenizer import train_tokenizer

    out: Path = args.out
    _check_out(out, args.force)
    files = corpus.check_paths(args.files)
    stats = corpus.ReadStats()
    started = time.perf_counter()
    tok = train_tokenizer(
        files,
        args.kind,
        args.vocab_size,
        lowercase=args.lowercase,
        min_frequency=args.min_frequency,
        show_progress=sys.stderr.isatty(),
        skip_bad_lines=args.skip_bad_lines,
        stats=stats,
    )
    with atomic_dir(out) as tmp:
        tok.save(tmp)
    seconds = time.perf_counter() - started
    plural = "s" if stats.bad_lines != 1 else ""
    skipped = f", {stats.bad_lines:,} bad line{plural} skipped" if stats.bad_lines else ""
    print(f"trained {tok.kind} tokenizer on {stats.lines:,} lines{skipped} in {seconds:.1f}s")
    note = "" if tok.vocab_size == args.vocab_size else f" (asked for {args.vocab_size:,})"
    print(f"vocab size: {tok.vocab_size:,}{note}")
    sample = next(corpus.iter_texts(files, skip_bad_lines=True), "")[:100]
    print(f"sample: {sample}")
    print(f"tokens: {' '.join(tok.tokenize(sample))}")
    print(f"saved to {out}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from pretune.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    texts = args.texts or (line.rstrip("\n") for line in sys.stdin)
    for text in texts:
        ids = tok.encode(text)
        print(
            json.dumps(
                {"text": text, "tokens": tok.convert_ids_to_tokens(ids), "ids": ids}, ensure_ascii=False
            )
        )
    return 0
