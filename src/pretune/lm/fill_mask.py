"""A BERT's guesses for every ``[MASK]`` of a text: :func:`fill_mask`.

Each text is encoded as in pretraining (``[CLS] text [SEP]``), and the masked-LM head gives, at
every mask position, a distribution over the tokenizer's vocabulary (the rows of a padded
embedding table are never guessed). ``[MASK]`` in a text stands for the tokenizer's mask token,
whatever it is called (``<mask>`` for a SentencePiece tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from pretune.errors import PretuneError
from pretune.lm.common import limit_to_tokenizer, pad_rows

MASK_IN_TEXT = "[MASK]"


@dataclass
class MaskFill:
    """The top guesses for one mask of one text."""

    text: str
    mask_index: int  # which mask of the text (0 = the first)
    position: int  # its token position (0 = [CLS])
    tokens: list[str] = field(default_factory=list)  # best first
    ids: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    sequence: str = ""  # the text with the best guess in this mask

    def to_dict(self) -> dict[str, Any]:
        guesses = [{"token": t, "id": i, "p": round(p, 6)} for t, i, p in zip(self.tokens, self.ids, self.probabilities)]
        return {"text": self.text, "mask": self.mask_index, "sequence": self.sequence, "predictions": guesses}


def _encode(tokenizer: Any, text: str, context: int) -> list[int]:
    """``[CLS] text [SEP]`` with ``[MASK]`` read as the tokenizer's mask token."""
    mask_token = tokenizer.role_token("mask")
    if mask_token is None:
        tokenizer.role_id("mask")  # the one-line error naming the flag
    ids = tokenizer.encode(text.replace(MASK_IN_TEXT, mask_token) if mask_token != MASK_IN_TEXT else text)
    if len(ids) + 2 > context:
        raise PretuneError(f"text of {len(ids)} tokens is longer than the model's context ({context - 2} without [CLS] and [SEP]): {text[:40]!r}")
    if tokenizer.mask_id not in ids:
        raise PretuneError(f"no {MASK_IN_TEXT} in {text!r}: mark the word to guess with {MASK_IN_TEXT}")
    return [tokenizer.cls_id, *ids, tokenizer.sep_id]


@torch.no_grad()
def fill_mask(model: Any, tokenizer: Any, texts: list[str], *, top_k: int = 5, batch_size: int = 8) -> list[MaskFill]:
    """The ``top_k`` tokens and their probabilities for every mask of every text (texts in order,
    masks left to right). ``model``: a BERT with a trained masked-LM head, on its device, in eval mode."""
    if top_k < 1:
        raise PretuneError(f"--top-k must be at least 1, got {top_k}")
    device = next(model.parameters()).device
    seqs = [_encode(tokenizer, text, model.cfg.max_positions) for text in texts]
    top_k = min(top_k, tokenizer.vocab_size)
    out = []
    for first in range(0, len(seqs), batch_size):
        batch = seqs[first : first + batch_size]
        x, mask = pad_rows(batch, tokenizer.padding_id)
        hidden = model(x.to(device), padding_mask=None if bool(mask.all()) else mask.to(device)).hidden
        where = [(row, j) for row, seq in enumerate(batch) for j, t in enumerate(seq) if t == tokenizer.mask_id]
        rows, cols = (torch.tensor(v, device=device) for v in zip(*where))
        logits = limit_to_tokenizer(model.mlm_logits(hidden[rows, cols]).float(), tokenizer.vocab_size)
        probs, ids = logits.softmax(-1).topk(top_k, dim=-1)
        counts: dict[int, int] = {}
        for (row, j), p, i in zip(where, probs.tolist(), ids.tolist()):
            k = counts[row] = counts.get(row, -1) + 1
            filled = list(batch[row])
            filled[j] = i[0]
            out.append(MaskFill(texts[first + row], k, j, tokenizer.convert_ids_to_tokens(i), i, p,
                                tokenizer.decode(filled)))
    return out


__all__ = ["MASK_IN_TEXT", "MaskFill", "fill_mask"]
