"""Contextual embeddings: the hidden state of every token, one vector per sentence, or of one word.

Unlike Word2Vec, the same word gets a different vector in each context: "눈" (snow) in
"눈이 와서 너무 좋다" and "눈" (eye) in "너의 눈이 너무 예쁘다".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pretune.errors import PretuneError
from pretune.loader import load_ready


@dataclass
class Embedded:
    text: str
    tokens: list[str]
    vectors: torch.Tensor  # (tokens, hidden), or (hidden,) when pooled
    offsets: list[tuple[int, int]] | None = None  # character span of each token (None: special)


def encode_for_model(model: nn.Module, tokenizer: Any, text: str, truncate: bool = False) -> tuple[list[int], list]:
    """Token ids as the model saw them in pretraining (``[CLS] text [SEP]`` for BERT, raw for GPT)
    and each token's character span in ``text`` (None for the special tokens)."""
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids, offsets = list(enc.ids), [tuple(o) for o in enc.offsets]
    limit = model.cfg.max_positions - (2 if model.cfg.encoder else 0)
    if len(ids) > limit:
        if not truncate:
            raise PretuneError(
                f"text of {len(ids)} tokens is longer than the model allows ({limit} without special tokens): "
                f"{text[:40]!r}...; pass --truncate to cut it"
            )
        ids, offsets = ids[:limit], offsets[:limit]
    if model.cfg.encoder:
        return [tokenizer.cls_id, *ids, tokenizer.sep_id], [None, *offsets, None]
    return ids, offsets


def word_positions(item: Embedded, word: str) -> list[int]:
    """Positions of the tokens that cover the first occurrence of ``word`` in the text."""
    start = item.text.find(word)
    if start < 0:
        raise PretuneError(f"--word {word!r} does not occur in {item.text!r}")
    end = start + len(word)
    hits = [i for i, span in enumerate(item.offsets or []) if span is not None and span[0] < end and span[1] > start]
    if not hits:
        raise PretuneError(f"--word {word!r}: no token of {item.text!r} covers it (was it cut by --truncate?)")
    return hits


def word_vector(item: Embedded, word: str) -> torch.Tensor:
    """The vector of a word in context: its first occurrence's sub-token vectors, averaged."""
    return item.vectors[word_positions(item, word)].mean(0)


@torch.no_grad()
def embed(model: nn.Module, tokenizer: Any, texts: list[str], *, layer: int = -1, pool: str | None = None,
          truncate: bool = False, batch_size: int = 32) -> list[Embedded]:
    """Hidden states of ``layer`` (0 = embeddings, N = block N, -1 = last) for each text.

    ``pool='cls'`` keeps the first token's vector (an encoder's ``[CLS]``; refused for a GPT, whose
    first token has seen only itself), ``pool='mean'`` averages over all tokens (special tokens
    included, as sentence-transformers does); None keeps every token. Texts run ``batch_size`` at
    a time, right-padded with the padding masked: each text's vectors are those it gets alone.
    """
    if pool not in (None, "mean", "cls"):
        raise PretuneError(f"--pool must be mean or cls, got {pool!r}")
    if pool == "cls" and not model.cfg.encoder:
        raise PretuneError("--pool cls: a GPT has no [CLS] token and its first token has seen only itself; "
                           "use --pool mean (or --word)")
    if batch_size < 1:
        raise PretuneError(f"--batch-size must be at least 1, got {batch_size}")
    n_layers = model.cfg.n_layers
    if not -n_layers - 1 <= layer <= n_layers:
        raise PretuneError(f"--layer must be in 0..{n_layers} (or negative from the top), got {layer}")
    model.eval()
    device = next(model.parameters()).device
    encoded = [encode_for_model(model, tokenizer, text, truncate) for text in texts]
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), tokenizer.padding_id, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, (tokens, _) in enumerate(chunk):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        _, states = model.body(ids.to(device), padding_mask=mask.to(device), output_hidden_states=True)
        hidden = states[layer].float().cpu()
        for row, (tokens, offsets) in enumerate(chunk):
            vectors = hidden[row, : len(tokens)]
            if pool == "mean":
                vectors = vectors.mean(0)
            elif pool == "cls":
                vectors = vectors[0]
            text = texts[start + row]
            out.append(Embedded(text, [t or "" for t in tokenizer.convert_ids_to_tokens(tokens)], vectors, offsets))
    return out


def embed_texts(model_dir: str, texts: list[str], *, layer: int = -1, pool: str | None = None, word: str | None = None,
                truncate: bool = False, device: str = "auto", precision: str = "auto",
                batch_size: int = 32) -> Iterator[dict[str, Any]]:
    """``pretune embed``: one record per text, with its tokens and the vectors asked for (``array``)."""
    if word is not None and pool is not None:
        raise PretuneError("--word and --pool are two different vectors; give one of them")
    ready = load_ready(model_dir, device=device, precision=precision, verb="embed")
    with ready.autocast():
        items = embed(ready.model, ready.tokenizer, texts, layer=layer, pool=pool, truncate=truncate, batch_size=batch_size)
    for item in items:
        record: dict[str, Any] = {"text": item.text, "tokens": item.tokens}
        if word is not None:
            positions = word_positions(item, word)
            record.update(word=word, word_tokens=[item.tokens[i] for i in positions], array=item.vectors[positions].mean(0))
        else:
            record["array"] = item.vectors
        yield record


__all__ = ["Embedded", "embed", "embed_texts", "encode_for_model", "word_positions", "word_vector"]
