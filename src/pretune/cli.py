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
import functools
import os
import sys
import warnings
from collections.abc import Iterator
from typing import NoReturn

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


class Parser(argparse.ArgumentParser):
    """argparse with a mistake on the command line reported in one line, like every other error
    (``pretune VERB: error: ...; see pretune VERB --help``), not after a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser(commands: list | None = None) -> argparse.ArgumentParser:
    parser = Parser(
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
    """Show Python warnings as one line each, ``pretune COMMAND: warning: ...``, without the
    source line Python's format adds; a warning repeated word for word is shown once, and a
    summary line at the end says how often it came."""
    counts: dict[str, int] = {}

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        text = str(message)
        counts[text] = counts.get(text, 0) + 1
        if counts[text] == 1:
            print(f"pretune {command}: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # every occurrence reaches show(), which counts them
        # libraries' deprecation notices are for their developers, as Python's default filters have
        # it (matplotlib 3.7 with pyparsing 3.3 would print one for every plot)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.showwarning = show
        try:
            yield
        finally:
            for text, n in counts.items():
                if n > 1:
                    shown = text if len(text) <= 80 else text[:77] + "..."
                    print(f"pretune {command}: warning: {n:,} times in all: {shown}", file=sys.stderr)


@functools.cache
def default_parser() -> argparse.ArgumentParser:
    """The parser of every command, built once per process (argparse parsers are reusable)."""
    return build_parser()


def main(argv: list[str] | None = None) -> int:
    parser = default_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the verb's parser, which names the verb
            prog = " ".join(["pretune", args.command, *([args.action] if getattr(args, "action", None) else [])])
            Parser(prog=prog).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help (0) or a command-line mistake (2), already printed
        return exc.code if isinstance(exc.code, int) else 0
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
