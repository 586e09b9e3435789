"""Processes under ``torchrun``: who this process is, its device, and what ranks do together.

Every rank runs the same code. Rank 0 alone touches the run directory; a decision about it
(refuse, resume from which checkpoint) is taken by rank 0 and sent to the others with
:func:`on_main`, so every rank stops with the same one-line error rather than waiting for a rank
that has already failed. Data parallelism is DistributedDataParallel, or FSDP2
(``torch.distributed.fsdp.fully_shard``) with ``--fsdp``: one shard per transformer block and one
for the rest. Full (unsharded) state dicts for saving come from
``torch.distributed.checkpoint.state_dict``, which gathers FSDP shards onto rank 0 and leaves
replicated models as they are; the same calls load a checkpoint read by rank 0 into every rank.
"""

from __future__ import annotations

import atexit
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from pretune.errors import PretuneError

T = TypeVar("T")
TIMEOUT_ENV = "PRETUNE_DIST_TIMEOUT"  # seconds a rank waits for the others in a collective (default 1800)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group when started by ``torchrun`` (NCCL on GPUs, gloo on CPU).

    The group pretune joins is left when the process ends, normally or with an error
    (:func:`leave_process_group`, the one place that calls ``destroy_process_group``): one group
    per process, kept from one run to the next in the same process, since torch re-creates a
    destroyed default group under the same store keys and its ranks may then meet stale addresses.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
        atexit.register(leave_process_group)
    return Dist(rank, world, local)


def leave_process_group() -> None:
    """``destroy_process_group`` if the group still exists (run at exit; NCCL warns of, and may
    leak, a group never destroyed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str, d: Dist = Dist()) -> torch.device:
    """This rank's device for ``--device`` (:func:`pretune.precision.resolve_device`)."""
    from pretune import precision

    return precision.resolve_device(name, d.local_rank if d.enabled else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` and DistributedDataParallel wrappers (FSDP2 shards in place)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a rank's own random numbers (dropout): derived from the run seed and the rank."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(rank), 0xD0]).generate_state(1, np.uint64)[0])


def check_global_batch(batch_size: int, d: Dist) -> None:
    """``--batch-size`` is the global batch: every process takes an equal share of it."""
    if batch_size >= 1 and batch_size % d.world_size:
        lower, higher = batch_size - batch_size % d.world_size, batch_size + d.world_size - batch_size % d.world_size
        shown = f"{lower} or {higher}" if lower else str(higher)
        raise PretuneError(f"--batch-size {batch_size} is the global batch and must be divisible by the number of processes "
                           f"({d.world_size}); use {shown}")


# --- what ranks do together --------------------------------------------------------------------


def on_main(fn: Callable[[], T], d: Dist) -> T:
    """``fn()`` on rank 0, its result sent to every rank; a :class:`PretuneError` it raises is
    raised on every rank (the others would otherwise wait for rank 0 until the timeout)."""
    result, error = None, None
    if d.main:
        try:
            result = fn()
        except PretuneError as exc:
            error = str(exc)
    if d.enabled:
        box = [result, error]
        dist.broadcast_object_list(box, 0)
        result, error = box
    if error is not None:
        raise PretuneError(error)
    return result  # type: ignore[return-value]


def gather_to_main(obj: Any, d: Dist) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size if d.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_sum(values: Tensor, d: Dist) -> Tensor:
    """``values`` summed over ranks (a copy; the caller's tensor is left alone)."""
    if not d.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def shard(items: Sequence[T], d: Dist) -> tuple[list[T], int]:
    """This rank's share of ``items`` for evaluation: items ``rank, rank + W, ...``, padded with the
    first item to the same length on every rank (a sharded model must run the same number of
    forward passes everywhere); returns the share and how many of it are real."""
    mine = list(items[d.rank :: d.world_size])
    size = -(-len(items) // d.world_size)
    real = len(mine)
    return mine + [items[0]] * (size - real) if items else mine, real


def unshard(parts: list[list[T]], n: int) -> list[T]:
    """Items in their original order from every rank's (real) share of :func:`shard`."""
    out: list[Any] = [None] * n
    for rank, part in enumerate(parts):
        out[rank :: len(parts)] = part
    return out


# --- FSDP2 and full state dicts ------------------------------------------------------------------


def fully_shard_model(model: nn.Module, device: torch.device, d: Dist) -> nn.Module:
    """Shard ``model`` in place with FSDP2: each transformer block, then the rest (embeddings, heads)."""
    from torch.distributed.device_mesh import init_device_mesh

    from pretune.models.core import Block

    fully_shard = fsdp2()[0]

    # FSDP2 warns when a forward returns a view (our outputs carry detached losses, which are views);
    # nothing in pretune modifies a model output in place, the case the warning is about.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device.type, (d.world_size,))
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: nn.Module, d: Dist) -> dict[str, Tensor]:
    """The whole model's tensors as contiguous CPU tensors on rank 0 (gathered from FSDP shards;
    every rank must call it). Other ranks get an empty dict."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    if not _is_sharded(model):
        return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()} if d.main else {}
    state = get_model_state_dict(model, options=_options(cpu_offload=True))
    return {k: v.contiguous() for k, v in state.items()} if d.main else {}


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, d: Dist) -> dict[str, Any]:
    """The optimizer's state keyed by parameter names (the same format for one process, DDP and
    FSDP, so a checkpoint resumes under any of them); on rank 0, empty elsewhere."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=d.enabled))
    return state if d.main else {}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict[str, Tensor],
                    optim: dict[str, Any], d: Dist) -> None:
    """Load full state dicts read by rank 0 into every rank's (replicated or sharded) model and optimizer."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    options = _options(broadcast_from_rank0=d.enabled)
    if d.enabled or _is_sharded(model):
        set_model_state_dict(model, weights, options=options)
    else:
        model.load_state_dict(weights, strict=True)
    set_optimizer_state_dict(model, optimizer, optim, options=options)


def fsdp2() -> tuple[Any, type]:
    """FSDP2's ``fully_shard`` and ``FSDPModule``: public in ``torch.distributed.fsdp`` from torch 2.6,
    in ``torch.distributed._composable.fsdp`` in torch 2.4 and 2.5 (the oldest torch pretune supports)."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import FSDPModule, fully_shard
    return fully_shard, FSDPModule


def _is_sharded(model: nn.Module) -> bool:
    return isinstance(model, fsdp2()[1])


__all__ = [
    "Dist", "all_sum", "check_global_batch", "fsdp2", "full_model_state", "full_optimizer_state", "fully_shard_model", "gather_to_main",
    "init_distributed", "leave_process_group", "load_full_state", "on_main", "rank_seed", "resolve_device", "shard", "unshard", "unwrap",
]
