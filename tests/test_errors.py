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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hubcache import add_snapshot

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
    _text(w / "huge.tsv", "text\tlabel\n" + "".join("the cat " * 6000 + f"\t{'yes' if i % 2 else 'no'}\n" for i in range(5)))
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
    _text(w / "senses.tsv", "a\tthe cat sat\na\tthe cat ran\nb\ta cat sat\nb\ta cat ran\n")
    _text(w / "onesense.tsv", "a\tthe cat sat\nb\ta cat ran\n")
    _text(w / "qa_bad.json", json.dumps(qa))
    for q in qa["data"][0]["paragraphs"][0]["qas"]:
        q["answers"][0]["answer_start"] = 19
    _text(w / "qa.json", json.dumps(qa))
    for name in ("full", "full-pretrain", "full-finetune"):  # not empty: someone's results
        (w / name).mkdir()
        _text(w / name / "keep.txt", "someone's results\n")
    (w / "nodata").mkdir()
    import datasets  # the test extra installs it (pretune[hf])

    table = datasets.Dataset.from_dict({"text": ["the cat sat", "a dog ran"], "label": [1, 0]})
    datasets.DatasetDict({"train": table, "validation": table}).save_to_disk(str(w / "ds"))
    table.to_parquet(str(w / "cls.parquet"))


def _models(w: Path) -> None:
    tok = train_tokenizer([w / "corpus.txt"], "wordpiece", 120, show_progress=False)
    tok.save(w / "wp")
    train_tokenizer([w / "corpus.txt"], "bpe", 300, show_progress=False).save(w / "bpe")
    torch.manual_seed(0)
    model = build_model(preset("bert-tiny", vocab_size=tok.vocab_size, max_positions=64, hidden=32, n_heads=2, n_layers=1))
    save_model(w / "pre", model, tok)
    export_hf(model, w / "hf", tok)
    add_snapshot(w / "hub", "org/tiny", w / "hf", "c" * 40)  # a Hugging Face cache holding org/tiny (main)
    bpe = Tokenizer.load(w / "bpe")
    save_model(w / "gpt", build_model(preset("gpt-tiny", vocab_size=bpe.vocab_size, max_positions=32, hidden=32, n_heads=2,
                                             n_layers=1)), bpe)
    _gpt_finetuned(w, bpe)
    for name in ("trunc", "nohidden"):
        save_model(w / "bad" / name, model, tok)
    weights = w / "bad" / "trunc" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    config = json.loads((w / "bad" / "nohidden" / "config.json").read_text())
    del config["hidden"]
    _text(w / "bad" / "nohidden" / "config.json", json.dumps(config))


def _gpt_finetuned(w: Path, bpe: Tokenizer) -> None:
    """Fine-tuned GPT-1 models (random heads, no training) whose heads no transformers class computes:
    tagging (W/gpt-tag), a pair's two orderings added (W/gpt-sim), and a classifier whose bias cannot be
    folded into the bias-free score layer (W/gpt-cls: the last LayerNorm's beta is still 0)."""
    from pretune.tasks import TaskModel, TaskSpec, get_family

    cases = {"gpt-tag": ("tagging", ["O", "B-X"], {}), "gpt-sim": ("regression", None, {"text_pair_col": "text2"}),
             "gpt-cls": ("classification", ["no", "yes"], {})}
    for name, (family, labels, columns) in cases.items():
        torch.manual_seed(0)
        cfg = preset("gpt-tiny", vocab_size=bpe.vocab_size, max_positions=32, hidden=32, n_heads=2, n_layers=1)
        fam = get_family(family)
        spec = TaskSpec(recipe=family, family=family, metric_names=list(fam.metric_names[:1]),
                        main_metric=fam.metric_names[0], labels=labels, columns=columns, max_seq_len=32,
                        pair_mode="similarity" if name == "gpt-sim" else "entailment")
        model = TaskModel(build_model(cfg), spec, fam)
        with torch.no_grad():
            model.head.out.bias.fill_(0.5)
        save_model(w / name, model, bpe, spec)


def _runs(w: Path) -> None:
    """A fine-tuned model (W/ft) and a pretraining run with a checkpoint (W/run)."""
    assert cli.main(["finetune", "--model", str(w / "pre"), "--task", "classification", "--train", str(w / "cls.tsv"),
                     "--validation-split", "0.25", "--out", str(w / "ft"), "--epochs", "1", "--max-seq-len", "32",
                     "--no-progress"]) == 0
    assert cli.main(["pretrain", "--model", "bert-tiny", "--set", *TINY, "--tokenizer", str(w / "wp"), "--data",
                     str(w / "corpus.txt"), "--out", str(w / "run"), "--max-steps", "2", "--save-every", "1",
                     "--batch-size", "4", "--seq-len", "32", "--eval-batches", "1", "--no-progress"]) == 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny models of this module run fastest on one thread
    w = tmp_path_factory.mktemp("errors")
    _corpus(w)
    _models(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _runs(w)
    yield w
    torch.set_num_threads(threads)


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
    note: str  # "terminal": stdin is a terminal


def table_rows(doc: Path = DOC) -> list[Row]:
    """The rows of every table in docs/errors.md whose first cell is a number."""
    rows = []
    for line in doc.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
        if len(cells) >= 4 and cells[0].isdigit():
            command, message = (_code(c) for c in cells[2:4])
            rows.append(Row(int(cells[0]), command, message, cells[4] if len(cells) > 4 else ""))
    return rows


def _code(cell: str) -> str:
    """The text of a Markdown code span: `text`, or `` text `` when it holds a backtick."""
    return cell[2:-2].strip() if cell.startswith("``") else cell[1:-1]


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


@pytest.mark.parametrize("row", [pytest.param(r, id=f"{r.number}") for r in ROWS])
def test_row(row: Row, workspace: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    env, stdin, argv = _split(row.command, workspace)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "stdin", Terminal() if "terminal" in row.note else io.StringIO(stdin or ""))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
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


# --------------------------------------------------------------------------------------------
# Data loss: what --overwrite does, and what it never does


@pytest.fixture
def copy(workspace: Path, tmp_path: Path) -> Path:
    """A private copy of the workspace, for runs that write."""
    import shutil

    shutil.copytree(workspace, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


def _main(argv: list) -> int:
    return cli.main([str(a) for a in argv])


def test_convert_overwrite_replaces_the_folder_as_a_whole(copy: Path) -> None:
    assert _main(["convert", "--from-hf", copy / "hf", "--out", copy / "full", "--overwrite"]) == 0
    assert not (copy / "full" / "keep.txt").exists()  # replaced, not merged into
    assert json.loads((copy / "full" / "config.json").read_text())["format"] == "pretune"
    assert _main(["convert", "--to-hf", copy / "pre", "--out", copy / "full-pretrain", "--overwrite"]) == 0
    assert sorted(p.name for p in (copy / "full-pretrain").iterdir())[:2] == ["config.json", "model.safetensors"]
    assert not (copy / "full-pretrain" / "keep.txt").exists()
    assert not list(copy.glob(".*.tmp")) and not list(copy.glob(".*old*"))  # nothing half-written left


def test_tokenizer_overwrite_replaces_and_refuses_its_input(copy: Path) -> None:
    before = (copy / "wp" / "vocab.txt").read_text()
    args = ["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "60", "--out", copy / "wp", copy / "corpus.txt"]
    assert _main(args) == 2 and (copy / "wp" / "vocab.txt").read_text() == before
    assert _main([*args, "--overwrite"]) == 0
    assert Tokenizer.load(copy / "wp").vocab_size == 60


def test_predict_overwrite_replaces_a_file_but_never_an_input(copy: Path) -> None:
    args = ["predict", "--model", copy / "ft", "--data", copy / "cls.tsv", "--no-progress"]
    assert _main([*args, "--out", copy / "preds.jsonl"]) == 2
    assert (copy / "preds.jsonl").read_text() == '{"label": "yes"}\n'
    assert _main([*args, "--out", copy / "preds.jsonl", "--overwrite"]) == 0
    assert len((copy / "preds.jsonl").read_text().splitlines()) == 40
    data = (copy / "cls.tsv").read_bytes()
    assert _main([*args, "--out", copy / "cls.tsv", "--overwrite"]) == 2 and (copy / "cls.tsv").read_bytes() == data
    assert _main(["evaluate", "--model", copy / "ft", "--data", copy / "cls.tsv", "--no-progress"]) == 0
    assert _main(["evaluate", "--model", copy / "ft", "--data", copy / "cls.tsv", "--no-progress"]) == 0  # its own record
    assert json.loads((copy / "ft" / "eval_cls.tsv.json").read_text())["accuracy"] >= 0


def test_a_finished_finetune_keeps_no_optimizer_checkpoints_unless_asked(workspace: Path, tmp_path: Path) -> None:
    assert (workspace / "ft" / "model.safetensors").is_file() and not (workspace / "ft" / "checkpoints").exists()
    args = ["finetune", "--model", workspace / "pre", "--task", "classification", "--train", workspace / "cls.tsv",
            "--validation-split", "0.25", "--epochs", "1", "--max-seq-len", "32", "--no-progress", "--keep-checkpoints"]
    assert _main([*args, "--out", tmp_path / "kept"]) == 0
    assert [p.name for p in (tmp_path / "kept" / "checkpoints").iterdir()] == ["step-1"]


# --------------------------------------------------------------------------------------------
# Files get the umask's permissions


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_results_weights_and_configs_get_the_umask_permissions(copy: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        assert _main(["convert", "--to-hf", copy / "pre", "--out", copy / "hf-out"]) == 0
        assert _main(["predict", "--model", copy / "ft", "--data", copy / "cls.tsv", "--out", copy / "p" / "preds.jsonl",
                      "--no-progress"]) == 0
        assert _main(["evaluate", "--model", copy / "ft", "--data", copy / "cls.tsv", "--out", copy / "m.json",
                      "--no-progress"]) == 0
    finally:
        os.umask(old)
    files = [copy / "hf-out" / "model.safetensors", copy / "hf-out" / "config.json", copy / "p" / "preds.jsonl",
             copy / "m.json"]
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {oct(0o666 & ~umask)}
    dirs = [copy / "hf-out", copy / "p"]
    assert {oct(stat.S_IMODE(d.stat().st_mode)) for d in dirs} == {oct(0o777 & ~umask)}


# --------------------------------------------------------------------------------------------
# The shared-data guard through a symbolic link; a failed download leaves nothing


def test_the_shared_data_guard_holds_through_a_symbolic_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real" / "shared" / "data" / "nsmc").mkdir(parents=True)
    (tmp_path / "checkout").mkdir()
    (tmp_path / "checkout" / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "shared").symlink_to(tmp_path / "real" / "shared")  # ../shared is a link, as in worktrees
    shared = dl.shared_beside(tmp_path / "checkout")
    assert shared == (tmp_path / "real" / "shared" / "data").resolve()
    monkeypatch.setattr(dl, "shared_data_dir", lambda: shared)
    monkeypatch.delenv(dl.ENV_DATA, raising=False)
    assert dl.data_dir() == shared
    for through in (tmp_path / "shared" / "data", tmp_path / "checkout" / ".." / "shared" / "data"):
        with pytest.raises(PretuneError, match="shared data folder"):
            dl.check_writable(through, dl.REGISTRY["nsmc"])
    assert dl.shared_beside(tmp_path / "nowhere") is None


def test_this_checkouts_shared_folder_is_found_resolved() -> None:
    link = ROOT.parent / "shared" / "data"
    if dl.shared_data_dir() is None:
        pytest.skip("not a source checkout with ../shared/data")
    assert dl.shared_data_dir() == link.resolve()
    with pytest.raises(PretuneError, match="shared data folder"):
        dl.check_writable(link, dl.REGISTRY["nsmc"])  # the path as a user would type it, link and all


def test_a_failed_download_leaves_no_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv(dl.ENV_MIRROR, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    root = tmp_path / "new" / "data"
    assert cli.main(["data", "download", "nsmc", "--data-dir", str(root), "--timeout", "2"]) == 2
    assert "nothing was kept" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Warnings, plots, memory


def test_a_repeated_warning_is_shown_once_then_counted(capsys: pytest.CaptureFixture) -> None:
    with cli.plain_warnings("finetune"):
        for _ in range(3):
            warnings.warn("x.tsv: no labels; the test set was not scored", stacklevel=1)
        warnings.warn("another", stacklevel=1)
    assert capsys.readouterr().err.splitlines() == [
        "pretune finetune: warning: x.tsv: no labels; the test set was not scored",
        "pretune finetune: warning: another",
        "pretune finetune: warning: 3 times in all: x.tsv: no labels; the test set was not scored",
    ]


def test_every_verb_prints_warnings_as_one_plain_line(workspace: Path, capsys: pytest.CaptureFixture) -> None:
    assert _main(["evaluate", "--model", workspace / "ft", "--data", workspace / "long.tsv", "--max-seq-len", "8",
                  "--no-progress", "--out", workspace.parent / "long-eval.json"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["pretune evaluate: warning: 1 of 2 examples were longer than --max-seq-len allows and were truncated "
                   f"(first: {workspace / 'long.tsv'}:2); raise --max-seq-len or pass --no-truncate to fail instead"]


def test_training_plot_separates_losses_from_scores_and_labels_every_curve() -> None:
    from pretune.report import training_figure

    records = [{"step": 10, "loss": 9.0}, {"step": 20, "loss": 8.0, "val_mlm_loss": 8.5, "val_mlm_accuracy": 0.1,
                                           "val_nsp_accuracy": 0.6}]
    start = {"val_mlm_loss": 9.1, "val_mlm_accuracy": 0.0, "val_nsp_accuracy": 0.5}
    fig = training_figure(records, "pretraining BERT", start)
    losses, scores = ({ln.get_label(): list(ln.get_xdata()) for ln in ax.get_lines()} for ax in fig.axes)
    assert losses == {"train loss (MLM + NSP)": [10, 20], "held-out MLM loss": [0, 20]}  # the start is plotted
    assert scores == {"held-out MLM accuracy": [0, 20], "held-out NSP accuracy": [0, 20]}
    gpt = training_figure([{"step": 5, "loss": 4.0, "val_loss": 4.2, "val_perplexity": 66.7}])
    assert [ax.get_yscale() for ax in gpt.axes] == ["linear", "log"]
    assert [ln.get_label() for ln in gpt.axes[0].get_lines()] == ["train loss (next-token LM)", "held-out LM loss"]


def test_a_training_step_that_cannot_fit_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from pretune import validate

    cfg = preset("bert-tiny", vocab_size=8000, max_positions=2048)
    monkeypatch.setattr(validate, "available_bytes", lambda device: (2 * 10**9, "CPU"))
    validate.check_memory(cfg, 8, 512, "cpu", "--seq-len")  # about 0.3 GB
    with pytest.raises(PretuneError, match=r"--batch-size 8 x --seq-len 2048: .* about 2\.\d GB and 2\.0 GB"):
        validate.check_memory(cfg, 8, 2048, "cpu", "--seq-len")
    validate.check_memory(cfg.replace(attn_dropout=0.0), 8, 2048, "cpu", "--seq-len")  # no (length x length) probabilities


def test_the_memory_estimate_is_within_a_factor_of_two_of_a_measured_step(tmp_path: Path) -> None:
    """One forward and backward of bert-tiny in a fresh process: the rise of its peak RSS against
    the estimate's activations (the weights are small)."""
    import subprocess

    from pretune.validate import parameter_count, training_bytes

    script = (
        "import torch\nfrom pretune.config import preset\nfrom pretune.models import build_model\n"
        "torch.set_num_threads(1)\nm = build_model(preset('bert-tiny', vocab_size=8000, max_positions=1024))\n"
        "ids = torch.randint(5, 8000, (8, 1024))\nlabels = torch.full((8, 1024), -100)\nlabels[:, ::7] = ids[:, ::7]\n"
        # the resident set now against the kernel's high-water mark after the step, reset first to
        # the resident set (a transient peak while importing, or getrusage's ru_maxrss, which a
        # child inherits from its parent, pytest, could hold it above the step's peak)
        "status = lambda key: next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith(key))\n"
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = status('VmRSS:')\n"
        "m(input_ids=ids, mlm_labels=labels, nsp_labels=torch.zeros(8, dtype=torch.long), return_logits=False).loss.backward()\n"
        "print(status('VmHWM:') - base)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    measured = int(out.split()[-1])
    cfg = preset("bert-tiny", vocab_size=8000, max_positions=1024)
    estimate = training_bytes(cfg, 8, 1024, cpu=True) - 16 * parameter_count(cfg)
    assert 0.5 < estimate / measured < 2.0, (estimate, measured, out)


def test_a_checkpoint_of_another_shape_is_one_line(workspace: Path) -> None:
    """What resuming after changing --model loads: every tensor checked by name and shape."""
    from pretune.checkpoint import load_state, read_weights

    state = read_weights(workspace / "run" / "checkpoints" / "step-2" / "model.safetensors")
    other = build_model(preset("bert-tiny", vocab_size=state["body.embeddings.tok.weight"].shape[0], max_positions=128, n_layers=1))
    with pytest.raises(PretuneError, match=r"step-2: tensor '.*' has shape \(.*\) in the checkpoint but \(.*\) in the model") as err:
        load_state(other, state, str(workspace / "run" / "checkpoints" / "step-2"), strict=True)
    assert "\n" not in str(err.value)
    fewer = {k: v for k, v in state.items() if not k.startswith("mlm.")}
    same = build_model(preset("bert-tiny", vocab_size=state["body.embeddings.tok.weight"].shape[0], max_positions=128,
                              hidden=32, n_heads=2, n_layers=1, ffn=64))
    with pytest.raises(PretuneError, match="missing .* tensor"):
        load_state(same, fewer, "step-2", strict=True)  # optional parts too, for a training checkpoint
