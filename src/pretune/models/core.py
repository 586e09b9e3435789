"""The transformer core shared by GPT and BERT.

Embeddings (token + learned position [+ segment]), multi-head self-attention through
``torch.nn.functional.scaled_dot_product_attention``, a position-wise feed-forward network, and
residual + LayerNorm blocks (post-LN as in GPT-1 and BERT; pre-LN with a final LayerNorm as in
GPT-2), and a key/value cache for decoding one token at a time. Nothing here knows about
objectives or heads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretune import tuning
from pretune.config import ModelConfig


def activation(name: str):
    """GELU exact (BERT) or its tanh approximation (OpenAI GPT)."""
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu


class Embeddings(nn.Module):
    """Token + learned position (+ segment) embeddings, optional LayerNorm, dropout.

    ``cfg.embedding_size`` wide (the hidden size, except in ELECTRA-style models, whose
    :class:`Transformer` projects them up)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        width = cfg.embedding_size
        self.tok = nn.Embedding(cfg.vocab_size, width, padding_idx=None)
        self.pos = nn.Embedding(cfg.max_positions, width)
        self.seg = nn.Embedding(cfg.type_vocab_size, width) if cfg.type_vocab_size else None
        self.norm = nn.LayerNorm(width, eps=cfg.layer_norm_eps) if cfg.embed_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        self.max_positions = cfg.max_positions

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """``positions`` (b, t) or (1, t): each token's position (left-padded prompts, decoding with a
        cache); the caller keeps them below ``max_positions``. Default: 0 .. t-1."""
        seq_len = input_ids.shape[1]
        if positions is None:
            if seq_len > self.max_positions:
                raise ValueError(
                    f"sequence of {seq_len} tokens is longer than the model's max_positions "
                    f"({self.max_positions}); truncate the input or lower --seq-len/--max-seq-len"
                )
            positions = torch.arange(seq_len, device=input_ids.device)
        x = self.tok(input_ids) + self.pos(positions)
        if self.seg is not None:
            if token_type_ids is None:
                x = x + self.seg.weight[0]
            else:
                x = x + self.seg(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection and SDPA."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_dropout = cfg.attn_dropout

    def forward(self, x: Tensor, mask: Tensor | None, causal: bool, queries: Tensor | None = None,
                cache: LayerCache | None = None) -> Tensor:
        """``queries`` (b, p, h), when given, are the only rows whose outputs are computed
        (bidirectional attention only); keys and values still come from every row of ``x``.
        ``cache``: keys and values of earlier positions; this call's are appended, and ``x``'s rows
        attend over both (``mask`` then covers every key)."""
        b, t, h = x.shape
        n, d = self.n_heads, h // self.n_heads
        if queries is None:
            q, k, v = self.qkv(x).view(b, t, 3, n, d).permute(2, 0, 3, 1, 4)
            if cache is not None:
                k, v = cache.append(k, v)
        else:
            if causal:
                raise ValueError("a subset of query rows is only supported for bidirectional attention")
            q = F.linear(queries, self.qkv.weight[:h], self.qkv.bias[:h]).view(b, -1, n, d).transpose(1, 2)
            k, v = F.linear(x, self.qkv.weight[h:], self.qkv.bias[h:]).view(b, t, 2, n, d).permute(2, 0, 3, 1, 4)
        dropout = self.attn_dropout if self.training else 0.0
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and tuning.CPU_BF16_ATTENTION_IN_FP32:
            with torch.autocast("cpu", enabled=False):
                y = self._attend(q.float(), k.float(), v.float(), mask, causal, dropout)
        else:
            y = self._attend(q, k, v, mask, causal, dropout)
        return self.proj(y.transpose(1, 2).reshape(b, q.shape[2], h))

    @staticmethod
    def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, dropout: float) -> Tensor:
        if dropout and q.device.type == "cpu" and tuning.CPU_DROPOUT_ATTENTION:  # the same computation, faster
            return _attention_with_dropout(q, k, v, mask, causal, dropout)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal and mask is None)


def _attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, p: float) -> Tensor:
    """softmax(q k^T / sqrt(d) masked) with dropout, times v: SDPA's math, in three batched kernels."""
    b, n, tq, d = q.shape
    t = k.shape[2]
    scores = torch.baddbmm(
        q.new_empty(b * n, tq, t), q.reshape(b * n, tq, d), k.reshape(b * n, t, d).transpose(1, 2),
        beta=0.0, alpha=d**-0.5,
    ).view(b, n, tq, t)
    if mask is None and causal:
        mask = torch.ones(tq, t, dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        # a finite minimum: a row with every key masked gets uniform weights rather than NaN
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = F.dropout(torch.softmax(scores, dim=-1), p, training=True)
    return torch.bmm(probs.view(b * n, tq, t), v.reshape(b * n, t, d)).view(b, n, tq, d)


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear, GELU, Linear."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden, cfg.ffn)
        self.fc2 = nn.Linear(cfg.ffn, cfg.hidden)
        self.act = activation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Attention and feed-forward sub-layers, each with dropout, residual and LayerNorm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.mlp = FeedForward(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.pre_norm = cfg.norm == "pre"

    def forward(self, x: Tensor, mask: Tensor | None, causal: bool, rows: Tensor | None = None,
                cache: LayerCache | None = None) -> Tensor:
        """``rows`` (b, p) of positions: compute the block's output at those positions only.
        ``cache``: this layer's keys and values of earlier positions (decoding)."""
        if rows is None:
            if self.pre_norm:
                x = x + self.drop(self.attn(self.norm1(x), mask, causal, cache=cache))
                return x + self.drop(self.mlp(self.norm2(x)))
            x = self.norm1(x + self.drop(self.attn(x, mask, causal, cache=cache)))
            return self.norm2(x + self.drop(self.mlp(x)))
        picked = gather_rows(x, rows)
        if self.pre_norm:
            normed = self.norm1(x)
            y = picked + self.drop(self.attn(normed, mask, causal, queries=gather_rows(normed, rows)))
            return y + self.drop(self.mlp(self.norm2(y)))
        y = self.norm1(picked + self.drop(self.attn(x, mask, causal, queries=picked)))
        return self.norm2(y + self.drop(self.mlp(y)))


def gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """``x[i, rows[i]]`` for each batch row i: (b, t, h) -> (b, p, h)."""
    return x.gather(1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def attention_mask(padding_mask: Tensor | None, causal: bool, seq_len: int, past: int = 0) -> Tensor | None:
    """Boolean SDPA mask (True = may attend) from a ``(batch, past + seq)`` padding mask.

    Returns None when nothing is masked beyond causality, so SDPA can use its flash kernel with
    ``is_causal``. With padding, keys that are padding are hidden, and the causal triangle is
    folded in for GPT. ``past``: positions already in a key/value cache; the ``seq_len`` new
    queries sit after them (query i at position ``past + i`` sees keys up to it).
    """
    if padding_mask is None:
        return None
    keys = padding_mask.bool()[:, None, None, :]  # (b, 1, 1, past + t)
    if not causal:
        return keys
    device = padding_mask.device
    query_pos = torch.arange(past, past + seq_len, device=device)[:, None]
    key_pos = torch.arange(past + seq_len, device=device)[None, :]
    # A query row with nothing to attend to (left padding under causality) would give NaN;
    # let such rows attend to themselves: their outputs are padding and never used.
    return (keys & (key_pos <= query_pos)) | (key_pos == query_pos)


class KVCache:
    """Keys and values of every layer at the positions a causal model has seen: decoding then runs
    the model on the new token only, not on the whole prefix again.

    ``Transformer.forward(..., cache=c)`` appends its positions' keys and values and attends over
    all of them; ``length`` counts the positions held. Each layer's buffers are allocated at
    ``max_len`` positions on first use (in the dtype of its keys), so a step writes in place.
    """

    def __init__(self, n_layers: int, max_len: int) -> None:
        self.max_len = max_len
        self.length = 0
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers

    def layer(self, index: int) -> LayerCache:
        return LayerCache(self, index)

    def append(self, index: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store layer ``index``'s keys and values (b, heads, t, d) after the ``length`` held;
        return the keys and values of all ``length + t`` positions."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"the key/value cache holds {self.max_len} positions; {end} were asked for")
        if self.keys[index] is None:
            b, n, _, d = k.shape
            self.keys[index], self.values[index] = (k.new_empty(b, n, self.max_len, d) for _ in range(2))
        keys, values = self.keys[index], self.values[index]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]


@dataclass(frozen=True)
class LayerCache:
    """One layer's view of a :class:`KVCache`."""

    owner: KVCache
    index: int

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.owner.append(self.index, k, v)


class Transformer(nn.Module):
    """Embeddings (projected to the hidden size when narrower, as in ELECTRA) followed by
    ``n_layers`` blocks (and a final LayerNorm when pre-LN)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.embeddings_project = nn.Linear(cfg.embedding_size, cfg.hidden) if cfg.embedding_size != cfg.hidden else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_f = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.norm == "pre" else None

    def forward(
        self,
        input_ids: Tensor,
        *,
        padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        last_rows: Tensor | None = None,
        positions: Tensor | None = None,
        cache: KVCache | None = None,
        embeddings: nn.Module | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """Final hidden states ``(b, t, h)``, and every layer's output when asked (embeddings first).

        ``padding_mask`` is 1 for real tokens and 0 for padding; pass None when a batch has no
        padding (collators decide this on the CPU), so SDPA keeps its fastest kernels.

        ``last_rows`` (b, p) of positions: the last layer computes only those rows (queries,
        attention output, feed-forward), and the result is ``(b, p, h)``, the same values as the
        full result at those positions. BERT's pretraining uses it: only ``[CLS]`` and the masked
        positions feed a loss, and the last layer's work at the other ~85% is wasted otherwise.

        ``positions``: each token's position (default 0 .. t-1 after the cache's positions).
        ``cache``: decoding (see :class:`KVCache`); ``padding_mask`` then covers the cached positions
        and the new ones, ``(b, cache.length + t)``, and may be None when nothing is padding.

        ``embeddings``: another model's embedding module to use instead of this one's (ELECTRA's
        generator reads the discriminator's; :mod:`pretune.models.electra`). The hidden states
        listed by ``output_hidden_states`` start with the (projected) embeddings.
        """
        b, t = input_ids.shape
        past = 0 if cache is None else cache.length
        if cache is not None:
            if padding_mask is None:
                padding_mask = torch.ones(b, past + t, dtype=torch.bool, device=input_ids.device)
            if positions is None:
                positions = torch.arange(past, past + t, device=input_ids.device)[None]
        mask = attention_mask(padding_mask, self.cfg.causal, t, past)
        x = (self.embeddings if embeddings is None else embeddings)(input_ids, token_type_ids, positions)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)
        states = [x] if output_hidden_states else []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, mask, self.cfg.causal, last_rows if i == last else None, None if cache is None else cache.layer(i))
            if output_hidden_states:
                states.append(x)
        if cache is not None:
            cache.length += t
        if self.norm_f is not None:
            x = self.norm_f(x)
            if output_hidden_states:
                states[-1] = x
        return x, states


def init_weights(module: nn.Module, std: float) -> None:
    """BERT/GPT initialisation: N(0, std) for Linear and Embedding, ones/zeros for LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass
class ModelOutput:
    """What a model's forward returns: the loss for the targets given, the hidden states, counts."""

    hidden: Tensor  # final hidden states (b, t, h)
    loss: Tensor | None = None
    hidden_states: list[Tensor] = field(default_factory=list)  # embeddings, then every block's output
    metrics: dict[str, Tensor] = field(default_factory=dict)  # summed counts for evaluation


class Backbone(nn.Module):
    """A transformer body of one model family, initialised as BERT and GPT are."""

    family: ClassVar[str]

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.family != self.family:
            raise ValueError(f"{type(self).__name__} needs a config of family {self.family!r}, got {cfg.family!r}")
        self.cfg = cfg
        self.body = Transformer(cfg)

    def untied_output(self) -> nn.Linear:
        """The output layer over the vocabulary when it is not tied to the token embedding."""
        raise NotImplementedError

    def init_blocks(self, blocks: Iterable[nn.Module]) -> None:
        """Initialise ``blocks`` as a new model of this family initialises its blocks."""
        for block in blocks:
            init_weights(block, self.cfg.initializer_range)

    @property
    def decoder_weight(self) -> Tensor:
        """The output matrix (vocab, hidden): the token embedding unless untied."""
        return self.body.embeddings.tok.weight if self.cfg.tie_embeddings else self.untied_output().weight


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "Backbone", "Block", "KVCache", "LayerCache", "ModelOutput", "Embeddings", "FeedForward", "SelfAttention", "Transformer",
    "activation", "attention_mask", "count_parameters", "gather_rows", "init_weights",
]
