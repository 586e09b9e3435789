"""The model fine-tuning trains and inference runs: a pretrained body with a task head.

:class:`TaskModel` holds only the parts the task uses: the transformer body; BERT's pooler for
the sentence-level families; a GPT's untied output layer when the auxiliary LM loss is on. So
every parameter it hands to the optimizer (and to DistributedDataParallel) gets a gradient, and
the pretraining heads a task never reads (masked LM, NSP) are not carried along. Its state-dict
names are the backbone's (``body.*``, ``pooler.*``, ``lm_head.*``) plus ``head.*``: a fine-tuned
model directory is an ordinary model directory with a ``task`` entry in its config.

The family module computes the head's logits and loss (:meth:`TaskFamily.forward`); this module
adds GPT-1's auxiliary objective ``L3 = L2 + lm_coef * L1``, with L1 the language-model loss on
the same inputs averaged per sequence and then over sequences, as the reference implementation
(openai/finetune-transformer-lm) does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretune.models.core import init_weights
from pretune.models.fused_ce import linear_cross_entropy
from pretune.tasks.base import IGNORE, TaskFamily, TaskSpec


@dataclass
class TaskOutput:
    loss: Tensor | None  # the training objective (L2, or L2 + lm_coef * L1 for GPT); None without labels
    logits: Tensor  # (b, C) classes | (b,) scores | (b, n) choices | (b, t, 2) spans | (b, t, C) tags
    metrics: dict[str, Tensor] = field(default_factory=dict)  # detached parts: task_loss, lm_loss


class TaskHead(nn.Module):
    """Dropout and one Linear layer: the only new parameters of GPT-1 / BERT fine-tuning."""

    def __init__(self, hidden: int, n_out: int, dropout: float, std: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, n_out)
        init_weights(self, std)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dropout(x))


class TaskModel(nn.Module):
    """A backbone's body (and the parts the task reads) with a :class:`TaskHead`."""

    def __init__(self, backbone: nn.Module, spec: TaskSpec, family: TaskFamily) -> None:
        super().__init__()
        cfg = backbone.cfg
        family.check_model(cfg.family)
        self.cfg = cfg
        self.spec = spec
        self.family = family
        self.gpt = cfg.family == "gpt"
        self.body = backbone.body
        self.pooler = backbone.pooler if (not self.gpt and family.uses_pooler) else None
        needs_lm_head = self.gpt and spec.lm_coef > 0 and not cfg.tie_embeddings
        self.lm_head = backbone.lm_head if needs_lm_head else None
        dropout = cfg.dropout if spec.head_dropout is None else spec.head_dropout
        self.head = TaskHead(cfg.hidden, family.head_outputs(spec), family.head_dropout(dropout), cfg.initializer_range)

    @property
    def lm_coef(self) -> float:
        return float(self.spec.lm_coef) if self.gpt else 0.0

    def forward(
        self,
        input_ids: Tensor,
        padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        extract_pos: Tensor | None = None,
        labels: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        loss_denominator: Tensor | None = None,
    ) -> TaskOutput:
        """Body, head and losses on a collated batch (see :class:`pretune.data.batching.Collator`).

        ``input_ids`` is ``(b, t)``, or ``(b, n, t)`` for several sequences per example (choices,
        GPT similarity's two orderings). ``loss_denominator``, when the trainer gives it, is the
        number of labelled tokens a token-level loss is divided by (global across processes).
        """
        given = {
            "input_ids": input_ids, "padding_mask": padding_mask, "token_type_ids": token_type_ids,
            "extract_pos": extract_pos, "labels": labels, "start_positions": start_positions,
            "end_positions": end_positions, "loss_denominator": loss_denominator,
        }
        batch = {k: v for k, v in given.items() if v is not None}
        flat = input_ids.flatten(0, 1) if input_ids.dim() == 3 else input_ids
        mask = _flat(padding_mask, input_ids)
        hidden, _ = self.body(flat, padding_mask=mask, token_type_ids=None if self.gpt else _flat(token_type_ids, input_ids))
        logits, loss = self.family.forward(self, hidden, batch)
        metrics: dict[str, Tensor] = {}
        if loss is not None:
            metrics["task_loss"] = loss.detach()
            if self.lm_coef > 0:
                lm = self.aux_lm_loss(hidden, flat, mask)
                metrics["lm_loss"] = lm.detach()
                loss = loss + self.lm_coef * lm
        return TaskOutput(loss, logits, metrics)

    # --- what families call -------------------------------------------------------------
    def sentence_rep(self, hidden: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """One state per sequence: BERT's pooled ``[CLS]``, GPT-1's final state at its extract token.

        ``(b, h)``, or ``(b, n, h)`` when each example has several sequences.
        """
        if self.gpt:
            pos = batch["extract_pos"].flatten()
            rep = hidden.gather(1, pos.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
        else:
            rep = self.pooler(hidden)
        ids = batch["input_ids"]
        return rep.view(ids.shape[0], ids.shape[1], -1) if ids.dim() == 3 else rep

    def denominator(self, batch: dict[str, Tensor], local: Tensor) -> Tensor:
        """What a token-level loss sum is divided by: the trainer's global count, else this batch's."""
        given = batch.get("loss_denominator")
        return given if given is not None else local.clamp(min=1)

    # --- GPT-1's auxiliary language-model loss ------------------------------------------
    @property
    def decoder_weight(self) -> Tensor:
        return self.body.embeddings.tok.weight if self.lm_head is None else self.lm_head.weight

    def aux_lm_loss(self, hidden: Tensor, ids: Tensor, mask: Tensor | None) -> Tensor:
        """Next-token loss on the task's own inputs: the mean over each sequence's predicted tokens,
        then over sequences (openai/finetune-transformer-lm's ``lm_losses``)."""
        labels = ids if mask is None else ids.masked_fill(mask == 0, IGNORE)
        targets = labels[:, 1:]
        per_seq = (targets != IGNORE).sum(1, keepdim=True)
        n_seq = (per_seq > 0).sum().clamp(min=1)
        weights = (1.0 / (per_seq.clamp(min=1) * n_seq)).expand_as(targets)
        if torch.is_grad_enabled():  # training: the fused output layer + loss, no (b, t, vocab) logits
            total, _, _ = linear_cross_entropy(hidden[:, :-1], self.decoder_weight, targets, weights=weights)
            return total
        logits = F.linear(hidden[:, :-1], self.decoder_weight).float()
        losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
        return (losses * weights.flatten()).sum()


def _flat(x: Tensor | None, ids: Tensor) -> Tensor | None:
    return x.flatten(0, 1) if (x is not None and ids.dim() == 3) else x


def head_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The task head's tensors of a saved fine-tuned model (``head.*``)."""
    return {k: v for k, v in state.items() if k.startswith("head.")}


def new_parameter_prefixes(missing: list[str]) -> tuple[str, ...]:
    """Prefixes of the newly initialised layers: the task head, plus a pooler a checkpoint lacked."""
    return ("head.", "pooler.") if any(name.startswith("pooler.") for name in missing) else ("head.",)


__all__ = ["TaskHead", "TaskModel", "TaskOutput", "head_state", "new_parameter_prefixes"]

