"""`pretune fill-mask`: a BERT's top guesses for every [MASK] of a text."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from pretune.lm.settings import LMRuntime
from pretune.settings import add_command, require, setting


@dataclass
class FillMaskSettings(LMRuntime):
    top_k: int = setting(5, metavar="K", help="guesses per mask")
    as_json: bool = setting(False, flag="--json", help="one JSON line per mask instead of a table")
    texts: list[str] | None = setting(None, positional=True, help="texts with [MASK] (default: the lines of stdin)")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "fill-mask", FillMaskSettings, run, help="guess the token of every [MASK] with a BERT",
                description="Print a BERT's top-k tokens and their probabilities for every [MASK] of each text. The "
                "model needs a trained masked-LM head (BertForMaskedLM, BertForPreTraining, a pretune-pretrained BERT).")


def run(s: FillMaskSettings) -> int:
    from pretune.io import read_texts
    from pretune.lm.fill_mask import fill_mask
    from pretune.loader import load_ready

    require(s, "model")
    texts = read_texts(s.texts)
    ready = load_ready(s.model, family="bert", lm_output=True, roles=s.token_roles, device=s.device, precision=s.precision,
                       verb="fill-mask")
    with ready.autocast():
        fills = fill_mask(ready.model, ready.tokenizer, texts, top_k=s.top_k, batch_size=s.batch_size)
    for fill in fills:
        if s.as_json:
            print(json.dumps(fill.to_dict(), ensure_ascii=False))
            continue
        print(f"{fill.text}  [mask {fill.mask_index + 1}]")
        for token, p in zip(fill.tokens, fill.probabilities):
            print(f"  {p:7.4f}  {token}")
    return 0
