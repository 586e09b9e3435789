"""Model directories: ``config.json`` + ``model.safetensors`` + tokenizer files, written atomically.

``load_model`` accepts whatever a user may pass as ``--model``: a preset name, a config JSON file,
a pretune model directory, or a Hugging Face checkpoint directory (converted on the fly).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pretune import hf
from pretune.config import PRESETS, ModelConfig, preset, read_json
from pretune.errors import PretuneError
from pretune.io import atomic_dir, atomic_path, write_json
from pretune.models import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class LoadedModel:
    model: nn.Module
    config: ModelConfig
    tokenizer: Any | None  # pretune.tokenizer.Tokenizer
    task: dict[str, Any] | None = None  # what fine-tuning saved: task name, labels, ...
    source: str = ""  # "preset", "config", "pretune" or "huggingface"
    missing: list[str] = field(default_factory=list)  # optional tensors initialised fresh


# --- saving ------------------------------------------------------------------------------------


def state_dict_for_saving(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, Tensor]:
    """Contiguous CPU tensors (tied weights are stored once), leaving out ``exclude``.

    ``exclude`` names tensors that were never trained, e.g. the pretraining heads a body-only
    Hugging Face checkpoint lacked: saving their random values would pass them off as weights.
    """
    skip = set(exclude)
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k not in skip}


def write_model_files(
    directory: Path,
    model: nn.Module,
    tokenizer: Any | None = None,
    task: dict[str, Any] | None = None,
    exclude: Iterable[str] = (),
) -> None:
    """Write config, weights and tokenizer into an existing directory, each file atomically."""
    cfg: ModelConfig = model.cfg
    data = cfg.to_dict()
    if task is not None:
        data["task"] = task
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state_dict_for_saving(model, exclude), str(tmp), metadata={"format": "pt", "pretune": "1"})
    write_json(directory / CONFIG_FILE, data)
    if tokenizer is not None:
        tokenizer.save(directory)


def save_model(
    out_dir: str | Path,
    model: nn.Module,
    tokenizer: Any | None = None,
    task: dict[str, Any] | None = None,
    exclude: Iterable[str] = (),
) -> Path:
    """Save a complete model directory. A new directory appears only once it is complete; into an
    existing one (a run directory) every file is replaced atomically."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        write_model_files(out_dir, model, tokenizer, task, exclude)
    else:
        with atomic_dir(out_dir) as tmp:
            write_model_files(tmp, model, tokenizer, task, exclude)
    return out_dir


# --- loading -----------------------------------------------------------------------------------


def is_hf_dir(path: Path) -> bool:
    cfg = path / CONFIG_FILE
    return cfg.is_file() and "model_type" in read_json(cfg)


def load_state(model: nn.Module, state: dict[str, Tensor], source: str) -> list[str]:
    """Copy ``state`` into ``model``, checking every name and shape.

    Tensors of optional parts (pooler, pretraining heads, task head) may be missing: they keep
    their fresh initialisation and are returned. Anything else missing, unknown or of the wrong
    shape is a :class:`PretuneError` naming the tensor.
    """
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    # A task head saved by fine-tuning is dropped when loading into a model without one.
    unknown = [k for k in unknown if not k.startswith("head.")]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise PretuneError(f"{source}: {len(unknown)} tensor(s) the model does not have: {shown}")
    missing = sorted(set(own) - set(state))
    required = [k for k in missing if not k.startswith(hf.OPTIONAL_PREFIXES)]
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
    return missing


def _load_tokenizer(path: Path) -> Any | None:
    from pretune.tokenizer import Tokenizer

    names = ("tokenizer.json", "vocab.txt", "vocab.json")
    if not any((path / n).is_file() for n in names):
        return None
    return Tokenizer.load(path)


def check_vocab(cfg: ModelConfig, tokenizer: Any | None, source: str) -> None:
    """The tokenizer must fit the model's embedding table exactly."""
    if tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
        raise PretuneError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{cfg.vocab_size}; use the tokenizer the model was trained with (or set vocab_size)"
        )


def load_model(
    spec: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    tokenizer: Any | None = None,
    prepare: Callable[[nn.Module, dict[str, Any] | None], None] | None = None,
) -> LoadedModel:
    """Load (or build) a model from a preset name, a config file, a pretune or an HF directory.

    ``prepare(model, task)`` runs after the model is built and before weights are copied in: it
    attaches a task head (``task`` is what fine-tuning saved in config.json, or None) so that a
    fine-tuned checkpoint's ``head.*`` tensors find their place.
    """
    spec_str = str(spec)
    path = Path(spec_str)
    overrides = overrides or {}
    if (spec_str in PRESETS and not path.exists()) or (path.is_file() and path.suffix == ".json"):
        if path.is_file():
            cfg = ModelConfig.load(path)
            cfg = cfg.replace(**overrides) if overrides else cfg
        else:
            cfg = preset(spec_str, **overrides)
        model = build_model(cfg)
        if prepare is not None:
            prepare(model, None)
        return LoadedModel(model, cfg, tokenizer, source="preset" if not path.is_file() else "config")
    if not path.exists():
        raise PretuneError(
            f"--model {spec_str!r}: no such directory or file, and not a preset "
            f"(presets: {', '.join(PRESETS)})"
        )
    if not path.is_dir():
        raise PretuneError(f"--model {spec_str!r}: expected a model directory, a config .json or a preset name")
    if not (path / CONFIG_FILE).is_file():
        raise PretuneError(f"{path}: not a model directory (no {CONFIG_FILE})")
    raw = read_json(path / CONFIG_FILE)
    if "model_type" in raw:
        cfg = hf.config_from_hf(raw, source=str(path / CONFIG_FILE))
        state = hf.from_hf_state_dict(hf.read_hf_weights(path), cfg)
        source_kind, task = "huggingface", None
    else:
        cfg = ModelConfig.from_dict(raw, source=str(path / CONFIG_FILE))
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise PretuneError(f"{path}: no {WEIGHTS_FILE}")
        state = load_file(str(weights), device="cpu")
        source_kind, task = "pretune", raw.get("task")
    if overrides:
        cfg = cfg.replace(**overrides)
    if tokenizer is None:
        tokenizer = _load_tokenizer(path)
    check_vocab(cfg, tokenizer, str(path))
    model = build_model(cfg)
    if prepare is not None:
        prepare(model, task)
    missing = load_state(model, state, str(path / (WEIGHTS_FILE if (path / WEIGHTS_FILE).is_file() else "")))
    return LoadedModel(model, cfg, tokenizer, task, source_kind, missing)


def export_hf(
    model: nn.Module, out_dir: str | Path, tokenizer: Any | None = None, exclude: Iterable[str] = ()
) -> Path:
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
