"""Settings checked before any work: a run that cannot succeed stops in its first second.

Each value's own range is declared with its field (``setting(check=...)``, checked by
:func:`pretune.settings.check_ranges`); this module checks what needs more than one value or a
look at the disk: the input files exist, ``--out`` can be made where it is asked for and is no
input, lengths fit the model's ``max_positions``, and the memory a training step would take fits
the machine (per process, in the precision it will run in, for the lengths it will see;
``--no-memory-check`` skips it). Every message names the flag to change. Training calls
:func:`pretrain_settings` and :func:`finetune_settings` first thing, whether it was started from
the command line or from code (the demo); fine-tuning checks its memory with
:func:`finetune_memory` once its examples are tokenized (they decide a batch's length).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
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


# Bytes per activation kept for the backward pass. Under bf16/fp16 autocast a GPU runs the matmuls,
# attention and GELU in half precision: 2 bytes (LayerNorm's inputs stay fp32, a small share; not
# measured: no GPU was lent to this work). On a CPU attention runs in fp32 under autocast
# (tuning.CPU_BF16_ATTENTION_IN_FP32, read by models/core.py: SDPA's bf16 CPU backward is slow), and
# with its fp32 copies of queries, keys and values a bf16 step's rise of peak RSS was 0.78 and 0.92
# of fp32's (bert-mini b8 s512, bert-tiny b8 s1024, no attention dropout, one thread of a Xeon with
# AMX): 3.5 bytes.
ACTIVATION_BYTES = {("cpu", "fp32"): 4.0, ("cpu", "half"): 3.5, ("gpu", "fp32"): 4.0, ("gpu", "half"): 2.0}


def training_bytes(cfg: ModelConfig, batch: int, length: int, cpu: bool, *, precision: str = "fp32", shards: int = 1) -> int:
    """The memory one process's training step takes with ``batch`` sequences of ``length`` tokens:
    fp32 weights, gradients and AdamW's two moments (16 bytes a parameter, divided over ``shards``
    processes under FSDP; autocast adds a half-precision copy of the weights, 2 bytes), and the
    activations kept for the backward pass. Per token and layer those are about 12 x hidden + 4 x
    ffn values, at :data:`ACTIVATION_BYTES` each (``precision``: ``fp32``, ``bf16`` or ``fp16``, as
    resolved); attention with dropout on a CPU also keeps its (length x length) probabilities, about
    4 fp32 values per pair and head (SDPA's CPU kernel has no dropout; they stay fp32 under
    autocast). Measured for bert-tiny (vocabulary 8,000, batch 8, one forward and backward, the rise
    of peak RSS over the built model, 2-core Zen 3): 0.29 / 0.66 / 2.1 GB at length 512 / 1024 /
    2048 with attention dropout, 0.46 GB at 2048 without; the activation part of this estimate:
    0.26 / 0.79 / 2.65 and 0.50 GB."""
    half = precision in ("bf16", "fp16")
    per_value = ACTIVATION_BYTES[("cpu" if cpu else "gpu", "half" if half else "fp32")]
    tokens = batch * length
    per_token = cfg.n_layers * (12 * cfg.hidden + 4 * cfg.ffn) + 4 * cfg.hidden
    attention = batch * cfg.n_layers * cfg.n_heads * length * length * 4 if cpu and cfg.attn_dropout > 0 else 0
    weights = 16 * parameter_count(cfg) // max(shards, 1) + (2 * parameter_count(cfg) if half else 0)
    return weights + int(per_value * tokens * per_token) + FP32 * attention


def processes() -> tuple[int, int]:
    """The run's processes and those on this machine: torchrun's ``WORLD_SIZE`` and
    ``LOCAL_WORLD_SIZE`` (1 and 1 without torchrun)."""
    def read(name: str, default: int) -> int:
        try:
            return max(1, int(os.environ.get(name, default)))
        except ValueError:
            return default

    world = read("WORLD_SIZE", 1)
    return world, min(read("LOCAL_WORLD_SIZE", world), world)


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


def _resolved(precision: str, where: str) -> str:
    """``--precision`` as the trainer will resolve it where the run trains ("GPU" or "CPU"): ``auto``
    by the one rule (:mod:`pretune.precision`); the trainer checks that an explicit value can run."""
    if precision != "auto":
        return precision
    import torch

    from pretune.precision import resolve_precision

    return resolve_precision(precision, torch.device("cuda" if where == "GPU" else "cpu"))


def check_memory(cfg: ModelConfig, batch: int, length: int, device: str, length_flag: str, *, precision: str = "fp32",
                 fsdp: bool = False, tokens: int | None = None, sequences: int = 1) -> None:
    """Refuse a run whose training step cannot fit in memory (it would swap or be killed after a
    long wait), naming the flags that size it.

    ``batch`` is the global batch (``--batch-size``): under torchrun each of the ``WORLD_SIZE``
    processes runs ``batch // WORLD_SIZE`` of it, each on its own GPU, or all ``LOCAL_WORLD_SIZE``
    of this machine in its RAM. A step's sequences are ``tokens`` long (default ``length``, the
    flag's value; fine-tuning gives its longest training example, as batches are padded to their
    longest), ``sequences`` per example (the choices of a multiple-choice example)."""
    free = available_bytes(device)
    if free is None:
        return
    world, local = processes()
    tokens = length if tokens is None else tokens
    cpu = free[1] == "CPU"
    one = training_bytes(cfg, max(1, batch // world) * sequences, tokens, cpu, precision=_resolved(precision, free[1]),
                         shards=world if fsdp else 1)
    needed = one * (local if cpu else 1)
    if needed > free[0]:
        where = "free on the GPU" if free[1] == "GPU" else "available on this machine"
        each = f" ({local} processes here, {_gb(one)} each)" if cpu and local > 1 else " per process" if world > 1 else ""
        longest = f" (the longest training example: {tokens} tokens)" if tokens != length else ""
        raise PretuneError(
            f"--batch-size {batch} x {length_flag} {length}{longest}: a training step would need about {_gb(needed)}{each} "
            f"and {_gb(free[0])} is {where}; lower {length_flag} or --batch-size (--grad-accum keeps the batch), "
            "or pass --no-memory-check to try anyway"
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
    if s.trainer.memory_check:
        check_memory(cfg, s.batch_size, s.seq_len, s.trainer.device, "--seq-len", precision=s.trainer.precision,
                     fsdp=s.trainer.fsdp)


def finetune_settings(s: Any) -> None:
    """``pretune finetune``: ranges, files, --out, the model, lengths and layers, before any work (the
    memory a step takes depends on the examples' lengths: :func:`finetune_memory`, once they are tokenized)."""
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


def finetune_memory(s: Any, cfg: ModelConfig, features: Sequence[dict[str, Any]]) -> None:
    """``pretune finetune``, once its training features are built and before anything is trained or
    cleared: whether a step fits. Batches are padded to their longest example, so the estimate takes
    the longest training sequence (within --max-seq-len), not the cap itself: the features are built
    anyway, this costs one pass over their lengths."""
    if not s.trainer.memory_check or not features:
        return
    rows = [f["input_ids"] if f["input_ids"] and isinstance(f["input_ids"][0], list) else [f["input_ids"]] for f in features]
    cap = cfg.max_positions if s.max_seq_len is None else s.max_seq_len
    longest = max(len(seq) for seqs in rows for seq in seqs)
    check_memory(cfg, s.batch_size, cap, s.trainer.device, "--max-seq-len", precision=s.trainer.precision,
                 fsdp=s.trainer.fsdp, tokens=min(longest, cap), sequences=len(rows[0]))


__all__ = [
    "ACTIVATION_BYTES", "available_bytes", "check_length", "check_memory", "check_outputs", "data_inputs", "existing_dir",
    "existing_file", "finetune_memory", "finetune_settings", "parameter_count", "pretrain_settings", "processes", "training_bytes",
]
