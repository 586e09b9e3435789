"""The settings of pretraining, fine-tuning, evaluation and prediction: each declared once.

The command line and ``--config`` files are generated from these fields (:mod:`pretune.settings`).
This module imports no torch, so ``pretune --help`` stays fast; the recipes that use the
settings live beside it (``pretrain.py``, ``finetune.py``, :mod:`pretune.inference`). Where a
model runs (:class:`pretune.settings.Runtime`) and how BERT instances are masked
(:class:`pretune.data.settings.MaskingSettings`) are declared in the layers that use them too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pretune.data.settings import MaskingSettings
from pretune.errors import PretuneError
from pretune.settings import (
    Precision,
    Runtime,
    at_least,
    between,
    nested,
    positive,
    precision_setting,
    setting,
)

Schedule = Literal["linear", "cosine", "constant"]


def parse_overrides(items: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """``["hidden=256", "norm=pre"]`` as typed model-config overrides (JSON values, else strings)."""
    if isinstance(items, dict):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise PretuneError(f"--set {item!r} must look like FIELD=VALUE (e.g. --set dropout=0.2)")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def model_overrides() -> Any:
    return setting(factory=dict, flag="--set", metavar="FIELD=VALUE", parse=parse_overrides,
                   help="model config overrides, e.g. --set dropout=0.2 hidden=256 (shapes only for a preset)")


@dataclass
class TrainSettings(Runtime):
    """The optimisation and the run's bookkeeping (the trainer's settings)."""

    lr: float = setting(1e-4, check=positive, help="peak learning rate (the pretrained body's, when fine-tuning)")
    warmup_steps: int = setting(100, check=at_least(0), help="steps of linear warm-up")
    schedule: Schedule | None = setting(None, help="decay after warm-up: linear, cosine or constant "
                                        "(default: linear; cosine for GPT pretraining, as in GPT-1)")
    weight_decay: float = setting(0.01, check=at_least(0), help="AdamW's decoupled weight decay, on what each family's reference "
                                  "decays: BERT and ELECTRA (google-research) every weight but biases and LayerNorm, Adam eps 1e-6; "
                                  "GPT (openai's code; GPT-2 as nanoGPT) every matrix, embeddings included, eps 1e-8")
    grad_clip: float = setting(1.0, check=at_least(0), help="clip the global gradient norm to this (0: off)")
    grad_accum: int = setting(1, check=at_least(1), help="micro-batches per optimizer step (the batch is per micro-batch)")
    log_every: int = setting(10, check=at_least(1), help="log loss and speed every K steps")
    eval_every: int = setting(0, check=at_least(0), help="evaluate on held-out data every K steps (0: at the end)")
    save_every: int = setting(0, check=at_least(0), help="checkpoint every K steps (0: only at the end)")
    keep_last: int = setting(2, check=at_least(1), help="checkpoints to keep (at least 1)")
    seed: int = setting(0, help="random seed (data order, masking, initialisation, dropout)")
    compile: bool = setting(False, help="torch.compile the model")
    fsdp: bool = setting(False, help="under torchrun: shard the model with FSDP2 instead of replicating it (DDP)")
    time_budget_s: float = setting(0.0, flag="--time-budget", metavar="SECONDS",
                                   check=at_least(0), help="stop after this many seconds of training; the learning rate decays to zero by then")
    resume: bool = setting(False, help=(
        "continue the run in --out from its newest complete checkpoint, with the same settings except these, "
        "which may change: --max-steps, --eval-batches, --workers, --cache-dir (pretrain); --epochs, --patience, "
        "--eval-batch-size, --test, --keep-checkpoints (finetune); --log-every, --eval-every, --save-every, --keep-last, "
        "--time-budget, --device, --compile, --fsdp, --no-progress, --no-memory-check (the number of processes may change too)"))
    overwrite: bool = setting(False, help="start afresh in an --out that holds another run (its checkpoints and logs are deleted)")
    memory_check: bool = setting(True, negate=True, help="start even where the estimate of a training step's memory "
                                 "says it will not fit (a rule of thumb: docs/errors.md, \"The memory check\")")

    # settings that do not change a run's results: they may differ on --resume (train/rundir.py)
    resume_may_change: ClassVar[tuple[str, ...]] = (
        "log_every", "eval_every", "save_every", "keep_last", "time_budget_s", "device", "compile", "fsdp", "progress",
        "resume", "overwrite", "memory_check",
    )


Objective = Literal["auto", "mlm", "clm", "electra"]


@dataclass
class ElectraSettings:
    """ELECTRA's generator and objective (google-research/electra's defaults)."""

    generator_size: float = setting(0.25, check=between(0, 1, low_open=True),
                                    help="ELECTRA: the generator's hidden size as a fraction of the discriminator's")
    generator_layers: float = setting(1.0, check=between(0, 1, low_open=True),
                                      help="ELECTRA: the generator's layers as a fraction of the discriminator's")
    disc_weight: float = setting(50.0, check=positive, help="ELECTRA: weight of the replaced-token loss (the generator's MLM loss has 1)")
    generator_temperature: float = setting(1.0, check=positive, help="ELECTRA: sample replacements from softmax(logits / T); "
                                           "above 1 the replacements are easier to tell (google-research/electra's temperature)")


@dataclass
class PretrainSettings:
    """Everything ``pretune pretrain`` takes."""

    model: str | None = setting(None, help="preset (bert-tiny ... gpt2-355m, electra-small ...: random weights), a config .json, or a model directory or Hugging Face Hub id (org/name[@revision]) to continue")
    objective: Objective = setting(
        "auto", help="mlm: BERT's masked LM (+ NSP unless --no-nsp); clm: GPT's causal LM; electra: replaced-token detection "
        "with a small generator (a BERT preset becomes an ELECTRA discriminator of its shape); auto: the model family's own")
    tokenizer: str | None = setting(None, help="tokenizer directory or Hugging Face Hub id (default: the model directory's)")
    data: list[str] | None = setting(None, metavar="FILE",
                                     help=".txt/.txt.gz/.jsonl files; BERT: one sentence per line, a blank line between documents")
    out: str | None = setting(None, help="run directory (becomes a model directory)")
    max_steps: int = setting(1000, check=at_least(1), help="optimizer steps")
    batch_size: int = setting(32, check=at_least(1), help="global batch: sequences per optimizer micro-step, over all processes")
    seq_len: int = setting(128, check=at_least(2), help="tokens per sequence")
    eval_batches: int = setting(20, check=at_least(1), help="held-out batches per evaluation")
    output_bias: Literal["unigram", "zero"] = setting(
        "unigram", help="fresh BERT: start the MLM output bias at the corpus's log unigram frequencies, or at zero")
    val_fraction: float = setting(0.01, check=between(0, 1, high_open=True), help="fraction of documents held out for evaluation")
    skip_bad_lines: bool = setting(False, help="skip non-UTF-8 lines (counted) instead of failing")
    cache_dir: str | None = setting(None, help="where token shards are cached (default: OUT/data-cache)")
    workers: int | None = setting(None, check=at_least(0), help="processes for tokenization (default: the CPU count, at most 8)")
    overrides: dict[str, Any] = model_overrides()
    masking: MaskingSettings = nested(MaskingSettings)
    electra: ElectraSettings = nested(ElectraSettings)
    trainer: TrainSettings = nested(TrainSettings)

    resume_may_change: ClassVar[tuple[str, ...]] = ("max_steps", "eval_batches", "workers", "cache_dir")


@dataclass
class Inputs:
    """How a task's examples become model inputs."""

    max_seq_len: int | None = setting(None, check=at_least(1), help="tokens per sequence, special tokens included (default: the model's maximum)")
    no_truncate: bool = setting(False, help="fail on a too-long input instead of truncating (and counting) it")
    limit: int | None = setting(None, metavar="N", check=at_least(1), help="use only the first N examples of each file (quick runs)")


@dataclass
class Columns:
    """Column settings that override a recipe's (names with a header, 0-based indexes without)."""

    text_col: str | None = setting(None, help="text column (several: comma-separated, joined with spaces)")
    text_pair_col: str | None = setting(None, help="second text column: a sentence pair")
    label_col: str | None = setting(None, help="label column: class names, numbers (regression) or the choice number")
    choice_cols: str | None = setting(None, help="multiple choice: comma-separated candidate answer columns")
    context_col: str | None = setting(None, help="multiple choice: the context column(s), comma-separated")
    header: bool = setting(True, negate=True, help="the table has no header row: columns by index")

    def overrides(self) -> dict[str, Any]:
        """The reader options the user set."""
        out = {k: v for k, v in vars(self).items() if k != "header" and v is not None}
        return out if self.header else {**out, "header": False}


TASK_HELP = ("a recipe: nsmc, kornli, korsts, cola, stsb, mrpc, storycloze, korquad, or a generic family "
             "(classification, regression, multiple-choice, qa, tagging) with the column flags")


def _finetune_trainer() -> TrainSettings:
    return TrainSettings(lr=5e-5, schedule="linear", keep_last=1)


@dataclass
class FinetuneSettings(Inputs):
    """Everything ``pretune finetune`` takes."""

    model: str | None = setting(None, help="preset (from scratch), pretune model directory, Hugging Face directory, or Hugging Face Hub id (org/name[@revision])")
    tokenizer: str | None = setting(None, help="tokenizer directory or Hugging Face Hub id (required with a preset; default: the model's)")
    task: str | None = setting(None, help=TASK_HELP)
    train: str | None = setting(None, help="training file (TSV/CSV/JSONL, SQuAD JSON, CoNLL)")
    validation: str | None = setting(None, help="validation file (evaluated after every epoch)")
    validation_split: float | None = setting(None, metavar="FRACTION",
                                             check=between(0, 1, low_open=True, high_open=True), help="hold out this fraction of --train for validation instead (QA: by article)")
    test: str | None = setting(None, help="test file, scored once with the best checkpoint")
    out: str | None = setting(None, help="run directory: the best fine-tuned model and its results")
    epochs: float = setting(3.0, check=positive, help="passes over the training data")
    batch_size: int = setting(32, check=at_least(1), help="examples per optimizer micro-step, over all processes")
    eval_batch_size: int | None = setting(None, check=at_least(1), help="examples per evaluation batch (default: twice --batch-size)")
    head_lr: float | None = setting(None, check=positive, help="learning rate of the new layers (the task head; default: --lr)")
    layer_decay: float | None = setting(None, check=between(0, 1, low_open=True), help="layer-wise learning-rate decay: layer l from the top gets lr x decay^l")
    freeze_layers: int = setting(0, metavar="K", check=at_least(0), help="freeze the embeddings and the first K layers")
    transfer_layers: int | None = setting(None, metavar="K",
                                          check=at_least(0), help="keep the first K pretrained layers, re-initialise the rest (GPT-1's analysis)")
    warmup_ratio: float = setting(0.1, check=between(0, 1), help="fraction of the steps spent warming up")
    lm_coef: float | None = setting(None, check=at_least(0), help="GPT: weight of the auxiliary LM loss (default 0.5; 0: off); BERT: ignored")
    pair_mode: Literal["auto", "entailment", "similarity"] = setting(
        "auto", help="GPT sentence pairs: one ordered sequence, or both orderings added (auto: the recipe's)")
    patience: int = setting(0, check=at_least(0), help="stop after K evaluations without improvement (0: never)")
    group_by_length: bool = setting(False, help="batch examples of similar length (less padding)")
    doc_stride: int = setting(128, check=at_least(1), help="QA: tokens between the starts of context windows")
    max_query_len: int = setting(64, check=at_least(1), help="QA: question tokens kept")
    max_answer_len: int = setting(30, check=at_least(1), help="QA: longest answer span, in tokens")
    keep_checkpoints: bool = setting(False, help="keep the optimizer checkpoints (OUT/checkpoints, several times the model's "
                                     "size) after a successful run, to continue it with --resume; by default they are deleted")
    overrides: dict[str, Any] = model_overrides()
    columns: Columns = nested(Columns)
    trainer: TrainSettings = nested(_finetune_trainer, exclude=("warmup_steps", "eval_every", "save_every", "time_budget_s"))

    resume_may_change: ClassVar[tuple[str, ...]] = ("epochs", "patience", "eval_batch_size", "test", "keep_checkpoints")


@dataclass
class EvaluateSettings(Inputs, Runtime):
    """Everything ``pretune evaluate`` and ``pretune predict`` take."""

    model: str | None = setting(None, help="fine-tuned model directory (or a Hugging Face Hub id holding one)")
    task: str | None = setting(None, help=TASK_HELP + " (default: the one the model was fine-tuned on)")
    data: str | None = setting(None, help="input file in the task's layout")
    out: str | None = setting(None, help="file to write; an existing file is replaced only with --overwrite, and never an "
                              "input (--data, the model's own files)")
    overwrite: bool = setting(False, help="replace the --out file if it exists")
    batch_size: int = setting(64, check=at_least(1), help="examples per batch")
    precision: Precision = precision_setting("fp32")
    columns: Columns = nested(Columns)


__all__ = [
    "Columns", "ElectraSettings", "EvaluateSettings", "FinetuneSettings", "Inputs", "PretrainSettings", "TASK_HELP", "TrainSettings",
    "parse_overrides",
]
