"""`pretune pretrain` end to end: SIGKILL + resume is bit-exact, bad input is a one-line error, the
run directory is a normal model directory, and --out / --resume / --overwrite protect a run.
(Two processes against one, for every training path: tests/test_distributed.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretune.cli import main
from pretune.tokenizer import train_tokenizer

REPO = Path(__file__).resolve().parents[1]
NSMC = REPO.parent / "shared" / "data" / "nsmc" / "unlabeled.txt.gz"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
TINY = ["--set", "hidden=32", "n_heads=2", "ffn=64", "--no-progress"]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def korean(tmp_path_factory) -> tuple[Path, Path]:
    if not NSMC.is_file():
        pytest.skip(f"{NSMC} is missing (the shared data sets sit beside the repo)")
    import gzip

    root = tmp_path_factory.mktemp("korean")
    corpus = root / "corpus.txt"
    with gzip.open(NSMC, "rt", encoding="utf-8") as f, open(corpus, "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i > 6000 and not line.strip():
                break
            g.write(line)
    tok = train_tokenizer([corpus], "wordpiece", 2000, show_progress=False)
    tok.save(root / "tok")
    return corpus, root / "tok"


@pytest.fixture(scope="module")
def english(tmp_path_factory) -> tuple[Path, Path]:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is missing (the shared data sets sit beside the repo)")
    root = tmp_path_factory.mktemp("english")
    corpus = root / "shakespeare.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    tok = train_tokenizer([corpus], "bpe", 600, show_progress=False)
    tok.save(root / "tok")
    return corpus, root / "tok"


def _cli(args: list[str]) -> None:
    res = subprocess.run([sys.executable, "-m", "pretune", *args], env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _bert_args(corpus: Path, tok: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "pretrain", "--model", "bert-tiny", *extra, "--tokenizer", str(tok), "--data", str(corpus), "--out", str(out),
        "--max-steps", str(steps), "--batch-size", "8", "--seq-len", "32", "--lr", "1e-3", "--warmup-steps", "2",
        "--log-every", "1", "--save-every", "4", "--eval-batches", "2", "--seed", "3", *TINY,
    ]


@pytest.mark.parametrize("objective", ["mlm", "electra"])
def test_sigkill_right_after_a_checkpoint_then_resume_is_bit_exact(korean, tmp_path: Path, objective: str, capsys) -> None:
    # Every run is a separate process with the same environment (1 thread), as a user would run
    # them: bit-exactness is a property of the same code, data and thread count.
    corpus, tok = korean
    steps = 12
    extra = ("--objective", objective)
    full = tmp_path / "full"
    _cli(_bert_args(corpus, tok, full, steps, *extra))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pretune", *_bert_args(corpus, tok, killed, steps, *extra)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-4" / "trainer_state.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()  # it died mid-run
    _cli([*_bert_args(corpus, tok, killed, steps, *extra), "--resume"])
    assert _losses(killed) == _losses(full)  # every step, bit for bit
    assert len(_losses(full)) == steps
    # The run directory is a normal model directory.
    assert main(["embed", "--model", str(killed), "--pool", "cls", "영화 최고"]) == 0
    assert main(["convert", "--to-hf", str(killed), "--out", str(tmp_path / "hf")]) == 0
    results = json.loads((killed / "pretrain_results.json").read_text())
    assert results["steps"] == steps and (killed / "loss.png").is_file() and results["objective"] == objective
    hf_class = json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"]
    assert hf_class == (["BertForPreTraining"] if objective == "mlm" else ["ElectraForPreTraining"])
    if objective == "electra":  # the generator is a model directory of its own: a masked LM
        capsys.readouterr()
        assert main(["fill-mask", "--model", str(killed / "generator"), "--top-k", "2", "영화 [MASK]"]) == 0
        assert "영화" in capsys.readouterr().out
        assert main(["fill-mask", "--model", str(killed), "영화 [MASK]"]) == 2  # the discriminator has no masked-LM head
        assert "generator/" in capsys.readouterr().err
        assert main(["convert", "--to-hf", str(killed / "generator"), "--out", str(tmp_path / "hf-gen")]) == 0
        assert json.loads((tmp_path / "hf-gen" / "config.json").read_text())["architectures"] == ["ElectraForMaskedLM"]


def test_fp16_pretraining_killed_then_resumed_is_bit_exact(korean, tmp_path: Path) -> None:
    """--precision fp16 (autocast + gradient scaler; it runs on a CPU too) through the command:
    SIGKILL after the first checkpoint, --resume, and every step's loss and loss scale are the
    uninterrupted run's; the scaler's state is in the checkpoint."""
    corpus, tok = korean
    fp16 = ["--precision", "fp16", "--cache-dir", str(tmp_path / "cache")]  # the corpus is tokenized once
    _cli([*_bert_args(corpus, tok, tmp_path / "full", 8), *fp16])
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pretune", *_bert_args(corpus, tok, killed, 8), *fp16]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-4" / "trainer_state.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()  # it died mid-run
    _cli([*_bert_args(corpus, tok, killed, 8), *fp16, "--resume"])
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (killed, tmp_path / "full")]
    assert [(r["step"], r["loss"], r["grad_scale"]) for r in rows[0]] == [(r["step"], r["loss"], r["grad_scale"]) for r in rows[1]]
    assert len(rows[1]) == 8 and json.loads((killed / "pretrain_results.json").read_text())["precision"] == "fp16"
    state = torch.load(killed / "checkpoints" / "step-8" / "trainer_state.pt", weights_only=True)
    assert state["scaler"]["scale"] == rows[1][-1]["grad_scale"] and state["scaler"]["_growth_tracker"] > 0


def test_gpt_loss_falls_on_shakespeare(english, tmp_path: Path) -> None:
    corpus, tok = english
    out = tmp_path / "gpt"
    assert main([
        "pretrain", "--model", "gpt-tiny", "--tokenizer", str(tok), "--data", str(corpus), "--out", str(out),
        "--max-steps", "30", "--batch-size", "8", "--seq-len", "32", "--lr", "3e-3", "--warmup-steps", "3",
        "--eval-batches", "4", *TINY,
    ]) == 0
    res = json.loads((out / "pretrain_results.json").read_text())
    assert res["eval_at_end"]["val_loss"] < res["eval_at_start"]["val_loss"] - 0.5


def _error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_is_a_one_line_error(korean, english, tmp_path: Path, capsys) -> None:
    corpus, tok = korean
    base = ["pretrain", "--model", "bert-tiny", "--tokenizer", str(tok), "--out", str(tmp_path / "o"), *TINY]
    assert "nope.txt" in _error([*base, "--data", str(tmp_path / "nope.txt")], capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "empty" in _error([*base, "--data", str(empty)], capsys)
    bad = tmp_path / "bad.txt"
    bad.write_bytes("좋은 영화\n".encode() * 3 + b"\xff\xfe broken\n")
    assert "bad.txt:4" in _error([*base, "--data", str(bad)], capsys)
    small = tmp_path / "small.txt"
    small.write_text("한 줄\n\n두 줄\n", encoding="utf-8")
    assert "--batch-size" in _error([*base, "--data", str(small), "--val-fraction", "0"], capsys)
    assert "BPE" in _error(["pretrain", "--model", "gpt-tiny", "--tokenizer", str(tok), "--data", str(corpus), "--out", str(tmp_path / "g")], capsys)
    assert "preset" in _error(["pretrain", "--model", "bert-enormous", "--tokenizer", str(tok), "--data", str(corpus), "--out", str(tmp_path / "x")], capsys)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("max-steps: 3\nbogus_flag: 1\n")
    assert "bogus_flag" in _error([*base, "--data", str(corpus), "--config", str(cfg)], capsys)
    assert not (tmp_path / "o" / "model.safetensors").exists()


def test_fresh_bert_starts_with_the_unigram_prior_in_the_mlm_bias() -> None:
    """The output bias holds log frequencies (mean 0), so step 0 already predicts the unigram."""
    import numpy as np
    import torch

    from pretune.config import preset
    from pretune.models import build_model
    from pretune.train.pretrain import init_output_bias

    class Corpus:  # what init_output_bias reads of a prepared corpus
        def tokens(self, split: str) -> np.ndarray:
            assert split == "train"
            return np.array([7] * 60 + [8] * 30 + [9] * 9 + [10], dtype=np.uint16)

    model = build_model(preset("bert-tiny", vocab_size=12, max_positions=16))
    init_output_bias(model.mlm, Corpus(), "zero")
    assert torch.count_nonzero(model.mlm.bias) == 0
    init_output_bias(model.mlm, Corpus(), "unigram")
    bias = model.mlm.bias.detach().double()
    expected = torch.log(torch.tensor([1.0] * 7 + [61, 31, 10, 2, 1], dtype=torch.float64) / 112)  # add-one smoothing
    assert torch.allclose(bias, expected - expected.mean(), atol=1e-6)
    # the model's prediction before any training is the smoothed corpus distribution
    with torch.no_grad():
        model.mlm.dense.weight.zero_()
        model.mlm.dense.bias.zero_()
        model.mlm.norm.weight.zero_()
        probs = torch.softmax(model.mlm_logits(torch.randn(1, 128)), -1)[0].double()
    assert torch.allclose(probs, expected.exp(), atol=1e-6)


def test_a_run_directory_needs_resume_or_overwrite(english, tmp_path: Path, capsys) -> None:
    corpus, tok = english
    out = tmp_path / "run"
    base = [
        "pretrain", "--model", "gpt-tiny", "--tokenizer", str(tok), "--data", str(corpus), "--out", str(out),
        "--max-steps", "2", "--batch-size", "4", "--seq-len", "16", "--save-every", "1", "--log-every", "1",
        "--eval-batches", "1", "--warmup-steps", "0", *TINY,
    ]
    assert main(base) == 0
    err = _error(base, capsys)
    assert "holds a run (newest checkpoint step-2)" in err and "--resume" in err and "--overwrite" in err
    err = _error([*base, "--resume", "--batch-size", "8", "--seq-len", "32"], capsys)
    assert "--batch-size 4 -> 8" in err and "--seq-len 16 -> 32" in err
    assert "--resume and --overwrite" in _error([*base, "--resume", "--overwrite"], capsys)
    assert main([*base, "--resume", "--max-steps", "3", "--log-every", "3"]) == 0  # allowed changes
    assert [s for s, _ in _losses(out)] == [1, 2, 3]
    (out / "notes.txt").write_text("old")
    assert main([*base, "--overwrite", "--max-steps", "1"]) == 0
    assert not (out / "notes.txt").exists() and [s for s, _ in _losses(out)] == [1]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"] and (out / "data-cache").is_dir()
    err = _error([*base[:8], str(tmp_path / "fresh"), *base[9:], "--resume"], capsys)
    assert "no complete checkpoint" in err
    assert f"--out {tok}: is the input {tok}; choose another directory" in _error([*base[:8], str(tok), *base[9:], "--overwrite"], capsys)
