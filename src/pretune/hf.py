"""Hugging Face checkpoints, both directions, as data.

One table per family maps pretune's parameter names to the names of ``transformers``
(``BertForPreTraining``/``BertModel``/``BertForMaskedLM`` and
``OpenAIGPTLMHeadModel``/``OpenAIGPTModel``). Each row says how the tensors relate:

- ``copy``: the same tensor;
- ``T``: transposed (OpenAI GPT stores ``Conv1D`` weights as ``(in, out)``);
- ``cat``: pretune's fused QKV is the concatenation of BERT's query, key and value (OpenAI GPT's
  ``c_attn`` is already fused in the same order, so it is only transposed).

Import and export read the same rows, so the two directions cannot disagree. ``transformers`` is
never imported here: a checkpoint directory is ``config.json`` plus ``model.safetensors`` (or
``pytorch_model.bin``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pretune.config import ModelConfig
from pretune.errors import PretuneError


@dataclass(frozen=True)
class Rule:
    ours: str  # may contain {i} for the layer index
    theirs: tuple[str, ...]
    op: str = "copy"  # copy | T | cat


def _layer(ours: str, *theirs: str, op: str = "copy") -> list[Rule]:
    """Rules for the weight and the bias of one linear/LayerNorm module."""
    return [
        Rule(f"{ours}.{p}", tuple(f"{t}.{p}" for t in theirs), op if p == "weight" or op == "cat" else "copy")
        for p in ("weight", "bias")
    ]


BERT_RULES: list[Rule] = [
    Rule("body.embeddings.tok.weight", ("bert.embeddings.word_embeddings.weight",)),
    Rule("body.embeddings.pos.weight", ("bert.embeddings.position_embeddings.weight",)),
    Rule("body.embeddings.seg.weight", ("bert.embeddings.token_type_embeddings.weight",)),
    *_layer("body.embeddings.norm", "bert.embeddings.LayerNorm"),
    *_layer(
        "body.blocks.{i}.attn.qkv",
        "bert.encoder.layer.{i}.attention.self.query",
        "bert.encoder.layer.{i}.attention.self.key",
        "bert.encoder.layer.{i}.attention.self.value",
        op="cat",
    ),
    *_layer("body.blocks.{i}.attn.proj", "bert.encoder.layer.{i}.attention.output.dense"),
    *_layer("body.blocks.{i}.norm1", "bert.encoder.layer.{i}.attention.output.LayerNorm"),
    *_layer("body.blocks.{i}.mlp.fc1", "bert.encoder.layer.{i}.intermediate.dense"),
    *_layer("body.blocks.{i}.mlp.fc2", "bert.encoder.layer.{i}.output.dense"),
    *_layer("body.blocks.{i}.norm2", "bert.encoder.layer.{i}.output.LayerNorm"),
    *_layer("pooler.dense", "bert.pooler.dense"),
    *_layer("mlm.dense", "cls.predictions.transform.dense"),
    *_layer("mlm.norm", "cls.predictions.transform.LayerNorm"),
    Rule("mlm.bias", ("cls.predictions.bias",)),
    *_layer("nsp", "cls.seq_relationship"),
]

GPT_RULES: list[Rule] = [
    Rule("body.embeddings.tok.weight", ("transformer.tokens_embed.weight",)),
    Rule("body.embeddings.pos.weight", ("transformer.positions_embed.weight",)),
    *_layer("body.blocks.{i}.attn.qkv", "transformer.h.{i}.attn.c_attn", op="T"),
    *_layer("body.blocks.{i}.attn.proj", "transformer.h.{i}.attn.c_proj", op="T"),
    *_layer("body.blocks.{i}.norm1", "transformer.h.{i}.ln_1"),
    *_layer("body.blocks.{i}.mlp.fc1", "transformer.h.{i}.mlp.c_fc", op="T"),
    *_layer("body.blocks.{i}.mlp.fc2", "transformer.h.{i}.mlp.c_proj", op="T"),
    *_layer("body.blocks.{i}.norm2", "transformer.h.{i}.ln_2"),
]

# Output layers of their own, for models with ``tie_embeddings`` off (HF: tie_word_embeddings false).
UNTIED_RULES = {
    "bert": Rule("mlm.decoder.weight", ("cls.predictions.decoder.weight",)),
    "gpt": Rule("lm_head.weight", ("lm_head.weight",)),
}

# Names in Hugging Face checkpoints that carry no weights of their own (tied or buffers).
_IGNORED = re.compile(
    r"(position_ids|cls\.predictions\.decoder\.(weight|bias)|lm_head\.weight|attn\.bias|attn\.masked_bias)$"
)

# Optional parts: a checkpoint without them still loads (e.g. BertModel has no cls.*).
OPTIONAL_PREFIXES = ("pooler.", "mlm.", "nsp.", "head.", "lm_head.")


def rules_for(cfg: ModelConfig) -> list[Rule]:
    """The table for a config, with ``{i}`` expanded over layers."""
    table = BERT_RULES if cfg.family == "bert" else GPT_RULES
    out = []
    for rule in table:
        if "{i}" in rule.ours:
            out += [
                Rule(rule.ours.format(i=i), tuple(t.format(i=i) for t in rule.theirs), rule.op)
                for i in range(cfg.n_layers)
            ]
        elif rule.ours.startswith("body.embeddings.seg") and not cfg.type_vocab_size:
            continue
        else:
            out.append(rule)
    if not cfg.tie_embeddings:
        out.append(UNTIED_RULES[cfg.family])
    return out


def _normalise_hf_names(state: dict[str, Tensor], family: str) -> dict[str, Tensor]:
    """Give every key the prefix of the with-heads classes; old ``gamma``/``beta`` become weight/bias."""
    prefix = "bert." if family == "bert" else "transformer."
    out = {}
    for key, value in state.items():
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        if not (key.startswith(prefix) or key.startswith("cls.") or key.startswith("lm_head")):
            key = prefix + key
        out[key] = value
    return out


def from_hf_state_dict(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Hugging Face tensors -> pretune tensors. Parts absent from the checkpoint stay absent."""
    state = _normalise_hf_names(state, cfg.family)
    used: set[str] = set()
    out: dict[str, Tensor] = {}
    for rule in rules_for(cfg):
        present = [t in state for t in rule.theirs]
        if not any(present):
            continue
        if not all(present):
            missing = [t for t, p in zip(rule.theirs, present) if not p]
            raise PretuneError(f"Hugging Face checkpoint is missing tensor(s) {missing} needed for {rule.ours}")
        parts = [state[t] for t in rule.theirs]
        used.update(rule.theirs)
        if rule.op == "copy":
            out[rule.ours] = parts[0]
        elif rule.op == "T":
            out[rule.ours] = parts[0].t().contiguous() if parts[0].dim() == 2 else parts[0]
        elif rule.op == "cat":
            out[rule.ours] = torch.cat(parts, dim=0)
        else:
            raise AssertionError(rule.op)
    unknown = [k for k in state if k not in used and not _IGNORED.search(k)]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise PretuneError(
            f"Hugging Face checkpoint has {len(unknown)} tensor(s) pretune does not know: {shown} "
            f"(supported: BertModel/BertForPreTraining/BertForMaskedLM, OpenAIGPTModel/OpenAIGPTLMHeadModel)"
        )
    return out


def to_hf_state_dict(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """pretune tensors -> Hugging Face tensors (``BertForPreTraining``/``OpenAIGPTLMHeadModel`` names)."""
    out: dict[str, Tensor] = {}
    for rule in rules_for(cfg):
        if rule.ours not in state:
            continue
        tensor = state[rule.ours]
        if rule.op == "copy":
            parts = [tensor]
        elif rule.op == "T":
            parts = [tensor.t() if tensor.dim() == 2 else tensor]
        else:  # cat: split the fused QKV back into query, key, value
            parts = list(tensor.chunk(len(rule.theirs), dim=0))
        for name, part in zip(rule.theirs, parts):
            out[name] = part.contiguous().clone()
    if cfg.family == "bert" and not cfg.tie_embeddings and "cls.predictions.bias" in out:
        # untied, transformers reads the decoder's bias under its own name too
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"].clone()
    return out


# --- configs -----------------------------------------------------------------------------------

_BERT_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """A pretune config from a Hugging Face ``config.json`` (model_type bert or openai-gpt)."""
    kind = hf.get("model_type")
    try:
        if kind == "bert":
            if hf.get("position_embedding_type", "absolute") != "absolute":
                raise PretuneError(f"{source}: position_embedding_type {hf['position_embedding_type']!r} is not supported (only 'absolute')")
            act = hf.get("hidden_act", "gelu")
            if act not in _BERT_ACT:
                raise PretuneError(f"{source}: hidden_act {act!r} is not supported; use one of {sorted(_BERT_ACT)}")
            return ModelConfig(
                family="bert",
                vocab_size=hf["vocab_size"],
                n_layers=hf["num_hidden_layers"],
                hidden=hf["hidden_size"],
                n_heads=hf["num_attention_heads"],
                ffn=hf["intermediate_size"],
                max_positions=hf["max_position_embeddings"],
                type_vocab_size=hf.get("type_vocab_size", 2),
                dropout=hf.get("hidden_dropout_prob", 0.1),
                attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
                activation=_BERT_ACT[act],
                initializer_range=hf.get("initializer_range", 0.02),
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                pad_token_id=hf.get("pad_token_id") or 0,
                extra={"source": "huggingface", "hf_architectures": hf.get("architectures", [])},
            )
        if kind == "openai-gpt":
            act = hf.get("afn", "gelu")
            if act != "gelu":  # transformers' OpenAI GPT maps "gelu" to the tanh approximation
                raise PretuneError(f"{source}: afn {act!r} is not supported (only 'gelu', the tanh GELU of GPT-1)")
            return ModelConfig(
                family="gpt",
                vocab_size=hf["vocab_size"],
                n_layers=hf["n_layer"],
                hidden=hf["n_embd"],
                n_heads=hf["n_head"],
                max_positions=hf["n_positions"],
                type_vocab_size=0,
                dropout=hf.get("resid_pdrop", 0.1),
                attn_dropout=hf.get("attn_pdrop", 0.1),
                layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                activation="gelu_tanh",
                embed_norm=False,
                initializer_range=hf.get("initializer_range", 0.02),
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                pad_token_id=0,
                extra={"source": "huggingface", "hf_architectures": hf.get("architectures", [])},
            )
    except KeyError as exc:
        raise PretuneError(f"{source}: missing field {exc.args[0]!r} for model_type {kind!r}") from None
    raise PretuneError(f"{source}: model_type {kind!r} is not supported (pretune reads 'bert' and 'openai-gpt')")


def config_to_hf(cfg: ModelConfig, with_heads: bool = True) -> dict[str, Any]:
    """A Hugging Face ``config.json`` for a pretune config."""
    if cfg.norm != "post" or (cfg.family == "bert") != cfg.embed_norm:
        raise PretuneError(
            "only post-LN models with the papers' embedding LayerNorm can be exported to Hugging Face "
            f"(this model has norm={cfg.norm!r}, embed_norm={cfg.embed_norm})"
        )
    act = "gelu" if cfg.activation == "gelu" else "gelu_new"
    if cfg.family == "gpt" and cfg.activation != "gelu_tanh":
        raise PretuneError("OpenAI GPT in transformers only has the tanh GELU; this model uses exact GELU")
    if cfg.family == "bert":
        return {
            "architectures": ["BertForPreTraining" if with_heads else "BertModel"],
            "model_type": "bert",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "intermediate_size": cfg.ffn,
            "hidden_act": act,
            "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.attn_dropout,
            "max_position_embeddings": cfg.max_positions,
            "type_vocab_size": cfg.type_vocab_size,
            "initializer_range": cfg.initializer_range,
            "layer_norm_eps": cfg.layer_norm_eps,
            "pad_token_id": cfg.pad_token_id,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": cfg.tie_embeddings,
        }
    return {
        "architectures": ["OpenAIGPTLMHeadModel"],
        "model_type": "openai-gpt",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_positions,
        "n_embd": cfg.hidden,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "afn": "gelu",  # transformers' OpenAI GPT: "gelu" is the tanh approximation
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attn_dropout,
        "layer_norm_epsilon": cfg.layer_norm_eps,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


def read_hf_weights(directory: Path) -> dict[str, Tensor]:
    """Tensors of a Hugging Face directory: ``model.safetensors`` or ``pytorch_model.bin``."""
    st = directory / "model.safetensors"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st), device="cpu")
    binary = directory / "pytorch_model.bin"
    if binary.is_file():
        return torch.load(binary, map_location="cpu", weights_only=True)
    raise PretuneError(f"{directory}: no model.safetensors or pytorch_model.bin")
