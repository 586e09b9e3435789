"""Model directories: ``config.json`` + ``model.safetensors`` + tokenizer files, written atomically.

:func:`load_model` accepts whatever a user may pass as ``--model``: a preset name, a config JSON
file, a pretune model directory, or a Hugging Face checkpoint directory (converted on the fly);
:func:`model_source` says which of these a ``--model`` value is, with one rule for every verb.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pretune import hf
from pretune.config import PRESETS, ModelConfig, preset, read_json
from pretune.errors import PretuneError
from pretune.io import atomic_dir, atomic_path, write_json
from pretune.models import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")


@dataclass
class LoadedModel:
    model: nn.Module  # a BERT or GPT (the backbone); a task head is in ``head``
    config: ModelConfig
    tokenizer: Any | None  # pretune.tokenizer.Tokenizer
    task: Any | None = None  # pretune.tasks.TaskSpec: what fine-tuning saved, or None
    source: str = ""  # "preset", "config", "pretune" or "huggingface"
    missing: list[str] = field(default_factory=list)  # optional tensors initialised fresh
    head: dict[str, Tensor] = field(default_factory=dict)  # a fine-tuned model's head.* tensors


# --- saving ------------------------------------------------------------------------------------


def state_dict_for_saving(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, Tensor]:
    """Contiguous CPU tensors (tied weights are stored once), leaving out ``exclude``.

    ``exclude`` names tensors that were never trained, e.g. the pretraining heads a body-only
    Hugging Face checkpoint lacked: saving their random values would pass them off as weights.
    """
    skip = set(exclude)
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k not in skip}


def write_model_files(
    directory: Path, model: nn.Module, tokenizer: Any | None = None, task: Any | None = None, exclude: Iterable[str] = ()
) -> None:
    """Write config, weights and tokenizer into ``directory``, each file atomically."""
    data = model.cfg.to_dict()
    if task is not None:
        data["task"] = task.to_dict()
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state_dict_for_saving(model, exclude), str(tmp), metadata={"format": "pt", "pretune": "1"})
    write_json(directory / CONFIG_FILE, data)
    if tokenizer is not None:
        tokenizer.save(directory)


def save_model(
    out_dir: str | Path, model: nn.Module, tokenizer: Any | None = None, task: Any | None = None,
    exclude: Iterable[str] = (), *, replace: bool = False,
) -> Path:
    """Save a complete model directory. A new directory (or, with ``replace``, a whole new version
    of an existing one) appears only once it is complete; into an existing run directory every
    file is replaced atomically."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and not replace:
        write_model_files(out_dir, model, tokenizer, task, exclude)
    else:
        with atomic_dir(out_dir) as tmp:
            write_model_files(tmp, model, tokenizer, task, exclude)
    return out_dir


def export_hf(model: nn.Module, out_dir: str | Path, tokenizer: Any | None = None, exclude: Iterable[str] = ()) -> Path:
    """Write a Hugging Face directory (config.json, model.safetensors, tokenizer files) atomically."""
    cfg: ModelConfig = model.cfg
    state = state_dict_for_saving(model, exclude)
    with_heads = any(k.startswith(("mlm.", "nsp.")) for k in state)
    hf_state = hf.to_hf_state_dict(state, cfg)
    hf_cfg = hf.config_to_hf(cfg, with_heads)
    with atomic_dir(out_dir) as tmp:
        save_file(hf_state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_cfg, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp)
    return Path(out_dir)


# --- what --model names ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "preset" | "config" | "pretune" | "huggingface"
    spec: str
    path: Path | None  # the config file or the model directory

    @property
    def fresh(self) -> bool:
        """Randomly initialised (a preset or a bare config file): it needs a tokenizer given."""
        return self.kind in ("preset", "config")


def model_source(spec: str | Path, flag: str = "--model") -> ModelSource:
    """Which kind of ``--model`` this is; anything else is a one-line error (naming ``flag``)."""
    spec_str = str(spec)
    path = Path(spec_str)
    if spec_str in PRESETS and not path.exists():
        return ModelSource("preset", spec_str, None)
    if path.is_file() and path.suffix == ".json":
        if (path.parent / WEIGHTS_FILE).is_file() and path.name == CONFIG_FILE:
            raise PretuneError(
                f"{flag} {spec_str}: this config.json belongs to a model directory; pass the directory "
                f"{path.parent} to load its weights (a config file alone builds random weights)"
            )
        return ModelSource("config", spec_str, path)
    if not path.exists():
        raise PretuneError(f"{flag} {spec_str!r}: no such directory or file, and not a preset (presets: {', '.join(PRESETS)})")
    if not path.is_dir():
        raise PretuneError(f"{flag} {spec_str!r}: expected a model directory, a config .json or a preset name")
    if not (path / CONFIG_FILE).is_file():
        raise PretuneError(f"{path}: not a model directory (no {CONFIG_FILE})")
    kind = "huggingface" if "model_type" in read_json(path / CONFIG_FILE) else "pretune"
    return ModelSource(kind, spec_str, path)


def source_family(source: ModelSource) -> str:
    """``bert`` or ``gpt``, read from the preset or the config without loading weights."""
    if source.kind == "preset":
        return PRESETS[source.spec]["family"]
    raw = read_json(source.path if source.kind == "config" else source.path / CONFIG_FILE)
    if source.kind == "huggingface":
        return hf.config_from_hf(raw, source=str(source.path / CONFIG_FILE)).family
    family = raw.get("family")
    if family not in ("bert", "gpt"):
        raise PretuneError(f"{source.path}: config field 'family' must be 'bert' or 'gpt', got {family!r}")
    return family


# --- loading -----------------------------------------------------------------------------------


def read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file; a truncated or corrupt file is a one-line error."""
    if not path.is_file():
        raise PretuneError(f"{path.parent}: no {path.name}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise PretuneError(f"{path}: cannot read the weights ({str(exc).splitlines()[0]}); the file is truncated or corrupt") from None


def load_state(model: nn.Module, state: dict[str, Tensor], source: str, *,
               strict: bool = False) -> tuple[list[str], dict[str, Tensor]]:
    """Copy ``state`` into ``model``, checking every name and shape.

    Tensors of optional parts (pooler, pretraining heads) may be missing: they keep their fresh
    initialisation and are returned. A fine-tuned model's task head (``head.*``) is returned
    separately. Anything else missing, unknown or of the wrong shape is a :class:`PretuneError`
    naming the tensor (one line, where ``load_state_dict`` prints one per tensor). ``strict``
    (a training checkpoint of exactly this model): nothing may be missing, ``head.*`` included.
    """
    own = model.state_dict()
    head = {} if strict else {k: v for k, v in state.items() if k.startswith("head.")}
    unknown = sorted(set(state) - set(own) - set(head))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise PretuneError(f"{source}: {len(unknown)} tensor(s) the model does not have: {shown}")
    missing = sorted(set(own) - set(state))
    required = missing if strict else [k for k in missing if not k.startswith(hf.OPTIONAL_PREFIXES)]
    if required:
        shown = ", ".join(required[:5]) + (" ..." if len(required) > 5 else "")
        raise PretuneError(f"{source}: missing {len(required)} tensor(s): {shown}")
    for name, tensor in state.items():
        if name in own and tuple(own[name].shape) != tuple(tensor.shape):
            raise PretuneError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(own[name].shape)} in the model config"
            )
    with torch.no_grad():
        for name, tensor in state.items():
            if name in own:
                own[name].copy_(tensor)
    return missing, head


def load_tokenizer(path: str | Path | None, *, flag: str = "--tokenizer") -> Any | None:
    """The tokenizer of a directory, or None when ``path`` is None or holds no tokenizer files."""
    if path is None:
        return None
    from pretune.tokenizer import Tokenizer

    p = Path(path)
    if not p.exists():
        raise PretuneError(f"{flag} {p}: no such directory (train one with `pretune tokenizer train`)")
    if p.is_dir() and not any((p / n).is_file() for n in TOKENIZER_FILES):
        return None
    return Tokenizer.load(p)


def check_vocab(cfg: ModelConfig, tokenizer: Any | None, source: str) -> None:
    """The tokenizer must fit the model's embedding table exactly."""
    if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
        raise PretuneError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{cfg.vocab_size}; use the tokenizer the model was trained with (or set vocab_size)"
        )


def _read_config(source: ModelSource, overrides: dict[str, Any]) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config (with overrides) and the raw config.json of a directory."""
    if source.kind == "preset":
        return preset(source.spec, **overrides), {}
    if source.kind == "config":
        cfg = ModelConfig.load(source.path)
        return (cfg.replace(**overrides) if overrides else cfg), {}
    raw = read_json(source.path / CONFIG_FILE)
    where = str(source.path / CONFIG_FILE)
    if source.kind == "huggingface":
        cfg = hf.config_from_hf(raw, source=where)
    else:
        cfg = ModelConfig.from_dict(raw, source=where, with_weights=True)
    return (cfg.replace(**overrides) if overrides else cfg), raw


def model_config(spec: str | Path, overrides: dict[str, Any] | None = None) -> ModelConfig:
    """The config of what ``--model`` names (with ``overrides``), read without loading any weights."""
    return _read_config(model_source(spec), overrides or {})[0]


def load_model(spec: str | Path, *, overrides: dict[str, Any] | None = None, tokenizer: Any | None = None) -> LoadedModel:
    """Load (or build) a model from a preset name, a config file, a pretune or an HF directory.

    ``tokenizer`` replaces the directory's own. A fine-tuned directory's task comes back as a
    :class:`pretune.tasks.TaskSpec` in ``task`` and its head's tensors in ``head``.
    """
    source = model_source(spec)
    cfg, raw = _read_config(source, overrides or {})
    if source.fresh:
        return LoadedModel(build_model(cfg), cfg, tokenizer, source=source.kind)
    path = source.path
    if source.kind == "huggingface":
        state, where = hf.from_hf_state_dict(hf.read_hf_weights(path), cfg), str(path)
    else:
        state, where = read_weights(path / WEIGHTS_FILE), str(path / WEIGHTS_FILE)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path, flag="--model")
    check_vocab(cfg, tokenizer, str(path))
    model = build_model(cfg)
    missing, head = load_state(model, state, where)
    task = None
    if raw.get("task") is not None:
        from pretune.tasks import TaskSpec

        task = TaskSpec.from_dict(raw["task"], source=str(path / CONFIG_FILE))
    return LoadedModel(model, cfg, tokenizer, task, source.kind, missing, head)


__all__ = [
    "CONFIG_FILE", "WEIGHTS_FILE", "LoadedModel", "ModelSource", "check_vocab", "export_hf", "load_model",
    "load_state", "load_tokenizer", "model_config", "model_source", "read_weights", "save_model", "source_family",
    "state_dict_for_saving", "write_model_files",
]
