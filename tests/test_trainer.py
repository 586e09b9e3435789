"""The shared trainer on a tiny GPT with a synthetic, resumable batch stream: losses, exact resume,
checkpoints that survive SIGKILL (mid-save, under a time budget), ``weights_only`` loading, the
``--resume`` settings check, and model directories that are always one version."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pretune.config import preset
from pretune.data.settings import MaskingSettings
from pretune.errors import PretuneError
from pretune.io import write_json
from pretune.models import build_model
from pretune.train.rundir import check_resume, may_change, saved_settings
from pretune.train.settings import Columns, FinetuneSettings, PretrainSettings, TrainSettings
from pretune.train.trainer import TrainConfig, Trainer, checkpoint_dirs, lr_factor, param_groups

REPO = Path(__file__).resolve().parents[1]


class Counting:
    """Endless batches of random tokens drawn from a seeded generator whose state can be saved."""

    def __init__(self, vocab: int = 50, batch: int = 4, seq: int = 8, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.vocab, self.batch, self.seq = vocab, batch, seq

    def __iter__(self):
        while True:
            ids = torch.from_numpy(self.rng.integers(0, self.vocab, (self.batch, self.seq)))
            yield {"input_ids": ids, "labels": ids}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def _first(iterator, n: int):
    for _, item in zip(range(n), iterator):
        yield item


def _model(dropout: float = 0.1):
    torch.manual_seed(0)
    return build_model(preset("gpt-tiny", vocab_size=50, hidden=32, n_heads=2, max_positions=16, dropout=dropout))


def _cfg(tmp: Path, **kw: Any) -> TrainConfig:
    base = dict(out_dir=tmp, max_steps=12, lr=3e-3, warmup_steps=2, log_every=1, progress=False, seed=0)
    base.update(kw)
    return TrainConfig.make(**base)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_metrics_are_logged(tmp_path: Path) -> None:
    stream = Counting(vocab=8)  # 8 symbols: the model quickly learns their unigram distribution
    history = Trainer(_model(), _cfg(tmp_path, max_steps=40), stream).fit()
    assert history[-1]["loss"] < history[0]["loss"] - 0.5
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record) >= {"step", "loss", "lr", "tokens_per_s"} and record["step"] == 40
    assert (tmp_path / "tensorboard").is_dir()


def test_resume_from_checkpoint_gives_bit_identical_losses(tmp_path: Path) -> None:
    full = tmp_path / "full"
    Trainer(_model(), _cfg(full, save_every=5), Counting()).fit()
    class Crashing(Counting):
        def __iter__(self):
            yield from _first(super().__iter__(), 7)
            raise RuntimeError("crash")

    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="crash"):  # dies during step 8, after the checkpoint at 5
        Trainer(_model(), _cfg(part, save_every=5), Crashing()).fit()
    assert [p.name for p in checkpoint_dirs(part)] == ["step-5"]
    torch.manual_seed(1234)  # the resumed run must restore every RNG itself
    Trainer(_model(), _cfg(part, save_every=5, resume=True), Counting(seed=99)).fit()
    assert _losses(part) == _losses(full)  # exact, including the steps after resuming


def test_keep_last_keeps_only_the_newest_checkpoints(tmp_path: Path) -> None:
    Trainer(_model(), _cfg(tmp_path, save_every=2, keep_last=2), Counting()).fit()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-10", "step-12"]


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    class Poisoned(Counting):
        def __iter__(self):
            for i, batch in enumerate(super().__iter__()):
                yield {**batch, "poison": i >= 6}

    def step_fn(model, batch):
        out = model(batch["input_ids"], labels=batch["labels"])
        if batch["poison"]:
            out.loss = out.loss * float("nan")
        return out

    with pytest.raises(PretuneError, match=r"non-finite at step 7.*step-5"):
        Trainer(_model(), _cfg(tmp_path, save_every=5, log_every=100), Poisoned(), step_fn=step_fn).fit()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-5"]


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    trainer = Trainer(_model(), _cfg(tmp_path, save_every=5, max_steps=5), Counting())
    trainer.fit()
    import pretune.train.trainer as mod

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mod, "save_file", full)
    trainer.step = 10
    with pytest.raises(PretuneError, match=r"No space left.*step-5 is intact"):
        trainer.save_checkpoint()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step-5"]
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))  # nothing half-written left behind


def test_parameter_groups_decay_and_discriminative_learning_rates() -> None:
    model = _model()
    model.head = torch.nn.Linear(32, 3)
    groups = param_groups(model, 1e-4, 0.01, head_lr=1e-3)
    by_name = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert by_name["head.weight"] == (1e-3, 0.01) and by_name["head.bias"] == (1e-3, 0.0)
    assert by_name["body.blocks.0.attn.qkv.weight"] == (1e-4, 0.01)
    assert by_name["body.blocks.0.norm1.weight"][1] == 0.0
    assert by_name["body.embeddings.pos.weight"][1] == 0.01  # a matrix: GPT-1 decays it
    assert by_name["body.embeddings.tok.weight"][1] == 0.01
    decayed = {n: g["lr"] for g in param_groups(model, 1e-4, 0.01, layer_decay=0.5) for n in g["names"]}
    assert decayed["body.blocks.1.mlp.fc1.weight"] == pytest.approx(1e-4 * 0.5)  # top block: one step down
    assert decayed["body.blocks.0.mlp.fc1.weight"] == pytest.approx(1e-4 * 0.25)
    assert decayed["body.embeddings.tok.weight"] == pytest.approx(1e-4 * 0.125)


@pytest.mark.parametrize("family", ["bert", "electra", "gpt"])
def test_weight_decay_and_epsilon_follow_each_familys_reference_implementation(family: str) -> None:
    """BERT and ELECTRA (google-research): every parameter but biases and LayerNorm's is decayed,
    position and segment embeddings included, and Adam's epsilon is 1e-6. GPT (openai's
    finetune-transformer-lm, and the GPT-2 family as nanoGPT and the transformers Trainer train
    it): every parameter of rank 2 is decayed, vectors are not, epsilon 1e-8. The trainer's
    optimizer takes both from the groups."""
    torch.manual_seed(0)
    model = build_model(preset(f"{family}-tiny", vocab_size=50, hidden=32, n_heads=2, n_layers=2, max_positions=16,
                               **({"embedding_size": 16} if family == "electra" else {})))
    groups = param_groups(model, 1e-4, 0.01)
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert set(decay) == {n for n, _ in model.named_parameters()}
    layernorm = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm) for p in ("weight", "bias")}
    for name, p in model.named_parameters():
        expected = 0.0 if (name.endswith(".bias") or name in layernorm or p.dim() < 2) else 0.01
        assert decay[name] == expected, name
    assert decay["body.embeddings.pos.weight"] == decay["body.embeddings.tok.weight"] == 0.01
    if family != "gpt":
        assert decay["body.embeddings.seg.weight"] == 0.01
    if family == "electra":
        assert decay["body.embeddings_project.weight"] == 0.01 and decay["body.embeddings_project.bias"] == 0.0
    eps = 1e-8 if family == "gpt" else 1e-6
    trainer = Trainer(model, TrainConfig.make(Path("unused"), 1, progress=False, device="cpu"), Counting())
    assert {g["eps"] for g in trainer.optimizer.param_groups} == {eps}


def test_logged_lr_is_the_peak_rate_under_layer_decay(tmp_path: Path) -> None:
    """--layer-decay gives the embeddings (the first group) lr x decay^(L+1): the log shows the
    schedule's factor times --lr, not that group's rate."""
    model = _model()
    groups = param_groups(model, 1e-3, 0.01, layer_decay=0.5)
    assert groups[0]["lr"] == pytest.approx(1e-3 * 0.5**3)
    cfg = _cfg(tmp_path, lr=1e-3, warmup_steps=4, max_steps=8, schedule="linear")
    Trainer(model, cfg, Counting(), groups=groups).fit()
    # the record at step k shows the rate of the next step (the scheduler has stepped)
    assert [lr for _, lr in _lrs(tmp_path)] == pytest.approx([1e-3 * lr_factor(k, cfg) for k in range(1, 9)])


def test_schedules_warm_up_then_decay_to_zero() -> None:
    lin = TrainConfig.make(out_dir=Path("."), max_steps=110, warmup_steps=10)
    cos = TrainConfig.make(out_dir=Path("."), max_steps=110, warmup_steps=10, schedule="cosine")
    assert lr_factor(0, lin) == pytest.approx(0.1) and lr_factor(9, lin) == pytest.approx(1.0)
    assert lr_factor(60, lin) == pytest.approx(0.5) and lr_factor(110, lin) == pytest.approx(0.0)
    assert lr_factor(60, cos) == pytest.approx(0.5) and lr_factor(35, cos) == pytest.approx(0.5 * (1 + np.cos(np.pi / 4)))
    assert lr_factor(20, lin, time_fraction=0.9) == pytest.approx(0.1)  # a time budget decays by the clock


def test_bad_settings_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(PretuneError, match="--schedule"):
        TrainConfig.make(out_dir=tmp_path, max_steps=1, schedule="step")
    with pytest.raises(PretuneError, match="--max-steps"):
        TrainConfig.make(out_dir=tmp_path, max_steps=0)


# --------------------------------------------------------------------------------------------
# Checkpoints that survive real use


def test_checkpoint_loads_with_weights_only_and_keys_the_optimizer_by_name(tmp_path: Path) -> None:
    Trainer(_model(), _cfg(tmp_path, save_every=4, max_steps=4), Counting()).fit()
    state = torch.load(tmp_path / "checkpoints" / "step-4" / "trainer_state.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 1 and len(state["rng"]) == 1  # one RNG state per rank
    # by parameter name, the same format for one process, DDP and FSDP: a run resumes under any of them
    assert "body.blocks.0.attn.qkv.weight" in state["optimizer"]["state"]


def _run_script(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


KILLED_WHILE_SAVING = """
import os, signal, sys
from pathlib import Path
import torch
from test_trainer import Counting, _cfg, _model
from pretune.train.trainer import Trainer

real_save = torch.save
def dying_save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == 4:  # the second checkpoint: half of it, then SIGKILL
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = dying_save
Trainer(_model(), _cfg(Path(sys.argv[1]), save_every=2, max_steps=8), Counting()).fit()
"""


def test_a_checkpoint_killed_mid_save_is_never_resumed_from(tmp_path: Path) -> None:
    full = tmp_path / "full"
    Trainer(_model(), _cfg(full, save_every=2, max_steps=8), Counting()).fit()
    part = tmp_path / "part"
    proc = _run_script(KILLED_WHILE_SAVING, str(part))
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert [p.name for p in checkpoint_dirs(part)] == ["step-2"]
    leftovers = list((part / "checkpoints").glob(".step-4*"))
    assert leftovers and (leftovers[0] / "trainer_state.pt").read_bytes() == b"half a checkpoint"
    Trainer(_model(), _cfg(part, save_every=2, max_steps=8, resume=True), Counting(seed=5)).fit()
    assert _losses(part) == _losses(full)  # resumed from step 2, exactly
    assert not list((part / "checkpoints").glob(".step-*"))  # the temporary of the killed save is gone


TIME_BUDGET_RUN = """
import sys, time
from pathlib import Path
from test_trainer import Counting, StepClock, _cfg, _model
from pretune.train.trainer import Trainer

def slow(model, batch):
    time.sleep(0.15)  # time for the test to kill this process between checkpoints
    return model(**batch)

cfg = _cfg(Path(sys.argv[1]), max_steps=1000, time_budget_s=12, save_every=3, warmup_steps=2, **{"resume": sys.argv[2] == "1"})
Trainer(_model(), cfg, Counting(), step_fn=slow, clock=StepClock()).fit()
"""


class StepClock:
    """A clock that advances one second per reading: the trainer reads it once per step."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _lrs(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["lr"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_a_killed_time_budget_run_resumes_with_the_budget_left(tmp_path: Path) -> None:
    """The seconds already trained are in the checkpoint: after SIGKILL and --resume the clock-driven
    learning rates are those of the uninterrupted run, and it stops at the same step."""
    full = tmp_path / "full"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the scripts run: bit-exactness holds for one thread count
    try:
        Trainer(_model(), _cfg(full, max_steps=1000, time_budget_s=12, save_every=3, warmup_steps=2), Counting(),
                clock=StepClock()).fit()
    finally:
        torch.set_num_threads(threads)
    part = tmp_path / "part"
    proc = _run_script(TIME_BUDGET_RUN, str(part), "0")
    deadline = time.time() + 120
    while not (part / "checkpoints" / "step-6").is_dir():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (part / "checkpoints" / "step-13").exists()  # it died before the end
    resumed = _run_script(TIME_BUDGET_RUN, str(part), "1")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()[-2000:]
    assert _lrs(part) == _lrs(full) and _lrs(full)[-1][0] == 13  # 12 seconds of budget: stops after step 13
    assert _losses(part) == _losses(full)


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(PretuneError, match=r"--resume: .* holds no complete checkpoint"):
        Trainer(_model(), _cfg(tmp_path, resume=True), Counting()).fit()


# --------------------------------------------------------------------------------------------
# What may change on --resume


def _saved_run(tmp_path: Path, settings) -> Path:
    ckpt = tmp_path / "run" / "checkpoints" / "step-3"
    ckpt.mkdir(parents=True)
    write_json(ckpt / "settings.json", saved_settings(settings, 1))
    return ckpt


def test_resume_refuses_settings_that_change_the_results_and_names_each(tmp_path: Path) -> None:
    base = PretrainSettings(model="bert-tiny", data=["a.txt"], out=str(tmp_path / "run"), batch_size=8,
                            trainer=TrainSettings(seed=3))
    ckpt = _saved_run(tmp_path, base)
    changed = dataclasses.replace(base, batch_size=16, seq_len=64, masking=MaskingSettings(whole_word_mask=True, nsp=False),
                                  trainer=TrainSettings(seed=4, lr=1e-3))
    with pytest.raises(PretuneError) as err:
        check_resume(ckpt, changed)
    message = str(err.value)
    for part in ("--batch-size 8 -> 16", "--seq-len 128 -> 64", "--whole-word-mask off -> on", "--no-nsp off -> on",
                 "--seed 3 -> 4", "--lr 0.0001 -> 0.001"):
        assert part in message, part
    assert "\n" not in message and "--max-steps" in message.split("only ")[1]  # says what may change
    allowed = dataclasses.replace(base, max_steps=5000, eval_batches=3, trainer=TrainSettings(
        seed=3, log_every=1, eval_every=7, save_every=9, keep_last=5, time_budget_s=60, fsdp=True, progress=False, resume=True))
    check_resume(ckpt, allowed)  # more steps, other intervals, FSDP: fine


def test_resume_check_of_finetuning_and_of_another_command(tmp_path: Path) -> None:
    base = FinetuneSettings(model="bert-tiny", task="nsmc", train="t.tsv", out=str(tmp_path / "run"))
    ckpt = _saved_run(tmp_path, base)
    check_resume(ckpt, dataclasses.replace(base, epochs=10.0, patience=2, eval_batch_size=4, test="x.tsv"))
    with pytest.raises(PretuneError, match=r"--max-seq-len None -> 64.*--text-col None -> 'review'"):
        check_resume(ckpt, dataclasses.replace(base, max_seq_len=64, columns=Columns(text_col="review")))
    with pytest.raises(PretuneError, match="belongs to a FinetuneSettings run"):
        check_resume(ckpt, PretrainSettings(out=str(tmp_path / "run")))


def test_resume_help_lists_every_setting_that_may_change() -> None:
    help_text = TrainSettings.__dataclass_fields__["resume"].metadata["help"]
    for cls in (PretrainSettings, FinetuneSettings):
        for flag in may_change(cls):
            if flag not in ("--resume", "--overwrite"):
                assert flag in help_text, flag


# --------------------------------------------------------------------------------------------
# A model directory is one version


CRASH_BETWEEN_RENAMES = """
import os, signal, sys
from pathlib import Path
import torch
from test_trainer import _model
from pretune.checkpoint import save_model

model = _model()
with torch.no_grad():
    model.body.embeddings.tok.weight.add_(1.0)  # version 2
real_replace = os.replace
def dying_replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if ".pending-model" in str(src) and Path(dst).name == "model.safetensors":
        os.kill(os.getpid(), signal.SIGKILL)  # the new weights are in place, the old config still is
os.replace = dying_replace
save_model(Path(sys.argv[1]), model)
"""


def test_a_save_killed_between_renames_never_pairs_two_versions(tmp_path: Path) -> None:
    from pretune.checkpoint import load_model, save_model

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")  # a run directory: the model is saved into it, file by file
    v1 = _model()
    save_model(run, v1)
    first = json.loads((run / "config.json").read_text())["saved"]["version"]
    proc = _run_script(CRASH_BETWEEN_RENAMES, str(run))
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert (run / ".pending-model" / "config.json").is_file()  # killed half-way: new weights, old config
    assert json.loads((run / "config.json").read_text())["saved"]["version"] == first
    loaded = load_model(run)  # finishes the interrupted save first
    assert not (run / ".pending-model").exists()
    assert json.loads((run / "config.json").read_text())["saved"]["version"] != first
    expected = v1.body.embeddings.tok.weight + 1.0
    assert torch.equal(loaded.model.body.embeddings.tok.weight, expected)
    # weights copied in from another save are refused, not silently paired with this config
    other = tmp_path / "other"
    save_model(other, v1)
    shutil.copyfile(other / "model.safetensors", run / "model.safetensors")
    with pytest.raises(PretuneError, match="model.safetensors come.* from another save than config.json"):
        load_model(run)
