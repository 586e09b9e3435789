"""`pretune tokenizer train|encode`: train a WordPiece or BPE tokenizer, or inspect an encoding."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Literal

from pretune.settings import add_command, at_least, require, setting


@dataclass
class TrainTokenizerSettings:
    files: list[str] | None = setting(None, positional=True, help="training text: .txt, .txt.gz, .jsonl, .jsonl.gz")
    kind: Literal["wordpiece", "bpe"] | None = setting(None, help="wordpiece for BERT, bpe (byte-level) for GPT")
    vocab_size: int | None = setting(None, metavar="N", check=at_least(1), help="vocabulary size, special tokens included")
    out: str | None = setting(None, metavar="DIR", help="output directory")
    lowercase: bool = setting(False, help="lower-case text first (accents and Hangul kept)")
    min_frequency: int = setting(2, metavar="K", check=at_least(1), help="keep merges seen at least K times")
    skip_bad_lines: bool = setting(False, help="skip lines that are not UTF-8 instead of stopping")
    overwrite: bool = setting(False, help="replace --out if it holds anything")


@dataclass
class EncodeSettings:
    tokenizer: str | None = setting(None, metavar="DIR", help="tokenizer directory or Hugging Face Hub id (org/name[@revision])")
    texts: list[str] | None = setting(None, positional=True, help="texts to encode (default: lines of stdin)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a tokenizer or show how text is tokenized")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_command(sub, "train", TrainTokenizerSettings, run_train,
                help="train a WordPiece (BERT) or byte-level BPE (GPT) tokenizer on text files",
                description="Train a tokenizer on .txt / .jsonl files (gzipped or not) and save it to a directory "
                "that pretune and Hugging Face AutoTokenizer can both load.")
    add_command(sub, "encode", EncodeSettings, run_encode, help="print the tokens and ids of texts, one JSON line each")


def run_train(s: TrainTokenizerSettings) -> int:
    from pretune.data import corpus
    from pretune.io import atomic_dir, check_out
    from pretune.tokenizer import train_tokenizer

    require(s, "files", "kind", "vocab_size", "out")
    check_out(s.out, inputs=tuple(s.files), overwrite=s.overwrite)
    files = corpus.check_paths(s.files, s.skip_bad_lines)
    stats = corpus.ReadStats()
    started = time.perf_counter()
    tok = train_tokenizer(files, s.kind, s.vocab_size, lowercase=s.lowercase, min_frequency=s.min_frequency,
                          show_progress=sys.stderr.isatty(), skip_bad_lines=s.skip_bad_lines, stats=stats)
    with atomic_dir(s.out) as tmp:
        tok.save(tmp)
    seconds = time.perf_counter() - started
    skipped = f", {stats.bad_lines:,} bad line{'s' if stats.bad_lines != 1 else ''} skipped" if stats.bad_lines else ""
    print(f"trained {tok.kind} tokenizer on {stats.lines:,} lines{skipped} in {seconds:.1f}s")
    note = "" if tok.vocab_size == s.vocab_size else f" (asked for {s.vocab_size:,})"
    print(f"vocab size: {tok.vocab_size:,}{note}")
    sample = next(corpus.iter_texts(files, skip_bad_lines=True), "")[:100]
    print(f"sample: {sample}")
    print(f"tokens: {' '.join(tok.tokenize(sample))}")
    print(f"saved to {s.out}")
    return 0


def run_encode(s: EncodeSettings) -> int:
    from pretune.checkpoint import tokenizer_path
    from pretune.io import read_texts
    from pretune.tokenizer import Tokenizer

    require(s, "tokenizer")
    tok = Tokenizer.load(tokenizer_path(s.tokenizer))
    for text in read_texts(s.texts):
        ids = tok.encode(text)
        print(json.dumps({"text": text, "tokens": tok.convert_ids_to_tokens(ids), "ids": ids}, ensure_ascii=False))
    return 0
