"""`pretune pretrain`: raw text -> pretrained BERT (MLM + NSP) or GPT (causal LM)."""

from __future__ import annotations

import argparse
import json

from pretune.settings import add_command, require
from pretune.train.settings import PretrainSettings


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "pretrain", PretrainSettings, run, help="pretrain a BERT or GPT on raw text",
                description="Pretrain on unlabeled text. BERT: masked LM + next-sentence prediction; GPT: causal "
                "LM. Runs unchanged under `torchrun --nproc_per_node N` (DDP; --fsdp to shard).")


def run(s: PretrainSettings) -> int:
    from pretune.train.pretrain import pretrain

    require(s, "model", "data", "out")
    summary = pretrain(s)
    if summary:
        print(json.dumps({k: v for k, v in summary.items() if k != "model"}, indent=2, ensure_ascii=False))
    return 0
