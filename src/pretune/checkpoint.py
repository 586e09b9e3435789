"""Model directories: ``config.json`` + ``model.safetensors`` + tokenizer files, written atomically.

:func:`load_model` accepts whatever a user may pass as ``--model``: a preset name, a config JSON
file, a pretune model directory, a Hugging Face checkpoint directory (converted on the fly), or a
Hugging Face Hub id (``org/name[@revision]``, fetched into the Hugging Face cache by
:mod:`pretune.hub` and read as the directory it is); :func:`model_source` says which of these a
``--model`` value is, with one rule for every verb.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pretune import hf, hub
from pretune.config import FAMILIES, PRESETS, RETIRED_PRESETS, ModelConfig, preset, read_json, retired_preset
from pretune.errors import PretuneError
from pretune.io import atomic_dir, fsync_path, write_json
from pretune.models import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json")
# every file a model directory's version consists of (the tokenizer's as Tokenizer.save writes them)
MODEL_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, *TOKENIZER_FILES, "merges.txt", "special_tokens_map.json",
                         "tokenizer_config.json"})
PENDING_DIR = ".pending-model"
MANIFEST = "files.json"  # in PENDING_DIR: the files of the version it holds
SAVED_KEY = "saved"  # config.json: {"version": id repeated in the weights' metadata, "tokenizer_sha256": ...}


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
    directory: Path, model: nn.Module, tokenizer: Any | None = None, task: Any | None = None, exclude: Iterable[str] = (),
    state: dict[str, Tensor] | None = None,
) -> None:
    """Write config, weights and tokenizer into the new directory ``directory``.

    ``state`` (default: the model's own tensors) is what a sharded model gathered for saving. The
    config records a version id that the weights' metadata repeats and the tokenizer's digest, so
    that files of two different saves are never taken for one model (:func:`check_versions`).
    """
    data = model.cfg.to_dict()
    if task is not None:
        data["task"] = task.to_dict()
    skip = set(exclude)
    weights = {k: v for k, v in (state_dict_for_saving(model) if state is None else state).items() if k not in skip}
    version = uuid.uuid4().hex
    if tokenizer is not None:
        tokenizer.save(directory)
    data[SAVED_KEY] = {"version": version, "tokenizer_sha256": _tokenizer_digest(directory)}
    save_file(weights, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "pretune": "1", "version": version})
    write_json(directory / CONFIG_FILE, data)


def save_model(
    out_dir: str | Path, model: nn.Module, tokenizer: Any | None = None, task: Any | None = None,
    exclude: Iterable[str] = (), *, replace: bool = False, state: dict[str, Tensor] | None = None,
) -> Path:
    """Save a complete model directory, never a mix of two versions.

    A new directory (or, with ``replace``, a whole new version of an existing one) is built under a
    temporary name and renamed into place. Into an existing run directory (which also holds
    checkpoints and logs), the new version is first built and flushed whole as ``.pending-model/``
    with the list of its files (one rename: the commit point), then its files are moved over the old
    ones; a crash in between leaves the pending version, which the next load or save finishes
    moving (:func:`finish_pending`).
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir() and not replace:
        finish_pending(out_dir)
        with atomic_dir(out_dir / PENDING_DIR) as tmp:
            write_model_files(tmp, model, tokenizer, task, exclude, state)
            (tmp / MANIFEST).write_text(json.dumps(sorted(p.name for p in tmp.iterdir())), encoding="utf-8")
        finish_pending(out_dir)
    else:
        with atomic_dir(out_dir) as tmp:
            write_model_files(tmp, model, tokenizer, task, exclude, state)
    return out_dir


def finish_pending(directory: str | Path) -> None:
    """Move the files of a complete pending version into ``directory`` (after a crash: again).

    The model files of the old version that the new one lacks (another tokenizer's vocabulary)
    are removed, so the directory holds exactly one version.
    """
    directory = Path(directory)
    pending = directory / PENDING_DIR
    if not pending.is_dir():
        return
    try:
        names = set(json.loads((pending / MANIFEST).read_text(encoding="utf-8")))
        for name in MODEL_FILES - names:
            (directory / name).unlink(missing_ok=True)
        for name in sorted(names, key=lambda n: n == CONFIG_FILE):  # the config last
            if (pending / name).exists():  # not yet moved by the interrupted attempt
                os.replace(pending / name, directory / name)
        fsync_path(directory)
        (pending / MANIFEST).unlink()
        pending.rmdir()
        fsync_path(directory)
    except OSError as exc:
        raise PretuneError(
            f"{directory}: an interrupted save left {PENDING_DIR}/ and it cannot be finished ({exc.strerror or exc}); "
            f"move its files into {directory} by hand"
        ) from None


def _tokenizer_digest(directory: Path) -> str | None:
    path = directory / "tokenizer.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def check_versions(directory: Path, raw: dict[str, Any]) -> None:
    """Refuse a model directory whose weights or tokenizer come from another save than its config."""
    saved = raw.get(SAVED_KEY)
    if not isinstance(saved, dict):
        return  # saved before versions were recorded, or written by hand
    try:
        with safe_open(str(directory / WEIGHTS_FILE), "pt") as f:
            weights_version = (f.metadata() or {}).get("version")
    except (SafetensorError, OSError):
        return  # read_weights reports the unreadable file
    stale = []
    if weights_version is not None and weights_version != saved.get("version"):  # None: weights saved elsewhere
        stale.append(WEIGHTS_FILE)
    if saved.get("tokenizer_sha256") and _tokenizer_digest(directory) != saved["tokenizer_sha256"]:
        stale.append("the tokenizer files")
    if stale:
        raise PretuneError(
            f"{directory}: {' and '.join(stale)} come(s) from another save than {CONFIG_FILE} (a save was interrupted "
            f"or files were copied in); save the model again, or restore the directory"
        )


def export_hf(model: nn.Module, out_dir: str | Path, tokenizer: Any | None = None, exclude: Iterable[str] = (), *,
              task: Any | None = None, head: dict[str, Tensor] | None = None, body_only: bool = False,
              source: str = "the model") -> Path:
    """Write a Hugging Face directory (config.json, model.safetensors, tokenizer files) atomically.

    A fine-tuned model (a :class:`pretune.tasks.TaskModel`, or a backbone with its ``task`` and
    ``head`` tensors as :func:`load_model` returns them) becomes the transformers class that holds
    its head (``BertForSequenceClassification`` ...: :data:`pretune.hf.HEADS`); a head no class
    computes exactly is refused (one line naming ``source``), and ``body_only`` exports the body alone.
    """
    cfg: ModelConfig = model.cfg
    state = {**state_dict_for_saving(model, exclude), **(head or {})}
    task = task if task is not None else getattr(model, "spec", None)
    token_ids = tokenizer.hf_token_ids() if tokenizer is not None else None
    if task is not None and not body_only:
        from pretune.tasks.huggingface import export_head  # a fine-tuned model's task head

        pad_id = tokenizer.padding_id if tokenizer is not None else 0  # the collator's (the one padding rule)
        row, head_state, keys = export_head(cfg, task, state, pad_id=pad_id, source=source)
        body = {k: v for k, v in state.items() if k.startswith(("body.", *row.keeps))}
        hf_state = {**hf.to_hf_state_dict(body, cfg), **head_state}
        hf_cfg = {**hf.config_to_hf(cfg, token_ids=token_ids, architecture=row.cls), **keys}
        return _write_hf(out_dir, hf_state, hf_cfg, tokenizer)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    hf_state = hf.to_hf_state_dict(state, cfg)
    hf_cfg = hf.config_to_hf(cfg, token_ids=token_ids, architecture=hf.export_class(cfg, state))
    return _write_hf(out_dir, hf_state, hf_cfg, tokenizer)


def _write_hf(out_dir: str | Path, hf_state: dict[str, Tensor], hf_cfg: dict[str, Any], tokenizer: Any | None) -> Path:
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
    path: Path | None  # the config file or the model directory (a Hub id's snapshot in the Hugging Face cache)
    hub: bool = False  # ``spec`` is a Hugging Face Hub id

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
    if spec_str in RETIRED_PRESETS and not path.exists():
        raise retired_preset(spec_str, flag)
    presets = f", or preset (presets: {', '.join(PRESETS)})" if "/" not in spec_str else ""
    snapshot = None if path.exists() else hub.resolve(spec_str, flag, other=presets)
    if snapshot is not None:
        if not (snapshot / CONFIG_FILE).is_file():
            raise PretuneError(f"{flag} {spec_str}: the Hugging Face repository has no {CONFIG_FILE}; not a model")
        kind = "huggingface" if "model_type" in read_json(snapshot / CONFIG_FILE) else "pretune"
        return ModelSource(kind, spec_str, snapshot, hub=True)
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
    if family not in FAMILIES:
        raise PretuneError(f"{source.path}: config field 'family' must be one of {', '.join(FAMILIES)}, got {family!r}")
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


def tokenizer_path(path: str | Path, *, flag: str = "--tokenizer") -> Path:
    """Where a ``--tokenizer`` value's files are: the path itself, or a Hub id's snapshot (tokenizer
    files only) in the Hugging Face cache; a missing path is a one-line error."""
    p = Path(path)
    if p.exists():
        return p
    snapshot = hub.resolve(str(path), flag, weights=False)
    if snapshot is None:
        raise PretuneError(f"{flag} {p}: no such directory (train one with `pretune tokenizer train`, or give a "
                           f"Hugging Face Hub id such as org/name)")
    if not any((snapshot / n).is_file() for n in TOKENIZER_FILES):
        raise PretuneError(f"{flag} {path}: the Hugging Face repository has no tokenizer files "
                           f"({', '.join(TOKENIZER_FILES)})")
    return snapshot


def load_tokenizer(path: str | Path | None, *, flag: str = "--tokenizer") -> Any | None:
    """The tokenizer of a directory (or a Hub id's), or None when ``path`` is None or holds no
    tokenizer files."""
    if path is None:
        return None
    from pretune.tokenizer import Tokenizer

    p = tokenizer_path(path, flag=flag)
    if p.is_dir() and not any((p / n).is_file() for n in TOKENIZER_FILES):
        return None
    return Tokenizer.load(p)


def check_vocab(cfg: ModelConfig, tokenizer: Any | None, source: str) -> None:
    """Every token id must have a row in the model's embedding table.

    A tokenizer smaller than ``vocab_size`` is accepted, as Hugging Face does: checkpoints often pad
    the table (to a multiple of 8 or 64, or KoBERT-style to a round number); the rows no token
    reaches are never predicted (:func:`pretune.lm.common.limit_to_tokenizer`). A larger one is
    refused: its last ids would index past the table."""
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise PretuneError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is only "
            f"{cfg.vocab_size}; use the tokenizer the model was trained with (or set vocab_size)"
        )


def _read_config(source: ModelSource, overrides: dict[str, Any]) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config (with overrides) and the raw config.json of a directory."""
    if source.kind == "preset":
        return preset(source.spec, **overrides), {}
    if source.kind == "config":
        cfg = ModelConfig.load(source.path)
        return (cfg.replace(**overrides) if overrides else cfg), {}
    if source.kind == "pretune":
        finish_pending(source.path)
    raw = read_json(source.path / CONFIG_FILE)
    where = str(source.path / CONFIG_FILE)
    if source.kind == "huggingface":
        cfg = hf.config_from_hf(raw, source=where)
    else:
        check_versions(source.path, raw)
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
    found = None
    if source.kind == "huggingface":
        body, found = hf.split_head(raw, hf.read_hf_weights(path), str(path / CONFIG_FILE))
        state, where = hf.from_hf_state_dict(body, cfg), str(path)
        state.update(found.tensors if found is not None else {})
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
    if found is not None:  # a Hugging Face fine-tuned class: its head's task
        from pretune.tasks.huggingface import import_head

        task = import_head(found, cfg, str(path / CONFIG_FILE))
        if found.refused:
            warnings.warn(f"{path}: {found.refused}; only the body is loaded", stacklevel=2)
    return LoadedModel(model, cfg, tokenizer, task, source.kind, missing, head)


__all__ = [
    "CONFIG_FILE", "WEIGHTS_FILE", "LoadedModel", "ModelSource", "check_versions", "check_vocab", "export_hf",
    "finish_pending", "load_model", "load_state", "load_tokenizer", "model_config", "model_source", "read_weights",
    "save_model", "source_family",
    "state_dict_for_saving", "tokenizer_path", "write_model_files",
]
