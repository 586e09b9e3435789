"""`pretune embed`: contextual vectors for each token (or one per sentence) as JSON lines."""

from __future__ import annotations

import argparse
import json
import sys

from pretune.checkpoint import load_model
from pretune.embed import embed
from pretune.errors import PretuneError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="print contextual embeddings of texts as JSON lines")
    p.add_argument("--model", required=True, help="pretune or Hugging Face model directory")
    p.add_argument("--layer", type=int, default=-1, help="0 = embeddings, N = block N, -1 = last (default)")
    p.add_argument("--pool", choices=["mean", "cls"], help="one sentence vector instead of one per token")
    p.add_argument("--truncate", action="store_true", help="cut texts longer than the model's maximum")
    p.add_argument("--precision", type=int, default=6, help="decimals printed (default 6)")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to embed (default: lines of stdin)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_model(args.model)
    if loaded.tokenizer is None:
        raise PretuneError(f"{args.model}: no tokenizer files (tokenizer.json, vocab.txt or vocab.json)")
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for item in embed(loaded.model, loaded.tokenizer, texts, layer=args.layer, pool=args.pool, truncate=args.truncate):
        vectors = [round(v, args.precision) for v in item.vectors.flatten().tolist()]
        record = {"text": item.text, "tokens": item.tokens}
        if args.pool:
            record["vector"] = vectors
        else:
            width = item.vectors.shape[-1]
            record["vectors"] = [vectors[i : i + width] for i in range(0, len(vectors), width)]
        print(json.dumps(record, ensure_ascii=False))
    return 0
