"""Training under ``torchrun`` (2 processes, gloo, CPU) equals the one-process run with the same
global batch, step by step, for every training path: BERT pretraining with and without NSP (whole
words, gradient accumulation), ELECTRA pretraining (DDP with accumulation and a time budget, FSDP2,
resumed), GPT pretraining under a time budget, fine-tuning of every task family with every model
family, FSDP2 (pretraining, fine-tuning, and resuming sharded state),
resuming under DDP; only rank 0 writes, and every saved model loads (in one process, and in
transformers). One torchrun launch runs all the cases (``tests/dist_cases.py``), beside one plain
process running the same cases as the reference.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretune.checkpoint import export_hf, load_model, read_weights
from pretune.data.batching import Collator, FinetuneBatches, rank_share
from pretune.tokenizer import train_tokenizer
from pretune.train.distributed import Dist, shard, unshard

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TINY = ["--set", "hidden=32", "n_heads=2", "ffn=64", "dropout=0", "attn_dropout=0", "--no-progress", "--device", "cpu"]
TOL = 1e-5

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the gloo multi-process tests run on Linux")


# --------------------------------------------------------------------------------------------
# Data: a Korean slice (BERT), an English slice (GPT), small task files of every family


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_finetune import make_task_data

    nsmc, shakespeare = DATA / "nsmc" / "unlabeled.txt.gz", DATA / "tinyshakespeare" / "input.txt"
    if not (nsmc.is_file() and shakespeare.is_file()):
        pytest.skip("the shared data sets (nsmc, tinyshakespeare) sit beside the repo")
    d = tmp_path_factory.mktemp("dist-data")
    with gzip.open(nsmc, "rt", encoding="utf-8") as f, open(d / "ko.txt", "w", encoding="utf-8") as g:
        for i, line in enumerate(f):
            if i > 1500 and not line.strip():
                break
            g.write(line)
    (d / "en.txt").write_text(shakespeare.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    train_tokenizer([d / "ko.txt"], "wordpiece", 800, show_progress=False).save(d / "ko-wp")
    train_tokenizer([d / "en.txt"], "bpe", 400, show_progress=False).save(d / "en-bpe")
    # 29 training examples with --batch-size 8: each epoch ends in a partial global batch of 5,
    # which two processes share unevenly (3 + 2)
    make_task_data(d, {"train": 29, "dev": 12}, corpus_lines=200)
    return d


def _pretrain(d: Path, family: str, out: str, *extra: str, dropout: float = 0.0) -> dict:
    corpus, tok = (d / "ko.txt", d / "ko-wp") if family == "bert" else (d / "en.txt", d / "en-bpe")
    tiny = [f"dropout={dropout}" if a == "dropout=0" else f"attn_dropout={dropout}" if a == "attn_dropout=0" else a for a in TINY]
    argv = [
        "pretrain", "--model", f"{family}-tiny", "--tokenizer", str(tok), "--data", str(corpus), "--out", "{root}/" + out,
        "--max-steps", "4", "--batch-size", "8", "--seq-len", "32", "--lr", "1e-3", "--warmup-steps", "1",
        "--log-every", "1", "--eval-batches", "3", "--seed", "3", "--cache-dir", "{root}/cache", *tiny, *extra,
    ]
    return {"name": out, "argv": argv}


# dropout on, a constant rate (a run cut at step 2 has the schedule of the whole one), a checkpoint and an
# evaluation at step 2
DROPOUT = ("--schedule", "constant", "--warmup-steps", "0", "--save-every", "2", "--eval-every", "2")


FAMILIES = {  # kind: (task, file stem, extension, column flags)
    "cls": ("classification", "cls", "tsv", []),
    "pair": ("classification", "pair", "tsv", ["--text-pair-col", "text2"]),
    "reg": ("regression", "reg", "tsv", ["--text-pair-col", "text2", "--label-col", "score"]),
    "mc": ("multiple-choice", "mc", "jsonl", ["--choice-cols", "ending0,ending1"]),
    "qa": ("qa", "qa", "json", ["--max-query-len", "8", "--doc-stride", "16"]),
    "tag": ("tagging", "tag", "conll", []),
}


def _finetune(d: Path, family: str, kind: str, *extra: str, name: str | None = None) -> dict:
    task, stem, ext, columns = FAMILIES[kind]
    out = name or f"ft-{family}-{kind}"
    argv = [
        "finetune", "--model", f"{family}-tiny", "--tokenizer", str(d / ("bpe" if family == "gpt" else "wp")),
        "--task", task, "--train", str(d / f"{stem}_train.{ext}"), "--validation", str(d / f"{stem}_dev.{ext}"),
        "--out", "{root}/" + out, "--epochs", "2", "--batch-size", "8", "--max-seq-len", "32", "--lr", "1e-3",
        "--log-every", "1", "--seed", "1", *TINY, *columns, *extra,
    ]
    return {"name": out, "argv": argv}


def _cases(d: Path) -> list[dict]:
    resume_bert = _pretrain(d, "bert", "bert-nsp", "--save-every", "2", "--resume", "--max-steps", "6")
    resume_fsdp = _pretrain(d, "bert", "bert-fsdp", "--save-every", "2", "--fsdp", "--resume", "--max-steps", "6")
    electra = ("--objective", "electra", "--generator-size", "0.5")
    resume_electra = _pretrain(d, "bert", "electra-fsdp", *electra, "--save-every", "2", "--fsdp", "--resume", "--max-steps", "6")
    return [
        _pretrain(d, "bert", "electra", *electra, "--grad-accum", "2", "--time-budget", "100000"),
        _pretrain(d, "bert", "electra-fsdp", *electra, "--save-every", "2", "--fsdp"),
        {**resume_electra, "name": "electra-fsdp-resumed"},
        *[_finetune(d, "electra", kind) for kind in ("cls", "qa", "tag")],
        _pretrain(d, "bert", "bert-nsp", "--save-every", "2"),
        {**resume_bert, "name": "bert-nsp-resumed"},  # continues the run above under DDP, 2 more steps
        _pretrain(d, "bert", "bert-mlm", "--no-nsp", "--whole-word-mask", "--grad-accum", "2"),
        _pretrain(d, "gpt", "gpt", "--time-budget", "100000"),
        _pretrain(d, "bert", "bert-fsdp", "--save-every", "2", "--fsdp"),
        _pretrain(d, "bert", "bert-fp16", "--precision", "fp16"),  # one gradient scaler, the same skips on every rank
        _pretrain(d, "bert", "bert-fp16-fsdp", "--precision", "fp16", "--fsdp"),
        {**resume_fsdp, "name": "bert-fsdp-resumed"},  # sharded model and optimizer state restored
        *[_finetune(d, "bert", kind) for kind in FAMILIES],
        *[_finetune(d, "gpt", kind) for kind in FAMILIES if kind != "qa"],
        _finetune(d, "gpt", "tag", "--fsdp", "--grad-accum", "2", name="ft-gpt-tag-fsdp"),
        _finetune(d, "gpt", "pair", "--keep-checkpoints", name="ft-gpt-pair-resumed"),  # kept: it is resumed below
        {**_finetune(d, "gpt", "pair", "--resume", "--epochs", "3", name="ft-gpt-pair-resumed"), "name": "ft-resume"},
        _finetune(d, "bert", "mc", "--fsdp", name="ft-bert-mc-fsdp"),
        _pretrain(d, "gpt", "gpt-dropout", *DROPOUT, dropout=0.1),
        _pretrain(d, "gpt", "gpt-dropout-cut", *DROPOUT, "--max-steps", "2", dropout=0.1),  # stops at the checkpoint
        {**_pretrain(d, "gpt", "gpt-dropout-cut", *DROPOUT, "--resume", dropout=0.1), "name": "gpt-dropout-resumed"},
        {"name": "unused", "python": "unused_parameter"},
        {**_pretrain(d, "gpt", "indivisible", "--batch-size", "7"), "name": "indivisible"},
    ]


EXPECTED_ERRORS = {
    "unused": ["spare.weight", "spare.bias", "no gradient"],
    "indivisible": ["--batch-size 7", "divisible by the number of processes (2)", "use 6 or 8"],
}


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict]:
    """Run every case in one torchrun launch of 2 processes and in one plain process, side by side."""
    work = tmp_path_factory.mktemp("dist-runs")
    cases = work / "cases.json"
    cases.write_text(json.dumps(_cases(data)))
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("WORLD_SIZE", None)
    driver = str(REPO / "tests" / "dist_cases.py")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", driver]
    two = subprocess.Popen([*launch, str(cases), str(work / "two"), str(work / "report-two")], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    one = subprocess.run([sys.executable, driver, str(cases), str(work / "one"), str(work / "report-one")], env=env,
                         capture_output=True, text=True, timeout=900)
    out, _ = two.communicate(timeout=900)
    assert one.returncode == 0, one.stderr[-4000:]
    assert two.returncode == 0, out[-4000:]
    reports = {name: json.loads((work / name / "rank-0.json").read_text()) for name in ("report-one", "report-two")}
    rank1 = json.loads((work / "report-two" / "rank-1.json").read_text())
    reports["exit"] = [json.loads((work / "report-two" / f"exit-rank-{r}.json").read_text()) for r in range(2)]
    return work / "one", work / "two", reports, rank1


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _same_curve(one: Path, two: Path) -> None:
    a, b = _records(one), _records(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) >= 4
    tol = 1e-4 if "fp16" in one.name else TOL  # fp16: each rank rounds its half of the batch (measured: 2e-5)
    for ra, rb in zip(a, b):
        # plus float32's relative rounding: ELECTRA's loss is ~40 (the replaced-token loss x 50), where
        # a different summation order moved it by 1.1e-5 (2.9e-7 relative) in one CI run
        bound = tol + 1e-6 * abs(ra["loss"])
        assert abs(ra["loss"] - rb["loss"]) <= bound, (one.name, ra["step"], ra["loss"], rb["loss"])
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-4, abs=1e-12)
        assert ra.get("grad_scale") == rb.get("grad_scale")  # fp16: the same steps skipped
        for key in (k for k in ra if k.startswith("val_") and ra[k] is not None):
            # metrics of nearly constant early predictions (Pearson) magnify rounding: compared loosely
            assert rb[key] == pytest.approx(ra[key], abs=1e-3), (one.name, key)


def test_every_case_ran_and_failures_stop_every_rank_alike(runs) -> None:
    _, _, reports, rank1 = runs
    one = reports["report-one"]["cases"]
    for name, case in reports["report-two"]["cases"].items():
        assert one[name]["code"] == 0, (name, one[name]["error"])  # one process: batch 7 and a spare layer are fine
        expected = EXPECTED_ERRORS.get(name)
        for where in (case, rank1["cases"][name]):
            if expected is None:
                assert where["code"] == 0, (name, where["error"])
            else:
                assert where["code"] == 2 and all(part in where["error"] for part in expected), (name, where["error"])


def test_every_rank_leaves_the_process_group_when_it_ends(runs) -> None:
    """pretune joined the group (for the first case) and leaves it when the process ends: the
    driver's exit hook, registered before the group existed, runs after pretune's and finds it gone."""
    _, _, reports, _ = runs
    assert reports["exit"] == [{"group_left": True}, {"group_left": True}]


def test_dropout_on_two_processes_resumes_bit_exactly(runs) -> None:
    """Dropout 0.1 under torchrun: a run stopped at its step-2 checkpoint and resumed (each rank's
    own RNG state restored) equals the uninterrupted two-process run bit for bit: every logged loss
    and held-out score, and every weight. Each rank draws its own dropout masks, so the reference is
    the two-process run; the one-process run differs (dropout really ran)."""
    one, two, _, _ = runs
    full, cut = _records(two / "gpt-dropout"), _records(two / "gpt-dropout-cut")
    keys = ("step", "loss", "lr", "val_loss", "val_perplexity")
    assert [r["step"] for r in full] == [1, 2, 3, 4] and full[1]["val_loss"] is not None
    assert [{k: r.get(k) for k in keys} for r in cut] == [{k: r.get(k) for k in keys} for r in full]
    a, b = (read_weights(two / name / "model.safetensors") for name in ("gpt-dropout", "gpt-dropout-cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(_records(one / "gpt-dropout"), full)) > 1e-4


def test_only_rank_zero_writes(runs) -> None:
    _, two, reports, rank1 = runs
    assert rank1["writes"] == [], rank1["writes"][:10]
    assert any(str(two / "bert-fsdp" / "checkpoints") in w for w in reports["report-two"]["writes"])  # the hook sees writes


@pytest.mark.parametrize("name", ["bert-nsp", "bert-mlm", "gpt", "bert-fsdp", "electra", "electra-fsdp", "bert-fp16",
                                  "bert-fp16-fsdp"])
def test_pretraining_equals_one_process(runs, name: str) -> None:
    one, two, _, _ = runs
    _same_curve(one / name, two / name)
    results = json.loads((two / name / "pretrain_results.json").read_text())
    assert results["world_size"] == 2 and results["fsdp"] == name.endswith("fsdp")
    assert (results["precision"] == "fp16") == ("fp16" in name)
    assert results["steps"] == (6 if name in ("bert-nsp", "bert-fsdp", "electra-fsdp") else 4)  # the resumed runs added 2 steps
    for model in (name, f"{name}/generator") if name.startswith("electra") else (name,):
        a, b = (read_weights(run / model / "model.safetensors") for run in (one, two))
        assert a.keys() == b.keys() and ("nsp.weight" in a) == (name.startswith("bert") and name != "bert-mlm")  # --no-nsp: none
        for key in a:
            if "fp16" in name:
                # each rank rounds its half of the batch to fp16 before the average, and Adam turns a
                # tiny gradient's rounding into up to a step of lr (1e-3): measured, mean differences
                # of 6e-7 and maxima of 5e-5 to over 1e-4 in repeated runs. A step skipped on one side
                # only would move almost every weight by about lr.
                diff = (a[key] - b[key]).abs()
                assert diff.mean() < 1e-5 and diff.max() < 1e-3, (key, diff.mean(), diff.max())
            else:
                assert torch.allclose(a[key], b[key], atol=1e-5), key
        load_model(two / model)  # a model directory like any other
    if name.startswith("electra"):
        assert results["objective"] == "electra" and "val_disc_accuracy" in results["eval_at_end"]


@pytest.mark.parametrize("name", [f"ft-{f}-{k}" for f in ("bert", "gpt") for k in FAMILIES if (f, k) != ("gpt", "qa")]
                         + ["ft-gpt-tag-fsdp", "ft-bert-mc-fsdp", "ft-gpt-pair-resumed", "ft-electra-cls", "ft-electra-qa",
                            "ft-electra-tag"])
def test_finetuning_equals_one_process(runs, name: str) -> None:
    one, two, _, _ = runs
    _same_curve(one / name, two / name)
    a, b = (json.loads((run / name / "eval_results.json").read_text()) for run in (one, two))
    # 29 examples, batch 8: 4 steps an epoch, the last on 5 examples (QA: windows; --grad-accum 2: half)
    # (resumed for a third epoch: 12)
    assert a["steps"] == b["steps"] == {"ft-bert-qa": a["steps"], "ft-electra-qa": a["steps"], "ft-gpt-tag-fsdp": 4,
                                        "ft-gpt-pair-resumed": 12}.get(name, 8)
    for metric, value in a["validation"].items():  # scored by rank 0 from the directory as saved
        assert b["validation"][metric] == pytest.approx(value, abs=1e-3), metric


def test_fsdp_model_loads_in_transformers(runs, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    _, two, _, _ = runs
    ours = load_model(two / "bert-fsdp").model.eval()
    export_hf(ours, tmp_path / "hf")
    theirs = transformers.BertForPreTraining.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(5, ours.cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ours.mlm_logits(ours(ids).hidden)
        got = theirs(input_ids=ids).prediction_logits
    assert torch.allclose(got, expected, atol=1e-4)


# --------------------------------------------------------------------------------------------
# The pieces, in one process


def test_global_batch_shares_differ_by_at_most_one_and_cover_it() -> None:
    ids = list(range(13))
    shares = [rank_share(ids, r, 4) for r in range(4)]
    assert [len(s) for s in shares] == [4, 3, 3, 3] and [i for s in shares for i in s] == ids
    feats = [{"input_ids": [1] * (1 + i % 5), "label": i} for i in range(21)]
    one = FinetuneBatches(feats, 8, Collator(0), seed=2)
    ranks = [FinetuneBatches(feats, 8, Collator(0), seed=2, rank=r, world_size=2) for r in range(2)]
    assert len(one) == len(ranks[0]) == 3  # the last global batch (5 examples) is kept: 3 + 2
    for batch, *parts in zip(iter(one), *map(iter, ranks)):
        assert torch.cat([p["labels"] for p in parts]).tolist() == batch["labels"].tolist()
        if len(batch["labels"]) == 5:
            break
    assert len(FinetuneBatches(feats[:17], 8, Collator(0), world_size=2)) == 2 + 0  # a tail of 1: dropped
    assert len(FinetuneBatches(feats[:17], 8, Collator(0))) == 3  # one process keeps it


def test_evaluation_shares_are_equal_length_and_reassemble() -> None:
    items = list(range(7))
    parts = [shard(items, Dist(r, 3)) for r in range(3)]
    assert {len(mine) for mine, _ in parts} == {3}  # padded: a sharded model runs 3 forwards on every rank
    assert [real for _, real in parts] == [3, 2, 2]
    assert unshard([mine[:real] for mine, real in parts], len(items)) == items


def test_token_losses_use_the_global_count_across_micro_batches(tmp_path: Path) -> None:
    """Batch 8 in one step equals 2 micro-batches of 4 (grad_accum 2) although the micro-batches
    hold very different numbers of masked tokens: the masked-LM sum is divided by the step's count."""
    from pretune.config import preset
    from pretune.models import build_model
    from pretune.train.pretrain import masked_tokens
    from pretune.train.trainer import TrainConfig, Trainer

    def batches(size: int):
        g = torch.Generator().manual_seed(0)
        while True:
            rows = []
            for i in range(8):
                ids = torch.randint(5, 60, (16,), generator=g)
                labels = torch.full((6,), -100)
                k = 1 if i < 4 else 6  # first half: 1 masked token each, second half: 6
                labels[:k] = ids[:k]
                rows.append((ids, torch.arange(6), labels))
            for k in range(0, 8, size):
                part = rows[k : k + size]
                yield {"input_ids": torch.stack([r[0] for r in part]), "mlm_positions": torch.stack([r[1] for r in part]),
                       "mlm_labels": torch.stack([r[2] for r in part])}

    def losses(size: int, accum: int) -> list[float]:
        torch.manual_seed(0)
        model = build_model(preset("bert-tiny", vocab_size=60, hidden=32, n_heads=2, ffn=64, max_positions=16, dropout=0.0,
                                   attn_dropout=0.0))
        model.pooler, model.nsp = None, None
        cfg = TrainConfig.make(tmp_path / f"{size}", 4, progress=False, lr=1e-2, warmup_steps=0, grad_accum=accum, device="cpu",
                               log_every=1)
        return [r["loss"] for r in Trainer(model, cfg, batches(size), loss_items=masked_tokens).fit()]

    whole, split = losses(8, 1), losses(4, 2)
    assert max(abs(a - b) for a, b in zip(whole, split)) < 1e-5
    assert whole[-1] < whole[0]
