"""The `pretune` command line: one sub-command per verb.

Each verb lives in ``pretune/commands/<verb>.py`` with two functions: ``register(subparsers)``
adds its parser, and the parser's ``func`` default does the work. This file only dispatches and
turns a :class:`PretuneError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pretune.errors import PretuneError

# Sub-command modules, in the order `pretune --help` lists them.
COMMANDS = [
    "tokenizer",
    "pretrain",
    "finetune",
    "evaluate",
    "predict",
    "embed",
    "convert",
    "data",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretune",
        description="Pre-train, then fine-tune: GPT-1 and BERT from raw text to real tasks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"pretune.commands.{name}")
        except ModuleNotFoundError as exc:  # a verb not built yet is simply absent
            if exc.name == f"pretune.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except PretuneError as exc:
        print(f"pretune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pretune {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
