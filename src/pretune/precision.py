"""Which precision to train in: ``--precision auto`` resolved for this machine.

bf16 autocast halves the bytes a matmul moves and, on hardware that multiplies bf16 natively,
multiplies faster; where it is emulated it is much slower than fp32 (on an AVX2-only Zen 3,
torch's bf16 GEMMs ran at 1-20 GFLOP/s against 50-160 in fp32, docs/benchmarks.md). So
``auto`` is:

* CUDA: bf16 when the GPU multiplies bf16 natively (``torch.cuda.is_bf16_supported``), else fp32.
* CPU without ``amx_bf16`` or ``avx512_bf16``: fp32, without measuring anything.
* CPU with either: bf16 iff a short probe (:func:`measure_bf16_speedup`, cached per CPU model,
  flags, torch version and thread count) finds a layer's forward + backward matmuls at least
  :data:`BF16_MIN_SPEEDUP` times faster under bf16 autocast than in fp32. The flags alone are
  not enough: a CPU may have them and torch may still take a slow path, or the gain may be eaten
  by the casts autocast adds.
* ``PRETUNE_PRECISION_PROBE=0`` trusts the flags: bf16 on any CPU that has one, no probe.
* ``PRETUNE_AUTO_PRECISION=fp32`` (or ``bf16``) makes ``auto`` mean that precision on any machine:
  runs whose results must not depend on the CPU they land on (the test suite sets it).

Call :func:`resolve_precision` after ``torch.set_num_threads``: the probe and its cache entry
are for the thread count in force. :func:`resolve_device` says what ``--device`` means here.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from pretune.errors import PretuneError

Precision = Literal["fp32", "bf16"]
PRECISIONS = ("auto", "fp32", "bf16")
BF16_FEATURES = ("amx_bf16", "avx512_bf16")

# bf16 is chosen when the probe's matmuls are at least this much faster. A training step is not
# only matmuls: elementwise work, casts, the optimizer and data handling do not gain (on a Xeon
# with AMX, matmuls 5.9x faster made a bert-tiny step 1.23x faster, docs/benchmarks.md row 11).
# With ~60% of a step in matmuls (68% in an fp32 bert-mini step, docs/benchmarks.md), a 1.5x matmul gain is a ~1.25x step gain before the casts
# (1 / (0.4 + 0.6 / 1.5)); below that the gain is within the casts' cost and run-to-run noise,
# and fp32 keeps full precision for free.
BF16_MIN_SPEEDUP = 1.5

PROBE_ENV = "PRETUNE_PRECISION_PROBE"
AUTO_ENV = "PRETUNE_AUTO_PRECISION"
CACHE_DIR_ENV = "PRETUNE_CACHE_DIR"
CACHE_FILE = "precision_probe.json"
CPUINFO = Path("/proc/cpuinfo")

# (rows, in, out) of the probe's linear layers: a mini-sized projection and a BERT-base
# feed-forward, with few rows so that even an emulated bf16 stays near a second (the small one
# first: where bf16 is emulated the probe stops after it).
PROBE_SHAPES = ((512, 256, 1024), (256, 768, 3072))
PROBE_BUDGET_S = 0.25  # timed rounds per dtype stop after this much time (at least one round)


# --- what the CPU has ------------------------------------------------------------------------------


def _cpuinfo_field(text: str, names: tuple[str, ...]) -> str | None:
    """The value of the first line of ``/proc/cpuinfo`` text whose key is one of ``names``."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in names:
            return value.strip()
    return None


def _read_cpuinfo(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def cpu_bf16_features(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """Which of ``amx_bf16`` and ``avx512_bf16`` this CPU has.

    From the kernel's flags (``/proc/cpuinfo``) where there is one (Linux); elsewhere from torch's
    own CPU checks (AMX tiles come with ``amx_bf16`` on every CPU that has them).
    """
    text = _read_cpuinfo(cpuinfo)
    if text is not None:
        flags = _cpuinfo_field(text, ("flags",))
        if flags is not None:
            return frozenset(BF16_FEATURES) & frozenset(flags.split())
    found = set()
    checks = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    for feature, name in checks.items():
        check = getattr(torch.cpu, name, None)
        if check is not None and check():
            found.add(feature)
    return frozenset(found)


def cpu_model_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    text = _read_cpuinfo(cpuinfo)
    name = _cpuinfo_field(text, ("model name", "Hardware", "cpu model")) if text else None
    return name or platform.processor() or platform.machine() or "unknown"


# --- the probe -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _layer_step(x: torch.Tensor, w: torch.Tensor, bf16: bool) -> float:
    """Seconds for one linear layer's forward and backward: the three matmuls of a training step,
    with the casts autocast adds (a fresh autocast region casts the weight again, as a step does)."""
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = F.linear(x, w)
    y.backward(torch.ones_like(y))
    w.grad = x.grad = None
    return time.perf_counter() - t0


def _round_seconds(layers: list[tuple[torch.Tensor, torch.Tensor]], bf16: bool, stop_after: float) -> float:
    """Seconds for every layer once; stops early (returning the time so far) past ``stop_after``."""
    total = 0.0
    for x, w in layers:
        total += _layer_step(x, w, bf16)
        if total > stop_after:
            break
    return total


def _best_round(layers: list[tuple[torch.Tensor, torch.Tensor]], bf16: bool, give_up_after: float) -> float:
    """Best time of a few rounds over every probe shape, after one warm-up round. A warm-up slower
    than ``give_up_after`` is returned at once: bf16 is plainly slower, no need to time it more."""
    warm = _round_seconds(layers, bf16, give_up_after)
    if warm > give_up_after:
        return warm
    best, spent = float("inf"), 0.0
    while spent < PROBE_BUDGET_S or best == float("inf"):
        took = _round_seconds(layers, bf16, float("inf"))
        best, spent = min(best, took), spent + took
        if spent > 4 * PROBE_BUDGET_S:
            break
    return best


def measure_bf16_speedup(threads: int | None = None) -> float:
    """fp32 time / bf16-autocast time of a layer's forward + backward at transformer shapes.

    Above 1: bf16 is faster. Takes well under a second where bf16 is native (plus, in a fresh
    process, its first matmul's start-up). Where bf16 is emulated the probe stops as soon as the
    bf16 warm-up passes 4x fp32's best round, and returns that lower bound's ratio (< 0.25: an
    upper bound on bf16's speedup, far below :data:`BF16_MIN_SPEEDUP` either way).
    """
    g = torch.Generator().manual_seed(0)
    layers = [
        (torch.randn(rows, k, generator=g).requires_grad_(), torch.randn(n, k, generator=g).requires_grad_())
        for rows, k, n in PROBE_SHAPES
    ]
    with _num_threads(threads), torch.enable_grad():
        fp32 = _best_round(layers, bf16=False, give_up_after=float("inf"))
        bf16 = _best_round(layers, bf16=True, give_up_after=4 * fp32)
    return fp32 / bf16


# --- the cache -------------------------------------------------------------------------------------


def cache_path() -> Path:
    """``$PRETUNE_CACHE_DIR/precision_probe.json``, else ``~/.cache/pretune/precision_probe.json``."""
    base = os.environ.get(CACHE_DIR_ENV)
    folder = Path(base) if base else Path.home() / ".cache" / "pretune"
    return folder / CACHE_FILE


def probe_key(threads: int, features: Iterable[str] | None = None) -> str:
    """What a probe result depends on: CPU model, bf16 flags, torch version, thread count."""
    flags = ",".join(sorted(cpu_bf16_features() if features is None else features)) or "-"
    return f"{cpu_model_name()} | {flags} | torch {torch.__version__} | threads {threads}"


def _load_cache(path: Path) -> dict[str, dict]:
    """The cache's entries; a missing, unreadable or corrupt file reads as empty (and is rewritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("speedup"), (int, float))}


def _write_cache(path: Path, data: dict) -> None:
    """Write the cache atomically; failing to write (a read-only home) is not an error."""
    from pretune.errors import PretuneError
    from pretune.io import write_json

    with contextlib.suppress(OSError, PretuneError):
        write_json(path, data)


def cached_bf16_speedup(
    threads: int | None = None,
    *,
    measure: Callable[[int], float] | None = None,
    features: Iterable[str] | None = None,
    path: Path | None = None,
) -> float:
    """:func:`measure_bf16_speedup` for this CPU and thread count, measured once and then read from
    the cache file (so every run on a machine decides the same way, without re-measuring)."""
    threads = threads or torch.get_num_threads()
    path = path or cache_path()
    key = probe_key(threads, features)
    entries = _load_cache(path)
    if key in entries:
        return float(entries[key]["speedup"])
    speedup = float((measure or measure_bf16_speedup)(threads))
    entries[key] = {"speedup": round(speedup, 4), "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_cache(path, entries)
    return speedup


# --- the rule --------------------------------------------------------------------------------------


def _probe_enabled() -> bool:
    return os.environ.get(PROBE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cpu_prefers_bf16(features: Iterable[str] | None = None, probe: Callable[[], float] | None = None) -> bool:
    """Whether ``auto`` picks bf16 on this CPU (see the module docstring)."""
    features = cpu_bf16_features() if features is None else frozenset(features)
    if not features:
        return False
    if not _probe_enabled():
        return True
    speedup = probe() if probe is not None else cached_bf16_speedup(features=features)
    return speedup >= BF16_MIN_SPEEDUP


def _cuda_bf16(device: torch.device, *, native: bool) -> bool:
    """Whether the GPU ``device`` computes in bf16 (natively, or at all). A plain ``cuda`` asks
    about the current GPU without touching CUDA's device state (tests fake only these calls)."""
    if not torch.cuda.is_available():
        return False
    where = torch.cuda.device(device.index) if device.index is not None else contextlib.nullcontext()
    with where:
        return bool(torch.cuda.is_bf16_supported(including_emulation=not native))


def resolve_precision(
    precision: str,
    device: torch.device | str,
    *,
    features: Iterable[str] | None = None,
    probe: Callable[[], float] | None = None,
) -> Precision:
    """``"fp32"`` or ``"bf16"`` for ``--precision`` (``auto``, ``fp32`` or ``bf16``) on ``device``.

    ``features`` (the CPU's bf16 flags) and ``probe`` (returns bf16's speedup) replace the
    machine's own, for tests. Raises :class:`PretuneError` naming ``--precision`` for a value
    other than the three, and for bf16 on a GPU that cannot compute in bf16 at all.
    """
    if precision not in PRECISIONS:
        raise PretuneError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return "fp32"
    if precision == "bf16":
        if device.type == "cuda" and not _cuda_bf16(device, native=False):
            raise PretuneError(f"--precision bf16: {device} cannot compute in bf16; use --precision fp32 or auto")
        return "bf16"
    forced = os.environ.get(AUTO_ENV, "").strip().lower()
    if forced in ("fp32", "bf16"):
        return forced  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if _cuda_bf16(device, native=True) else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_prefers_bf16(features, probe) else "fp32"
    return "fp32"


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device ``--device`` names in this process: ``auto`` is a GPU where there is one (under
    ``torchrun``, ``local_rank``'s), else the CPU; ``cuda`` under ``torchrun`` is ``local_rank``'s GPU.
    A CUDA device on a machine without CUDA is a one-line error."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank or 0}" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PretuneError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if name == "cuda" and local_rank is not None:
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
