"""Numeric precision: which one ``--precision auto`` means on this machine, and its autocast.

(Interim: bf16 on CUDA and on AMX CPUs; the measured rule lands with the precision work.)
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from pretune.errors import PretuneError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``--precision`` on ``device``."""
    if precision not in PRECISIONS:
        raise PretuneError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "bf16" if (device.type == "cpu" and check and check()) else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context of a resolved precision (``fp32`` or ``bf16``)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()
