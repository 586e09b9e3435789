"""How BERT pretraining instances are built and masked: the settings :mod:`pretune.data.pretraining`
takes and ``pretune pretrain`` exposes, declared once (no torch imported here)."""

from __future__ import annotations

from dataclasses import dataclass

from pretune.settings import at_least, between, setting


@dataclass
class MaskingSettings:
    """How BERT pretraining instances are built and masked (google-research/bert's options)."""

    nsp: bool = setting(True, negate=True, help="BERT: masked LM only, on contiguous full-length segments")
    whole_word_mask: bool = setting(False, help="BERT: mask whole words (WordPiece ## pieces, Korean eojeol)")
    dynamic_masking: bool = setting(True, flag="--static-masking", negate=True,
                                    help="BERT: fix masks at creation (--dupe-factor copies) instead of redrawing them every epoch")
    dupe_factor: int = setting(5, check=at_least(1), help="BERT static masking: copies of the data with different masks")
    mask_prob: float = setting(0.15, check=between(0, 1, low_open=True, high_open=True), help="BERT: fraction of tokens to predict (80%% [MASK], 10%% random, 10%% kept)")
    max_predictions: int | None = setting(None, check=at_least(1), help="BERT: cap on masked tokens per sequence (default: ceil(mask-prob x seq-len))")
    short_seq_prob: float = setting(0.1, check=between(0, 1), help="BERT: fraction of documents cut to a random shorter target length")


__all__ = ["MaskingSettings"]
