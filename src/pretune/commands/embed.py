"""`pretune embed`: contextual vectors for each token (or one per sentence, or of one word) as JSON lines."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Literal

from pretune.settings import Precision, Runtime, add_command, at_least, precision_setting, require, setting


@dataclass
class EmbedSettings(Runtime):
    precision: Precision = precision_setting("fp32")
    model: str | None = setting(None, help="pretune or Hugging Face model directory, or a Hub id (org/name[@revision])")
    layer: int = setting(-1, help="0 = embeddings, N = block N, -1 = last")
    pool: Literal["mean", "cls"] | None = setting(None, help="one sentence vector instead of one per token: mean (over every "
                                                  "token) or cls (an encoder's [CLS]; refused for a GPT, whose first token "
                                                  "has seen only itself)")
    word: str | None = setting(None, help="the vector of this word in each text: its first occurrence's sub-tokens, averaged")
    truncate: bool = setting(False, help="cut texts longer than the model's maximum")
    decimals: int = setting(6, check=at_least(0), help="decimals printed")
    batch_size: int = setting(32, check=at_least(1), help="texts per forward pass (padded; the vectors are each text's own)")
    texts: list[str] | None = setting(None, positional=True, help="texts to embed (default: lines of stdin)")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "embed", EmbedSettings, run, help="print contextual embeddings of texts as JSON lines")


def run(s: EmbedSettings) -> int:
    from pretune.embed import embed_texts
    from pretune.io import read_texts

    require(s, "model")
    for record in embed_texts(s.model, read_texts(s.texts), layer=s.layer, pool=s.pool, word=s.word,
                              truncate=s.truncate, device=s.device, precision=s.precision, batch_size=s.batch_size):
        vectors = record.pop("array")
        record["vector" if vectors.dim() == 1 else "vectors"] = [
            [round(v, s.decimals) for v in row] for row in vectors.tolist()
        ] if vectors.dim() == 2 else [round(v, s.decimals) for v in vectors.tolist()]
        print(json.dumps(record, ensure_ascii=False))
    return 0
