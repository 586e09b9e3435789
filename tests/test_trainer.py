"""The shared trainer on a tiny GPT with a synthetic, resumable batch stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pretune.config import preset
from pretune.errors import PretuneError
from pretune.models import build_model
from pretune.train.trainer import TrainConfig, Trainer, checkpoint_dirs, lr_factor, param_groups


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
    assert by_name["body.embeddings.pos.weight"][1] == 0.0
    assert by_name["body.embeddings.tok.weight"][1] == 0.01
    decayed = {n: g["lr"] for g in param_groups(model, 1e-4, 0.01, layer_decay=0.5) for n in g["names"]}
    assert decayed["body.blocks.1.mlp.fc1.weight"] == pytest.approx(1e-4 * 0.5)  # top block: one step down
    assert decayed["body.blocks.0.mlp.fc1.weight"] == pytest.approx(1e-4 * 0.25)
    assert decayed["body.embeddings.tok.weight"] == pytest.approx(1e-4 * 0.125)


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
