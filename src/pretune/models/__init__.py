"""GPT and BERT on one transformer core (``core.py``); the fused output layer + loss in ``fused_ce.py``.

The model layer is plain modules: no objectives beyond the pretraining heads, no training
wrappers, no task heads (those are in ``pretune/tasks/``).
"""

from __future__ import annotations

from pretune.config import ModelConfig
from pretune.models.bert import BERT
from pretune.models.gpt import GPT


def build_model(cfg: ModelConfig) -> BERT | GPT:
    """A freshly initialised model of the config's family."""
    return BERT(cfg) if cfg.family == "bert" else GPT(cfg)


__all__ = ["BERT", "GPT", "build_model"]
