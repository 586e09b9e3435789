"""ELECTRA (Clark et al., 2020): pretraining by replaced-token detection.

A small generator, a masked language model, fills the masked positions of a sequence with tokens
sampled from its predictions; the discriminator, an encoder of BERT's shape, is trained to tell
for *every* token whether it is the original or a replacement. The discriminator learns from all
positions rather than the 15% a masked LM predicts, which is why ELECTRA gets more out of each
step of compute, most of all in small models (the paper's ELECTRA-Small against BERT-Small).
The discriminator is the model that is kept and fine-tuned; the generator is saved beside it.

Both are :class:`ELECTRA` modules (one model family, ``family="electra"``, holding the heads a
checkpoint may have, as Hugging Face's ``ElectraForPreTraining`` and ``ElectraForMaskedLM`` do).
:class:`ElectraPretraining` couples them as google-research/electra does: the generator is
narrower (``generator_size`` of the discriminator's hidden size, as many layers) and reads the
discriminator's embeddings (token, position, segment and their LayerNorm, shared; each model
projects them to its own hidden size); the objective is ``L_MLM(generator) + disc_weight *
L_disc``, the latter a sigmoid cross-entropy averaged over every real token, and no gradient
flows through the sampling. One optimizer trains both.

The one departure: a replacement is sampled by inverting the generator's cumulative distribution
at a uniform number that comes with the batch (drawn from the instance's seed by the data
pipeline, ``data/pretraining.py``), instead of with Gumbel noise from the process's random
generator. It is the same distribution, and the sample becomes a function of the data, so a run
resumes bit-exactly and two processes compute exactly what one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretune.config import ModelConfig
from pretune.errors import PretuneError
from pretune.models.bert import MLMHead, Pooler, _masked_rows
from pretune.models.core import Backbone, ModelOutput, activation, init_weights


class DiscriminatorHead(nn.Module):
    """Dense, activation, and one logit per token: was it replaced?"""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.act = activation(cfg.activation)
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out(self.act(self.dense(hidden))).squeeze(-1)


@dataclass
class ElectraOutput(ModelOutput):
    """``loss``: the masked-LM loss (a generator) plus the replaced-token loss (a discriminator),
    for the targets given."""

    disc_logits: Tensor | None = None  # (b, t): > 0 means "replaced"
    mlm_logits: Tensor | None = None  # (n_masked, vocab) at the predicted positions, when asked for
    mlm_loss: Tensor | None = None
    disc_loss: Tensor | None = None


class ELECTRA(Backbone):
    """An ELECTRA encoder with the heads a checkpoint may carry.

    ``disc`` (replaced-token detection) makes it a discriminator, ``mlm`` (GELU transform to the
    embedding size, decoder tied to the token embedding) a generator; pretraining and loading drop
    or leave untrained the head a model does not have. ``pooler`` is never pretrained: it is the
    first half of the sentence-level fine-tuning head of Hugging Face's ``ElectraForSequenceClassification``
    (dropout, dense, GELU on ``[CLS]``), so that a fine-tuned model converts to that class exactly.
    """

    family = "electra"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.pooler = Pooler(cfg, act="gelu", dropout=cfg.dropout)
        self.disc = DiscriminatorHead(cfg)
        self.mlm = MLMHead(cfg, act="gelu")
        init_weights(self, cfg.initializer_range)

    def untied_output(self) -> nn.Linear:
        return self.mlm.decoder

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """A generator's vocabulary logits for any hidden states (fill-mask, scoring)."""
        return self.mlm(hidden, self.decoder_weight)

    def forward(
        self,
        input_ids: Tensor,
        *,
        padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        mlm_labels: Tensor | None = None,
        mlm_positions: Tensor | None = None,
        replaced: Tensor | None = None,
        output_hidden_states: bool = False,
        return_logits: bool = False,
        loss_denominator: Tensor | None = None,
    ) -> ElectraOutput:
        """The encoder and, for the targets given, its heads.

        ``mlm_labels`` (and ``mlm_positions``) are a generator's masked-LM targets, in the forms
        :meth:`pretune.models.bert.BERT.forward` takes, with the same ``return_logits`` and
        ``loss_denominator``. ``replaced`` (b, t), 1 where a token was replaced and 0 where it is
        the original, is a discriminator's target: the loss is the mean sigmoid cross-entropy over
        the real tokens. A model with a discriminator head returns ``disc_logits`` in any case.
        """
        hidden, states = self.body(input_ids, padding_mask=padding_mask, token_type_ids=token_type_ids,
                                   output_hidden_states=output_hidden_states)
        out = ElectraOutput(hidden=hidden, hidden_states=states)
        losses = []
        if mlm_labels is not None:
            if self.mlm is None:
                raise ValueError("this ELECTRA has no generator (masked-LM) head")
            picked, targets = _masked_rows(hidden, mlm_labels, mlm_positions, sparse=False)
            out.mlm_loss, out.mlm_logits, metrics = self.mlm.loss(picked, self.decoder_weight, targets, return_logits,
                                                                  loss_denominator)
            out.metrics.update(metrics)
            losses.append(out.mlm_loss)
        if self.disc is not None:
            out.disc_logits = self.disc(hidden)
        if replaced is not None:
            if self.disc is None:
                raise ValueError("this ELECTRA has no discriminator head")
            total, metrics = replaced_token_loss(out.disc_logits, replaced, padding_mask)
            out.disc_loss = total / metrics["disc_tokens"].clamp(min=1)
            out.metrics.update(metrics)
            losses.append(out.disc_loss)
        if losses:
            out.loss = sum(losses[1:], losses[0])
        return out


def replaced_token_loss(logits: Tensor, replaced: Tensor, padding_mask: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
    """The summed sigmoid cross-entropy of ``logits`` (b, t) against ``replaced`` over the real
    tokens, and summed counts: tokens, correct decisions, replacements, replacements found,
    tokens called replaced."""
    weights = torch.ones_like(logits, dtype=torch.float32) if padding_mask is None else padding_mask.to(torch.float32)
    target = replaced.to(torch.float32)
    losses = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none") * weights
    said = (logits > 0).to(torch.float32) * weights
    total = losses.sum()
    metrics = {
        "disc_loss_sum": total.detach(), "disc_tokens": weights.sum(),
        "disc_correct": ((said == target).to(torch.float32) * weights).sum(),
        "replaced": (target * weights).sum(), "replaced_found": (said * target).sum(), "said_replaced": said.sum(),
    }
    return total, metrics


def generator_config(cfg: ModelConfig, size: float = 0.25, layers: float = 1.0) -> ModelConfig:
    """The generator of a discriminator ``cfg``: ``size`` times its hidden size (heads of 64
    dimensions, at least one; feed-forward 4x), ``layers`` times its layers, the same embeddings
    (google-research/electra's ``get_generator_config``)."""
    if not 0.0 < size <= 1.0:
        raise PretuneError(f"--generator-size must be in (0, 1], got {size}")
    if not 0.0 < layers <= 1.0:
        raise PretuneError(f"--generator-layers must be in (0, 1], got {layers}")
    hidden = max(1, round(cfg.hidden * size))
    return cfg.replace(
        hidden=hidden, n_heads=max(1, hidden // 64), ffn=4 * hidden, n_layers=max(1, round(cfg.n_layers * layers)),
        embedding_size=cfg.embedding_size, extra={**cfg.extra, "electra_role": "generator"},
    )


@torch.no_grad()
def sample_from_logits(logits: Tensor, uniforms: Tensor, temperature: float = 1.0, *, log_probs: bool = False) -> Tensor:
    """One token per row of ``logits`` (n, vocab), drawn from softmax(logits / temperature) by
    inverting its cumulative distribution at ``uniforms`` (n,) in [0, 1). ``log_probs``: the rows
    are already log-probabilities (at temperature 1), so no softmax is needed."""
    if log_probs and temperature == 1.0:
        probs = logits.float().exp()
    else:
        probs = torch.softmax(logits.float() if temperature == 1.0 else logits.float() / temperature, dim=-1)
    cdf = probs.cumsum(-1)
    picked = torch.searchsorted(cdf, (uniforms.float() * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    return picked.clamp(max=logits.shape[-1] - 1)


@dataclass
class ElectraPretrainingOutput:
    loss: Tensor
    metrics: dict[str, Tensor]
    mlm_loss: Tensor
    disc_loss: Tensor
    disc_logits: Tensor | None = None
    corrupted: Tensor | None = None  # the discriminator's input
    replaced: Tensor | None = None  # its targets


class ElectraPretraining(nn.Module):
    """A generator and a discriminator trained together (see the module docstring).

    The generator reads the discriminator's embedding module (it has none of its own here: one
    set of shared parameters in the state dict, ``discriminator.body.embeddings.*``); heads that
    the objective does not train are removed, so every parameter gets a gradient (DDP, FSDP).
    :meth:`discriminator_state` and :meth:`generator_state` give each as a model of its own.
    """

    def __init__(self, discriminator: ELECTRA, generator: ELECTRA, disc_weight: float = 50.0, temperature: float = 1.0) -> None:
        super().__init__()
        d, g = discriminator.cfg, generator.cfg
        for name in ("vocab_size", "embedding_size", "max_positions", "type_vocab_size"):
            if getattr(d, name) != getattr(g, name):
                raise PretuneError(f"the generator's {name} ({getattr(g, name)}) differs from the discriminator's "
                                   f"({getattr(d, name)}); they share their embeddings")
        if not g.tie_embeddings:
            raise PretuneError("an ELECTRA generator predicts through the shared token embeddings: tie_embeddings must be true")
        discriminator.pooler, discriminator.mlm = None, None
        generator.pooler, generator.disc = None, None
        generator.body.embeddings = None
        self.discriminator, self.generator = discriminator, generator
        self.cfg = d
        self.disc_weight, self.temperature = float(disc_weight), float(temperature)

    @property
    def embeddings(self) -> nn.Module:
        return self.discriminator.body.embeddings

    def forward(
        self,
        input_ids: Tensor,
        *,
        mlm_positions: Tensor,
        mlm_labels: Tensor,
        sample_uniforms: Tensor,
        padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        loss_denominator: dict[str, Tensor] | None = None,
        return_logits: bool = False,
    ) -> ElectraPretrainingOutput:
        """``input_ids`` as masked for the generator, the prediction slots ``mlm_positions`` (b, p)
        with their original tokens ``mlm_labels`` (-100: an unused slot) and one uniform number per
        slot. ``loss_denominator`` (from the trainer): the global counts ``"mlm"`` (masked tokens)
        and ``"tokens"`` (real tokens) the two summed losses are divided by; default: this batch's.
        ``return_logits`` keeps the discriminator's logits, its input and targets (for tests)."""
        shared = self.embeddings
        # the generator's last layer runs at the prediction slots only: nothing else is read
        hidden, _ = self.generator.body(input_ids, padding_mask=padding_mask, token_type_ids=token_type_ids,
                                        last_rows=mlm_positions, embeddings=shared)
        targets = mlm_labels.flatten()
        valid = targets != -100
        # one log-softmax serves the loss and the sampling (at this vocabulary the (n, vocab)
        # element-wise work costs as much as the generator's matmuls)
        logp = torch.log_softmax(self.generator.mlm(hidden.flatten(0, 1), shared.tok.weight).float(), dim=-1)
        mlm_sum = -(logp.gather(1, targets.clamp(min=0).unsqueeze(1)).squeeze(1) * valid).sum()
        sampled = sample_from_logits(logp.detach(), sample_uniforms.flatten(), self.temperature, log_probs=True)
        corrupted, replaced = _corrupt(input_ids, mlm_positions, sampled.view_as(mlm_positions), mlm_labels)
        disc_hidden, _ = self.discriminator.body(corrupted, padding_mask=padding_mask, token_type_ids=token_type_ids)
        disc_logits = self.discriminator.disc(disc_hidden)
        disc_sum, metrics = replaced_token_loss(disc_logits, replaced, padding_mask)
        denominators = loss_denominator or {}
        mlm_loss = mlm_sum / denominators.get("mlm", valid.sum().clamp(min=1))
        disc_loss = disc_sum / denominators.get("tokens", metrics["disc_tokens"].clamp(min=1))
        metrics.update(mlm_loss_sum=mlm_sum.detach(), mlm_tokens=valid.sum(), sampled_original=((sampled == targets) & valid).sum())
        if not self.training:  # the generator's accuracy, for held-out evaluation (an argmax over (n, vocab) a step would not use)
            metrics["mlm_correct"] = ((logp.argmax(-1) == targets) & valid).sum()
        keep = dict(disc_logits=disc_logits, corrupted=corrupted, replaced=replaced) if return_logits else {}
        return ElectraPretrainingOutput(mlm_loss + self.disc_weight * disc_loss, metrics, mlm_loss, disc_loss, **keep)

    def discriminator_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The discriminator's tensors, named as a model directory holds them, from this module's ``state``."""
        return {k[len("discriminator."):]: v for k, v in state.items() if k.startswith("discriminator.")}

    def generator_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The generator's tensors, with the shared embeddings, named as a model directory holds them."""
        own = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
        shared = {k[len("discriminator."):]: v for k, v in state.items() if k.startswith("discriminator.body.embeddings.")}
        return {**own, **shared}


def _corrupt(ids: Tensor, positions: Tensor, sampled: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The discriminator's input (the original tokens with the samples at the prediction slots) and
    its targets (1 where the sample differs from the original). Unused slots point at position 0
    and write its own token back: no host synchronisation, no data-dependent shapes."""
    valid = labels != -100
    original = torch.where(valid, labels, ids.gather(1, positions))
    corrupted = ids.scatter(1, positions, torch.where(valid, sampled, original))
    replaced = torch.zeros_like(ids).scatter(1, positions, ((sampled != original) & valid).to(ids.dtype))
    return corrupted, replaced


def electra_loss_items(batch: dict[str, Any]) -> dict[str, Tensor]:
    """The items of ELECTRA's two token-level losses in a batch, for the trainer's global counts."""
    ids = batch["input_ids"]
    mask = batch.get("padding_mask")
    tokens = torch.tensor(ids.numel()) if mask is None else mask.sum()
    return {"mlm": (batch["mlm_labels"] != -100).sum(), "tokens": tokens}


__all__ = [
    "DiscriminatorHead", "ELECTRA", "ElectraOutput", "ElectraPretraining", "ElectraPretrainingOutput", "electra_loss_items",
    "generator_config", "replaced_token_loss", "sample_from_logits",
]
