"""What generation, scoring and fill-mask share: a trained model on its device, and the vocabulary limit."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pretune.errors import PretuneError

# Parts a family's language-model output needs; a checkpoint that lacks them (all-MiniLM-L6-v2 is a
# BertModel: no MLM head) would predict from freshly initialised weights.
OUTPUT_PARTS = {"bert": ("mlm.",), "electra": ("mlm.",), "gpt": ("lm_head.",)}


@dataclass
class ReadyModel:
    """A trained model in eval mode on its device, its tokenizer, and the precision it runs in."""

    model: nn.Module
    tokenizer: Any  # pretune.tokenizer.Tokenizer
    precision: str  # resolved: fp32 | bf16
    source: str  # the --model value, for messages

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def family(self) -> str:
        return self.model.cfg.family

    def autocast(self) -> contextlib.AbstractContextManager:
        from pretune.precision import autocast

        return autocast(self.device, self.precision)


def load_trained(spec: str, family: str | None, *, roles: Mapping[str, str] | None = None, device: str = "auto",
                 precision: str = "auto", verb: str = "this command") -> ReadyModel:
    """``--model`` with trained weights for its language-model output, and its tokenizer; ``family``
    (``bert`` or ``gpt``) is required unless None.

    A preset or config file (random weights), another family, a directory without tokenizer files
    and a checkpoint whose output layer was initialised fresh (``LoadedModel.missing``) are
    one-line errors.
    """
    from pretune.checkpoint import load_model, load_tokenizer, model_source
    from pretune.precision import resolve_precision
    from pretune.train.distributed import resolve_device

    source = model_source(spec)
    if source.fresh:
        raise PretuneError(f"--model {spec}: a {source.kind} has random weights; {verb} needs a trained model directory")
    tokenizer = load_tokenizer(source.path, flag="--model")
    if tokenizer is None:
        raise PretuneError(f"--model {spec}: no tokenizer files (tokenizer.json, vocab.txt or vocab.json)")
    tokenizer.set_roles(roles or {})
    loaded = load_model(spec, tokenizer=tokenizer)
    masked = family == "bert"  # a masked LM: BERT, or an ELECTRA generator
    if family is not None and not (loaded.config.family == family or (masked and loaded.config.encoder)):
        raise PretuneError(f"--model {spec}: {verb} needs a {family.upper()}, this is a {loaded.config.family.upper()}")
    family = loaded.config.family
    fresh = sorted(k for k in loaded.missing if k.startswith(OUTPUT_PARTS[family]))
    if fresh:
        wanted = {"bert": "BertForMaskedLM, BertForPreTraining or a pretune-pretrained BERT",
                  "electra": "an ELECTRA generator: the generator/ directory of a pretune ELECTRA run, or ElectraForMaskedLM",
                  "gpt": "a GPT LM-head checkpoint"}[family]
        raise PretuneError(
            f"--model {spec}: the checkpoint has no trained {'LM output layer' if family == 'gpt' else 'masked-LM head'} "
            f"({len(fresh)} tensors such as {fresh[0]} would be random); {verb} needs one ({wanted})"
        )
    dev = resolve_device(device)
    return ReadyModel(loaded.model.to(dev).eval(), tokenizer, resolve_precision(precision, dev), spec)


def limit_to_tokenizer(logits: Tensor, n_tokens: int) -> Tensor:
    """``logits`` with the rows of a padded vocabulary (ids the tokenizer never produces) at -inf,
    so they are never predicted."""
    if logits.shape[-1] > n_tokens:
        logits = logits.clone()
        logits[..., n_tokens:] = float("-inf")
    return logits


def pad_rows(rows: list[list[int]], pad_id: int, *, left: bool = False) -> tuple[Tensor, Tensor]:
    """Token id lists as one (b, t) tensor and its padding mask (1 = token), padded right or left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.tensor(row, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def pad_id(tokenizer: Any) -> int:
    """The id padding uses: the pad token, else the end-of-text token, else 0 (padding is masked)."""
    for role in ("pad", "eos"):
        if tokenizer.has_role(role):
            return tokenizer.role_id(role)
    return 0


__all__ = ["OUTPUT_PARTS", "ReadyModel", "limit_to_tokenizer", "load_trained", "pad_id", "pad_rows"]
