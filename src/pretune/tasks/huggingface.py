"""Fine-tuned models as Hugging Face classes (``BertForSequenceClassification`` ...), both directions.

:data:`pretune.hf.HEADS` holds the rows: which transformers class holds which task family's head,
its tensors and its config keys. This module adds what needs the task families: the checks on
an export that a row cannot express (GPT-1's two orderings of a pair), and the :class:`TaskSpec`
of an imported head (pretune's own record when the directory is pretune's export; otherwise the
family's generic recipe with the labels of ``id2label``).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from torch import Tensor

from pretune import hf
from pretune.config import ModelConfig
from pretune.errors import PretuneError
from pretune.tasks.base import TaskSpec
from pretune.tasks.recipes import get_recipe
from pretune.tasks.registry import get_family


def _reads_pairs(spec: TaskSpec) -> bool:
    """Whether the task's files have a second text (a pair per example)."""
    try:
        recipe = get_recipe(spec.recipe).with_options(**spec.columns)
    except PretuneError:
        return True  # a recipe this version does not know: assume pairs
    return any(options.get("text_pair_col") is not None for options in (recipe.options, recipe.alternate or {}))


def export_head(cfg: ModelConfig, spec: TaskSpec, state: dict[str, Tensor], *, pad_id: int,
                source: str) -> tuple[hf.Head, dict[str, Tensor], dict[str, Any]]:
    """The transformers class of a fine-tuned model, its head's tensors and its config keys.

    A head no transformers class computes exactly is refused with one line (``--body-only``
    exports the body alone), never written as something else.
    """
    arch = hf.arch_of(cfg)
    head = hf.head_for(cfg, spec.family)
    body_only = f"pass --body-only to export the body alone ({arch.classes[0]})"
    if head is None:
        raise PretuneError(f"{source}: transformers has no {arch.model_type} class for a {spec.family} head; {body_only}")
    if cfg.family == "gpt" and spec.pair_mode == "similarity" and _reads_pairs(spec):
        raise PretuneError(
            f"{source}: the head reads the sum of a pair's two orderings (pair_mode similarity), which {head.cls} "
            f"cannot compute (it reads one sequence per example); {body_only}"
        )
    if "head.out.weight" not in state:
        raise PretuneError(f"{source}: the config records a {spec.family} task but the weights hold no head (head.out.*)")
    tensors = hf.head_to_hf(head, state, cfg)
    if tensors is None:
        raise PretuneError(
            f"{source}: {head.cls}'s output layer has no bias, and this head's bias cannot be folded into its weight "
            f"exactly (the last LayerNorm's sum of beta/gamma is about 0, or a gamma is 0); {body_only}"
        )
    family = get_family(spec.family)
    dropout = family.head_dropout(cfg.dropout if spec.head_dropout is None else spec.head_dropout)
    keys = hf.head_config(head, n_out=state["head.out.weight"].shape[0], labels=spec.labels, family=spec.family,
                          dropout=dropout, record=spec.to_dict())
    if head.last_token:  # transformers finds the last token as the last one that is not padding
        keys["pad_token_id"] = pad_id
    if "lm_head." in head.keeps and not cfg.tie_embeddings and "lm_head.weight" not in state:
        warnings.warn(f"{source}: the model has no LM output layer of its own (untied, fine-tuned without the LM loss), "
                      f"so transformers initialises {head.cls}'s LM head at random; its mc_logits are exact", stacklevel=2)
    return head, tensors, keys


def import_head(found: hf.HeadImport, cfg: ModelConfig, source: str) -> TaskSpec | None:
    """The task of a Hugging Face fine-tuned head (None when the head was refused)."""
    if found.family is None:
        return None
    if found.record is not None:  # pretune's own export: its task as fine-tuning recorded it
        spec = TaskSpec.from_dict(found.record, source=f"{source} ({hf.TASK_KEY})")
        if spec.family != found.family:
            raise PretuneError(f"{source}: {hf.TASK_KEY} is a {spec.family} task but the {found.head.cls} head is "
                               f"{found.family}; fix or remove {hf.TASK_KEY}")
        spec = dataclasses.replace(spec, labels=found.labels)
    else:
        recipe = get_recipe(found.family)  # the family's generic recipe: --task and the column flags change it
        spec = TaskSpec(recipe=recipe.name, family=recipe.family, metric_names=list(recipe.metric_names),
                        main_metric=recipe.main_metric, labels=found.labels, qa_style=recipe.qa_style,
                        max_seq_len=cfg.max_positions, head_dropout=found.dropout)
    outputs = get_family(spec.family).head_outputs(spec)
    if outputs != found.tensors["head.out.weight"].shape[0]:
        raise PretuneError(f"{source}: the {found.head.cls} head has {found.tensors['head.out.weight'].shape[0]} "
                           f"outputs but a {spec.family} head has {outputs}")
    return spec


__all__ = ["export_head", "import_head"]
