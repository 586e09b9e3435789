"""Changes fine-tuning makes to a pretrained model: new vocabulary rows, frozen and re-initialised layers.

* :func:`resize_vocab` grows the token embedding after GPT-1's start/delim/extract tokens are added,
  and every output layer that predicts over the vocabulary with it (BERT's MLM bias, an untied
  MLM decoder or GPT output layer); a tied output layer stays tied. The new tokens' rows are
  initialised like a new model's, also where they land on the padding rows of a table larger
  than its tokenizer (those rows held whatever pretraining left there).
* :func:`freeze_layers` freezes the embeddings and the first K blocks, except the new tokens' rows:
  they are read by the task head and were never trained, so they keep learning (a gradient hook
  zeroes the gradient of every other row of the table).
* :func:`transfer_layers` keeps the first K pretrained blocks and re-initialises the rest as the
  model's own initialisation does (GPT-2's scaled residual projections included): GPT-1's
  "layers transferred" analysis, figure 2.
"""

from __future__ import annotations

import torch
from torch import nn

from pretune.errors import PretuneError
from pretune.models.core import init_weights


def _resized(old: torch.Tensor, new_size: int, fresh: range, std: float | None) -> torch.Tensor:
    """``old`` with ``new_size`` rows: rows in ``fresh`` drawn N(0, std) (zeros when ``std`` is
    None), the others kept (rows past ``old`` are in ``fresh``)."""
    new = torch.zeros((new_size, *old.shape[1:]), dtype=old.dtype, device=old.device)
    keep = min(new_size, old.shape[0], fresh.start)
    new[:keep] = old.detach()[:keep]
    if std is not None:
        nn.init.normal_(new[fresh.start : fresh.stop], std=std)
    return new


def resize_vocab(model: nn.Module, new_size: int, *, new_from: int | None = None) -> range:
    """Resize every vocabulary-sized tensor of a BERT or GPT to ``new_size`` rows; returns the rows
    initialised fresh.

    Rows from ``new_from`` on (default: the table's size) belong to new tokens: their embedding and
    output rows are initialised like the rest of the model, output biases at zero, even where the
    table already had rows there (padding rows no tokenizer id reached). Earlier rows are kept.
    """
    cfg = model.cfg
    fresh = range(min(cfg.vocab_size if new_from is None else new_from, new_size), new_size)
    if new_size == cfg.vocab_size and not fresh:
        return fresh
    std = cfg.initializer_range
    emb = model.body.embeddings
    with torch.no_grad():
        emb.tok = nn.Embedding.from_pretrained(_resized(emb.tok.weight, new_size, fresh, std), freeze=False)
        mlm = getattr(model, "mlm", None)
        if mlm is not None:
            mlm.bias = nn.Parameter(_resized(mlm.bias, new_size, fresh, None))
            if hasattr(mlm, "decoder"):
                mlm.decoder.weight = nn.Parameter(_resized(mlm.decoder.weight, new_size, fresh, std))
                mlm.decoder.out_features = new_size
        lm_head = getattr(model, "lm_head", None)
        if lm_head is not None:
            lm_head.weight = nn.Parameter(_resized(lm_head.weight, new_size, fresh, std))
            lm_head.out_features = new_size
    cfg.vocab_size = new_size
    return fresh


def freeze_layers(model: nn.Module, k: int, *, new_rows: range = range(0)) -> tuple[str, ...]:
    """Freeze the embeddings and the first ``k`` blocks (``k`` = 0: nothing), but for the token
    rows ``new_rows`` (GPT-1's added tokens, never trained): the token table keeps learning them
    through a gradient hook that zeroes the gradient of every other row, whichever way the table is
    used (input embedding, tied output layer).

    Returns the names of the parameters left trainable with frozen rows (:func:`partly_frozen`
    finds them again in a model built on this one): weight decay must not touch them
    (:func:`pretune.train.trainer.param_groups`' ``no_decay``).
    """
    n_layers = len(model.body.blocks)
    if not 0 <= k <= n_layers:
        raise PretuneError(f"--freeze-layers {k}: the model has {n_layers} layers (0..{n_layers})")
    if k == 0:
        return ()
    for m in [model.body.embeddings, *model.body.blocks[:k]]:
        for p in m.parameters():
            p.requires_grad_(False)
    if not new_rows:
        return ()
    tok = model.body.embeddings.tok
    tok.weight.requires_grad_(True)
    keep = torch.zeros(tok.weight.shape[0], 1, dtype=tok.weight.dtype, device=tok.weight.device)
    keep[new_rows.start : new_rows.stop] = 1
    tok.weight.register_hook(lambda grad: grad * keep.to(grad.dtype))
    tok.trainable_rows = new_rows  # the rows the hook lets through
    return partly_frozen(model)


def partly_frozen(model: nn.Module) -> tuple[str, ...]:
    """Names of the embedding tables :func:`freeze_layers` left trainable for some rows only."""
    return tuple(f"{name}.weight" if name else "weight" for name, m in model.named_modules()
                 if isinstance(m, nn.Embedding) and getattr(m, "trainable_rows", None) is not None)


def transfer_layers(model: nn.Module, k: int) -> int:
    """Keep the first ``k`` pretrained blocks (and the embeddings); re-initialise the blocks above.

    Returns the number of blocks re-initialised.
    """
    n_layers = len(model.body.blocks)
    if not 0 <= k <= n_layers:
        raise PretuneError(f"--transfer-layers {k}: the model has {n_layers} layers (0..{n_layers})")
    with torch.no_grad():
        model.init_blocks(model.body.blocks[k:])
        if model.body.norm_f is not None and k < n_layers:
            init_weights(model.body.norm_f, model.cfg.initializer_range)
    return n_layers - k


__all__ = ["freeze_layers", "partly_frozen", "resize_vocab", "transfer_layers"]
