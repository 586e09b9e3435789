"""Using a fine-tuned model: load it, run it over a file, decode, score, and write predictions.

``pretune evaluate`` and ``pretune predict`` call :func:`evaluate` and :func:`predict`;
fine-tuning scores its validation and test sets with :func:`run_model` and the task family's
``decode`` / ``score``. Inference runs in the precision ``--precision`` asks for (``auto``: bf16
where this machine computes it faster, see :mod:`pretune.precision`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from pretune.data.batching import Collator, feature_length
from pretune.errors import PretuneError
from pretune.io import write_text
from pretune.loader import load_ready
from pretune.precision import autocast
from pretune.tasks import Predictions, Recipe, TaskModel, TaskSpec, get_family, get_recipe, read_examples

TARGET_KEYS = ("labels", "start_positions", "end_positions")


@dataclass
class Finetuned:
    """A fine-tuned model ready to run: the model on its device, its tokenizer and its task."""

    model: TaskModel
    tokenizer: Any
    spec: TaskSpec
    precision: str  # resolved: fp32 | bf16

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def collator(model: TaskModel, tokenizer: Any) -> Collator:
    return Collator(tokenizer.padding_id, extract=model.gpt)


def load_finetuned(model_dir: str | Path, device: str = "auto", precision: str = "auto", *, verb: str = "evaluate",
                   **changes: Any) -> Finetuned:
    """A fine-tuned model directory -> model on the device, tokenizer and task (``changes`` to it)."""
    ready = load_ready(model_dir, task=True, device=device, precision=precision, verb=verb)
    spec = ready.task.replace(**changes)
    if spec.max_seq_len > ready.config.max_positions:
        raise PretuneError(f"--max-seq-len {spec.max_seq_len} is more than the model's max_positions ({ready.config.max_positions})")
    if spec.max_seq_len < 1:
        raise PretuneError(f"--max-seq-len must be at least 1, got {spec.max_seq_len}")
    model = TaskModel(ready.model, spec, get_family(spec.family))
    model.head.load_state_dict({k[len("head."):]: v for k, v in ready.head.items()})
    return Finetuned(model.to(ready.device).eval(), ready.tokenizer, spec, ready.precision)


def _eval_batches(features: Sequence[dict], batch_size: int) -> list[list[int]]:
    """Feature indexes in batches of similar length (longest first), for fast inference."""
    order = sorted(range(len(features)), key=lambda i: -feature_length(features[i]))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


@torch.no_grad()
def run_model(model: TaskModel, features: Sequence[dict], collate: Collator, batch_size: int, *,
              precision: str = "fp32", desc: str = "eval", progress: bool = True) -> list[Tensor]:
    """Logits of every feature (CPU float tensors, in feature order; padding positions cut off)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[Tensor | None] = [None] * len(features)
    pending: list[tuple[list[int], Tensor]] = []
    batches = _eval_batches(features, batch_size)
    try:
        with autocast(device, precision):
            for idx in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress, dynamic_ncols=True):
                batch = collate([features[i] for i in idx])
                batch = {k: v.to(device) for k, v in batch.items() if k not in TARGET_KEYS}
                logits = model(**batch).logits.float()
                if model.family.per_token:  # variable width: bring each batch back now
                    logits = logits.cpu()
                    for row, i in enumerate(idx):
                        out[i] = logits[row, : len(features[i]["input_ids"])]
                else:
                    pending.append((idx, logits))
    finally:
        model.train(was_training)
    if pending:
        flat = torch.cat([t for _, t in pending]).cpu()  # one transfer for the whole set
        for row, i in enumerate(i for idx, _ in pending for i in idx):
            out[i] = flat[row]
    return out  # type: ignore[return-value]


def predict_examples(ft: Finetuned, examples: Sequence[Any], *, batch_size: int = 64, no_truncate: bool = False,
                     progress: bool = True, desc: str = "eval") -> Predictions:
    """Build features for ``examples`` and decode the model's outputs."""
    family = get_family(ft.spec.family)
    fs = family.features(examples, ft.spec, ft.tokenizer, ft.model.cfg.family, no_truncate=no_truncate)
    fs.report()
    logits = run_model(ft.model, fs.features, collator(ft.model, ft.tokenizer), batch_size, precision=ft.precision,
                       desc=desc, progress=progress)
    return family.decode(ft.spec, examples, fs, logits)


def recipe_for(spec: TaskSpec, name: str | None, columns: dict[str, Any] | None) -> Recipe:
    """The recipe a fine-tuned model reads files with: ``--task`` or the one it was trained on,
    its saved columns, and the command line's column overrides."""
    name = name or spec.recipe
    saved = spec.columns if name == spec.recipe else {}
    recipe = get_recipe(name).with_options(**{**saved, **(columns or {})})
    if recipe.family != spec.family:
        raise PretuneError(f"--task {name} is a {recipe.family} task but the model was fine-tuned for {spec.family}")
    return recipe


def evaluate(model_dir: str | Path, data: str | Path, *, task_name: str | None = None,
             columns: dict[str, Any] | None = None, batch_size: int = 64, limit: int | None = None,
             max_seq_len: int | None = None, no_truncate: bool = False, device: str = "auto",
             precision: str = "auto", progress: bool = True) -> dict[str, float | None]:
    """Score a fine-tuned model on a labelled file with its task's metrics."""
    ft = load_finetuned(model_dir, device, precision, max_seq_len=max_seq_len)
    recipe = recipe_for(ft.spec, task_name, columns)
    examples = read_examples(recipe, data, limit=limit)
    family = get_family(ft.spec.family)
    if not family.is_labelled(examples):
        raise PretuneError(f"{data}: the examples have no labels to score against; set --label-col")
    preds = predict_examples(ft, examples, batch_size=batch_size, no_truncate=no_truncate, progress=progress,
                             desc="evaluate")
    return family.score(ft.spec, examples, preds)


def predict(model_dir: str | Path, data: str | Path, out: str | Path, *, task_name: str | None = None,
            columns: dict[str, Any] | None = None, batch_size: int = 64, limit: int | None = None,
            max_seq_len: int | None = None, no_truncate: bool = False, device: str = "auto",
            precision: str = "auto", progress: bool = True) -> int:
    """Write one JSON line per input example to ``out``; returns the number written.

    Each line has the example's ``source`` (file:line) and: ``label`` and ``probabilities``
    (classification); ``score`` (regression); ``choice``, ``answer`` and ``probabilities``
    (multiple choice); ``id``, ``answer``, ``start`` and ``score`` (QA); ``tokens`` and ``tags``
    (tagging).
    """
    ft = load_finetuned(model_dir, device, precision, verb="predict", max_seq_len=max_seq_len)
    recipe = recipe_for(ft.spec, task_name, columns)
    examples = read_examples(recipe, data, limit=limit, unlabeled_ok=True)
    preds = predict_examples(ft, examples, batch_size=batch_size, no_truncate=no_truncate, progress=progress,
                             desc="predict")
    records = get_family(ft.spec.family).records(ft.spec, examples, preds)
    write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(records)


__all__ = ["Finetuned", "evaluate", "load_finetuned", "predict", "predict_examples", "recipe_for", "run_model"]
