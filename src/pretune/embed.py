"""Contextual embeddings: the hidden state of every token, or one vector per sentence.

Unlike Word2Vec, the same word gets a different vector in each context: "눈" (snow) in
"눈이 와서 너무 좋다" and "눈" (eye) in "너의 눈이 너무 예쁘다".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pretune.errors import PretuneError


@dataclass
class Embedded:
    text: str
    tokens: list[str]
    vectors: torch.Tensor  # (tokens, hidden), or (hidden,) when pooled


def encode_for_model(model: nn.Module, tokenizer, text: str, truncate: bool = False) -> list[int]:
    """Token ids as the model saw them in pretraining: ``[CLS] text [SEP]`` for BERT, raw for GPT."""
    ids = tokenizer.encode(text)
    if model.cfg.family == "bert":
        limit = model.cfg.max_positions - 2
        ids = [tokenizer.cls_id, *(ids[:limit] if truncate else ids), tokenizer.sep_id]
    elif truncate:
        ids = ids[: model.cfg.max_positions]
    if len(ids) > model.cfg.max_positions:
        raise PretuneError(
            f"text of {len(ids)} tokens is longer than the model's max_positions ({model.cfg.max_positions}): "
            f"{text[:40]!r}...; pass --truncate to cut it"
        )
    return ids


@torch.no_grad()
def embed(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    *,
    layer: int = -1,
    pool: str | None = None,
    truncate: bool = False,
) -> list[Embedded]:
    """Hidden states of ``layer`` (0 = embeddings, N = block N, -1 = last) for each text.

    ``pool='cls'`` keeps the first token's vector, ``pool='mean'`` averages over all tokens
    (special tokens included, as sentence-transformers does); None keeps every token.
    """
    if pool not in (None, "mean", "cls"):
        raise PretuneError(f"--pool must be mean or cls, got {pool!r}")
    n_layers = model.cfg.n_layers
    if not -n_layers - 1 <= layer <= n_layers:
        raise PretuneError(f"--layer must be in 0..{n_layers} (or negative from the top), got {layer}")
    model.eval()
    device = next(model.parameters()).device
    out = []
    for text in texts:
        ids = encode_for_model(model, tokenizer, text, truncate)
        x = torch.tensor([ids], device=device)
        _, states = model.body(x, None, None, output_hidden_states=True)
        vectors = states[layer][0].float().cpu()
        if pool == "mean":
            vectors = vectors.mean(0)
        elif pool == "cls":
            vectors = vectors[0]
        out.append(Embedded(text, [t or "" for t in tokenizer.convert_ids_to_tokens(ids)], vectors))
    return out


def token_vector(item: Embedded, piece: str, prefix: bool = False) -> torch.Tensor:
    """The vector of the first token equal to ``piece`` (e.g. "눈").

    With ``prefix``, a token that starts with ``piece`` also matches, for vocabularies that keep
    the word with its particle as one token ("눈이").
    """
    for i, tok in enumerate(item.tokens):
        if tok == piece:
            return item.vectors[i]
    if prefix:
        for i, tok in enumerate(item.tokens):
            if tok.startswith(piece):
                return item.vectors[i]
    raise PretuneError(f"token {piece!r} not found in {item.tokens} (text {item.text!r})")
