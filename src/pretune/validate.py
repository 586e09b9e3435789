"""Settings checked before any work: a run that cannot succeed stops in its first second.

Each value's own range is declared with its field (``setting(check=...)``, checked by
:func:`pretune.settings.check_ranges`); this module checks what needs more than one value or a
look at the disk: the input files exist, ``--out`` can be made where it is asked for and is no
input, lengths fit the model's ``max_positions``, and the memory a training step would take fits
the machine. Every message names the flag to change. Training calls :func:`pretrain_settings`
and :func:`finetune_settings` first thing, whether it was started from the command line or from
code (the demo).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pretune.checkpoint import MODEL_FILES, ModelSource, model_config, model_source, tokenizer_path
from pretune.config import ModelConfig, objective_for
from pretune.errors import PretuneError
from pretune.io import check_out_file, check_out_place
from pretune.settings import check_ranges

FP32 = 4  # bytes


def existing_file(path: str | Path, flag: str) -> Path:
    """``path`` if it is a file; else a one-line error naming ``flag``."""
    p = Path(path)
    if not p.exists():
        raise PretuneError(f"{flag} {path}: no such file")
    if p.is_dir():
        raise PretuneError(f"{flag} {path}: is a directory; give a file")
    return p


def existing_dir(path: str | Path | None, flag: str) -> Path | None:
    """``path`` if it is a directory (None stays None); else a one-line error naming ``flag``."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_dir():
        raise PretuneError(f"{flag} {path}: {'is a file, not a directory' if p.exists() else 'no such directory'}")
    return p


def _model_inputs(source: ModelSource, tokenizer: str | None) -> tuple[Path, ...]:
    """The directories (and config file) a run reads its model and tokenizer from."""
    given = [source.path] if source.path is not None else []
    return tuple(given) + ((tokenizer_path(tokenizer),) if tokenizer else ())


def check_length(flag: str, length: int, cfg: ModelConfig, source: ModelSource) -> None:
    """A sequence length the model has positions for."""
    if length > cfg.max_positions:
        hint = f"; --set max_positions={length} builds a model that long" if source.fresh else ""
        raise PretuneError(f"{flag} {length} is more than the model's max_positions ({cfg.max_positions}){hint}")


# --------------------------------------------------------------------------------------------
# Memory


def parameter_count(cfg: ModelConfig) -> int:
    """Weights of the body and its output layer (biases and LayerNorms left out: under 1%)."""
    h, f = cfg.hidden, cfg.ffn
    embeddings = (cfg.vocab_size + cfg.max_positions + cfg.type_vocab_size) * h
    return embeddings + cfg.n_layers * (4 * h * h + 2 * h * f) + h * h


def training_bytes(cfg: ModelConfig, batch: int, length: int, cpu: bool) -> int:
    """The memory one fp32 training step takes: weights, gradients and AdamW's two moments, and the
    activations kept for the backward pass. Per token and layer that is about 12 x hidden + 4 x ffn
    floats; attention with dropout on a CPU also keeps its (length x length) probabilities, about
    4 floats per pair and head (SDPA's CPU kernel has no dropout). Measured for bert-tiny (vocabulary
    8,000, batch 8, one forward and backward, the rise of peak RSS over the built model, 2-core
    Zen 3): 0.29 / 0.66 / 2.1 GB at length 512 / 1024 / 2048 with attention dropout, 0.46 GB at
    2048 without; the activation part of this estimate: 0.26 / 0.79 / 2.65 and 0.50 GB."""
    tokens = batch * length
    per_token = cfg.n_layers * (12 * cfg.hidden + 4 * cfg.ffn) + 4 * cfg.hidden
    attention = batch * cfg.n_layers * cfg.n_heads * length * length * 4 if cpu and cfg.attn_dropout > 0 else 0
    return 16 * parameter_count(cfg) + FP32 * (tokens * per_token + attention)


def available_bytes(device: str) -> tuple[int, str] | None:
    """Free memory where the run would train: the GPU's free memory ("GPU"), or the host's
    available RAM ("CPU"); None where it cannot be told."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            return None  # the device check reports it
        index = int(device.split(":")[1]) if ":" in device else int(os.environ.get("LOCAL_RANK", "0"))  # torchrun's GPU
        try:
            free, _ = torch.cuda.mem_get_info(index)
        except (RuntimeError, AssertionError):  # CUDA reported but not usable: the device check reports it
            return None
        return free, "GPU"
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            fields = dict(line.split(":", 1) for line in fh)
        return int(fields["MemAvailable"].split()[0]) * 1024, "CPU"
    except (OSError, KeyError, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "CPU"
        except (OSError, ValueError, AttributeError):
            return None


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n < 1e12 else f"{n / 1e12:,.1f} TB"


def check_memory(cfg: ModelConfig, batch: int, length: int, device: str, length_flag: str) -> None:
    """Refuse a run whose training step cannot fit in memory (it would swap or be killed after a
    long wait), naming the flags that size it."""
    free = available_bytes(device)
    if free is None:
        return
    needed = training_bytes(cfg, batch, length, cpu=free[1] == "CPU")
    if needed > free[0]:
        where = "free on the GPU" if free[1] == "GPU" else "available on this machine"
        raise PretuneError(
            f"--batch-size {batch} x {length_flag} {length}: a training step would need about {_gb(needed)} "
            f"and {_gb(free[0])} is {where}; lower {length_flag} or --batch-size (--grad-accum keeps the batch)"
        )


# --------------------------------------------------------------------------------------------
# The commands


def _paths(values: Iterable[str | None], flag: str) -> list[Path]:
    """The input files given (a data set of the datasets library: its file or directory; an
    ``hf:NAME`` is checked when it is loaded)."""
    return [p for v in values if v for p in data_inputs(v, flag)]


def data_inputs(value: str, flag: str) -> list[Path]:
    """The local paths a task-data value reads, which must exist: a file, or a data set's file or
    ``save_to_disk`` directory (none for an ``hf:`` name)."""
    from pretune.tasks.sources import is_dataset, local_path

    if not is_dataset(value):
        return [existing_file(value, flag)]
    path = local_path(value)
    if path is not None and not path.exists():
        raise PretuneError(f"{flag} {value}: no such file or data set directory")
    return [path] if path is not None else []


def _model_and_out(s: Any, files: list[Path]) -> tuple[ModelSource, ModelConfig]:
    """--model and --tokenizer exist, --out may be made and is none of the inputs; the model's config."""
    source = model_source(s.model)
    existing_dir(tokenizer_path(s.tokenizer) if s.tokenizer else None, "--tokenizer")
    check_out_place(s.out, inputs=(*files, *_model_inputs(source, s.tokenizer)))
    if source.fresh and not s.tokenizer:
        raise PretuneError(f"--tokenizer is required when --model is a preset or a config file ({s.model})")
    return source, model_config(s.model, s.overrides)


def check_outputs(s: Any, out: str | Path | None) -> None:
    """A verb that reads ``s.data`` with ``s.model`` and may write ``out``: --data exists, and a
    given ``out`` file follows the one rule (:func:`pretune.io.check_out_file`): never --data or one
    of the model directory's own files, and an existing file only with ``s.overwrite``."""
    data = data_inputs(s.data, "--data")
    source = model_source(s.model)
    if out is not None:
        model_files = [source.path / name for name in sorted(MODEL_FILES)] if source.path is not None else []
        check_out_file(out, inputs=(*data, *model_files), overwrite=s.overwrite)


def pretrain_settings(s: Any) -> None:
    """``pretune pretrain``: ranges, files, --out, the model, lengths and memory, before any work."""
    check_ranges(s)
    source, cfg = _model_and_out(s, _paths(s.data or [], "--data"))
    objective_for(s.objective, cfg.family, s.model)
    check_length("--seq-len", s.seq_len, cfg, source)
    if source.fresh and "max_positions" not in s.overrides:
        cfg = cfg.replace(max_positions=max(s.seq_len, 128))  # what pretraining builds
    check_memory(cfg, s.batch_size, s.seq_len, s.trainer.device, "--seq-len")


def finetune_settings(s: Any) -> None:
    """``pretune finetune``: ranges, files, --out, the model, lengths, layers and memory, before any work."""
    check_ranges(s)
    files = [*_paths([s.train], "--train"), *_paths([s.validation], "--validation"), *_paths([s.test], "--test")]
    if not s.validation and s.validation_split is None:
        raise PretuneError("--validation FILE (or --validation-split FRACTION of --train) is required")
    source, cfg = _model_and_out(s, files)
    length = cfg.max_positions if s.max_seq_len is None else s.max_seq_len
    check_length("--max-seq-len", length, cfg, source)
    for flag, layers in (("--freeze-layers", s.freeze_layers), ("--transfer-layers", s.transfer_layers)):
        if layers is not None and layers > cfg.n_layers:
            raise PretuneError(f"{flag} {layers}: the model has {cfg.n_layers} layers")
    check_memory(cfg, s.batch_size, length, s.trainer.device, "--max-seq-len")


__all__ = [
    "available_bytes", "check_length", "check_memory", "check_outputs", "data_inputs", "existing_dir", "existing_file", "finetune_settings",
    "parameter_count", "pretrain_settings", "training_bytes",
]
