"""Driver of the multi-process tests: many ``pretune`` command lines in one process (or in one
``torchrun`` launch, since a launch costs seconds of imports).

    python tests/dist_cases.py CASES.json ROOT REPORT_DIR
    python -m torch.distributed.run --nproc_per_node 2 tests/dist_cases.py CASES.json ROOT REPORT_DIR

``CASES.json`` is a list of ``{"name", "argv"}`` (a ``pretune`` command line; ``{root}`` in it is
replaced by ROOT) or ``{"name", "python"}`` (a function of this module). Each rank writes
``REPORT_DIR/rank-R.json``: per case its exit status, error line and seconds, and every path under
ROOT this rank created, wrote, renamed or deleted (recorded by an audit hook), so that a test can
check that only rank 0 touched the run directories.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

_WRITE_EVENTS = {"os.mkdir": 0, "os.remove": 0, "os.rmdir": 0, "shutil.rmtree": 0, "os.truncate": 0,
                 "os.rename": 1, "os.replace": 1, "os.symlink": 1, "os.link": 1}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _audit(root: str, seen: list[str]):
    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
        elif event in _WRITE_EVENTS:
            path, writing = args[_WRITE_EVENTS[event]], True
        else:
            return
        if writing and isinstance(path, (str, bytes, os.PathLike)):
            name = os.path.abspath(os.fsdecode(os.fspath(path)))
            if name.startswith(root):
                seen.append(f"{event} {name}")

    return hook


def unused_parameter(root: Path) -> int:
    """A model holding a layer its loss never uses: the trainer must name it, under DDP, at step 1."""
    import torch

    from pretune.config import preset
    from pretune.errors import PretuneError
    from pretune.models import build_model
    from pretune.train.trainer import TrainConfig, Trainer

    model = build_model(preset("gpt-tiny", vocab_size=40, hidden=16, n_heads=2, ffn=32, max_positions=8))
    model.spare = torch.nn.Linear(16, 3)

    def batches():
        g = torch.Generator().manual_seed(0)
        while True:
            ids = torch.randint(0, 40, (2, 8), generator=g)
            yield {"input_ids": ids, "labels": ids}

    cfg = TrainConfig.make(root / "unused", 3, progress=False, device="cpu", warmup_steps=0)
    try:
        Trainer(model, cfg, batches()).fit()
    except PretuneError as exc:
        print(f"pretune: error: {exc}", file=sys.stderr)
        return 2
    return 0


def run_case(case: dict[str, Any], root: Path) -> dict[str, Any]:
    from pretune.cli import main

    err = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stderr(err):
        if "python" in case:
            code = globals()[case["python"]](root)
        else:
            code = main([a.replace("{root}", str(root)) for a in case["argv"]])
    text = err.getvalue()
    sys.stderr.write(text[-2000:])
    errors = [line for line in text.splitlines() if ": error: " in line]
    return {"code": code, "error": errors[-1] if errors else None, "seconds": round(time.perf_counter() - started, 2)}


def _report_group_at_exit(report: Path, rank: int) -> None:
    """Registered before pretune joins the process group, so it runs after pretune's own exit
    handler (atexit runs last-registered first): records whether the group was left."""
    import torch.distributed as dist

    report.mkdir(parents=True, exist_ok=True)
    (report / f"exit-rank-{rank}.json").write_text(json.dumps({"group_left": not dist.is_initialized()}))


def main(argv: list[str]) -> int:
    cases_file, root, report = Path(argv[0]), Path(argv[1]).resolve(), Path(argv[2])
    rank = int(os.environ.get("RANK", "0"))
    atexit.register(_report_group_at_exit, report, rank)
    seen: list[str] = []
    sys.addaudithook(_audit(str(root) + os.sep, seen))
    results = {case["name"]: run_case(case, root) for case in json.loads(cases_file.read_text())}
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # pretune leaves the group when the process ends
    report.mkdir(parents=True, exist_ok=True)
    (report / f"rank-{rank}.json").write_text(json.dumps({"cases": results, "writes": seen}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
