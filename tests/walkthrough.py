"""The README's commands, kept true: extracted from README.md's ``bash`` blocks and run in a new
shell, as a user would paste them after the README's two set-up commands.

    python tests/walkthrough.py            # quick: every command as written, plus flags that shrink it
    python tests/walkthrough.py --full     # exactly as written (hours on a CPU)
    python tests/walkthrough.py --list     # the commands, and what would be skipped and why

``make walkthrough`` runs the quick form. The shell starts empty (``env -i``: no virtual
environment on PATH), enters a scratch folder beside a link to ``../shared``, runs the README's
activation line, then the commands in README order, and stops at the first that fails. Quick
mode appends flags (shown in the output) that keep every command's own flags and files but make
the work small: a few steps, a few hundred examples. ``tests/test_readme.py`` checks, in the test
suite, that every command parses with pretune's own parser and that every file it names exists.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ACTIVATE = "source .venv/bin/activate"

# Quick mode: flags appended to each verb (argparse keeps the last value of a flag).
QUICK = {
    "pretrain": ["--max-steps", "3", "--eval-every", "0", "--save-every", "0", "--eval-batches", "2"],
    "finetune": ["--limit", "300", "--epochs", "1"],
    "evaluate": ["--limit", "64"],
    "predict": ["--limit", "64"],
}


@dataclass
class Command:
    text: str  # one shell command, continuation lines joined, comment removed
    skip: str = ""  # why it is not run (empty: it is run)

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text)

    @property
    def verb(self) -> str | None:
        """The pretune verb (``tokenizer``, ``pretrain``, ...), also under ``torchrun -m pretune``."""
        words = self.words
        if words[0] == "pretune":
            return words[1]
        if words[0] == "torchrun" and "pretune" in words:
            return words[words.index("pretune") + 1]
        return None


def _strip_comment(line: str) -> str:
    """A line without its trailing ``# comment`` (a # inside quotes stays)."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(readme: Path = README) -> list[Command]:
    """Every command of every ``bash`` block, in order, each marked with why it would be skipped."""
    text = readme.read_text(encoding="utf-8")
    commands: list[Command] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        pending = ""
        for raw in block.splitlines():
            line = _strip_comment(raw)
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            line = (pending + line.strip()).strip()
            pending = ""
            if line:
                commands.append(Command(line, _skip_reason(line)))
    return commands


def _skip_reason(line: str) -> str:
    if line.startswith("make ") or line == ACTIVATE:
        return "the set-up itself (run before the walkthrough)"
    if " ... " in f" {line} ":
        return "a placeholder (...) for the command above"
    if line.startswith("torchrun"):
        return "several processes or machines (checked: it parses; tests/test_distributed.py runs every training path under torchrun on 2 CPU processes)"
    if "ner_train.conll" in line:
        return "your own CoNLL file (no NER data in ../shared/data)"
    return ""


def _quick(command: Command) -> str:
    extra = QUICK.get(command.verb or "", [])
    return command.text + ("" if not extra else " " + shlex.join(extra))


def script(commands: list[Command], *, quick: bool, pythonpath: str | None) -> str:
    """The bash script of the walkthrough: activation, then each command timed, stopping at a failure."""
    lines = ["set -eo pipefail", ACTIVATE]
    if pythonpath:  # a development checkout whose .venv points elsewhere: this checkout's code first
        lines.append(f"export PYTHONPATH={shlex.quote(pythonpath)}")
    for i, command in enumerate(commands):
        if command.skip:
            lines.append(f"echo {shlex.quote(f'--- skipped: {command.text}  ({command.skip})')}")
            continue
        run = _quick(command) if quick else command.text
        lines += [f"echo {shlex.quote(f'--- [{i}] {run}')}", "SECONDS=0", run, 'echo "--- took ${SECONDS} s"']
    return "\n".join(lines) + "\n"


def run(quick: bool, venv: Path, pythonpath: str | None, keep: bool) -> int:
    """Run the walkthrough in a new, empty shell in a scratch folder; returns the shell's status."""
    work = Path(tempfile.mkdtemp(prefix="pretune-walkthrough-"))
    (work / "shared").symlink_to((ROOT.parent / "shared").resolve())
    (work / "repo").mkdir()
    (work / "repo" / ".venv").symlink_to(venv.resolve())
    path = work / "walkthrough.sh"
    path.write_text(script(readme_commands(), quick=quick, pythonpath=pythonpath), encoding="utf-8")
    env = {"HOME": os.environ.get("HOME", str(work)), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "")}
    env = {k: v for k, v in env.items() if v}
    started = time.perf_counter()
    status = subprocess.call(["env", "-i", *(f"{k}={v}" for k, v in env.items()), "bash", str(path)], cwd=work / "repo")
    print(f"--- walkthrough ({'quick' if quick else 'full'}) {'passed' if status == 0 else 'FAILED'} in "
          f"{time.perf_counter() - started:.0f} s; scratch folder {work}{'' if keep or status else ' (removed)'}")
    if status == 0 and not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="run the commands exactly as written (hours)")
    parser.add_argument("--list", action="store_true", help="print the commands and what is skipped, run nothing")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv", help="the virtual environment `make` created")
    parser.add_argument("--pythonpath", help="put this source folder first (a checkout whose venv has another one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    if args.list:
        for c in readme_commands():
            print(f"{'skip' if c.skip else 'run '}  {c.text}" + (f"\n      ({c.skip})" if c.skip else ""))
        return 0
    if not (args.venv / "bin" / "activate").is_file():
        print(f"{args.venv}: no virtual environment; run `make test` (or `make install`) first", file=sys.stderr)
        return 2
    return run(not args.full, args.venv, args.pythonpath, args.keep)


if __name__ == "__main__":
    sys.exit(main())
