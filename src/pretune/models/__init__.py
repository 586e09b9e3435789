"""GPT and BERT on one transformer core (``core.py``); task heads in ``heads.py``."""

from __future__ import annotations

import torch
from torch import nn

from pretune.config import ModelConfig
from pretune.models.bert import BERT
from pretune.models.gpt import GPT


def build_model(cfg: ModelConfig) -> BERT | GPT:
    """A freshly initialised model of the config's family."""
    return BERT(cfg) if cfg.family == "bert" else GPT(cfg)


def resize_vocab(model: BERT | GPT, new_size: int) -> None:
    """Grow (or shrink) the token embedding, e.g. after adding GPT-1's start/delim/extract tokens.

    Existing rows are kept; new rows are initialised like the rest of the model.
    """
    old = model.body.embeddings.tok
    if new_size == old.num_embeddings:
        return
    new = nn.Embedding(new_size, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
    nn.init.normal_(new.weight, std=model.cfg.initializer_range)
    keep = min(new_size, old.num_embeddings)
    with torch.no_grad():
        new.weight[:keep] = old.weight[:keep]
    model.body.embeddings.tok = new
    if isinstance(model, BERT):
        bias = torch.zeros(new_size, device=old.weight.device, dtype=model.mlm.bias.dtype)
        bias[:keep] = model.mlm.bias.detach()[:keep]
        model.mlm.bias = nn.Parameter(bias)
    model.cfg.vocab_size = new_size


__all__ = ["BERT", "GPT", "build_model", "resize_vocab"]
