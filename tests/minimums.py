"""Run pretune on the oldest versions pyproject.toml promises (``make minimums``).

A throwaway virtual environment of its own (no system site packages) gets torch 2.13.0 and, for
every other dependency in pyproject.toml (the ``hf`` extra included), the minimum version it
declares (``>=X`` installed as ``==X``); then a smoke run in that environment: train a WordPiece
tokenizer, prepare a corpus into shards, pretrain a tiny BERT for a few steps with a checkpoint,
resume it and compare the losses with an uninterrupted run, fine-tune and evaluate it, load a
model through a Hugging Face Hub id from a cache built by hand (huggingface_hub), and read task
data from a parquet file (datasets).

torch stays at 2.13.0: PyPI has only CUDA builds of torch 2.4 (gigabytes of NVIDIA libraries), and
the team's rule is that GPU users keep the torch they have; the code paths torch 2.4 and 2.5 need
are tested by simulating their layout (tests/test_compat.py).

    python tests/minimums.py            # a fresh environment in a temporary folder, removed after
    python tests/minimums.py --keep DIR # build (or reuse) the environment in DIR
    python tests/minimums.py --smoke    # only the smoke run, in the current environment

It prints the versions installed and each step's result; exit status 0 when all passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"
# Not ours, but needed beside the minimums: datasets 2.19 takes any pyarrow >= 12, and pip would take
# the newest, which needs NumPy 2 (it declares no numpy requirement); the oldest works with numpy 1.24.
ALSO = ["pyarrow==12.0.0"]
WORDS = ("the cat sat on a mat dog ran far away is big small red blue green why who good bad very much "
         "rain snow eye day night film story actor scene").split()


def minimum_requirements() -> list[str]:
    """Every dependency of pyproject.toml (and its ``hf`` extra) pinned to its declared minimum."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = []
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["hf"]]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", requirement.strip())
        if m is None:
            raise SystemExit(f"pyproject.toml: {requirement!r} has no plain '>=' minimum to check")
        pins.append(TORCH if m[1] == "torch" else f"{m[1]}=={m[2]}")
    return pins


def build(venv: Path) -> Path:
    """The environment: created, then the minimum versions and pretune (without its dependencies)."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q", "install"]
    pins = minimum_requirements() + ALSO
    print("installing:", " ".join(pins), flush=True)
    started = time.perf_counter()
    subprocess.run([*pip, "--only-binary", ":all:", "--no-binary", "seqeval", *pins], check=True)  # seqeval: sdist only
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", "-e", str(ROOT)], check=True)
    print(f"installed in {time.perf_counter() - started:.0f} s", flush=True)
    return python


def run(*args: str, cwd: Path) -> str:
    """``pretune ARGS`` in this environment; its output (a failure shows it and stops)."""
    proc = subprocess.run([sys.executable, "-m", "pretune", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                               "HF_DATASETS_OFFLINE": "1", "HF_HUB_CACHE": str(cwd / "hub"),
                               "HF_HOME": str(cwd / "hf-home")})
    if proc.returncode != 0:
        raise SystemExit(f"FAILED: pretune {' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r and "step" in r}


def smoke(work: Path) -> None:
    """The steps, each checked; raises SystemExit on the first failure."""
    import random

    rng = random.Random(0)
    docs = ["\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(4)) for _ in range(150)]
    (work / "corpus.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    rows = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(64)]
    labelled = [f"{r}\t{int('snow' in r or 'rain' in r)}" for r in rows]
    (work / "cls.tsv").write_text("text\tlabel\n" + "\n".join(labelled) + "\n", encoding="utf-8")

    run("tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "120", "--out", "tok", "corpus.txt", cwd=work)
    print("ok  tokenizer train (WordPiece)", flush=True)
    common = ["--model", "bert-tiny", "--set", "hidden=32", "n_heads=2", "n_layers=1", "ffn=64", "--tokenizer", "tok",
              "--data", "corpus.txt", "--batch-size", "8", "--seq-len", "32", "--eval-every", "2", "--eval-batches", "1",
              "--save-every", "2", "--log-every", "1", "--precision", "fp32", "--no-progress"]
    run("pretrain", *common, "--out", "full", "--max-steps", "4", cwd=work)
    assert (work / "full" / "model.safetensors").is_file() and list((work / "full" / "data-cache").iterdir())
    print("ok  corpus preparation into shards, 4 pretraining steps", flush=True)
    run("pretrain", *common, "--out", "part", "--max-steps", "2", cwd=work)
    run("pretrain", *common, "--out", "part", "--max-steps", "4", "--resume", cwd=work)
    full, part = losses(work / "full"), losses(work / "part")
    if full != part or len(full) != 4:
        raise SystemExit(f"FAILED: resumed losses {part} differ from the uninterrupted run's {full}")
    print(f"ok  checkpoint at step 2 and --resume: the 4 losses equal the uninterrupted run's {list(full.values())}",
          flush=True)
    out = run("finetune", "--model", "full", "--task", "classification", "--train", "cls.tsv", "--validation-split",
              "0.25", "--out", "ft", "--epochs", "1", "--max-seq-len", "16", "--precision", "fp32", "--no-progress",
              cwd=work)
    results = json.loads((work / "ft" / "eval_results.json").read_text())
    print(f"ok  fine-tuning: validation accuracy {results['validation']['accuracy']:.3f}", flush=True)
    assert "accuracy" in out
    _hub_and_datasets(work)


def _hub_and_datasets(work: Path) -> None:
    """huggingface_hub reads --model org/name from a hand-built cache; datasets reads a parquet file."""
    import hashlib

    run("convert", "--to-hf", "ft", "--out", "hf", cwd=work)
    snapshot = work / "hub" / "models--org--tiny" / "snapshots" / ("d" * 40)
    blobs = work / "hub" / "models--org--tiny" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for path in (work / "hf").iterdir():
        blob = blobs / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / path.name)
    (work / "hub" / "models--org--tiny" / "refs").mkdir()
    (work / "hub" / "models--org--tiny" / "refs" / "main").write_text("d" * 40)
    run("convert", "--from-hf", "org/tiny", "--out", "from-hub", cwd=work)
    run("convert", "--from-hf", "hf", "--out", "from-dir", cwd=work)
    from safetensors.numpy import load_file

    hub_w, dir_w = (load_file(str(work / d / "model.safetensors")) for d in ("from-hub", "from-dir"))
    if hub_w.keys() != dir_w.keys() or any((hub_w[k] != dir_w[k]).any() for k in hub_w):
        raise SystemExit("FAILED: --from-hf org/tiny gave other weights than the directory it was made from")
    print("ok  huggingface_hub: --from-hf org/tiny (offline, from the cache) = the directory", flush=True)

    import datasets

    lines = (work / "cls.tsv").read_text(encoding="utf-8").splitlines()[1:]
    texts, labels = zip(*(line.split("\t") for line in lines))
    datasets.Dataset.from_dict({"text": list(texts), "label": [int(x) for x in labels]}).to_parquet(str(work / "cls.parquet"))
    scores = []
    for data in ("cls.tsv", "cls.parquet"):
        run("evaluate", "--model", "ft", "--data", data, "--out", f"eval-{data}.json", "--no-progress", cwd=work)
        scores.append(json.loads((work / f"eval-{data}.json").read_text()))
    if scores[0] != scores[1]:
        raise SystemExit(f"FAILED: evaluation on the parquet file {scores[1]} differs from the TSV's {scores[0]}")
    print(f"ok  datasets: evaluate on cls.parquet = on cls.tsv ({scores[0]})", flush=True)


def versions() -> str:
    from importlib.metadata import version

    names = [re.split(r"[=<>]", p)[0] for p in minimum_requirements()]
    return ", ".join(f"{n} {version(n)}" for n in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", metavar="DIR", help="build (or reuse) the environment in DIR and keep it")
    parser.add_argument("--smoke", action="store_true", help="only the smoke run, in this Python environment")
    args = parser.parse_args(argv)
    if args.smoke:
        print("versions:", versions(), flush=True)
        with tempfile.TemporaryDirectory(prefix="pretune-minimums-") as work:
            started = time.perf_counter()
            smoke(Path(work))
        print(f"all passed in {time.perf_counter() - started:.0f} s")
        return 0
    with tempfile.TemporaryDirectory(prefix="pretune-minimums-venv-") as tmp:
        python = build(Path(args.keep) if args.keep else Path(tmp) / "venv")
        return subprocess.run([str(python), __file__, "--smoke"], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
