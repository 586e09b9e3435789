"""Recipe: a pretrained model + a labelled task -> a fine-tuned model, evaluated and ready to predict.

:func:`finetune` wires the parts: the task's recipe and family (``pretune/tasks/``), the model
with a task head (:class:`pretune.tasks.TaskModel`), GPT-1's added tokens, discriminative
learning rates, and the shared trainer. It validates after every epoch, keeps the best
checkpoint by the task's main metric (with optional early stopping), and writes
``eval_results.json``.

The run directory is a normal model directory (config.json with a ``task`` entry,
model.safetensors, tokenizer files) holding the best checkpoint, plus ``metrics.jsonl``,
``loss.png``, ``eval_results.json``; the trainer's ``checkpoints/`` (for ``--resume``) are deleted
after a successful run unless ``--keep-checkpoints``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from pretune.checkpoint import load_model, load_tokenizer, model_source, source_family
from pretune.data.batching import FinetuneBatches
from pretune.errors import PretuneError
from pretune.inference import collator, load_finetuned, run_model
from pretune.io import write_json, write_text
from pretune.tasks import (
    FeatureSet,
    Recipe,
    TaskModel,
    TaskSpec,
    get_family,
    get_recipe,
    new_parameter_prefixes,
    read_examples,
)
from pretune.train.distributed import (
    check_global_batch,
    gather_to_main,
    init_distributed,
    on_main,
    shard,
    unshard,
)
from pretune.train.rundir import clear_for_overwrite, prepare_out, saved_settings
from pretune.train.settings import FinetuneSettings
from pretune.train.surgery import freeze_layers, partly_frozen, resize_vocab, transfer_layers
from pretune.train.trainer import CHECKPOINTS, TrainConfig, Trainer, param_groups, seed_everything
from pretune.validate import finetune_memory, finetune_settings

RESULTS = "eval_results.json"
BEST_STATE = "best.json"
DEFAULT_GPT_LM_COEF = 0.5


# --------------------------------------------------------------------------------------------
# The model: backbone + GPT-1 tokens + task head


def _check_tokenizer(tokenizer: Any, family: str, spec: str) -> None:
    if tokenizer is None:
        raise PretuneError(f"--model {spec}: has no tokenizer files; pass --tokenizer DIR")
    if family != "gpt" and not (tokenizer.has_role("cls") and tokenizer.has_role("sep")):
        raise PretuneError("a BERT needs a tokenizer whose [CLS] and [SEP] tokens are known (a WordPiece vocab.txt has "
                           "them; name others with the tokenizer config's cls_token and sep_token)")
    if family == "gpt" and tokenizer.kind == "wordpiece":
        raise PretuneError("a GPT needs a BPE or SentencePiece tokenizer, not WordPiece (it gets <|start|> <|delim|> "
                           "<|extract|> added)")


def _same_head(saved: TaskSpec | None, spec: TaskSpec) -> bool:
    """Whether a saved head can be reused (same family, same labels): further fine-tuning."""
    return saved is not None and saved.family == spec.family and saved.labels == spec.labels


def load_backbone(s: FinetuneSettings) -> tuple[Any, Any, range]:
    """``--model`` loaded (a preset gets the tokenizer's size), with GPT-1's tokens added; returns
    it, its tokenizer, and the token rows initialised fresh for the added tokens."""
    tokenizer = load_tokenizer(s.tokenizer)
    source = model_source(s.model)
    overrides: dict[str, Any] = dict(s.overrides)
    if source.fresh:
        if tokenizer is None:
            raise PretuneError("--tokenizer is required when --model is a preset or a config file")
        if source_family(source) == "gpt" and tokenizer.kind != "wordpiece":
            tokenizer.ensure_gpt_special_tokens()
        overrides["vocab_size"] = tokenizer.vocab_size
        if os.environ.get("RANK", "0") == "0":
            what = "preset" if source.kind == "preset" else "config file"
            tqdm.write(f"from scratch: {s.model} is a {what}, so the model starts from random weights "
                       f"(pass a pretrained model directory or Hugging Face Hub id to fine-tune pretrained ones)")
    loaded = load_model(s.model, overrides=overrides, tokenizer=tokenizer)
    _check_tokenizer(loaded.tokenizer, loaded.config.family, s.model)
    fresh = range(0)
    if loaded.config.family == "gpt":
        before = loaded.tokenizer.vocab_size
        added = loaded.tokenizer.ensure_gpt_special_tokens()
        fresh = resize_vocab(loaded.model, loaded.tokenizer.vocab_size, new_from=before)
        if added:
            tqdm.write(f"added GPT-1 tokens {' '.join(added)} to the vocabulary (now {loaded.tokenizer.vocab_size})")
    return loaded, loaded.tokenizer, fresh


def task_spec(s: FinetuneSettings, recipe: Recipe, train: Sequence[Any], cfg: Any) -> TaskSpec:
    """What this run fine-tunes for, from the recipe, the training labels and the settings."""
    max_seq_len = cfg.max_positions if s.max_seq_len is None else s.max_seq_len
    if max_seq_len > cfg.max_positions:
        raise PretuneError(f"--max-seq-len {max_seq_len} is more than the model's max_positions ({cfg.max_positions})")
    if max_seq_len < 1:
        raise PretuneError(f"--max-seq-len must be at least 1, got {max_seq_len}")
    gpt = cfg.family == "gpt"
    lm_coef = (DEFAULT_GPT_LM_COEF if s.lm_coef is None else s.lm_coef) if gpt else 0.0
    if lm_coef < 0:
        raise PretuneError(f"--lm-coef must be >= 0, got {lm_coef}")
    pair_mode = recipe.default_pair_mode if s.pair_mode == "auto" else s.pair_mode
    return recipe.spec(list(train), max_seq_len=max_seq_len, pair_mode=pair_mode, lm_coef=lm_coef,
                       doc_stride=s.doc_stride, max_query_len=s.max_query_len, max_answer_len=s.max_answer_len)


def build_task_model(s: FinetuneSettings, recipe: Recipe, train: Sequence[Any]) -> tuple[TaskModel, Any, tuple[str, ...]]:
    """The model to fine-tune, its tokenizer, and the prefixes of its newly initialised layers."""
    loaded, tokenizer, fresh = load_backbone(s)
    backbone = loaded.model
    spec = task_spec(s, recipe, train, backbone.cfg)
    if s.transfer_layers is not None:
        transfer_layers(backbone, s.transfer_layers)
    freeze_layers(backbone, s.freeze_layers, new_rows=fresh)
    model = TaskModel(backbone, spec, get_family(spec.family))
    if _same_head(loaded.task, spec) and loaded.head:
        model.head.load_state_dict({k[len("head."):]: v for k, v in loaded.head.items()})
    return model, tokenizer, new_parameter_prefixes(loaded.missing)


# --------------------------------------------------------------------------------------------
# The run


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _metrics_table(results: dict[str, dict[str, float | None]]) -> str:
    splits = [k for k in ("validation", "test") if k in results]
    names = list(dict.fromkeys(n for k in splits for n in results[k]))
    rows = [["metric", *splits]] + [[n, *(_fmt(results[k][n]) if n in results[k] else "-" for k in splits)] for n in names]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def improves(value: float | None, best: float | None) -> bool:
    """Whether a validation value beats the best so far; an undefined value (None) never does."""
    return value is not None and (best is None or value > best)


def _fresh_best() -> dict[str, Any]:
    """``best.json`` before any evaluation: the best value and its step, the evaluations without
    improvement since (``bad``), and the step of the last evaluation counted (``counted``)."""
    return {"value": None, "step": 0, "bad": 0, "counted": 0}


def _read_best(out: Path) -> dict[str, Any]:
    path = out / BEST_STATE
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        data.setdefault("bad", 0)
        data.setdefault("counted", data.get("step", 0))  # written before "counted" existed
        return data
    return _fresh_best()


class FinetuneRun:
    """One fine-tuning run, prepared (model, features, optimizer groups, trainer) and then run.

    ``FinetuneRun(settings)`` reads the data, loads the model with its head, builds the features
    and the trainer; :meth:`run` trains, keeps the best checkpoint and scores it. Tests inspect the
    prepared state (``trainer.optimizer.param_groups``, ``model``, ``train_features``).
    """

    def __init__(self, s: FinetuneSettings) -> None:
        finetune_settings(s)  # before any work: ranges, files, --out, lengths, layers (memory: once tokenized)
        self.started = time.perf_counter()
        self.settings = s
        self.dist = init_distributed(s.trainer.device)
        check_global_batch(s.batch_size, self.dist)
        # --overwrite clears the old run only after the memory check, which needs the tokenized examples
        on_main(lambda: prepare_out(s, inputs=(s.model, s.tokenizer, s.train, s.validation, s.test), clear_now=False),
                self.dist)
        seed_everything(s.trainer.seed)
        self.recipe = get_recipe(s.task, **s.columns.overrides())
        self.family = get_family(self.recipe.family)
        self.out = Path(s.out)
        if s.epochs <= 0:
            raise PretuneError(f"--epochs must be positive, got {s.epochs}")
        self._read_data()
        self.model, self.tokenizer, new_prefixes = build_task_model(s, self.recipe, self.train_examples)
        if partly_frozen(self.model) and self.dist.enabled and s.trainer.fsdp:
            raise PretuneError("--freeze-layers with --fsdp: GPT-1's new tokens must keep training in the frozen token "
                               "table, which a sharded table cannot do; drop --fsdp (DDP replicates the model) or --freeze-layers")
        self.spec = self.model.spec
        self._build_features()
        on_main(lambda: finetune_memory(s, self.model.cfg, self.train_features.features), self.dist)
        on_main(lambda: clear_for_overwrite(s), self.dist)
        self._build_trainer(new_prefixes)

    def _read_data(self) -> None:
        """Train, validation (a file or a split of train), optional test."""
        s, recipe = self.settings, self.recipe
        train = read_examples(recipe, s.train, limit=s.limit, train=True, split="train")
        if s.validation:
            val = read_examples(recipe, s.validation, limit=s.limit, split="validation")
        elif s.validation_split:
            train, val = self.family.split(train, s.validation_split, s.trainer.seed)
        else:
            raise PretuneError("--validation FILE (or --validation-split FRACTION of --train) is required")
        if not self.family.is_labelled(val):
            raise PretuneError(f"{s.validation or s.train}: the validation examples have no labels; set --label-col")
        self.train_examples, self.val_examples = train, val
        self.test_examples = read_examples(recipe, s.test, limit=s.limit, split="test") if s.test else None

    def _features(self, examples: Sequence[Any] | None, what: str, train: bool = False) -> FeatureSet | None:
        """Features; truncation is counted (one warning per split) or, with --no-truncate, an error."""
        if examples is None:
            return None
        fs = self.family.features(examples, self.spec, self.tokenizer, self.model.cfg.family, train=train,
                                  no_truncate=self.settings.no_truncate)
        fs.report(f"{what} examples")
        return fs

    def _build_features(self) -> None:
        self.train_features = self._features(self.train_examples, "training", train=True)
        self.val_features = self._features(self.val_examples, "validation")
        self.test_features = self._features(self.test_examples, "test")
        self.collate = collator(self.model, self.tokenizer)

    def _build_trainer(self, new_prefixes: tuple[str, ...]) -> None:
        s, d = self.settings, self.dist
        self.batches = FinetuneBatches(
            self.train_features.features, s.batch_size, self.collate, seed=s.trainer.seed, rank=d.rank,
            world_size=d.world_size, group_by_length=s.group_by_length,
        )
        self.steps_per_epoch = max(1, len(self.batches) // s.trainer.grad_accum)
        max_steps = max(1, math.ceil(s.epochs * self.steps_per_epoch))
        self.eval_batch_size = s.eval_batch_size or 2 * s.batch_size
        run = s.trainer
        self.best: dict[str, Any] = on_main(lambda: _read_best(self.out), d) if run.resume else _fresh_best()
        # Discriminative learning rates: the body at --lr (layer-decayed), new layers at --head-lr.
        groups = param_groups(self.model, run.lr, run.weight_decay, head_lr=s.head_lr, head_prefixes=new_prefixes,
                              layer_decay=s.layer_decay, no_decay=partly_frozen(self.model))
        run = dataclasses.replace(run, warmup_steps=int(s.warmup_ratio * max_steps), eval_every=self.steps_per_epoch,
                                  save_every=self.steps_per_epoch)
        tcfg = TrainConfig(out_dir=self.out, max_steps=max_steps, run=run, desc=f"finetune {self.recipe.name}",
                           settings=saved_settings(s, d.world_size))
        self.trainer = Trainer(self.model, tcfg, self.batches, groups=groups, eval_fn=self.eval_fn,
                               on_eval=self.on_eval, dist_info=d, loss_items=self.family.loss_items)

    # --- evaluation during and after training ---------------------------------------------

    def evaluate_split(self, model: nn.Module, examples: Sequence[Any], fs: FeatureSet, desc: str,
                       precision: str) -> dict[str, float | None]:
        logits = run_model(model, fs.features, self.collate, self.eval_batch_size, precision=precision, desc=desc,
                           progress=self.settings.trainer.progress)
        return self.family.score(self.spec, examples, self.family.decode(self.spec, examples, fs, logits))

    def eval_fn(self, model: nn.Module) -> dict[str, float | None]:
        """Validation metrics, prefixed ``val_`` (the trainer logs them in metrics.jsonl).

        Under torchrun every rank runs the model on its share of the validation features; rank 0
        gathers the outputs, decodes and scores them, and sends the metrics to every rank."""
        d, features = self.dist, self.val_features.features
        mine, real = shard(features, d)
        logits = run_model(model, mine, self.collate, self.eval_batch_size, precision=self.trainer.precision,
                           desc="validate", progress=self.settings.trainer.progress and d.main)[:real]
        parts = gather_to_main(logits, d)

        def score() -> dict[str, float | None]:
            fs = self.val_features
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # undefined correlation early in training: None
                preds = self.family.decode(self.spec, self.val_examples, fs, unshard(parts, len(features)))
                metrics = self.family.score(self.spec, self.val_examples, preds)
            return {f"val_{k}": v for k, v in metrics.items()}

        return on_main(score, d)

    def on_eval(self, step: int, metrics: dict[str, float | None]) -> bool:
        """Save the model when the main metric improves; True (stop) after --patience misses.

        Every rank runs it with the same metrics (a sharded model is gathered by all of them). An
        evaluation is counted once: ``best.json`` records the step of the last one counted, so a run
        that stopped after evaluating but before its checkpoint was written, resumed with
        ``--resume``, repeats that evaluation without counting it again against ``--patience``.
        """
        best, patience = self.best, self.settings.patience
        value = metrics[f"val_{self.spec.main_metric}"]
        epoch = step / self.steps_per_epoch
        repeat = step <= best["counted"]
        improved = (step == best["step"] and value is not None) if repeat else improves(value, best["value"])
        if improved:  # a repeated best is saved again: the weights on disk are this run's
            best.update(value=value, step=step, bad=best["bad"] if repeat else 0, epoch=round(epoch, 3), metrics=metrics)
            self.trainer.save_model(self.out, self.tokenizer, task=self.spec)
        elif not repeat:
            best["bad"] += 1
        best["counted"] = max(step, best["counted"])
        if self.dist.main:
            write_json(self.out / BEST_STATE, best)
            shown = "  ".join(f"{k[4:]} {_fmt(v)}" for k, v in metrics.items())
            note = "  (evaluated before the resume; counted once)" if repeat else ""
            tqdm.write(f"epoch {epoch:.2f} (step {step}): {shown}" + ("  [best, saved]" if improved else "") + note)
        return bool(patience) and best["bad"] >= patience

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train, reload the best checkpoint, score it; write ``eval_results.json`` and print a table."""
        from pretune.report import plot_training

        t_train = time.perf_counter()
        history = self.trainer.fit()
        train_s = time.perf_counter() - t_train
        if not self.dist.main:
            return {}
        plot_training(history, self.out / "loss.png", title=f"fine-tuning {self.recipe.name}")
        if self.best["value"] is None:
            raise PretuneError(
                f"no evaluation gave a defined {self.spec.main_metric} (the model predicts a constant), so no "
                f"best checkpoint was saved; train longer or raise --lr"
            )
        results = self._score_best()
        summary = self._summary(results, train_s)
        write_json(self.out / RESULTS, summary)
        table = _metrics_table(results)
        write_text(self.out / "eval_results.txt", table + "\n")
        print(table)
        if not self.settings.keep_checkpoints:  # the best model is saved; the optimizer state is only for --resume
            shutil.rmtree(self.out / CHECKPOINTS, ignore_errors=True)
        return summary

    def _score_best(self) -> dict[str, dict[str, float | None]]:
        """Validation (and test) metrics of the best checkpoint as saved on disk: what users get."""
        s = self.settings
        best = load_finetuned(self.out, str(self.trainer.device), self.trainer.precision)
        splits = {"validation": (self.val_examples, self.val_features)}
        if self.test_examples is not None:
            if self.family.is_labelled(self.test_examples):
                splits["test"] = (self.test_examples, self.test_features)
            else:
                warnings.warn(f"{s.test}: no labels; the test set was not scored", stacklevel=2)
        return {name: self.evaluate_split(best.model, ex, fs, name, best.precision) for name, (ex, fs) in splits.items()}

    def _summary(self, results: dict[str, dict[str, float | None]], train_s: float) -> dict[str, Any]:
        s, final = self.settings, ("test" if "test" in results else "validation")
        fs = {"train": self.train_features, "validation": self.val_features, "test": self.test_features}
        return {
            **results[final], "split": final, "task": self.recipe.name, "family": self.recipe.family,
            "main_metric": self.spec.main_metric, "scored_with": self.family.scored_with(self.spec), **results,
            "best_step": self.best["step"], "best_epoch": self.best.get("epoch"), "steps": self.trainer.step,
            "steps_per_epoch": self.steps_per_epoch, "epochs": s.epochs,
            "train_examples": len(self.train_examples), "validation_examples": len(self.val_examples),
            "test_examples": len(self.test_examples) if self.test_examples is not None else 0,
            "truncated": {k: (v.truncated if v is not None else 0) for k, v in fs.items()},
            "model": s.model, "model_family": self.model.cfg.family, "precision": self.trainer.precision,
            "train_seconds": round(train_s, 1), "wall_seconds": round(time.perf_counter() - self.started, 1),
            "device": str(self.trainer.device),
        }


def finetune(s: FinetuneSettings) -> dict[str, Any]:
    """Fine-tune, keep the best checkpoint by the task's main metric, and evaluate it.

    Returns the results also written to ``OUT/eval_results.json``.
    """
    return FinetuneRun(s).run()


__all__ = ["FinetuneRun", "FinetuneSettings", "build_task_model", "finetune", "improves", "task_spec"]
