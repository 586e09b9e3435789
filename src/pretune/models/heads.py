"""Task heads for fine-tuning and the task forward pass (the trainer's ``step_fn``).

One :class:`TaskHead` (dropout, then one Linear) attaches as ``model.head``, so its tensors are
saved as ``head.*``. What it reads depends on the model family:

* BERT: the pooled ``[CLS]`` state for classification, regression and multiple choice (one score
  per ``[CLS] context [SEP] choice [SEP]`` sequence, softmax across choices); every token's state
  for QA (start and end logits) and tagging.
* GPT-1: the final hidden state at the ``extract`` token, gathered by position on the device (no
  host sync). Similarity adds the extract states of both orderings elementwise before the Linear;
  multiple choice scores each ``start context delim answer extract`` sequence, softmax across
  choices. Tagging reads every token (left context only). Span QA is BERT-only.

For GPT the objective is ``L3 = L2 + lm_coef * L1``: the task loss plus the language-model loss on
the same inputs (``lm_coef`` 0 turns it off; BERT ignores it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretune.errors import PretuneError
from pretune.models.core import init_weights
from pretune.models.gpt import lm_loss

FAMILIES = ("classification", "regression", "multiple-choice", "qa", "tagging")
DEFAULT_GPT_LM_COEF = 0.5


@dataclass
class TaskOutput:
    loss: Tensor | None  # the training objective (L2, or L2 + lm_coef * L1 for GPT); None without labels
    logits: Tensor  # (b, C) classes | (b,) scores | (b, n) choices | (b, t, 2) spans | (b, t, C) tags
    metrics: dict[str, Tensor] = field(default_factory=dict)  # detached parts: task_loss, lm_loss


class TaskHead(nn.Module):
    """Dropout and a Linear layer, plus what the forward pass needs to know about the task."""

    def __init__(
        self,
        hidden: int,
        n_out: int,
        *,
        family: str,
        model_family: str,
        dropout: float = 0.1,
        lm_coef: float = 0.0,
        std: float = 0.02,
    ) -> None:
        super().__init__()
        self.family = family
        self.model_family = model_family
        self.lm_coef = float(lm_coef) if model_family == "gpt" else 0.0
        self.dropout = nn.Dropout(0.0 if family == "qa" else dropout)
        self.out = nn.Linear(hidden, n_out)
        init_weights(self, std)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.dropout(x))

    def extra_repr(self) -> str:
        return f"family={self.family!r}, model_family={self.model_family!r}, lm_coef={self.lm_coef}"


def head_outputs(task: dict[str, Any]) -> int:
    """Width of the head's Linear for a task dict: classes, 1 score, 1 per choice, 2 for spans, tags."""
    family = task["family"]
    if family in ("regression", "multiple-choice"):
        return 1
    if family == "qa":
        return 2
    labels = task.get("labels")
    if not labels:
        raise PretuneError(f"a {family} task needs its labels (the class or tag names) in the task settings")
    return len(labels)


def check_family(task_family: str, model_family: str) -> None:
    """Raise when the model family cannot do the task family (span QA with GPT)."""
    if task_family not in FAMILIES:
        raise PretuneError(f"unknown task family {task_family!r}; choose one of {', '.join(FAMILIES)}")
    if task_family == "qa" and model_family != "bert":
        raise PretuneError(
            "span QA is BERT-only: a GPT reads left to right and the GPT-1 recipe has no start/end "
            "span head; fine-tune a BERT model for qa / korquad"
        )


def attach_head(model: nn.Module, task: dict[str, Any]) -> TaskHead:
    """Build the head a task dict describes (``family``, ``labels``, ``lm_coef``) as ``model.head``.

    Used as ``load_model(..., prepare=...)`` so that a fine-tuned checkpoint's ``head.*`` tensors
    load into it.
    """
    cfg = model.cfg
    check_family(task["family"], cfg.family)
    lm_coef = task.get("lm_coef")
    if lm_coef is None:
        lm_coef = DEFAULT_GPT_LM_COEF if cfg.family == "gpt" else 0.0
    head = TaskHead(
        cfg.hidden,
        head_outputs(task),
        family=task["family"],
        model_family=cfg.family,
        dropout=float(task.get("head_dropout", cfg.dropout)),
        lm_coef=lm_coef,
        std=cfg.initializer_range,
    )
    model.head = head.to(next(model.parameters()).device)
    return model.head


def _gather_positions(hidden: Tensor, positions: Tensor) -> Tensor:
    """``hidden[i, positions[i]]`` for each row, on the device: ``(b, t, h), (b,) -> (b, h)``."""
    index = positions.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)


def task_forward(model: nn.Module, batch: dict[str, Tensor]) -> TaskOutput:
    """Run the body and the task head on a collated batch; the loss is computed when labels are given.

    Batch keys (see :class:`pretune.data.transforms.Collator`): ``input_ids`` ``(b, t)`` or
    ``(b, n, t)``, optional ``padding_mask``, ``token_type_ids``, ``extract_pos`` (GPT), and
    targets ``labels`` or ``start_positions`` / ``end_positions``.
    """
    inner = _unwrap(model)
    if inner is not model:
        # DDP / torch.compile: go through the wrapper's forward (gradient sync, compiled graph),
        # which calls the task forward installed on the inner model.
        if not getattr(inner, "_task_forward_installed", False):
            inner.forward = functools.partial(_forward_kwargs, inner)
            inner._task_forward_installed = True
        return model(**batch)
    return _task_forward(model, batch)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP / FSDP


def _forward_kwargs(model: nn.Module, **batch: Tensor) -> TaskOutput:
    return _task_forward(model, batch)


def _task_forward(model: nn.Module, batch: dict[str, Tensor]) -> TaskOutput:
    head: TaskHead | None = model.head
    if head is None:
        raise PretuneError("the model has no task head; attach one with attach_head(model, task)")
    family, gpt = head.family, head.model_family == "gpt"
    ids = batch["input_ids"]
    multi = ids.dim() == 3
    b = ids.shape[0]
    flat = ids.flatten(0, 1) if multi else ids
    mask = batch.get("padding_mask")
    mask = mask.flatten(0, 1) if (mask is not None and multi) else mask
    types = batch.get("token_type_ids")
    types = types.flatten(0, 1) if (types is not None and multi) else types
    hidden, _ = model.body(flat, mask, None if gpt else types)

    loss: Tensor | None = None
    metrics: dict[str, Tensor] = {}
    labels = batch.get("labels")
    if family in ("classification", "regression", "multiple-choice"):
        if gpt:
            pos = batch["extract_pos"].flatten()
            rep = _gather_positions(hidden, pos)
        else:
            rep = model.pooler(hidden)
        if multi:
            rep = rep.view(b, -1, rep.shape[-1])
        if family == "multiple-choice":
            logits = head(rep).squeeze(-1)  # (b, n): one score per choice
            if labels is not None:
                loss = F.cross_entropy(logits.float(), labels)
        else:
            if multi:  # GPT similarity: the two orderings' extract states, added
                rep = rep.sum(1)
            logits = head(rep)
            if family == "regression":
                logits = logits.squeeze(-1)
                if labels is not None:
                    loss = F.mse_loss(logits.float(), labels.float())
            elif labels is not None:
                loss = F.cross_entropy(logits.float(), labels)
    elif family == "qa":
        logits = head(hidden)  # (b, t, 2)
        if mask is not None:
            logits = logits.masked_fill(~mask.bool().unsqueeze(-1), -1e4)
        starts, ends = batch.get("start_positions"), batch.get("end_positions")
        if starts is not None and ends is not None:
            loss = (F.cross_entropy(logits[..., 0].float(), starts) + F.cross_entropy(logits[..., 1].float(), ends)) / 2
    elif family == "tagging":
        logits = head(hidden)  # (b, t, C)
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    else:
        raise PretuneError(f"unknown task family {family!r}")

    if loss is not None:
        metrics["task_loss"] = loss.detach()
        if gpt and head.lm_coef > 0:
            lm_labels = flat if mask is None else flat.masked_fill(mask == 0, -100)
            if torch.is_grad_enabled():  # training: the fused output layer + loss, no (b, t, vocab) logits
                l1, _ = model.next_token_loss(hidden, lm_labels)
            else:
                l1, _ = lm_loss(model.lm_logits(hidden), lm_labels)
            metrics["lm_loss"] = l1.detach()
            loss = loss + head.lm_coef * l1
    return TaskOutput(loss, logits, metrics)


def head_parameter_prefixes(missing: list[str]) -> tuple[str, ...]:
    """Prefixes of the newly initialised layers: the task head, plus a pooler a checkpoint lacked."""
    prefixes = ["head."]
    if any(name.startswith("pooler.") for name in missing):
        prefixes.append("pooler.")
    return tuple(prefixes)


def freeze_layers(model: nn.Module, k: int) -> int:
    """Freeze the embeddings and the first ``k`` blocks (``k`` = 0: nothing). Returns tensors frozen."""
    n_layers = len(model.body.blocks)
    if not 0 <= k <= n_layers:
        raise PretuneError(f"--freeze-layers {k}: the model has {n_layers} layers (0..{n_layers})")
    if k == 0:
        return 0
    modules: list[nn.Module] = [model.body.embeddings, *model.body.blocks[:k]]
    count = 0
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
            count += 1
    return count


def transfer_layers(model: nn.Module, k: int) -> int:
    """Keep the first ``k`` pretrained blocks (and the embeddings); re-initialise the blocks above.

    This is GPT-1's "layers transferred" analysis (figure 2). Returns the number re-initialised.
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


__all__ = [
    "DEFAULT_GPT_LM_COEF", "FAMILIES", "TaskHead", "TaskOutput", "attach_head", "check_family",
    "freeze_layers", "head_outputs", "head_parameter_prefixes", "task_forward", "transfer_layers",
]
