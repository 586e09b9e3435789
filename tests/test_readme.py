"""The README's front door stays true: every command of its bash blocks parses with pretune's own
parser, every data file it names is in ../shared/data, only the commands that cannot run here are
skipped (each for a stated reason), and the walkthrough script runs them in a new shell after the
README's activation line. Running the walkthrough itself takes minutes: ``make walkthrough``."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from walkthrough import ACTIVATE, QUICK, README, Command, readme_commands, script

from pretune import cli

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COMMANDS = readme_commands()


def _argv(command: Command) -> list[str]:
    """The arguments after ``pretune`` (also under ``torchrun -m pretune``), $D and $M filled in."""
    words = [w.replace("$D", str(SHARED)).replace("$M", "MINILM_DIR") for w in command.words]
    return words[words.index("pretune") + 1 :]


def test_the_readme_has_commands_for_every_verb() -> None:
    verbs = {c.verb for c in COMMANDS if c.verb}
    assert verbs >= {"tokenizer", "pretrain", "finetune", "evaluate", "predict", "embed", "convert"}
    assert len(COMMANDS) >= 25


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.verb and " ... " not in f" {c.text} "], ids=lambda c: c.text[:60])
def test_every_readme_command_parses(command: Command) -> None:
    args, extra = cli.default_parser().parse_known_args(_argv(command))
    assert not extra, extra
    assert args.command == command.verb


def test_every_data_file_the_readme_names_exists() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is missing")
    named = {w.split("/", 1)[1] for c in COMMANDS for w in c.words if w.startswith(("$D/", "../shared/data/"))}
    named = {n.removeprefix("shared/data/") for n in named}
    assert named and all((SHARED / n).is_file() for n in named), sorted(n for n in named if not (SHARED / n).is_file())


def test_only_what_cannot_run_here_is_skipped() -> None:
    skipped = [c.text.split()[0] + " " + c.text.split()[1] for c in COMMANDS if c.skip]
    assert skipped == ["make demo", "make test", "source .venv/bin/activate", "pretune pretrain",
                       "torchrun --nproc_per_node", "torchrun --nproc_per_node", "torchrun --nnodes", "pretune finetune"]


def test_the_walkthrough_runs_in_a_new_shell_after_activation_with_quick_flags() -> None:
    text = script(COMMANDS, quick=True, pythonpath=None).splitlines()
    assert text[:2] == ["set -eo pipefail", ACTIVATE]
    pretrain = next(line for line in text if line.startswith("pretune pretrain --model bert-tiny --tokenizer runs/tok-ko"))
    assert pretrain.endswith(shlex.join(QUICK["pretrain"]))  # as written, then the flags that shrink it
    assert "M=$(python -c" in "\n".join(text)  # `python` is the virtual environment's, after activation


def test_the_readme_says_how_to_put_pretune_and_python_on_path() -> None:
    text = README.read_text(encoding="utf-8")
    walkthrough = text.index("## Walkthrough")
    assert ACTIVATE in text[:walkthrough + 2000]
