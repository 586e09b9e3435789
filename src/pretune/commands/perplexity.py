"""`pretune perplexity`: how well a pretrained GPT (perplexity) or BERT (pseudo-perplexity) predicts a text."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from pretune.errors import PretuneError
from pretune.lm.settings import LMRuntime
from pretune.settings import add_command, require, setting


@dataclass
class PerplexitySettings(LMRuntime):
    data: str | None = setting(None, metavar="FILE", help="a UTF-8 text file (a GPT reads it whole, a BERT line by line)")
    window: int | None = setting(None, metavar="N", help="GPT: tokens per window (default: the model's context)")
    stride: int | None = setting(None, metavar="N", help="GPT: tokens the window moves by; each token gets at least "
                                 "window - stride tokens of context (default: half the window)")
    out: str | None = setting(None, metavar="FILE", help="also write the result here as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "perplexity", PerplexitySettings, run, help="score a text: a GPT's perplexity, a BERT's pseudo-perplexity",
                description="A GPT's perplexity of a text file (a sliding window with a stride when the text is longer "
                "than the context), or a BERT's masked-LM pseudo-perplexity and accuracy over the file's lines (each "
                "token masked in turn).")


def run(s: PerplexitySettings) -> int:
    from pretune.io import write_json
    from pretune.lm.common import load_trained
    from pretune.lm.score import score_text

    require(s, "model", "data")
    path = Path(s.data)
    if not path.is_file():
        raise PretuneError(f"--data {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PretuneError(f"--data {path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    ready = load_trained(s.model, None, roles=s.token_roles, device=s.device, precision=s.precision, verb="perplexity")
    result = {"model": s.model, "data": str(path), "family": ready.family, "precision": ready.precision,
              **score_text(ready, text, window=s.window, stride=s.stride, batch_size=s.batch_size, progress=s.progress)}
    if s.out:
        write_json(Path(s.out), result)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key.ljust(width)}  {value:.4f}" if isinstance(value, float) else f"{key.ljust(width)}  {value}")
    if s.out:
        print(json.dumps({"written": s.out}))
    return 0
