"""BERT (Devlin et al., 2019): a bidirectional encoder with pooler, masked-LM and NSP heads.

The body is the shared transformer with segment embeddings. The masked-LM head (dense, GELU,
LayerNorm, decoder tied to the token embedding, output bias) runs only on the masked positions,
as the original implementation does: at a 30k vocabulary it costs more than the body otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretune.config import ModelConfig
from pretune.models.core import Backbone, ModelOutput, activation, gather_rows, init_weights
from pretune.models.fused_ce import linear_cross_entropy


class Pooler(nn.Module):
    """Dense + tanh on the hidden state of the first token (``[CLS]``): BERT's pooler.

    ELECTRA has no pooler; its fine-tuning head (Hugging Face's ``ElectraClassificationHead``)
    starts the same way with GELU instead of tanh and a dropout before the dense layer:
    ``act="gelu"``, ``dropout=p``.
    """

    def __init__(self, cfg: ModelConfig, act: str = "tanh", dropout: float = 0.0) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.act = torch.tanh if act == "tanh" else activation(act)
        self.drop = nn.Dropout(dropout)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.act(self.dense(self.drop(hidden[:, 0])))


class MLMHead(nn.Module):
    """Transform (dense, GELU, LayerNorm), then the decoder plus an output bias.

    The decoder is the token embedding (tied, as in BERT) unless ``cfg.tie_embeddings`` is off;
    then it is a weight of its own (``decoder.weight``). The transform maps the hidden size to the
    embedding size (the same in BERT; ELECTRA's generator predicts through its narrower shared
    embeddings, with GELU whatever its ``activation``: ``act``).
    """

    def __init__(self, cfg: ModelConfig, act: str | None = None) -> None:
        super().__init__()
        width = cfg.embedding_size
        self.dense = nn.Linear(cfg.hidden, width)
        self.act = activation(act or cfg.activation)
        self.norm = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        if not cfg.tie_embeddings:
            self.decoder = nn.Linear(width, cfg.vocab_size, bias=False)

    def transform(self, hidden: Tensor) -> Tensor:
        return self.norm(self.act(self.dense(hidden)))

    def forward(self, hidden: Tensor, embedding: Tensor) -> Tensor:
        return F.linear(self.transform(hidden), embedding, self.bias)

    def loss(
        self, hidden: Tensor, embedding: Tensor, targets: Tensor, return_logits: bool, denominator: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, dict[str, Tensor]]:
        """Mean cross-entropy at the predicted rows ``hidden`` (n, h) for ``targets`` (n,; -100 =
        nothing to predict), the logits (only with ``return_logits``) and summed counts. The summed
        loss is divided by ``denominator`` when given (the trainer's count of masked tokens in the
        whole global batch), else by this batch's count.

        Without logits the loss comes from :func:`linear_cross_entropy`: the same value without
        the ``(n, vocab)`` logits."""
        if return_logits:
            logits = self(hidden, embedding)
            total = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
            correct = ((logits.argmax(-1) == targets) & (targets != -100)).sum()
            count = (targets != -100).sum()
        else:
            logits = None
            total, count, correct = linear_cross_entropy(
                self.transform(hidden), embedding, targets, self.bias, with_correct=True
            )
        metrics = {"mlm_loss_sum": total.detach(), "mlm_tokens": count, "mlm_correct": correct}
        return total / (count.clamp(min=1) if denominator is None else denominator), logits, metrics


@dataclass
class BertOutput(ModelOutput):
    """``loss`` is mlm_loss + nsp_loss (those given targets)."""

    pooled: Tensor | None = None  # pooler output (b, h); None when the model has no pooler
    mlm_logits: Tensor | None = None  # (n_masked, vocab) at the predicted positions only
    nsp_logits: Tensor | None = None  # (b, 2): 0 = B follows A, 1 = B is random
    mlm_loss: Tensor | None = None
    nsp_loss: Tensor | None = None


class BERT(Backbone):
    """Encoder with the pretraining heads of ``BertForPreTraining``."""

    family = "bert"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.pooler = Pooler(cfg)
        self.mlm = MLMHead(cfg)
        self.nsp = nn.Linear(cfg.hidden, 2)
        init_weights(self, cfg.initializer_range)

    def untied_output(self) -> nn.Linear:
        return self.mlm.decoder

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits for any hidden states (all positions: for fill-mask and tests)."""
        return self.mlm(hidden, self.decoder_weight)

    def forward(
        self,
        input_ids: Tensor,
        *,
        padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        mlm_labels: Tensor | None = None,
        nsp_labels: Tensor | None = None,
        mlm_positions: Tensor | None = None,
        output_hidden_states: bool = False,
        return_logits: bool = False,
        loss_denominator: Tensor | None = None,
    ) -> BertOutput:
        """Run the body and, for the targets given, the heads.

        Masked-LM targets come in one of two forms: ``mlm_labels`` (b, t) with -100 where
        nothing is predicted, or ``mlm_positions`` (b, p) with ``mlm_labels`` (b, p), a fixed
        number of prediction slots per sequence (padded with label -100), which gathers without
        a host-device synchronisation.

        ``return_logits=True`` also returns the ``(n_masked, vocab)`` logits at the predicted
        positions (``mlm_logits``); by default (False) the masked-LM loss and metrics come from
        :func:`linear_cross_entropy` without them, and ``mlm_logits`` is None. The loss is the
        same either way; the choice never depends on the grad mode. Logits at every position, for
        any hidden states: :meth:`mlm_logits`.

        Without the logits and with ``mlm_positions`` (pretraining batches), the last layer runs
        only at ``[CLS]`` and the predicted positions (see ``Transformer.forward``'s
        ``last_rows``): the same loss for less work, and ``hidden`` then holds those rows only,
        ``(b, 1 + p, h)``, ``[CLS]`` first.

        ``loss_denominator`` (from the trainer) is what the summed masked-LM loss is divided by: the
        number of masked tokens in the global batch, so that every process and micro-batch
        contributes to one mean (default: this batch's count).
        """
        sparse = mlm_labels is not None and mlm_positions is not None and not return_logits and not output_hidden_states
        rows = torch.cat([mlm_positions.new_zeros(mlm_positions.shape[0], 1), mlm_positions], 1) if sparse else None
        hidden, states = self.body(input_ids, padding_mask=padding_mask, token_type_ids=token_type_ids,
                                   output_hidden_states=output_hidden_states, last_rows=rows)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        out = BertOutput(hidden=hidden, pooled=pooled, hidden_states=states)
        if mlm_labels is not None:
            picked, targets = _masked_rows(hidden, mlm_labels, mlm_positions, sparse)
            out.mlm_loss, out.mlm_logits, metrics = self.mlm.loss(
                picked, self.decoder_weight, targets, return_logits, loss_denominator
            )
            out.metrics.update(metrics)
        if nsp_labels is not None:
            out.nsp_logits = self.nsp(pooled)
            out.nsp_loss = F.cross_entropy(out.nsp_logits.float(), nsp_labels)
            out.metrics.update(
                nsp_loss_sum=out.nsp_loss.detach() * nsp_labels.numel(),
                nsp_correct=(out.nsp_logits.argmax(-1) == nsp_labels).sum(),
                nsp_count=torch.tensor(nsp_labels.numel(), device=input_ids.device),
            )
        losses = [x for x in (out.mlm_loss, out.nsp_loss) if x is not None]
        if losses:
            out.loss = sum(losses[1:], losses[0])
        return out


def _masked_rows(hidden: Tensor, labels: Tensor, positions: Tensor | None, sparse: bool) -> tuple[Tensor, Tensor]:
    """The hidden states that predict a token and their targets, flattened to (n, h) and (n,)."""
    if sparse:  # the last layer computed [CLS] and the prediction slots only
        return hidden[:, 1:].flatten(0, 1), labels.flatten()
    if positions is not None:
        return gather_rows(hidden, positions).flatten(0, 1), labels.flatten()
    selected = labels != -100
    return hidden[selected], labels[selected]
