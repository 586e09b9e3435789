"""What generation, scoring and fill-mask share: padded batches and the vocabulary limit.

The model they run comes from :func:`pretune.loader.load_ready` (``lm_output=True``), the loader
of every verb; batches pad with the tokenizer's one rule (``Tokenizer.padding_id``).
"""

from __future__ import annotations

import torch
from torch import Tensor


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


__all__ = ["limit_to_tokenizer", "pad_rows"]
