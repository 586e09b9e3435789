"""The transformer core shared by GPT and BERT.

Embeddings (token + learned position [+ segment]), multi-head self-attention through
``torch.nn.functional.scaled_dot_product_attention``, a position-wise feed-forward network, and
residual + LayerNorm blocks (post-LN as in both papers, pre-LN as an option). Nothing here knows
about objectives or heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pretune.config import ModelConfig


def activation(name: str):
    """GELU exact (BERT) or its tanh approximation (OpenAI GPT)."""
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return F.gelu


class Embeddings(nn.Module):
    """Token + learned position (+ segment) embeddings, optional LayerNorm, dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden, padding_idx=None)
        self.pos = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.seg = nn.Embedding(cfg.type_vocab_size, cfg.hidden) if cfg.type_vocab_size else None
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.embed_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        self.max_positions = cfg.max_positions

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        seq_len = input_ids.shape[1]
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

    def forward(self, x: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        b, t, h = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, h // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=causal and mask is None,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, h))


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

    def forward(self, x: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        if self.pre_norm:
            x = x + self.drop(self.attn(self.norm1(x), mask, causal))
            return x + self.drop(self.mlp(self.norm2(x)))
        x = self.norm1(x + self.drop(self.attn(x, mask, causal)))
        return self.norm2(x + self.drop(self.mlp(x)))


def attention_mask(padding_mask: Tensor | None, causal: bool, seq_len: int) -> Tensor | None:
    """Boolean SDPA mask (True = may attend) from a ``(batch, seq)`` padding mask.

    Returns None when nothing is masked beyond causality, so SDPA can use its flash kernel with
    ``is_causal``. With padding, keys that are padding are hidden, and the causal triangle is
    folded in for GPT.
    """
    if padding_mask is None:
        return None
    keys = padding_mask.bool()[:, None, None, :]  # (b, 1, 1, t)
    if not causal:
        return keys
    tri = torch.ones(seq_len, seq_len, dtype=torch.bool, device=padding_mask.device).tril()
    mask = keys & tri
    # A query row with nothing to attend to (left padding under causality) would give NaN;
    # let such rows attend to themselves: their outputs are padding and never used.
    return mask | torch.eye(seq_len, dtype=torch.bool, device=padding_mask.device)


class Transformer(nn.Module):
    """Embeddings followed by ``n_layers`` blocks (and a final LayerNorm when pre-LN)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm_f = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.norm == "pre" else None

    def forward(
        self,
        input_ids: Tensor,
        padding_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """Final hidden states ``(b, t, h)``, and every layer's output when asked (embeddings first).

        ``padding_mask`` is 1 for real tokens and 0 for padding; pass None when a batch has no
        padding (collators decide this on the CPU), so SDPA keeps its fastest kernels.
        """
        mask = attention_mask(padding_mask, self.cfg.causal, input_ids.shape[1])
        x = self.embeddings(input_ids, token_type_ids)
        states = [x] if output_hidden_states else []
        for block in self.blocks:
            x = block(x, mask, self.cfg.causal)
            if output_hidden_states:
                states.append(x)
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


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "Block", "Embeddings", "FeedForward", "SelfAttention", "Transformer",
    "activation", "attention_mask", "count_parameters", "init_weights",
]
