"""Model configuration: one dataclass for both families, and named presets.

A :class:`ModelConfig` is saved as ``config.json`` in every model directory. Presets give the
shapes of the papers and of the small BERTs of Turc et al. (2019); any field can be overridden.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from pretune.errors import PretuneError

FORMAT_VERSION = 1
SHAPE_FIELDS = ("vocab_size", "n_layers", "hidden", "n_heads", "ffn", "max_positions", "type_vocab_size")
FAMILIES = ("bert", "gpt", "electra")
ENCODERS = ("bert", "electra")  # bidirectional, [CLS] ... [SEP], segment embeddings: fine-tuned alike

Family = Literal["bert", "gpt", "electra"]


@dataclass
class ModelConfig:
    """Shape and behaviour of a GPT, BERT or ELECTRA transformer.

    ``family`` decides the heads and the attention pattern: ``gpt`` is causal (decoder-only),
    ``bert`` is bidirectional with segment embeddings, pooler, masked-LM and NSP heads, ``electra``
    is the same encoder with ELECTRA's heads (replaced-token detection for a discriminator, a
    masked-LM head for a generator) and, when ``embedding_size`` differs from ``hidden``, a
    projection from the embeddings to the hidden size (``embeddings_project``).
    """

    family: Family
    vocab_size: int = 30522
    n_layers: int = 12
    hidden: int = 768
    n_heads: int = 12
    ffn: int = 0  # 0 means 4 * hidden
    embedding_size: int = 0  # 0 means hidden; ELECTRA-small embeds in 128 and projects to 256
    max_positions: int = 512
    type_vocab_size: int = 2  # segment embeddings (BERT); 0 for none
    dropout: float = 0.1  # embeddings, residual branches
    attn_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    norm: Literal["post", "pre"] = "post"  # post-LN (GPT-1, BERT); pre-LN with a final LayerNorm (GPT-2)
    embed_norm: bool = True  # LayerNorm after the embedding sum (BERT yes, GPT-1 no)
    tie_embeddings: bool = True  # output layer (MLM decoder / LM head) = token embedding, as in both papers
    initializer_range: float = 0.02
    pad_token_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes (e.g. source checkpoint)

    def __post_init__(self) -> None:
        if self.ffn == 0:
            self.ffn = 4 * self.hidden
        if self.embedding_size == 0:
            self.embedding_size = self.hidden
        self.validate()

    @property
    def causal(self) -> bool:
        return self.family == "gpt"

    @property
    def encoder(self) -> bool:
        """Bidirectional with ``[CLS]``/``[SEP]`` and segments (BERT, ELECTRA): fine-tuned the same way."""
        return self.family in ENCODERS

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    def validate(self) -> None:
        """Raise :class:`PretuneError` naming the first field that is out of range."""
        if self.family not in FAMILIES:
            raise PretuneError(f"config field 'family' must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        for name in ("vocab_size", "n_layers", "hidden", "n_heads", "ffn", "max_positions", "embedding_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise PretuneError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.hidden % self.n_heads:
            raise PretuneError(
                f"config: hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.activation not in ("gelu", "gelu_tanh"):
            raise PretuneError(f"config field 'activation' must be 'gelu' or 'gelu_tanh', got {self.activation!r}")
        if self.norm not in ("post", "pre"):
            raise PretuneError(f"config field 'norm' must be 'post' or 'pre', got {self.norm!r}")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise PretuneError(f"config field {name!r} must be in [0, 1), got {value!r}")
        if self.embedding_size != self.hidden and self.family != "electra":
            raise PretuneError(f"config field 'embedding_size' ({self.embedding_size}) may differ from hidden ({self.hidden}) "
                               "only for family 'electra'")
        if self.type_vocab_size < 0:
            raise PretuneError(f"config field 'type_vocab_size' must be >= 0, got {self.type_vocab_size}")

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed (validated)."""
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise PretuneError(f"unknown config field(s) {sorted(unknown)}; valid: {field_names()}")
        data = asdict(self)
        data.update(overrides)
        if "hidden" in overrides and "ffn" not in overrides:
            data["ffn"] = 0
        if "hidden" in overrides and "embedding_size" not in overrides and self.embedding_size == self.hidden:
            data["embedding_size"] = 0
        return ModelConfig(**data)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "pretune", "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config", *, with_weights: bool = False) -> ModelConfig:
        """A config from a JSON object. ``with_weights``: the config.json of a model directory, which
        must state every field that shapes its weights (a default would mislead: a missing
        ``hidden`` would otherwise surface as a tensor-shape mismatch)."""
        data = {k: v for k, v in data.items() if k not in ("format", "format_version", "task", "saved")}  # saved: checkpoint.py
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise PretuneError(f"{source}: unknown field(s) {sorted(unknown)}; valid: {sorted(names)}")
        if "family" not in data:
            raise PretuneError(f"{source}: missing field 'family' ({', '.join(map(repr, FAMILIES))})")
        absent = [name for name in SHAPE_FIELDS if name not in data] if with_weights else []
        if absent:
            raise PretuneError(f"{source}: missing field {absent[0]!r}, which the saved weights need "
                               f"(a model directory's config.json states {', '.join(SHAPE_FIELDS)})")
        try:
            return cls(**data)
        except TypeError as exc:
            raise PretuneError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        data = read_json(path)
        return cls.from_dict(data, source=str(path))


# Each family's own pretraining objective, and the families each objective trains (``--objective``)
OBJECTIVES = {"bert": "mlm", "gpt": "clm", "electra": "electra"}
OBJECTIVE_FAMILIES = {"mlm": ("bert",), "clm": ("gpt",), "electra": ("bert", "electra")}


def objective_for(objective: str, family: str, model: str | None = None) -> str:
    """The objective a pretraining run trains: ``objective``, or the family's own for ``auto``;
    a family the objective cannot train is a one-line error naming ``--objective``."""
    chosen = OBJECTIVES[family] if objective == "auto" else objective
    fits = OBJECTIVE_FAMILIES[chosen]
    if family not in fits:
        raise PretuneError(f"--objective {chosen} trains a {' or '.join(fits)} model, but --model {model} is a {family}")
    return chosen


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig)]


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object from a file, with one-line errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PretuneError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise PretuneError(f"{path}: not valid UTF-8 ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise PretuneError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise PretuneError(f"{path}: expected a JSON object at the top level")
    return data


# Shapes: (layers, hidden, heads). The small BERTs follow Turc et al. (2019).
_SHAPES = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


def _bert(shape: str) -> dict[str, Any]:
    layers, hidden, heads = _SHAPES[shape]
    return dict(family="bert", n_layers=layers, hidden=hidden, n_heads=heads)


def _electra(shape: str, **kw: Any) -> dict[str, Any]:
    layers, hidden, heads = _SHAPES[shape]
    return dict(family="electra", n_layers=layers, hidden=hidden, n_heads=heads, **kw)


def _gpt(shape: str, **kw: Any) -> dict[str, Any]:
    layers, hidden, heads = _SHAPES[shape]
    base = dict(
        family="gpt", n_layers=layers, hidden=hidden, n_heads=heads, max_positions=512,
        type_vocab_size=0, layer_norm_eps=1e-5, activation="gelu_tanh", embed_norm=False,
        vocab_size=40478,
    )
    base.update(kw)
    return base


PRESETS: dict[str, dict[str, Any]] = {
    **{f"bert-{s}": _bert(s) for s in ("tiny", "mini", "small", "medium", "base", "large")},
    **{f"gpt-{s}": _gpt(s) for s in ("tiny", "mini", "small")},
    # Clark et al. (2020): ELECTRA-Small is 12 layers, 256 wide, 4 heads, embeddings of 128 projected
    # up; Base and Large have the shapes of BERT's. The tiny and mini ones have the small BERTs' shapes.
    **{f"electra-{s}": _electra(s) for s in ("tiny", "mini")},
    "electra-small": dict(family="electra", n_layers=12, hidden=256, n_heads=4, embedding_size=128),
    "electra-base": _electra("base"),
    "electra-large": _electra("large"),
    "gpt1": _gpt("base"),  # Radford et al. (2018): 12 layers, 768 wide, 12 heads, context 512
    # Radford et al. (2019): pre-LN blocks and a final LayerNorm, context 1024, byte-level BPE of 50,257.
    # Named by their parameter counts: "gpt2" and "gpt2-medium" are Hugging Face Hub ids of the
    # pretrained weights, and a preset is always randomly initialised.
    "gpt2-124m": _gpt("base", norm="pre", max_positions=1024, vocab_size=50257),
    "gpt2-355m": _gpt("large", norm="pre", max_positions=1024, vocab_size=50257),  # 24 layers, 1024 wide, 16 heads
}

# Former preset names that are Hub ids of pretrained checkpoints: the name -> (preset, Hub id).
# They are errors that name both, never random weights under a pretrained model's name.
RETIRED_PRESETS = {
    "gpt2": ("gpt2-124m", "openai-community/gpt2"),
    "gpt2-medium": ("gpt2-355m", "openai-community/gpt2-medium"),
}


def retired_preset(name: str, flag: str = "--model") -> PretuneError:
    """The error for a former preset name (:data:`RETIRED_PRESETS`)."""
    new, hub_id = RETIRED_PRESETS[name]
    return PretuneError(
        f"{flag} {name}: no longer a preset (it built random weights under the name of OpenAI's pretrained "
        f"checkpoint); for the pretrained weights pass {hub_id}, for a randomly initialised "
        f"model of that shape the preset {new}"
    )


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The named preset's config, with fields overridden."""
    if name in RETIRED_PRESETS:
        raise retired_preset(name, "preset")
    if name not in PRESETS:
        raise PretuneError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    data = dict(PRESETS[name])
    data.update(overrides)
    unknown = set(data) - set(field_names())
    if unknown:
        raise PretuneError(f"unknown config field(s) {sorted(unknown)}; valid: {field_names()}")
    return ModelConfig(**data)
