"""Changes fine-tuning makes to a pretrained model: new vocabulary rows, frozen and re-initialised layers.

* :func:`resize_vocab` grows the token embedding after GPT-1's start/delim/extract tokens are added,
  and every output layer that predicts over the vocabulary with it (BERT's MLM bias, an untied
  MLM decoder or GPT output layer); a tied output layer stays tied.
* :func:`freeze_layers` freezes the embeddings and the first K blocks.
* :func:`transfer_layers` keeps the first K pretrained blocks and re-initialises the rest
  (GPT-1's "layers transferred" analysis, figure 2).
"""

from __future__ import annotations

import torch
from torch import nn

from pretune.errors import PretuneError
from pretune.models.core import init_weights


def _grow_rows(old: torch.Tensor, new_size: int, std: float | None) -> torch.Tensor:
    """``old`` with rows kept and new rows N(0, std) (or zeros when ``std`` is None)."""
    shape = (new_size, *old.shape[1:])
    new = torch.zeros(shape, dtype=old.dtype, device=old.device)
    if std is not None:
        nn.init.normal_(new, std=std)
    keep = min(new_size, old.shape[0])
    new[:keep] = old.detach()[:keep]
    return new


def resize_vocab(model: nn.Module, new_size: int) -> None:
    """Resize every vocabulary-sized tensor of a BERT or GPT to ``new_size`` rows.

    Existing rows are kept; new embedding and output rows are initialised like the rest of the
    model, new output biases at zero.
    """
    cfg = model.cfg
    if new_size == cfg.vocab_size:
        return
    std = cfg.initializer_range
    emb = model.body.embeddings
    with torch.no_grad():
        emb.tok = nn.Embedding.from_pretrained(_grow_rows(emb.tok.weight, new_size, std), freeze=False)
        mlm = getattr(model, "mlm", None)
        if mlm is not None:
            mlm.bias = nn.Parameter(_grow_rows(mlm.bias, new_size, None))
            if hasattr(mlm, "decoder"):
                mlm.decoder.weight = nn.Parameter(_grow_rows(mlm.decoder.weight, new_size, std))
                mlm.decoder.out_features = new_size
        lm_head = getattr(model, "lm_head", None)
        if lm_head is not None:
            lm_head.weight = nn.Parameter(_grow_rows(lm_head.weight, new_size, std))
            lm_head.out_features = new_size
    cfg.vocab_size = new_size


def freeze_layers(model: nn.Module, k: int) -> int:
    """Freeze the embeddings and the first ``k`` blocks (``k`` = 0: nothing). Returns tensors frozen."""
    n_layers = len(model.body.blocks)
    if not 0 <= k <= n_layers:
        raise PretuneError(f"--freeze-layers {k}: the model has {n_layers} layers (0..{n_layers})")
    if k == 0:
        return 0
    count = 0
    for m in [model.body.embeddings, *model.body.blocks[:k]]:
        for p in m.parameters():
            p.requires_grad_(False)
            count += 1
    return count


def transfer_layers(model: nn.Module, k: int) -> int:
    """Keep the first ``k`` pretrained blocks (and the embeddings); re-initialise the blocks above.

    Returns the number of blocks re-initialised.
    """
    n_layers = len(model.body.blocks)
    if not 0 <= k <= n_layers:
        raise PretuneError(f"--transfer-layers {k}: the model has {n_layers} layers (0..{n_layers})")
    with torch.no_grad():
        for block in model.body.blocks[k:]:
            init_weights(block, model.cfg.initializer_range)
        if model.body.norm_f is not None and k < n_layers:
            init_weights(model.body.norm_f, model.cfg.initializer_range)
    return n_layers - k


__all__ = ["freeze_layers", "resize_vocab", "transfer_layers"]
