"""One process with 2 threads against 2 processes with 1 thread each (torchrun, gloo), side by side.

The same ``pretune`` command lines (bert-tiny pretraining on NSMC reviews, bert-tiny fine-tuning
on NSMC sentiment) run once as ``OMP_NUM_THREADS=2 python -m pretune ...`` and once as
``OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m pretune ...``: the same global
batch, the same steps. Tokens/s is the trainer's own log (``metrics.jsonl``: tokens of the
global batch, padding included, over the seconds of each logging window), the first window (warm-up)
left out. The modes alternate and the order flips every repeat, so a change in the load of a
shared machine hits both alike; the 1-minute load average is recorded before every run, and with
``--max-load`` each run first waits (up to ``--wait`` seconds) for the load to fall below it.

Writes ``OUT/dist_scaling.json`` (every run, and per workload the median tokens/s of each mode
and the median of the per-repeat ratios to the first mode) and ``OUT/dist_scaling.png``.
``--modes 1x2 2x1 1x1 1x2-passive`` adds one process with one thread, and one process whose two
OpenMP threads sleep when idle (``OMP_WAIT_POLICY=PASSIVE``) instead of spinning.

Usage::

    python benchmarks/dist_scaling.py --out /tmp/scaling                  # 3 repeats
    python benchmarks/dist_scaling.py --out /tmp/scaling --repeats 1 --steps 20   # a quick look
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NSMC = REPO.parent / "shared" / "data" / "nsmc"
# processes x threads (and extra environment): the comparison asked for is 1x2 against 2x1; 1x1 shows
# what one thread alone does, 1x2-passive one process whose OpenMP threads sleep instead of spinning
MODES: dict[str, tuple[int, int, dict[str, str]]] = {
    "1x2": (1, 2, {}), "2x1": (2, 1, {}), "1x1": (1, 1, {}), "1x2-passive": (1, 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
}


def prepare(work: Path) -> dict[str, Path]:
    """A slice of the unlabeled reviews (pretraining), a WordPiece tokenizer, the labelled files."""
    sys.path.insert(0, str(REPO / "src"))
    from pretune.tokenizer import train_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "reviews.txt"
    if not corpus.is_file():
        with gzip.open(NSMC / "unlabeled.txt.gz", "rt", encoding="utf-8") as f, open(corpus, "w", encoding="utf-8") as g:
            for i, line in enumerate(f):
                if i >= 40_000 and not line.strip():
                    break
                g.write(line)
    tok = work / "tokenizer"
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer([corpus], "wordpiece", 8000, show_progress=False).save(tok)
    return {"corpus": corpus, "tokenizer": tok, "train": NSMC / "train.tsv", "test": NSMC / "test.tsv"}


def workloads(files: dict[str, Path], steps: int, work: Path) -> dict[str, list[str]]:
    common = ["--device", "cpu", "--precision", "fp32", "--no-progress", "--log-every", "10"]
    return {
        "pretrain bert-tiny (batch 32 x 128 tokens)": [
            "pretrain", "--model", "bert-tiny", "--tokenizer", str(files["tokenizer"]), "--data", str(files["corpus"]),
            "--max-steps", str(steps), "--batch-size", "32", "--seq-len", "128", "--warmup-steps", "10",
            "--eval-batches", "1", "--cache-dir", str(work / "cache"), *common,
        ],
        "finetune bert-tiny on NSMC (batch 32, up to 64 tokens)": [
            "finetune", "--model", "bert-tiny", "--tokenizer", str(files["tokenizer"]), "--task", "nsmc",
            "--train", str(files["train"]), "--validation", str(files["test"]), "--limit", str(32 * steps),
            "--epochs", "1", "--batch-size", "32", "--max-seq-len", "64", "--eval-batch-size", "256", *common,
        ],
    }


def wait_for_quiet(max_load: float | None, wait_s: float) -> float:
    """The 1-minute load average, after waiting (up to ``wait_s``) for it to fall below ``max_load``."""
    deadline = time.time() + wait_s
    while max_load is not None and os.getloadavg()[0] > max_load and time.time() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def run_once(argv: list[str], mode: str, out: Path) -> dict:
    procs, threads, extra = MODES[mode]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false",
           **extra}
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "pretune"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), "-m", "pretune"]
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    res = subprocess.run([*launch, *argv, "--out", str(out)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if res.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{res.stderr[-3000:]}")
    rates = [r["tokens_per_s"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "tokens_per_s" in r]
    return {"tokens_per_s": statistics.mean(rates[1:]) if len(rates) > 1 else rates[0], "windows": len(rates),
            "wall_s": round(wall, 1)}


def summarise(runs: list[dict], modes: list[str]) -> dict:
    """Per workload: the median tokens/s of each mode, and each mode's per-repeat ratio to the first."""
    summary = {}
    for name in dict.fromkeys(r["workload"] for r in runs):
        mine = [r for r in runs if r["workload"] == name]
        by_mode = {m: [r["tokens_per_s"] for r in mine if r["mode"] == m] for m in modes}
        base = modes[0]
        ratios = {m: [b / a for a, b in zip(by_mode[base], v)] for m, v in by_mode.items() if m != base}
        summary[name] = {
            **{f"tokens_per_s_{m}": round(statistics.median(v), 1) for m, v in by_mode.items()},
            **{f"ratio_{m}_over_{base}": round(statistics.median(v), 3) for m, v in ratios.items()},
            "ratios": {m: [round(x, 3) for x in v] for m, v in ratios.items()},
            "load_1min": [r["load_before"] for r in mine],
        }
    return summary


def plot(runs: list[dict], summary: dict, modes: list[str], path: Path, machine: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5 * len(summary), 4), squeeze=False)
    for ax, (name, s) in zip(axes[0], summary.items()):
        for i, mode in enumerate(modes):
            points = [r["tokens_per_s"] for r in runs if r["workload"] == name and r["mode"] == mode]
            ax.bar(i, s[f"tokens_per_s_{mode}"], color=f"C{i}", alpha=0.7)
            ax.plot([i] * len(points), points, "k.")
        ax.set_xticks(range(len(modes)), [m.replace("x", " proc x ", 1) + " thr" for m in modes], fontsize=7)
        ax.set_ylabel("tokens/s (median; dots: repeats)")
        shown = ", ".join(f"{k[6:]} {v:.2f}" for k, v in s.items() if k.startswith("ratio_"))
        ax.set_title(f"{name}\n{shown}", fontsize=8)
    fig.suptitle(f"{machine}; shared cores, load {min(min(s['load_1min']) for s in summary.values()):.1f}-"
                 f"{max(max(s['load_1min']) for s in summary.values()):.1f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="work and result directory")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run (logged every 10)")
    p.add_argument("--max-load", type=float, default=None, help="wait for the 1-minute load to fall below this")
    p.add_argument("--wait", type=float, default=600, help="seconds to wait for --max-load at most, per run")
    p.add_argument("--modes", nargs="+", default=["1x2", "2x1"], choices=list(MODES),
                   help="processes x threads to compare (ratios are to the first)")
    a = p.parse_args()
    files = prepare(a.out / "work")
    jobs = workloads(files, a.steps, a.out / "work")
    for argv in workloads(files, 10, a.out / "work").values():  # untimed: fill the token cache, warm the file cache
        run_once(argv, "1x2", a.out / "warmup")
    runs = []
    for repeat in range(a.repeats):
        for name, argv in jobs.items():
            for mode in (a.modes if repeat % 2 == 0 else a.modes[::-1]):
                load = wait_for_quiet(a.max_load, a.wait)
                result = run_once(argv, mode, a.out / "run")
                runs.append({"workload": name, "mode": mode, "repeat": repeat, "load_before": round(load, 2), **result})
                print(json.dumps(runs[-1]), flush=True)
    sys.path.insert(0, str(REPO / "src"))
    from pretune.report import machine

    summary = summarise(runs, a.modes)
    out = {"machine": machine(), "steps": a.steps, "modes": a.modes, "summary": summary, "runs": runs}
    (a.out / "dist_scaling.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    plot(runs, summary, a.modes, a.out / "dist_scaling.png", out["machine"])
    print(json.dumps(summary, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
