"""GPT (Radford et al., 2018): a causal transformer with a language-model head tied to the embedding.

Pretraining maximises the likelihood of each token given the ones before it (L1 in the paper).
Fine-tuning adds a task head on the hidden state of the ``extract`` token (see ``heads.py``) and
keeps this LM loss as an auxiliary objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from pretune.config import ModelConfig
from pretune.models.core import Transformer, init_weights


@dataclass
class GPTOutput:
    loss: Tensor | None  # mean next-token cross-entropy over labelled positions
    logits: Tensor | None  # (b, t, vocab); None when only the loss was asked for
    hidden: Tensor  # final hidden states (b, t, h)
    hidden_states: list[Tensor] = field(default_factory=list)
    metrics: dict[str, Tensor] = field(default_factory=dict)  # summed counts for evaluation


class GPT(nn.Module):
    """Decoder-only transformer; ``forward`` returns next-token logits and, given labels, the LM loss."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.family != "gpt":
            raise ValueError(f"GPT needs a config of family 'gpt', got {cfg.family!r}")
        self.cfg = cfg
        self.body = Transformer(cfg)
        self.head: nn.Module | None = None  # a task head, attached by fine-tuning
        init_weights(self, cfg.initializer_range)

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Project hidden states onto the vocabulary with the (tied) token embedding."""
        return F.linear(hidden, self.body.embeddings.tok.weight)

    def forward(
        self,
        input_ids: Tensor,
        padding_mask: Tensor | None = None,
        labels: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> GPTOutput:
        """``labels`` are token ids aligned with ``input_ids`` (-100 = ignore); position t predicts t+1."""
        hidden, states = self.body(input_ids, padding_mask, None, output_hidden_states)
        logits = self.lm_logits(hidden)
        loss = None
        metrics: dict[str, Tensor] = {}
        if labels is not None:
            loss, metrics = lm_loss(logits, labels)
        return GPTOutput(loss, logits, hidden, states, metrics)


def lm_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token cross-entropy: logits at t score labels at t+1; -100 labels are ignored."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    target = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(pred, target, ignore_index=-100, reduction="sum")
    count = (target != -100).sum()
    loss = total / count.clamp(min=1)
    return loss, {"lm_loss_sum": total.detach(), "lm_tokens": count}
