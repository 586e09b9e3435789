"""The ``pretune`` command line: one sub-command per verb.

Each verb is a module of ``pretune/commands/`` with ``register(subparsers)``, which adds its
parser with the flags of its settings dataclass (:mod:`pretune.settings`) and sets ``run``, a
function of the settings object. This file only dispatches, shows warnings as one plain line, and
turns a :class:`PretuneError` into one line on stderr and exit status 2 (``PRETUNE_DEBUG=1``
shows the traceback instead, for bug reports).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator

from pretune.commands import (
    convert,
    data,
    demo,
    embed,
    evaluate,
    fill_mask,
    finetune,
    generate,
    perplexity,
    predict,
    pretrain,
    senses,
    tokenizer,
)
from pretune.errors import PretuneError
from pretune.settings import settings_from

# In the order `pretune --help` lists them.
COMMANDS = [tokenizer, pretrain, finetune, evaluate, predict, embed, convert, data, demo,
            generate, fill_mask, perplexity, senses]
DEBUG_ENV = "PRETUNE_DEBUG"


def build_parser(commands: list | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretune",
        description="Pre-train, then fine-tune: GPT-1 and BERT from raw text to real tasks.",
        epilog=f"{DEBUG_ENV}=1 shows the traceback of an error, for bug reports.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in commands or COMMANDS:
        module.register(sub)
    return parser


@contextlib.contextmanager
def plain_warnings(command: str) -> Iterator[None]:
    """Show Python warnings as one line each: ``pretune COMMAND: warning: ...``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        print(f"pretune {command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = args.command
    try:
        with plain_warnings(name):
            result = args.run(settings_from(args))
    except PretuneError as exc:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"pretune {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pretune {name}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
