"""GPT, BERT and ELECTRA on one transformer core (``core.py``); the fused output layer + loss in ``fused_ce.py``.

The model layer is plain modules: no objectives beyond the pretraining heads, no training
wrappers, no task heads (those are in ``pretune/tasks/``).
"""

from __future__ import annotations

from pretune.config import ModelConfig
from pretune.models.bert import BERT
from pretune.models.electra import ELECTRA
from pretune.models.gpt import GPT

FAMILY_CLASSES = {"bert": BERT, "gpt": GPT, "electra": ELECTRA}


def build_model(cfg: ModelConfig) -> BERT | GPT | ELECTRA:
    """A freshly initialised model of the config's family."""
    return FAMILY_CLASSES[cfg.family](cfg)


__all__ = ["BERT", "ELECTRA", "FAMILY_CLASSES", "GPT", "build_model"]
