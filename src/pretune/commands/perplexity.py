"""`pretune perplexity`: how well a pretrained GPT (perplexity) or BERT (pseudo-perplexity) predicts a text."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from pretune.errors import PretuneError
from pretune.lm.settings import LMRuntime
from pretune.settings import add_command, at_least, require, setting


@dataclass
class PerplexitySettings(LMRuntime):
    data: str | None = setting(None, metavar="FILE", help="a UTF-8 text file (a GPT reads it whole, a BERT line by line)")
    window: int | None = setting(None, metavar="N", check=at_least(2), help="GPT: tokens per window (default: the model's context)")
    stride: int | None = setting(None, metavar="N", check=at_least(1), help="GPT: tokens the window moves by; each token gets at least "
                                 "window - stride tokens of context (default: half the window)")
    out: str | None = setting(None, metavar="FILE", help="also write the result here as JSON (an existing file only with "
                              "--overwrite, never --data or a file of the model)")
    overwrite: bool = setting(False, help="replace the --out file if it exists")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "perplexity", PerplexitySettings, run, help="score a text: a GPT's perplexity, a BERT's pseudo-perplexity",
                description="A GPT's perplexity of a text file (a sliding window with a stride when the text is longer "
                "than the context), or a BERT's masked-LM pseudo-perplexity and accuracy over the file's lines (each "
                "token masked in turn).")


def run(s: PerplexitySettings) -> int:
    from pretune.io import read_text_file, write_json
    from pretune.lm.score import NothingToScore, score_text
    from pretune.loader import load_ready
    from pretune.validate import check_outputs

    require(s, "model", "data")
    check_outputs(s, s.out)  # --data exists; --out is not an input, replaced only with --overwrite
    path = Path(s.data)
    text = read_text_file(path, flag="--data")
    ready = load_ready(s.model, lm_output=True, roles=s.token_roles, device=s.device, precision=s.precision,
                       verb="perplexity")
    try:
        scores = score_text(ready, text, window=s.window, stride=s.stride, batch_size=s.batch_size, progress=s.progress)
    except NothingToScore as exc:
        raise PretuneError(f"--data {path}: {exc}") from None
    result = {"model": s.model, "data": str(path), "family": ready.family, "precision": ready.precision, **scores}
    if s.out:
        write_json(Path(s.out), result)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key.ljust(width)}  {value:.4f}" if isinstance(value, float) else f"{key.ljust(width)}  {value}")
    if s.out:
        print(json.dumps({"written": s.out}))
    return 0
