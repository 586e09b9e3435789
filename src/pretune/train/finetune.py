"""Recipe: a pretrained model + a labelled task -> a fine-tuned model, evaluated and ready to predict.

``finetune`` wires the parts: the task's reader (``data/tasks.py``), the model with a task head
(``models/heads.py``; loaded through :func:`pretune.checkpoint.load_model`), the papers' input
transformations (``data/transforms.py``), discriminative learning rates, and the shared trainer.
It validates after every epoch, keeps the best checkpoint by the task's main metric (with
optional early stopping), and writes ``eval_results.json``. ``evaluate`` and ``predict`` load a
fine-tuned directory and score or label a file.

The run directory is a normal model directory (config.json with a ``task`` entry,
model.safetensors, tokenizer files) holding the best checkpoint, plus ``metrics.jsonl``,
``loss.png``, ``eval_results.json`` and the trainer's ``checkpoints/`` (for ``--resume``).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pretune.checkpoint import LoadedModel, load_model, save_model
from pretune.config import PRESETS, read_json
from pretune.data.tasks import (
    QAExample,
    Recipe,
    TaggingExample,
    build_label_map,
    get_recipe,
    split_examples,
    split_squad_by_article,
)
from pretune.data.transforms import Collator, FeatureSet, build_features, feature_length
from pretune.errors import PretuneError
from pretune.io import write_json, write_text
from pretune.metrics import compute_metrics
from pretune.models import resize_vocab
from pretune.models.heads import (
    DEFAULT_GPT_LM_COEF,
    attach_head,
    check_family,
    freeze_layers,
    head_outputs,
    head_parameter_prefixes,
    task_forward,
    transfer_layers,
)

RESULTS = "eval_results.json"
BEST_STATE = "best.json"
COLUMN_KEYS = ("text_col", "text_pair_col", "label_col", "choice_cols", "context_col", "header")


@dataclass
class FinetuneSettings:
    """Everything ``pretune finetune`` takes (flag names with dashes become underscores)."""

    model: str
    task: str
    train: str
    out: str
    validation: str | None = None
    validation_split: float | None = None  # hold out this fraction of --train instead of --validation
    test: str | None = None
    tokenizer: str | None = None
    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int | None = None
    lr: float = 5e-5  # the pretrained body
    head_lr: float | None = None  # the new layers (task head); None: same as lr
    layer_decay: float | None = None
    freeze_layers: int = 0
    transfer_layers: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    schedule: str = "linear"
    grad_accum: int = 1
    grad_clip: float = 1.0
    max_seq_len: int | None = None  # default: the model's max_positions
    doc_stride: int = 128
    max_query_len: int = 64
    max_answer_len: int = 30
    seed: int = 0
    lm_coef: float | None = None  # GPT: 0.5 by default; BERT: ignored
    pair_mode: str = "auto"  # GPT sentence pairs: auto | entailment | similarity
    patience: int = 0  # stop after this many evaluations without improvement (0: never)
    group_by_length: bool = False
    no_truncate: bool = False
    limit: int | None = None
    columns: dict[str, Any] = field(default_factory=dict)  # text_col, label_col, ... (reader overrides)
    override: dict[str, Any] = field(default_factory=dict)  # model config fields (--set), e.g. dropout
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    resume: bool = False
    log_every: int = 10
    keep_last: int = 1
    progress: bool = True


# --------------------------------------------------------------------------------------------
# Reading


def reader_overrides(columns: dict[str, Any] | None) -> dict[str, Any]:
    """Column settings for a recipe's reader: comma lists become lists, absent ones are dropped."""
    out: dict[str, Any] = {}
    for key, value in (columns or {}).items():
        if value is None or key not in COLUMN_KEYS:
            continue
        if key in ("choice_cols", "context_col", "text_col") and isinstance(value, str) and "," in value:
            value = [v.strip() for v in value.split(",") if v.strip()]
        out[key] = value
    return out


def read_examples(recipe: Recipe, path: str | Path, *, limit: int | None = None, train: bool = False,
                  unlabeled_ok: bool = False) -> list[Any]:
    """Read a task file with the recipe's reader (the first ``limit`` examples when given).

    ``unlabeled_ok``: a file without the label column is read as unlabeled (for ``predict``).
    """
    path = Path(path)
    kwargs: dict[str, Any] = {"train": True} if (train and recipe.family == "qa") else {}
    try:
        examples = recipe.reader(path, **kwargs)
    except PretuneError:
        if not unlabeled_ok:
            raise
        examples = _read_unlabeled(recipe, path)
    if limit is not None:
        if limit < 1:
            raise PretuneError(f"--limit must be at least 1, got {limit}")
        examples = examples[:limit]
    return examples


def _read_unlabeled(recipe: Recipe, path: Path) -> list[Any]:
    """Retry a reader without its label / tag column; the first error stands if this fails too."""
    keywords = getattr(recipe.reader, "keywords", {})
    func = getattr(recipe.reader, "func", None)
    if func is None:
        return recipe.reader(path)
    key = "tag_col" if recipe.family == "tagging" else "label_col"
    try:
        return func(path, **{**keywords, key: None})
    except (PretuneError, TypeError):
        return recipe.reader(path)  # raise the original error


def _label_names(recipe: Recipe, train: Sequence[Any]) -> list[str] | None:
    """Class names (classification) or tag names (tagging); None for the other families."""
    if recipe.family == "classification":
        return list(recipe.label_names) if recipe.label_names else build_label_map(train)
    if recipe.family == "tagging":
        tags = {t for e in train if e.tags for t in e.tags}
        if not tags:
            raise PretuneError("no tags in the training data: expected token<TAB>tag lines")
        return sorted(tags, key=lambda t: (t != "O", t))
    return None


def _gold(recipe: Recipe, examples: Sequence[Any], labels: list[str] | None) -> Any:
    """References for the metrics: class ids, scores, choice indexes, answer texts or tag sequences."""
    family = recipe.family
    if family == "qa":
        return {e.id: [a for a, _ in e.answers] for e in examples if e.answers}
    if family == "tagging":
        return [list(e.tags) for e in examples]
    if family == "classification":
        index = {name: i for i, name in enumerate(labels or [])}
        return [index[e.label] for e in examples]
    return [e.label for e in examples]


def _labelled(recipe: Recipe, examples: Sequence[Any]) -> bool:
    if recipe.family == "qa":
        return any(e.answers for e in examples)
    if recipe.family == "tagging":
        return all(e.tags is not None for e in examples)
    return all(e.label is not None for e in examples)


# --------------------------------------------------------------------------------------------
# Running the model over features


def _eval_batches(features: Sequence[dict], batch_size: int) -> list[list[int]]:
    """Feature indexes in batches of similar length (longest first), for fast inference."""
    order = sorted(range(len(features)), key=lambda i: -feature_length(features[i]))
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def _autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def run_model(model: nn.Module, features: Sequence[dict], collate: Collator, batch_size: int,
              *, desc: str = "eval", progress: bool = True) -> list[Tensor]:
    """Logits of every feature (CPU float tensors, in feature order; padding positions cut off)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[Tensor | None] = [None] * len(features)
    per_token = model.head.family in ("qa", "tagging")
    pending: list[tuple[list[int], Tensor]] = []
    try:
        with _autocast(device):
            for idx in tqdm(_eval_batches(features, batch_size), desc=desc, unit="batch", leave=False,
                            disable=not progress, dynamic_ncols=True):
                batch = collate([features[i] for i in idx])
                batch = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "start_positions", "end_positions")}
                logits = task_forward(model, batch).logits.float()
                if per_token:  # variable width: bring each batch back now
                    logits = logits.cpu()
                    for row, i in enumerate(idx):
                        out[i] = logits[row, : len(features[i]["input_ids"])]
                else:
                    pending.append((idx, logits))
    finally:
        model.train(was_training)
    if pending:
        flat = torch.cat([t for _, t in pending]).cpu()  # one transfer for the whole set
        rows = [i for idx, _ in pending for i in idx]
        for row, i in enumerate(rows):
            out[i] = flat[row]
    return out  # type: ignore[return-value]


def best_spans(examples: Sequence[QAExample], features: Sequence[dict], logits: Sequence[Tensor],
               max_answer_len: int = 30) -> dict[str, tuple[str, int, float]]:
    """Best valid span per question over all its windows: start <= end, at most ``max_answer_len``
    tokens, inside the context. Returns ``id -> (answer text, char start, score)``."""
    best: dict[int, tuple[float, int, int]] = {}
    for feat, lg in zip(features, logits):
        cs, offsets = feat["context_start"], feat["offsets"]
        n = len(offsets)
        if n == 0:
            continue
        start, end = lg[cs : cs + n, 0], lg[cs : cs + n, 1]
        scores = start[:, None] + end[None, :]
        ones = torch.ones(n, n, dtype=torch.bool)
        valid = torch.triu(ones) & ~torch.triu(ones, diagonal=max_answer_len)
        scores = scores.masked_fill(~valid, float("-inf"))
        flat = int(scores.argmax())
        i, j = divmod(flat, n)
        value = float(scores[i, j])
        ex = feat["example"]
        char_start, char_end = offsets[i][0], offsets[j][1]
        if ex not in best or value > best[ex][0]:
            best[ex] = (value, char_start, char_end)
    out = {}
    for ex, (value, s, t) in best.items():
        e = examples[ex]
        out[e.id] = (e.context[s:t], s, value)
    for e in examples:
        out.setdefault(e.id, ("", -1, float("-inf")))
    return out


def word_tags(examples: Sequence[TaggingExample], features: Sequence[dict], logits: Sequence[Tensor],
              labels: list[str]) -> list[list[str]]:
    """A tag per word, read at its first sub-token; a word that was cut off gets ``O``."""
    fallback = "O" if "O" in labels else labels[0]
    tags: list[list[str]] = []
    for feat, lg in zip(features, logits):
        pred = lg.argmax(-1).tolist()
        tags.append([labels[pred[p]] if p >= 0 else fallback for p in feat["word_starts"]])
    return tags


@dataclass
class Predictions:
    """Model outputs for a set of examples, decoded per task family."""

    family: str
    values: Any  # class ids | scores | choice indexes | id -> (text, start, score) | tag lists
    probabilities: list[list[float]] | None = None


def predict_examples(model: nn.Module, tokenizer: Any, task: dict[str, Any], examples: Sequence[Any], *,
                     batch_size: int = 64, no_truncate: bool = False, progress: bool = True,
                     desc: str = "eval") -> Predictions:
    """Build features for ``examples`` and decode the model's outputs."""
    fs = make_features(examples, task, tokenizer, model.cfg.family, no_truncate=no_truncate)
    fs.report()
    collate = Collator(_pad_id(tokenizer), extract=model.cfg.family == "gpt")
    logits = run_model(model, fs.features, collate, batch_size, desc=desc, progress=progress)
    return _decode(task, examples, fs, logits)


def score(task: dict[str, Any], recipe: Recipe, examples: Sequence[Any], preds: Predictions) -> dict[str, float]:
    """The task's metrics (``task['metric_names']``) for predictions against the examples' labels."""
    names = task.get("metric_names") or recipe.metric_names
    gold = _gold(recipe, examples, task.get("labels"))
    if recipe.family == "qa":
        if not gold:
            raise PretuneError("no answers to score against: the questions have no (valid) answers")
        predicted = {qid: text for qid, (text, _, _) in preds.values.items()}
        return compute_metrics(names, predicted, gold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant predictions early in training
        return compute_metrics(names, preds.values, gold)


# --------------------------------------------------------------------------------------------
# Features and model


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_id if tokenizer.has_role("pad") else 0


def make_features(examples: Sequence[Any], task: dict[str, Any], tokenizer: Any, model_family: str, *,
                  train: bool = False, no_truncate: bool = False) -> FeatureSet:
    """The input transformation of ``task`` for the model family."""
    return build_features(
        examples,
        family=task["family"],
        model_family=model_family,
        tokenizer=tokenizer,
        max_seq_len=int(task["max_seq_len"]),
        labels=task.get("labels"),
        pair_mode=task.get("pair_mode", "entailment"),
        no_truncate=no_truncate,
        doc_stride=int(task.get("doc_stride", 128)),
        max_query_len=int(task.get("max_query_len", 64)),
        train=train,
    )


def _is_fresh(spec: str) -> bool:
    path = Path(spec)
    return (spec in PRESETS and not path.exists()) or (path.is_file() and path.suffix == ".json")


def _spec_family(spec: str) -> str | None:
    if spec in PRESETS and not Path(spec).exists():
        return PRESETS[spec]["family"]
    path = Path(spec)
    if path.is_file():
        return read_json(path).get("family")
    return None


def _load_tokenizer(path: str | None) -> Any | None:
    if path is None:
        return None
    from pretune.tokenizer import Tokenizer

    if not Path(path).exists():
        raise PretuneError(f"--tokenizer {path}: no such directory")
    return Tokenizer.load(path)


def _check_tokenizer(tokenizer: Any, family: str, spec: str) -> None:
    if tokenizer is None:
        raise PretuneError(f"--model {spec}: has no tokenizer files; pass --tokenizer DIR")
    if family == "bert" and not (tokenizer.has_role("cls") and tokenizer.has_role("sep")):
        raise PretuneError("a BERT needs a WordPiece tokenizer with [CLS] and [SEP]")
    if family == "gpt" and tokenizer.kind != "bpe":
        raise PretuneError("a GPT needs a BPE tokenizer (it gets <|start|> <|delim|> <|extract|> added)")


def _compatible(saved: dict[str, Any] | None, task: dict[str, Any]) -> bool:
    """Whether a saved head can be reused (same family, same labels): further fine-tuning."""
    if not saved or saved.get("family") != task["family"]:
        return False
    try:
        return head_outputs(saved) == head_outputs(task) and saved.get("labels") == task.get("labels")
    except PretuneError:
        return False


def load_for_finetuning(s: FinetuneSettings, task: dict[str, Any]) -> tuple[LoadedModel, Any, list[str]]:
    """Load ``--model`` with the task head attached, GPT-1's tokens added and embeddings resized.

    Returns the loaded model, its tokenizer and the names of newly initialised parameters' prefixes.
    """
    tokenizer = _load_tokenizer(s.tokenizer)
    overrides: dict[str, Any] = dict(s.override)
    if _is_fresh(s.model):
        family = _spec_family(s.model)
        if tokenizer is None:
            raise PretuneError("--tokenizer is required when --model is a preset or a config file")
        if family == "gpt" and tokenizer.kind == "bpe":
            tokenizer.ensure_gpt_special_tokens()
        overrides["vocab_size"] = tokenizer.vocab_size

    def prepare(model: nn.Module, saved: dict[str, Any] | None) -> None:
        check_family(task["family"], model.cfg.family)
        if _compatible(saved, task):
            attach_head(model, task)

    loaded = load_model(s.model, overrides=overrides, tokenizer=tokenizer, prepare=prepare)
    model, family = loaded.model, loaded.config.family
    tokenizer = loaded.tokenizer
    _check_tokenizer(tokenizer, family, s.model)
    if model.head is None:
        attach_head(model, task)
    if family == "gpt":
        added = tokenizer.ensure_gpt_special_tokens()
        if tokenizer.vocab_size != model.cfg.vocab_size:
            resize_vocab(model, tokenizer.vocab_size)
        if added:
            tqdm.write(f"added GPT-1 tokens {' '.join(added)} to the vocabulary (now {tokenizer.vocab_size})")
    return loaded, tokenizer, list(head_parameter_prefixes(loaded.missing))


# --------------------------------------------------------------------------------------------
# Fine-tuning


def _metrics_table(results: dict[str, dict[str, float]]) -> str:
    splits = [k for k in ("validation", "test") if k in results]
    names = list(dict.fromkeys(n for k in splits for n in results[k]))
    rows = [["metric", *splits]] + [[n, *(f"{results[k][n]:.4f}" if n in results[k] else "-" for k in splits)] for n in names]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _split_validation(recipe: Recipe, train: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    if recipe.family == "qa":
        return split_squad_by_article(train, fraction, seed)
    return split_examples(train, fraction, seed)


class FinetuneRun:
    """One fine-tuning run, prepared (model, features, optimizer groups, trainer) and then run.

    ``FinetuneRun(settings)`` reads the data, loads the model with its head, builds the features
    and the trainer; :meth:`run` trains, keeps the best checkpoint and scores it. Tests inspect the
    prepared state (``trainer.optimizer.param_groups``, ``model``, ``train_features``).
    """

    def __init__(self, s: FinetuneSettings) -> None:
        from pretune.data.transforms import FinetuneBatches
        from pretune.train.trainer import (
            TrainConfig,
            Trainer,
            init_distributed,
            param_groups,
            seed_everything,
        )

        self.started = time.perf_counter()
        self.settings = s
        self.dist = d = init_distributed(s.device)
        seed_everything(s.seed)
        columns = reader_overrides(s.columns)
        self.recipe = recipe = get_recipe(s.task, **columns)
        self.out = out = Path(s.out)
        if out.exists() and not out.is_dir():
            raise PretuneError(f"--out {out}: exists and is not a directory")
        if s.epochs <= 0:
            raise PretuneError(f"--epochs must be positive, got {s.epochs}")

        # Data: train, validation (a file or a split of train), optional test.
        train_ex = read_examples(recipe, s.train, limit=s.limit, train=True)
        if s.validation:
            val_ex = read_examples(recipe, s.validation, limit=s.limit)
        elif s.validation_split:
            train_ex, val_ex = _split_validation(recipe, train_ex, s.validation_split, s.seed)
        else:
            raise PretuneError("--validation FILE (or --validation-split FRACTION of --train) is required")
        self.train_examples, self.val_examples = train_ex, val_ex
        self.test_examples = read_examples(recipe, s.test, limit=s.limit) if s.test else None
        if not _labelled(recipe, val_ex):
            raise PretuneError(f"{s.validation or s.train}: the validation examples have no labels; set --label-col")

        # Model, tokenizer and the task dict saved with the best checkpoint.
        self.task = task = {
            "recipe": recipe.name,
            "family": recipe.family,
            "labels": _label_names(recipe, train_ex),
            "metric_names": list(recipe.metric_names),
            "main_metric": recipe.main_metric,
            "columns": dict(columns),
            "doc_stride": s.doc_stride,
            "max_query_len": s.max_query_len,
            "max_answer_len": s.max_answer_len,
        }
        loaded, self.tokenizer, new_prefixes = load_for_finetuning(s, task)
        self.model = model = loaded.model
        cfg = model.cfg
        gpt = cfg.family == "gpt"
        max_seq_len = s.max_seq_len or cfg.max_positions
        if max_seq_len > cfg.max_positions:
            raise PretuneError(f"--max-seq-len {max_seq_len} is more than the model's max_positions ({cfg.max_positions})")
        pair_mode = s.pair_mode
        if pair_mode == "auto":
            pair_mode = "similarity" if recipe.family == "regression" or recipe.name == "mrpc" else "entailment"
        lm_coef = (DEFAULT_GPT_LM_COEF if s.lm_coef is None else s.lm_coef) if gpt else 0.0
        if lm_coef < 0:
            raise PretuneError(f"--lm-coef must be >= 0, got {lm_coef}")
        model.head.lm_coef = lm_coef
        task.update(max_seq_len=max_seq_len, pair_mode=pair_mode, lm_coef=lm_coef)
        if s.transfer_layers is not None:
            transfer_layers(model, s.transfer_layers)
        freeze_layers(model, s.freeze_layers)

        # Features; truncation is counted (one warning per split) or, with --no-truncate, an error.
        def features(examples: Sequence[Any] | None, what: str, train: bool = False) -> FeatureSet | None:
            if examples is None:
                return None
            fs = make_features(examples, task, self.tokenizer, cfg.family, train=train, no_truncate=s.no_truncate)
            fs.report(f"{what} examples")
            return fs

        self.train_features = features(train_ex, "training", train=True)
        self.val_features = features(val_ex, "validation")
        self.test_features = features(self.test_examples, "test")
        self.collate = Collator(_pad_id(self.tokenizer), extract=gpt)
        self.batches = FinetuneBatches(
            self.train_features.features, s.batch_size, self.collate, seed=s.seed, rank=d.rank,
            world_size=d.world_size, group_by_length=s.group_by_length,
        )
        self.steps_per_epoch = max(1, len(self.batches) // s.grad_accum)
        max_steps = max(1, math.ceil(s.epochs * self.steps_per_epoch))
        self.eval_batch_size = s.eval_batch_size or 2 * s.batch_size
        self.best: dict[str, Any] = _read_best(out) if s.resume else {"value": None, "step": 0, "bad": 0}

        # Discriminative learning rates: the body at --lr (layer-decayed), new layers at --head-lr.
        groups = param_groups(model, s.lr, s.weight_decay, head_lr=s.head_lr, head_prefixes=tuple(new_prefixes),
                              layer_decay=s.layer_decay)
        tcfg = TrainConfig(
            out_dir=out, max_steps=max_steps, lr=s.lr, warmup_steps=int(s.warmup_ratio * max_steps),
            schedule=s.schedule, weight_decay=s.weight_decay, grad_clip=s.grad_clip, grad_accum=s.grad_accum,
            log_every=s.log_every, eval_every=self.steps_per_epoch, save_every=self.steps_per_epoch,
            keep_last=s.keep_last, seed=s.seed, device=s.device, precision=s.precision, compile=s.compile,
            resume=s.resume, progress=s.progress, desc=f"finetune {recipe.name}",
        )
        self.trainer = Trainer(model, tcfg, self.batches, param_groups=groups, step_fn=task_forward,
                               eval_fn=self.eval_fn, on_eval=self.on_eval, dist_info=d)

    # --- evaluation during and after training ---------------------------------------------

    def evaluate_split(self, model: nn.Module, examples: Sequence[Any], fs: FeatureSet, desc: str) -> dict[str, float]:
        logits = run_model(model, fs.features, self.collate, self.eval_batch_size, desc=desc,
                           progress=self.settings.progress)
        return score(self.task, self.recipe, examples, _decode(self.task, examples, fs, logits))

    def eval_fn(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics, prefixed ``val_`` (the trainer logs them in metrics.jsonl)."""
        metrics = self.evaluate_split(model, self.val_examples, self.val_features, "validate")
        return {f"val_{k}": v for k, v in metrics.items()}

    def on_eval(self, step: int, metrics: dict[str, float]) -> bool:
        """Save the checkpoint when the main metric improves; True (stop) after --patience misses."""
        best, patience = self.best, self.settings.patience
        value = metrics[f"val_{self.recipe.main_metric}"]
        epoch = step / self.steps_per_epoch
        improved = best["value"] is None or value > best["value"]
        if improved:
            best.update(value=value, step=step, bad=0, epoch=round(epoch, 3), metrics=metrics)
            save_model(self.out, self.model, self.tokenizer, task=self.task)
        else:
            best["bad"] += 1
        write_json(self.out / BEST_STATE, best)
        shown = "  ".join(f"{k[4:]} {v:.4f}" for k, v in metrics.items())
        tqdm.write(f"epoch {epoch:.2f} (step {step}): {shown}" + ("  [best, saved]" if improved else ""))
        return bool(patience) and best["bad"] >= patience

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train, reload the best checkpoint, score it; write ``eval_results.json`` and print a table."""
        from pretune.report import plot_training

        s, out, recipe = self.settings, self.out, self.recipe
        t_train = time.perf_counter()
        history = self.trainer.fit()
        train_s = time.perf_counter() - t_train
        if not self.dist.main:
            return {}
        plot_training(history, out / "loss.png", title=f"fine-tuning {recipe.name}")
        if self.best["value"] is None:
            raise PretuneError("no evaluation ran, so no best checkpoint was saved")
        # Score the best checkpoint as saved on disk: exactly what users get.
        best_model = load_model(out, prepare=lambda m, t: attach_head(m, t or self.task)).model
        best_model.to(self.trainer.device)
        results: dict[str, Any] = {
            "validation": self.evaluate_split(best_model, self.val_examples, self.val_features, "validation")
        }
        if self.test_examples is not None and self.test_features is not None:
            if _labelled(recipe, self.test_examples):
                results["test"] = self.evaluate_split(best_model, self.test_examples, self.test_features, "test")
            else:
                warnings.warn(f"{s.test}: no labels; the test set was not scored", stacklevel=2)
        final = "test" if "test" in results else "validation"
        fs = {"train": self.train_features, "validation": self.val_features, "test": self.test_features}
        summary: dict[str, Any] = {
            **results[final],
            "split": final,
            "task": recipe.name,
            "family": recipe.family,
            "main_metric": recipe.main_metric,
            **results,
            "best_step": self.best["step"],
            "best_epoch": self.best.get("epoch"),
            "steps": self.trainer.step,
            "steps_per_epoch": self.steps_per_epoch,
            "epochs": s.epochs,
            "train_examples": len(self.train_examples),
            "validation_examples": len(self.val_examples),
            "test_examples": len(self.test_examples) if self.test_examples is not None else 0,
            "truncated": {k: (v.truncated if v is not None else 0) for k, v in fs.items()},
            "model": s.model,
            "model_family": self.model.cfg.family,
            "train_seconds": round(train_s, 1),
            "wall_seconds": round(time.perf_counter() - self.started, 1),
            "device": str(self.trainer.device),
        }
        write_json(out / RESULTS, summary)
        table = _metrics_table(results)
        write_text(out / "eval_results.txt", table + "\n")
        print(table)
        return summary


def finetune(s: FinetuneSettings) -> dict[str, Any]:
    """Fine-tune, keep the best checkpoint by the task's main metric, and evaluate it.

    Returns the results also written to ``OUT/eval_results.json``.
    """
    return FinetuneRun(s).run()


def _read_best(out: Path) -> dict[str, Any]:
    path = out / BEST_STATE
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        data.setdefault("bad", 0)
        return data
    return {"value": None, "step": 0, "bad": 0}


def _decode(task: dict[str, Any], examples: Sequence[Any], fs: FeatureSet, logits: list[Tensor]) -> Predictions:
    family = task["family"]
    if family == "qa":
        return Predictions(family, best_spans(examples, fs.features, logits, int(task.get("max_answer_len", 30))))
    if family == "tagging":
        return Predictions(family, word_tags(examples, fs.features, logits, task["labels"]))
    stacked = torch.stack(logits)
    if family == "regression":
        return Predictions(family, stacked.tolist())
    probs = stacked.softmax(-1)
    return Predictions(family, probs.argmax(-1).tolist(), probs.tolist())


# --------------------------------------------------------------------------------------------
# Evaluate and predict with a fine-tuned model


def load_finetuned(model_dir: str | Path, device: str = "auto", **task_overrides: Any) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A fine-tuned model directory -> (model on the device, tokenizer, task dict)."""
    from pretune.train.trainer import resolve_device

    def prepare(model: nn.Module, saved: dict[str, Any] | None) -> None:
        if not saved:
            raise PretuneError(
                f"--model {model_dir}: not a fine-tuned model (its config.json has no task); "
                f"fine-tune it first with `pretune finetune`"
            )
        attach_head(model, saved)

    loaded = load_model(model_dir, prepare=prepare)
    if loaded.tokenizer is None:
        raise PretuneError(f"--model {model_dir}: has no tokenizer files")
    task = dict(loaded.task or {})
    for key, value in task_overrides.items():
        if value is not None:
            task[key] = value
    if int(task["max_seq_len"]) > loaded.config.max_positions:
        raise PretuneError(
            f"--max-seq-len {task['max_seq_len']} is more than the model's max_positions ({loaded.config.max_positions})"
        )
    return loaded.model.to(resolve_device(device)), loaded.tokenizer, task


def _recipe_for(task: dict[str, Any], name: str | None, columns: dict[str, Any] | None) -> Recipe:
    name = name or task.get("recipe")
    if not name:
        raise PretuneError("--task is required: the model does not record which task it was fine-tuned on")
    merged = {**(task.get("columns") or {}), **reader_overrides(columns)}
    recipe = get_recipe(name, **merged)
    if recipe.family != task["family"]:
        raise PretuneError(
            f"--task {name} is a {recipe.family} task but the model was fine-tuned for {task['family']}"
        )
    return recipe


def evaluate(model_dir: str | Path, data: str | Path, *, task_name: str | None = None,
             columns: dict[str, Any] | None = None, batch_size: int = 64, limit: int | None = None,
             max_seq_len: int | None = None, no_truncate: bool = False, device: str = "auto",
             progress: bool = True) -> dict[str, float]:
    """Score a fine-tuned model on a labelled file with its task's metrics."""
    model, tokenizer, task = load_finetuned(model_dir, device, max_seq_len=max_seq_len)
    recipe = _recipe_for(task, task_name, columns)
    examples = read_examples(recipe, data, limit=limit)
    if not _labelled(recipe, examples):
        raise PretuneError(f"{data}: the examples have no labels to score against; set --label-col")
    preds = predict_examples(model, tokenizer, task, examples, batch_size=batch_size, no_truncate=no_truncate,
                             progress=progress, desc="evaluate")
    return score(task, recipe, examples, preds)


def predict(model_dir: str | Path, data: str | Path, out: str | Path, *, task_name: str | None = None,
            columns: dict[str, Any] | None = None, batch_size: int = 64, limit: int | None = None,
            max_seq_len: int | None = None, no_truncate: bool = False, device: str = "auto",
            progress: bool = True) -> int:
    """Write one JSON line per input example to ``out``; returns the number written.

    Each line has the example's ``source`` (file:line) and: ``label`` and ``probabilities``
    (classification); ``score`` (regression); ``choice``, ``answer`` and ``probabilities``
    (multiple choice); ``id``, ``answer``, ``start`` and ``score`` (QA); ``tokens`` and ``tags``
    (tagging).
    """
    model, tokenizer, task = load_finetuned(model_dir, device, max_seq_len=max_seq_len)
    recipe = _recipe_for(task, task_name, columns)
    examples = read_examples(recipe, data, limit=limit, unlabeled_ok=True)
    preds = predict_examples(model, tokenizer, task, examples, batch_size=batch_size, no_truncate=no_truncate,
                             progress=progress, desc="predict")
    lines = [json.dumps(r, ensure_ascii=False) for r in prediction_records(task, examples, preds)]
    write_text(out, "".join(line + "\n" for line in lines))
    return len(lines)


def prediction_records(task: dict[str, Any], examples: Sequence[Any], preds: Predictions) -> list[dict[str, Any]]:
    """One JSON-ready record per example."""
    family = task["family"]
    records = []
    for i, e in enumerate(examples):
        rec: dict[str, Any] = {"source": e.source}
        if family == "classification":
            labels = task["labels"]
            rec["label"] = labels[preds.values[i]]
            rec["probabilities"] = {name: round(p, 6) for name, p in zip(labels, preds.probabilities[i])}
        elif family == "regression":
            rec["score"] = preds.values[i]
        elif family == "multiple-choice":
            k = preds.values[i]
            rec.update(choice=k, answer=e.choices[k], probabilities=[round(p, 6) for p in preds.probabilities[i]])
        elif family == "qa":
            text, start, value = preds.values[e.id]
            rec.update(id=e.id, answer=text, start=start, score=value if math.isfinite(value) else None)
        else:
            rec.update(tokens=list(e.tokens), tags=preds.values[i])
        records.append(rec)
    return records


__all__ = [
    "FinetuneRun", "FinetuneSettings", "Predictions", "best_spans", "evaluate", "finetune", "load_finetuned",
    "load_for_finetuning", "make_features", "predict", "predict_examples", "prediction_records",
    "read_examples", "run_model", "score", "word_tags",
]
