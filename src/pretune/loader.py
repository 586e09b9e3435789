"""One loader of a trained model for every verb that uses one: :func:`load_ready`.

``generate``, ``perplexity``, ``fill-mask``, ``embed``, ``senses``, ``evaluate`` and ``predict``
(and fine-tuning's scoring of its best checkpoint) all load their ``--model`` here, on top of
:func:`pretune.checkpoint.load_model` (which says what a ``--model`` value is), with the same
checks and the same one-line errors: a preset or a bare config file has random weights; a
directory needs its tokenizer; ``family`` names the model family a verb needs; ``lm_output``
refuses a checkpoint whose language-model output would be initialised fresh (a ``BertModel`` has
no MLM head); ``task`` refuses a directory that was not fine-tuned. The model comes back in eval
mode on its device, with the precision it runs in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pretune.checkpoint import load_model, load_tokenizer, model_source
from pretune.config import ModelConfig
from pretune.errors import PretuneError
from pretune.precision import autocast, resolve_device, resolve_precision

# Parts a family's language-model output needs; a checkpoint without them (all-MiniLM-L6-v2 is a
# BertModel: no MLM head) would predict from freshly initialised weights.
OUTPUT_PARTS = {"bert": ("mlm.",), "electra": ("mlm.",), "gpt": ("lm_head.",)}
OUTPUT_NAMES = {
    "bert": ("masked-LM head", "BertForMaskedLM, BertForPreTraining or a pretune-pretrained BERT"),
    "electra": ("masked-LM head", "an ELECTRA generator: the generator/ directory of a pretune ELECTRA run, or ElectraForMaskedLM"),
    "gpt": ("LM output layer", "a GPT LM-head checkpoint"),
}


@dataclass
class ReadyModel:
    """A trained model in eval mode on its device, its tokenizer, and the precision it runs in."""

    model: nn.Module  # the BERT or GPT (a fine-tuned model's task head is in ``head``)
    tokenizer: Any  # pretune.tokenizer.Tokenizer
    precision: str  # resolved: fp32 | bf16
    source: str  # the --model value, for messages
    config: ModelConfig
    task: Any = None  # pretune.tasks.TaskSpec of a fine-tuned model, else None
    head: dict[str, Tensor] = field(default_factory=dict)  # a fine-tuned model's head.* tensors
    missing: list[str] = field(default_factory=list)  # optional tensors initialised fresh

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def family(self) -> str:
        return self.config.family

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)


def load_ready(spec: str | Path, *, family: str | None = None, lm_output: bool = False, task: bool = False,
               roles: Mapping[str, str] | None = None, device: str = "auto", precision: str = "auto",
               verb: str = "this command") -> ReadyModel:
    """``--model`` loaded for ``verb``: trained weights, its tokenizer (``roles`` named), on ``device``.

    ``family`` (``bert``, ``gpt``; None: any) is the family the verb needs (``bert``: a masked LM, so
    any encoder, an ELECTRA generator too); ``lm_output``: the
    family's language-model output must be trained; ``task``: the directory must hold a fine-tuned
    task. Each unmet need is a one-line error naming ``--model``.
    """
    source = model_source(spec)
    if source.fresh:
        raise PretuneError(f"--model {spec}: a {source.kind} has random weights; {verb} needs a trained model directory")
    tokenizer = load_tokenizer(source.path, flag="--model")
    if tokenizer is not None:
        tokenizer.set_roles(roles or {})
    loaded = load_model(spec, tokenizer=tokenizer)  # a bad config or bad weights are named first
    got = loaded.config.family
    masked = family == "bert" and loaded.config.encoder  # a masked LM: BERT, or an ELECTRA generator
    if family is not None and got != family and not masked:
        raise PretuneError(f"--model {spec}: {verb} needs a {family.upper()}, this is a {got.upper()}")
    if lm_output:
        fresh = sorted(k for k in loaded.missing if k.startswith(OUTPUT_PARTS.get(got, ())))
        if fresh:
            what, kinds = OUTPUT_NAMES[got]
            raise PretuneError(f"--model {spec}: the checkpoint has no trained {what} ({len(fresh)} tensors such as "
                               f"{fresh[0]} would be random); {verb} needs one ({kinds})")
    if task and loaded.task is None and loaded.source == "huggingface":
        raise PretuneError(f"--model {spec}: holds no task head pretune can run (a Hugging Face directory needs a fine-tuned "
                           "class such as BertForSequenceClassification; see docs/finetuning.md)")
    if task and loaded.task is None:
        raise PretuneError(f"--model {spec}: not a fine-tuned model (its config.json has no task); fine-tune it first "
                           "with `pretune finetune`")
    if tokenizer is None:  # after what the model itself lacks: a directory without a task is no use to evaluate
        raise PretuneError(f"--model {spec}: no tokenizer files (tokenizer.json, vocab.txt or vocab.json)")
    dev = resolve_device(device)
    return ReadyModel(loaded.model.to(dev).eval(), tokenizer, resolve_precision(precision, dev), str(spec), loaded.config,
                      loaded.task, loaded.head, loaded.missing)


__all__ = ["OUTPUT_PARTS", "ReadyModel", "load_ready"]
