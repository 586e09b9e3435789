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


def apply_run_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill flags from ``--config RUN.yaml|json``: a flag given on the command line wins.

    Keys are flag names (``max-steps`` or ``max_steps``); an unknown key is an error naming it.
    """
    path = getattr(args, "config", None)
    if not path:
        return args
    from pretune.config import load_run_config

    values = load_run_config(path)
    dests = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "func")}
    unknown = sorted(set(values) - set(dests))
    if unknown:
        raise PretuneError(f"{path}: unknown setting(s) {unknown}; valid: {sorted(dests)}")
    for key, value in values.items():
        if getattr(args, key) == parser.get_default(key):
            action = dests[key]
            if action.nargs in ("+", "*") and isinstance(value, str):
                value = [value]
            if action.type is not None and value is not None and not isinstance(value, list):
                value = action.type(value)
            if action.choices is not None and value not in action.choices:
                raise PretuneError(f"{path}: {key} must be one of {list(action.choices)}, got {value!r}")
            setattr(args, key, value)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretune",
        description="Pre-train, then fine-tune: GPT-1 and BERT from raw text to real tasks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"pretune.commands.{name}").register(sub)
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
