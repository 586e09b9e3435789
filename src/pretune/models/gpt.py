"""GPT (Radford et al., 2018) and GPT-2 (2019): a causal transformer with a language-model head tied
to the embedding.

GPT-1 is post-LN (``norm="post"``); GPT-2 moves each LayerNorm to the input of its sub-layer and
adds one after the last block (``norm="pre"``), and scales the residual projections' initial
weights by 1/sqrt(2 * layers). Pretraining maximises the likelihood of each token given the ones
before it (L1 in the paper). Fine-tuning adds a task head on the hidden state of the ``extract``
token (``pretune/tasks/``) and keeps this LM loss as an auxiliary objective. Generation
(``pretune/lm/generate.py``) calls :meth:`GPT.next_token_logits` with a key/value cache.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretune import tuning
from pretune.config import ModelConfig
from pretune.models.core import Backbone, KVCache, ModelOutput, init_weights
from pretune.models.fused_ce import linear_cross_entropy


@dataclass
class GPTOutput(ModelOutput):
    """``loss`` is the mean next-token cross-entropy over labelled positions."""

    logits: Tensor | None = None  # (b, t, vocab); None when only the loss was asked for


class GPT(Backbone):
    """Decoder-only transformer; ``forward`` returns next-token logits and, given labels, the LM loss."""

    family = "gpt"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        init_weights(self, cfg.initializer_range)
        self._scale_residuals(self.body.blocks)

    def init_blocks(self, blocks: Iterable[nn.Module]) -> None:
        super().init_blocks(blocks)
        self._scale_residuals(blocks)

    def _scale_residuals(self, blocks: Iterable[nn.Module]) -> None:
        """GPT-2: residual projections start at std / sqrt(2 * layers)."""
        if self.cfg.norm == "pre":
            with torch.no_grad():
                for block in blocks:
                    for layer in (block.attn.proj, block.mlp.fc2):
                        layer.weight.mul_((2 * self.cfg.n_layers) ** -0.5)

    def untied_output(self) -> nn.Linear:
        return self.lm_head

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Project hidden states onto the vocabulary (with the token embedding, when tied)."""
        return F.linear(hidden, self.decoder_weight)

    def next_token_logits(
        self, input_ids: Tensor, padding_mask: Tensor | None, positions: Tensor | None, cache: KVCache
    ) -> Tensor:
        """Logits (b, vocab) of the token after each row's last position, the new positions' keys
        and values appended to ``cache`` (``padding_mask`` covers the cached positions too)."""
        hidden, _ = self.body(input_ids, padding_mask=padding_mask, positions=positions, cache=cache)
        last = hidden[:, -1]
        return (self.decoder_weight @ last.T).T if tuning.DECODE_WEIGHT_FIRST else F.linear(last, self.decoder_weight)

    def forward(
        self,
        input_ids: Tensor,
        *,
        padding_mask: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
        return_logits: bool = False,
    ) -> GPTOutput:
        """``labels`` are token ids aligned with ``input_ids`` (-100 = ignore); position t predicts t+1.

        Without labels the ``(b, t, vocab)`` logits are returned. With labels the loss comes by
        default from :func:`linear_cross_entropy` (the same value chunk by chunk, without the logits;
        ``logits`` is None); ``return_logits=True`` returns the logits too. The choice never depends
        on the grad mode.
        """
        hidden, states = self.body(input_ids, padding_mask=padding_mask, output_hidden_states=output_hidden_states)
        loss, metrics, logits = None, {}, None
        if labels is not None and not return_logits:
            loss, metrics = self.next_token_loss(hidden, labels)
        else:
            logits = self.lm_logits(hidden)
            if labels is not None:
                loss, metrics = lm_loss(logits, labels)
        return GPTOutput(hidden=hidden, loss=loss, hidden_states=states, metrics=metrics, logits=logits)

    def next_token_loss(self, hidden: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """:func:`lm_loss` of ``lm_logits(hidden)`` through the fused output layer, without the logits."""
        # the last position predicts nothing: leave it out of the output layer
        total, count, _ = linear_cross_entropy(hidden[:, :-1], self.decoder_weight, labels[:, 1:])
        return total / count.clamp(min=1), {"lm_loss_sum": total.detach(), "lm_tokens": count}


def shift_labels(labels: Tensor) -> Tensor:
    """Targets aligned with the logits: position t's target is labels[t+1]; the last is -100."""
    return F.pad(labels[:, 1:], (0, 1), value=-100)


def lm_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token cross-entropy: logits at t score labels at t+1; -100 labels are ignored.

    The labels are shifted rather than the logits, so the ``(b, t, vocab)`` logits are not copied.
    """
    target = shift_labels(labels).reshape(-1)
    pred = logits.reshape(-1, logits.shape[-1])
    total = F.cross_entropy(pred if pred.dtype == torch.float32 else pred.float(), target, ignore_index=-100, reduction="sum")
    count = (target != -100).sum()
    loss = total / count.clamp(min=1)
    return loss, {"lm_loss_sum": total.detach(), "lm_tokens": count}
