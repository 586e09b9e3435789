"""Hugging Face checkpoints, both directions, as data.

One :class:`Arch` per Hugging Face architecture says everything pretune needs to know about it:
its ``config.json`` keys (which pretune field each one is, and its default), what pretune's config
must be for it (GPT-2 is pre-LN; BERT has segment embeddings), its activation names, and a table
mapping pretune's parameter names to ``transformers``' (``BertForPreTraining``/``BertModel``/
``BertForMaskedLM``, ``ElectraForPreTraining``/``ElectraForMaskedLM``/``ElectraModel``,
``OpenAIGPTLMHeadModel``/``OpenAIGPTModel``, ``GPT2LMHeadModel``/``GPT2Model``).
Each tensor row says how the tensors relate:

- ``copy``: the same tensor;
- ``T``: transposed (OpenAI GPT and GPT-2 store ``Conv1D`` weights as ``(in, out)``);
- ``cat``: pretune's fused QKV is the concatenation of BERT's query, key and value (the GPTs'
  ``c_attn`` is already fused in the same order, so it is only transposed).

Import and export read the same rows and the same key table, so the two directions cannot
disagree. :data:`HEADS` extends them to fine-tuned classes (``BertForSequenceClassification``,
``ElectraForQuestionAnswering``, ``GPT2DoubleHeadsModel`` ...): one row per class, saying which
task families it holds and how its head's tensors and config keys map to pretune's task head.
``transformers`` is never imported here: a checkpoint directory is ``config.json`` plus
``model.safetensors`` (or ``pytorch_model.bin``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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


def _encoder(prefix: str) -> list[Rule]:
    """The embeddings and blocks of BERT and ELECTRA: the same names under their own prefix."""
    return [
        Rule("body.embeddings.tok.weight", (f"{prefix}.embeddings.word_embeddings.weight",)),
        Rule("body.embeddings.pos.weight", (f"{prefix}.embeddings.position_embeddings.weight",)),
        Rule("body.embeddings.seg.weight", (f"{prefix}.embeddings.token_type_embeddings.weight",)),
        *_layer("body.embeddings.norm", f"{prefix}.embeddings.LayerNorm"),
        *_layer(
            "body.blocks.{i}.attn.qkv",
            f"{prefix}.encoder.layer.{{i}}.attention.self.query",
            f"{prefix}.encoder.layer.{{i}}.attention.self.key",
            f"{prefix}.encoder.layer.{{i}}.attention.self.value",
            op="cat",
        ),
        *_layer("body.blocks.{i}.attn.proj", f"{prefix}.encoder.layer.{{i}}.attention.output.dense"),
        *_layer("body.blocks.{i}.norm1", f"{prefix}.encoder.layer.{{i}}.attention.output.LayerNorm"),
        *_layer("body.blocks.{i}.mlp.fc1", f"{prefix}.encoder.layer.{{i}}.intermediate.dense"),
        *_layer("body.blocks.{i}.mlp.fc2", f"{prefix}.encoder.layer.{{i}}.output.dense"),
        *_layer("body.blocks.{i}.norm2", f"{prefix}.encoder.layer.{{i}}.output.LayerNorm"),
    ]


BERT_RULES: list[Rule] = [
    *_encoder("bert"),
    *_layer("pooler.dense", "bert.pooler.dense"),
    *_layer("mlm.dense", "cls.predictions.transform.dense"),
    *_layer("mlm.norm", "cls.predictions.transform.LayerNorm"),
    Rule("mlm.bias", ("cls.predictions.bias",)),
    *_layer("nsp", "cls.seq_relationship"),
]

# ELECTRA: no pooler; a discriminator head, or a generator head whose decoder is the (tied) word
# embedding, with an output bias of its own
ELECTRA_RULES: list[Rule] = [
    *_encoder("electra"),
    *_layer("body.embeddings_project", "electra.embeddings_project"),
    *_layer("disc.dense", "discriminator_predictions.dense"),
    *_layer("disc.out", "discriminator_predictions.dense_prediction"),
    *_layer("mlm.dense", "generator_predictions.dense"),
    *_layer("mlm.norm", "generator_predictions.LayerNorm"),
    Rule("mlm.bias", ("generator_lm_head.bias",)),
]


def _gpt_blocks(prefix: str) -> list[Rule]:
    """The blocks of OpenAI GPT and GPT-2: the same names, Conv1D weights stored transposed."""
    return [
        *_layer("body.blocks.{i}.attn.qkv", f"{prefix}.h.{{i}}.attn.c_attn", op="T"),
        *_layer("body.blocks.{i}.attn.proj", f"{prefix}.h.{{i}}.attn.c_proj", op="T"),
        *_layer("body.blocks.{i}.norm1", f"{prefix}.h.{{i}}.ln_1"),
        *_layer("body.blocks.{i}.mlp.fc1", f"{prefix}.h.{{i}}.mlp.c_fc", op="T"),
        *_layer("body.blocks.{i}.mlp.fc2", f"{prefix}.h.{{i}}.mlp.c_proj", op="T"),
        *_layer("body.blocks.{i}.norm2", f"{prefix}.h.{{i}}.ln_2"),
    ]


GPT_RULES: list[Rule] = [
    Rule("body.embeddings.tok.weight", ("transformer.tokens_embed.weight",)),
    Rule("body.embeddings.pos.weight", ("transformer.positions_embed.weight",)),
    *_gpt_blocks("transformer"),
]

GPT2_RULES: list[Rule] = [
    Rule("body.embeddings.tok.weight", ("transformer.wte.weight",)),
    Rule("body.embeddings.pos.weight", ("transformer.wpe.weight",)),
    *_gpt_blocks("transformer"),
    *_layer("body.norm_f", "transformer.ln_f"),
]

# Output layers of their own, for models with ``tie_embeddings`` off (HF: tie_word_embeddings false).
UNTIED_RULES = {
    "bert": Rule("mlm.decoder.weight", ("cls.predictions.decoder.weight",)),
    "electra": Rule("mlm.decoder.weight", ("generator_lm_head.weight",)),
    "gpt": Rule("lm_head.weight", ("lm_head.weight",)),
}

# Names in Hugging Face checkpoints that carry no weights of their own (tied or buffers).
_IGNORED = re.compile(
    r"(position_ids|cls\.predictions\.decoder\.(weight|bias)|lm_head\.weight|attn\.bias|attn\.masked_bias)$"
)

# Optional parts: a checkpoint without them still loads (e.g. BertModel has no cls.*).
OPTIONAL_PREFIXES = ("pooler.", "mlm.", "nsp.", "disc.", "head.", "lm_head.")

REQUIRED = object()  # a config key without a default


@dataclass(frozen=True)
class Arch:
    """A Hugging Face architecture: its config keys, its tensors, and what it fixes in pretune's config."""

    model_type: str
    classes: tuple[str, str]  # the class with heads, the body-only class
    prefix: str  # the body's prefix in the with-heads class
    keys: dict[str, tuple[str, Any]]  # pretune field -> (HF key, default when absent or null)
    fixed: dict[str, Any]  # pretune fields this architecture implies
    act_key: str
    acts: dict[str, str]  # HF activation name -> pretune's; the first is transformers' default
    act_names: dict[str, str]  # pretune's activation -> the HF name written on export
    rules: list[Rule]
    refuse: dict[str, Any] = field(default_factory=dict)  # HF keys that must have this value (else unsupported)
    export_extra: dict[str, Any] = field(default_factory=dict)  # constant keys written on export
    export_copies: dict[str, str] = field(default_factory=dict)  # HF key -> pretune field, written on export too
    heads: tuple[str, ...] = ("cls.", "lm_head")  # HF names outside the body's prefix
    # the class to export as, by the first pretune head present (else ``classes``): ELECTRA's
    # discriminator and generator are two classes
    head_classes: dict[str, str] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.fixed["family"]


_COMMON_GPT_KEYS: dict[str, tuple[str, Any]] = dict(
    vocab_size=("vocab_size", REQUIRED), n_layers=("n_layer", REQUIRED), hidden=("n_embd", REQUIRED),
    n_heads=("n_head", REQUIRED), max_positions=("n_positions", REQUIRED), dropout=("resid_pdrop", 0.1),
    attn_dropout=("attn_pdrop", 0.1), layer_norm_eps=("layer_norm_epsilon", 1e-5),
    initializer_range=("initializer_range", 0.02), tie_embeddings=("tie_word_embeddings", True),
)
_GPT_FIXED = dict(family="gpt", type_vocab_size=0, embed_norm=False, pad_token_id=0)
_TANH = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}

ARCHS: dict[str, Arch] = {
    "bert": Arch(
        "bert", ("BertForPreTraining", "BertModel"), "bert.",
        keys=dict(
            vocab_size=("vocab_size", REQUIRED), n_layers=("num_hidden_layers", REQUIRED),
            hidden=("hidden_size", REQUIRED), n_heads=("num_attention_heads", REQUIRED),
            ffn=("intermediate_size", REQUIRED), max_positions=("max_position_embeddings", REQUIRED),
            type_vocab_size=("type_vocab_size", 2), dropout=("hidden_dropout_prob", 0.1),
            attn_dropout=("attention_probs_dropout_prob", 0.1), layer_norm_eps=("layer_norm_eps", 1e-12),
            initializer_range=("initializer_range", 0.02), tie_embeddings=("tie_word_embeddings", True),
            pad_token_id=("pad_token_id", 0),
        ),
        fixed=dict(family="bert", norm="post", embed_norm=True),
        act_key="hidden_act", acts={"gelu": "gelu", **_TANH}, act_names={"gelu": "gelu", "gelu_tanh": "gelu_new"},
        rules=BERT_RULES, refuse={"position_embedding_type": "absolute"},
        export_extra={"position_embedding_type": "absolute"},
    ),
    "electra": Arch(
        "electra", ("ElectraForPreTraining", "ElectraModel"), "electra.",
        keys=dict(
            vocab_size=("vocab_size", REQUIRED), n_layers=("num_hidden_layers", REQUIRED),
            hidden=("hidden_size", REQUIRED), n_heads=("num_attention_heads", REQUIRED),
            ffn=("intermediate_size", REQUIRED), max_positions=("max_position_embeddings", REQUIRED),
            embedding_size=("embedding_size", 128), type_vocab_size=("type_vocab_size", 2),
            dropout=("hidden_dropout_prob", 0.1), attn_dropout=("attention_probs_dropout_prob", 0.1),
            layer_norm_eps=("layer_norm_eps", 1e-12), initializer_range=("initializer_range", 0.02),
            tie_embeddings=("tie_word_embeddings", True), pad_token_id=("pad_token_id", 0),
        ),
        fixed=dict(family="electra", norm="post", embed_norm=True),
        act_key="hidden_act", acts={"gelu": "gelu", **_TANH}, act_names={"gelu": "gelu", "gelu_tanh": "gelu_new"},
        rules=ELECTRA_RULES, refuse={"position_embedding_type": "absolute"},
        export_extra={"position_embedding_type": "absolute"},
        heads=("discriminator_predictions.", "generator_predictions.", "generator_lm_head."),
        head_classes={"disc.": "ElectraForPreTraining", "mlm.": "ElectraForMaskedLM"},
    ),
    # transformers' OpenAI GPT maps its "gelu" to the tanh approximation, and has no ffn size key
    "openai-gpt": Arch(
        "openai-gpt", ("OpenAIGPTLMHeadModel", "OpenAIGPTModel"), "transformer.",
        keys=_COMMON_GPT_KEYS, fixed=dict(_GPT_FIXED, norm="post"),
        act_key="afn", acts={"gelu": "gelu_tanh"}, act_names={"gelu_tanh": "gelu"},
        rules=GPT_RULES, export_copies={"embd_pdrop": "dropout"},
    ),
    "gpt2": Arch(
        "gpt2", ("GPT2LMHeadModel", "GPT2Model"), "transformer.",
        keys=dict(_COMMON_GPT_KEYS, ffn=("n_inner", 0)), fixed=dict(_GPT_FIXED, norm="pre"),
        act_key="activation_function", acts={**_TANH, "gelu": "gelu"}, act_names={"gelu": "gelu", "gelu_tanh": "gelu_new"},
        rules=GPT2_RULES, export_copies={"embd_pdrop": "dropout"},
        refuse={"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False},
    ),
}


def arch_of(cfg: ModelConfig) -> Arch:
    """The Hugging Face architecture a pretune config exports to (by family and LayerNorm placement)."""
    for arch in ARCHS.values():
        if arch.family == cfg.family and arch.fixed["norm"] == cfg.norm:
            return arch
    raise PretuneError(f"no Hugging Face architecture has a {cfg.family} with norm={cfg.norm!r}")


def rules_for(cfg: ModelConfig) -> list[Rule]:
    """The table for a config, with ``{i}`` expanded over layers."""
    out = []
    for rule in arch_of(cfg).rules:
        if "{i}" in rule.ours:
            out += [
                Rule(rule.ours.format(i=i), tuple(t.format(i=i) for t in rule.theirs), rule.op)
                for i in range(cfg.n_layers)
            ]
        elif rule.ours.startswith("body.embeddings.seg") and not cfg.type_vocab_size:
            continue
        elif rule.ours.startswith("body.embeddings_project") and cfg.embedding_size == cfg.hidden:
            continue
        else:
            out.append(rule)
    if not cfg.tie_embeddings:
        out.append(UNTIED_RULES[cfg.family])
    return out


def _normalise_hf_names(state: dict[str, Tensor], arch: Arch) -> dict[str, Tensor]:
    """Give every key the prefix of the with-heads classes; old ``gamma``/``beta`` become weight/bias."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        if not key.startswith((arch.prefix, *arch.heads)):
            key = arch.prefix + key
        out[key] = value
    return out


def from_hf_state_dict(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Hugging Face tensors -> pretune tensors. Parts absent from the checkpoint stay absent."""
    state = _normalise_hf_names(state, arch_of(cfg))
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
            f"(supported: {', '.join('/'.join(a.classes) for a in ARCHS.values())}, BertForMaskedLM)"
        )
    return out


def to_hf_state_dict(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """pretune tensors -> Hugging Face tensors (the names of the with-heads class of :func:`arch_of`)."""
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


def _hf_value(hf: dict[str, Any], key: str, default: Any, source: str, kind: str) -> Any:
    value = hf.get(key)
    if value is None:
        if default is REQUIRED:
            raise PretuneError(f"{source}: missing field {key!r} for model_type {kind!r}")
        return default
    return value


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """A pretune config from a Hugging Face ``config.json`` (a model_type of :data:`ARCHS`)."""
    kind = hf.get("model_type")
    if kind not in ARCHS:
        raise PretuneError(f"{source}: model_type {kind!r} is not supported (pretune reads {', '.join(map(repr, ARCHS))})")
    arch = ARCHS[kind]
    for key, expected in arch.refuse.items():
        if hf.get(key, expected) != expected:
            raise PretuneError(f"{source}: {key} {hf[key]!r} is not supported (only {expected!r})")
    act = hf.get(arch.act_key, next(iter(arch.acts)))
    if act not in arch.acts:
        raise PretuneError(f"{source}: {arch.act_key} {act!r} is not supported; use one of {sorted(arch.acts)}")
    values = {ours: _hf_value(hf, key, default, source, kind) for ours, (key, default) in arch.keys.items()}
    values["tie_embeddings"] = bool(values["tie_embeddings"])
    extra = {"source": "huggingface", "hf_architectures": hf.get("architectures", [])}
    return ModelConfig(**arch.fixed, **values, activation=arch.acts[act], extra=extra)


def export_class(cfg: ModelConfig, names: Any) -> str:
    """The ``transformers`` class a pretune model with the tensors ``names`` exports as: the class
    of its pretraining heads (ELECTRA's by head), or the body-only class when it has none."""
    arch = arch_of(cfg)
    names = list(names)
    for prefix, cls in arch.head_classes.items():
        if any(n.startswith(prefix) for n in names):
            return cls
    with_heads = any(n.startswith(("mlm.", "nsp.", "lm_head.")) for n in names) or (cfg.family == "gpt" and cfg.tie_embeddings)
    return arch.classes[0 if with_heads else 1]


def config_to_hf(cfg: ModelConfig, with_heads: bool = True, token_ids: dict[str, int] | None = None,
                 architecture: str | None = None) -> dict[str, Any]:
    """A Hugging Face ``config.json`` for a pretune config; ``token_ids`` adds ``bos_token_id``,
    ``eos_token_id``, ... (from the tokenizer). Refused when the Hugging Face model would not
    compute what this one does (read back, the config must be the same)."""
    arch = arch_of(cfg)
    if cfg.activation not in arch.act_names:
        raise PretuneError(f"{arch.classes[0]} in transformers has no {cfg.activation!r} activation")
    name = architecture or arch.classes[0 if with_heads else 1]
    hf = {"architectures": [name], "model_type": arch.model_type, **arch.export_extra}
    hf.update({key: getattr(cfg, ours) for ours, (key, _) in arch.keys.items()})
    hf.update({key: getattr(cfg, ours) for key, ours in arch.export_copies.items()})
    hf[arch.act_key] = arch.act_names[cfg.activation]
    hf.update({"bos_token_id": None, "eos_token_id": None, **(token_ids or {})})  # not transformers' GPT-2 ids
    back = config_from_hf(hf, source="export")
    differ = [f for f in ("norm", "embed_norm", "type_vocab_size", "ffn", "embedding_size") if getattr(back, f) != getattr(cfg, f)]
    if differ:
        raise PretuneError(
            f"{arch.classes[0]} cannot hold this model: {', '.join(f'{f}={getattr(cfg, f)!r}' for f in differ)} "
            f"(it has {', '.join(f'{f}={getattr(back, f)!r}' for f in differ)})"
        )
    return hf


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


# --- fine-tuned task heads ---------------------------------------------------------------------
#
# A fine-tuned pretune model is a body with a task head (``head.out``: one Linear, see
# pretune.tasks.TaskModel). Each row below is one transformers class that holds such a head
# exactly, as data: the architecture it extends, the task families it holds, its head's tensors,
# the optional backbone parts it keeps beside the body, and its config keys. Export and import
# read the same rows. Adding an architecture's heads is adding rows.

TASK_KEY = "pretune_task"  # config.json key under which an export records its pretune task (TaskSpec)


@dataclass(frozen=True)
class Head:
    """A transformers class holding a fine-tuned task head (config.json ``architectures``)."""

    model_type: str  # the Arch it extends
    cls: str  # transformers' class
    families: tuple[str, ...]  # the pretune task families it holds
    rules: tuple[Rule, ...]  # pretune ``head.*`` (and a pooler the Arch lacks) -> its head's tensors (top-level names)
    keeps: tuple[str, ...] = ()  # optional backbone parts it holds beside ``body.*`` (BERT's pooler, an LM layer)
    labels: bool = False  # num_labels sizes its output layer: id2label / label2id are written and read
    problem_type: bool = False  # "single_label_classification" or "regression" is written
    bias: bool = True  # False: its output layer has no bias; pretune's is folded into the weight (fold_bias)
    last_token: bool = False  # reads the last token that is not pad_token_id (which must be the padding id)
    dropout_key: str | None = None  # the config key of the dropout before the head
    config: dict[str, Any] = field(default_factory=dict)  # constant keys: written on export, required on import
    # "pretune": the inputs are in GPT-1's layout (<|start|> ... <|extract|>), so the head is read back only
    # from pretune's own export (config.json has TASK_KEY); a head trained on plain text is not loaded
    layout: str = "any"


def _linear(ours: str, theirs: str) -> tuple[Rule, ...]:
    return tuple(_layer(ours, theirs))


_CLASSES = ("classification", "regression")
# transformers' SequenceSummary as the DoubleHeads models use it: the state at mc_token_ids, one Linear to 1
_SUMMARY = {"summary_type": "cls_index", "summary_use_proj": True, "summary_proj_to_labels": True,
            "summary_activation": None}


def _gpt_heads(model_type: str, name: str, tagging: bool) -> list[Head]:
    rows = [
        Head(model_type, f"{name}ForSequenceClassification", _CLASSES, (Rule("head.out.weight", ("score.weight",)),),
             labels=True, problem_type=True, bias=False, last_token=True, layout="pretune"),
        Head(model_type, f"{name}DoubleHeadsModel", ("multiple-choice",),
             _linear("head.out", "multiple_choice_head.summary"), keeps=("lm_head.",),
             dropout_key="summary_first_dropout", config=_SUMMARY, layout="pretune"),
    ]
    if tagging:  # transformers has GPT2ForTokenClassification, no OpenAIGPTForTokenClassification
        rows.append(Head(model_type, f"{name}ForTokenClassification", ("tagging",), _linear("head.out", "classifier"),
                         labels=True, dropout_key="classifier_dropout", layout="pretune"))
    return rows


HEADS: list[Head] = [
    Head("bert", "BertForSequenceClassification", _CLASSES, _linear("head.out", "classifier"), keeps=("pooler.",),
         labels=True, problem_type=True, dropout_key="classifier_dropout"),
    Head("bert", "BertForMultipleChoice", ("multiple-choice",), _linear("head.out", "classifier"),
         keeps=("pooler.",), dropout_key="classifier_dropout"),
    Head("bert", "BertForTokenClassification", ("tagging",), _linear("head.out", "classifier"), labels=True,
         dropout_key="classifier_dropout"),
    # start logits are output 0, end logits output 1, in transformers as in pretune
    Head("bert", "BertForQuestionAnswering", ("qa",), _linear("head.out", "qa_outputs"), labels=True),
    # ELECTRA has no pooler of its own: pretune's ELECTRA pooler (dropout, dense, GELU on [CLS]) is
    # the first half of transformers' ElectraClassificationHead and of its multiple-choice summary
    Head("electra", "ElectraForSequenceClassification", _CLASSES,
         (*_linear("pooler.dense", "classifier.dense"), *_linear("head.out", "classifier.out_proj")),
         labels=True, problem_type=True, dropout_key="classifier_dropout"),
    Head("electra", "ElectraForMultipleChoice", ("multiple-choice",),
         (*_linear("pooler.dense", "sequence_summary.summary"), *_linear("head.out", "classifier")),
         config={"summary_type": "first", "summary_use_proj": True, "summary_proj_to_labels": False,
                 "summary_activation": "gelu"}),
    Head("electra", "ElectraForTokenClassification", ("tagging",), _linear("head.out", "classifier"), labels=True,
         dropout_key="classifier_dropout"),
    Head("electra", "ElectraForQuestionAnswering", ("qa",), _linear("head.out", "qa_outputs"), labels=True),
    *_gpt_heads("openai-gpt", "OpenAIGPT", tagging=False),
    *_gpt_heads("gpt2", "GPT2", tagging=True),
]


def _out(head: Head) -> Rule:
    """The rule of the head's output layer (``head.out.weight``), whose rows are the head's outputs."""
    return next(rule for rule in head.rules if rule.ours == "head.out.weight")


def head_for(cfg: ModelConfig, family: str) -> Head | None:
    """The transformers class that holds a ``family`` head on this config's architecture, if any."""
    model_type = arch_of(cfg).model_type
    return next((h for h in HEADS if h.model_type == model_type and family in h.families), None)


def head_of_hf(hf: dict[str, Any]) -> Head | None:
    """The row of a Hugging Face ``config.json`` whose class holds a task head (None: a body or LM class)."""
    names = hf.get("architectures") or []
    return next((h for h in HEADS if h.model_type == hf.get("model_type") and h.cls in names), None)


def final_norm(cfg: ModelConfig) -> str:
    """pretune's name of the LayerNorm whose output is the body's last hidden state."""
    return "body.norm_f" if cfg.norm == "pre" else f"body.blocks.{cfg.n_layers - 1}.norm2"


def fold_bias(weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor) -> Tensor | None:
    """A weight ``W'`` with ``W' h = W h + b`` for every output ``h = γ ⊙ z + β`` of a LayerNorm.

    A LayerNorm's normalised vector sums to zero, so ``Σ_j (h_j - β_j) / γ_j = 0`` and
    ``v = (1/γ) / Σ_j (β_j / γ_j)`` has ``v·h = 1`` for every such ``h``: ``W' = W + b vᵀ``. None
    when that is not exact in float32: a γ is 0, or ``Σ β/γ`` is so near 0 that ``v`` is huge (a
    LayerNorm still at its initial β = 0). Checked on LayerNorm-shaped states: float32 ``W' h``
    within 5e-6 of float64 ``W h + b`` (relative to the largest logit, at least 1): half the 1e-5
    that pretune's parity with transformers allows, the other half left to the body.
    """
    if not bool(bias.any()):
        return weight.clone()
    w, b, g, be = (t.detach().double() for t in (weight, bias, gamma, beta))
    if bool((g == 0).any()):
        return None
    total = (be / g).sum()
    if float(total.abs()) < 1e-12:
        return None
    folded = w + b[:, None] * ((1.0 / g) / total)[None, :]
    z = torch.randn(256, g.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    z = (z - z.mean(1, keepdim=True)) / z.std(1, unbiased=False, keepdim=True)
    h = (z * g + be).float()
    want = h.double() @ w.T + b
    got = (h @ folded.float().T).double()
    if float((got - want).abs().max()) > 5e-6 * max(1.0, float(want.abs().max())):
        return None
    return folded.to(weight.dtype)


def head_to_hf(head: Head, state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor] | None:
    """The task head's tensors under ``head``'s names (None: its bias cannot be folded, see :func:`fold_bias`)."""
    out = {rule.theirs[0]: state[rule.ours].contiguous().clone() for rule in head.rules}
    if not head.bias:
        norm = final_norm(cfg)
        folded = fold_bias(state["head.out.weight"], state["head.out.bias"], state[f"{norm}.weight"],
                           state[f"{norm}.bias"])
        if folded is None:
            return None
        out[_out(head).theirs[0]] = folded.contiguous()
    return out


def head_config(head: Head, *, n_out: int, labels: list[str] | None, family: str, dropout: float | None,
                record: dict[str, Any]) -> dict[str, Any]:
    """The config.json keys of ``head``'s class: labels, problem type, dropout, constants, pretune's task."""
    keys: dict[str, Any] = {"architectures": [head.cls], **head.config}
    if head.labels:
        names = labels or [f"LABEL_{i}" for i in range(n_out)]
        keys["id2label"] = {str(i): name for i, name in enumerate(names)}
        keys["label2id"] = {name: i for i, name in enumerate(names)}
    if head.problem_type:
        keys["problem_type"] = "regression" if family == "regression" else "single_label_classification"
    if head.dropout_key is not None and dropout is not None:
        keys[head.dropout_key] = dropout
    keys[TASK_KEY] = record
    return keys


@dataclass
class HeadImport:
    """The task head of a Hugging Face fine-tuned directory, as pretune reads it."""

    head: Head
    family: str | None  # the pretune task family; None when the head is refused
    tensors: dict[str, Tensor]  # pretune names (head.*); empty when refused
    labels: list[str] | None = None  # class or tag names (classification, tagging)
    dropout: float | None = None  # the dropout before the head, when the config sets it
    record: dict[str, Any] | None = None  # pretune's own task record (an export of pretune's)
    refused: str | None = None  # why the head is not loaded (the body still is)


def _placeholder(names: list[str]) -> bool:
    return names == [f"LABEL_{i}" for i in range(len(names))]


def _label_names(hf: dict[str, Any], n: int, source: str) -> list[str]:
    raw = hf.get("id2label") or {str(i): f"LABEL_{i}" for i in range(n)}
    try:
        by_id = {int(k): str(v) for k, v in raw.items()}
    except (AttributeError, TypeError, ValueError):
        raise PretuneError(f"{source}: id2label must map class ids to names, got {raw!r}") from None
    if sorted(by_id) != list(range(n)):
        raise PretuneError(f"{source}: id2label names classes {sorted(by_id)} but the head has {n} outputs")
    return [by_id[i] for i in range(n)]


def split_head(hf: dict[str, Any], state: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], HeadImport | None]:
    """The body's tensors and the task head of a fine-tuned class of :data:`HEADS` (None otherwise).

    The head is loaded where pretune's task model holds it exactly; otherwise ``refused`` says why
    and only the body is loaded (its tensors are left out either way, so the body loads alone).
    """
    head = head_of_hf(hf)
    if head is None:
        rows = [h for h in HEADS if h.model_type == hf.get("model_type")]
        known = sorted({t for h in rows for rule in h.rules for t in rule.theirs} & set(state))
        if known:  # e.g. an old checkpoint whose config.json names no architectures
            raise PretuneError(
                f"{source}: tensors such as {known[0]} belong to a fine-tuned class, but architectures "
                f"{hf.get('architectures')} names none; set it to the class the model was trained as "
                f"({', '.join(h.cls for h in rows)})"
            )
        return state, None
    names = [t for rule in head.rules for t in rule.theirs]
    absent = [t for t in names if t not in state]
    if absent:
        raise PretuneError(f"{source}: a {head.cls} checkpoint without its head's tensor(s) {absent}")
    body = {k: v for k, v in state.items() if k not in names}
    theirs = {t: state[t] for t in names}
    n = theirs[_out(head).theirs[0]].shape[0]
    record = hf.get(TASK_KEY) if isinstance(hf.get(TASK_KEY), dict) else None
    family, why = head.families[0], None
    if len(head.families) > 1:  # sequence classification: classes or a score
        kind = hf.get("problem_type") or ("regression" if n == 1 else "single_label_classification")
        family = {"regression": "regression", "single_label_classification": "classification"}.get(kind)
        if family is None:
            why = f"problem_type {kind!r} has no pretune task family (classification and regression do)"
    differs = [k for k, v in head.config.items() if hf.get(k, v) != v]
    if differs:
        why = f"its {', '.join(f'{k}={hf[k]!r}' for k in differs)} computes another head than pretune's"
    if head.layout == "pretune" and record is None:
        why = ("its inputs were not laid out as pretune's GPT-1 fine-tuning lays them out (<|start|> ... "
               "<|extract|>; only pretune's own export records that)")
    if why is not None:
        return body, HeadImport(head, None, {}, refused=f"the {head.cls} head is not loaded: {why}")
    tensors = {rule.ours: theirs[rule.theirs[0]] for rule in head.rules}
    if not head.bias:
        weight = tensors["head.out.weight"]
        tensors["head.out.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    labels = None
    if head.labels and family in ("classification", "tagging"):
        given = _label_names(hf, n, source)
        keep = record is not None and record.get("labels") == given
        labels = given if keep or not _placeholder(given) else [str(i) for i in range(n)]
    dropout = hf.get(head.dropout_key) if head.dropout_key else None
    return body, HeadImport(head, family, tensors, labels, dropout, record)
