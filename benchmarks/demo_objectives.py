"""Which pretraining objective pays most per CPU-second at the demo's budget?

The demo's own stages (``pretune.apps.demo``): the same WordPiece tokenizer, corpus, label
budgets, validation slice and test sample, the same fine-tuning settings. For each precision and
each objective (``mlm-nsp``: BERT's masked LM + next-sentence prediction; ``mlm``: masked LM only;
``electra``: replaced-token detection with a generator a quarter of the width), one model of the
demo's shape is pretrained for ``--seconds`` of wall time (or ``--steps``), then fine-tuned with
each seed of ``--seeds`` at each label budget, beside its from-scratch twin of the same
architecture and seed. The figure of merit is the median over seeds of the gain (pretrained minus
scratch test accuracy). The objectives run one after another, so on a machine whose load changes
compare the steps each got (``pretrain`` in the JSON) as well as the gains.

Writes ``OUT/objectives.json`` (every run), ``OUT/objectives.md`` (the table) and
``OUT/objectives.png`` (gain against labels, per objective and precision).

Usage::

    python benchmarks/demo_objectives.py --out /tmp/objectives                     # fp32, 600 s each, 3 seeds
    python benchmarks/demo_objectives.py --out /tmp/obj --precisions fp32 bf16 --seconds 550
    python benchmarks/demo_objectives.py --out /tmp/obj --steps 3000 --seeds 0 --labels 2000   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--objectives", nargs="+", default=["mlm-nsp", "mlm", "electra"], choices=["mlm-nsp", "mlm", "electra"])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--seconds", type=float, default=600.0, help="pretraining wall time per objective")
    p.add_argument("--steps", type=int, default=None, help="pretrain for this many steps instead of --seconds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    p.add_argument("--labels", type=int, nargs="+", default=[500, 2000, 10000])
    p.add_argument("--model", default="bert-tiny")
    p.add_argument("--lr", type=float, default=None, help="pretraining peak rate (default: the demo's)")
    p.add_argument("--electra-lr", type=float, default=None, help="ELECTRA's pretraining peak rate (default: --lr)")
    p.add_argument("--generator-size", type=float, default=0.25)
    p.add_argument("--temperature", type=float, default=1.0, help="ELECTRA's sampling temperature")
    p.add_argument("--mask-prob", type=float, default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="DemoSettings fields (JSON values)")
    p.add_argument("--resume", action="store_true",
                   help="keep what OUT/objectives.json already holds (same settings): finished pretraining runs and "
                        "fine-tuning results are reused, the rest is run")
    return p.parse_args(argv)


def _settings(a: argparse.Namespace, out: Path, precision: str, objective: str, seed: int = 0):
    from pretune.apps.demo.settings import DemoSettings

    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in a.set)}
    s = DemoSettings(out=str(out), data_dir=a.data_dir, precision=precision, objective=objective, model=a.model,
                     budgets=sorted(a.labels), progress=False, seed=0, **extra)
    lr = (a.electra_lr or a.lr) if objective == "electra" else a.lr
    if lr is not None:
        s.pretrain_lr = lr
    if a.mask_prob is not None:
        s.mask_prob = a.mask_prob
    return s


def _pretrain(a: argparse.Namespace, shared: Path, work: Path, precision: str, objective: str,
              tokenizer: Path, corpus: Path) -> dict[str, Any]:
    """One objective's pretraining run (a fixed wall time, or a fixed number of steps)."""
    from pretune.apps.demo.stages import _pretrain_settings
    from pretune.train.pretrain import pretrain

    s = _settings(a, shared, precision, objective)
    ps = _pretrain_settings("bert", corpus, tokenizer, shared, a.seconds, s)
    ps.out = str(work / "pretrained")
    ps.electra = dataclasses.replace(ps.electra, generator_size=a.generator_size, generator_temperature=a.temperature)
    if a.steps:
        ps.max_steps = a.steps
        ps.trainer = dataclasses.replace(ps.trainer, time_budget_s=0.0)
    shutil.rmtree(ps.out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = pretrain(ps)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    return summary


def _finetune(a: argparse.Namespace, shared: Path, model: str, tokenizer: Path, splits: dict[str, Any], labels: int,
              seed: int, out: Path, precision: str, objective: str) -> dict[str, Any]:
    from pretune.apps.demo.settings import epochs_for
    from pretune.apps.demo.stages import finetune_stage

    s = _settings(a, shared, precision, objective)
    s.seed = seed
    t0 = time.perf_counter()
    r = finetune_stage(model, tokenizer, splits, labels, out, s, s.finetune_lrs[0], epochs_for(labels))
    result = {"test": r["test"]["accuracy"], "validation": r["validation"]["accuracy"], "seconds": round(time.perf_counter() - t0, 1)}
    for weights in out.rglob("*.safetensors"):  # keep the results, not the models
        weights.unlink()
    return result


def main(argv: list[str] | None = None) -> int:
    import torch

    from pretune.apps.demo.data import corpus_slice, make_splits, nsmc_files
    from pretune.apps.demo.stages import prepare_stage, scratch_config, tokenizer_stage
    from pretune.data.download import data_dir
    from pretune.report import machine, plot_lines

    a = _args(argv)
    out = Path(a.out)
    shared = out / "shared"
    (shared / "work").mkdir(parents=True, exist_ok=True)
    base = _settings(a, shared, a.precisions[0], a.objectives[0])
    files = nsmc_files(data_dir(a.data_dir))
    corpus = corpus_slice(files["unlabeled"], shared / "work", None)
    tokenizer = tokenizer_stage("wordpiece", corpus, shared, base)
    prepare_stage("bert", corpus, tokenizer, shared, base)
    splits = make_splits(files, shared / "work", base)
    results: dict[str, Any] = {
        "machine": machine(), "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "settings": {k: v for k, v in vars(a).items()}, "pretrain": {}, "runs": [],
    }
    scratch_done: dict[tuple, dict[str, Any]] = {}
    done: dict[tuple, dict[str, Any]] = {}
    if a.resume and (out / "objectives.json").exists():
        old = json.loads((out / "objectives.json").read_text(encoding="utf-8"))
        same = {k: v for k, v in old["settings"].items() if k not in ("precisions", "objectives", "resume")}
        mine = {k: v for k, v in results["settings"].items() if k not in ("precisions", "objectives", "resume")}
        if same != mine:
            raise SystemExit(f"--resume: {out / 'objectives.json'} was written with other settings; use another --out")
        results["pretrain"] = old["pretrain"]
        for r in old["runs"]:
            done[(r["precision"], r["objective"], r["labels"], r["seed"])] = r
            scratch_done[(r["precision"], "electra" if r["objective"] == "electra" else "bert", r["labels"], r["seed"])] = r["scratch"]
        results["runs"] = [r for r in old["runs"] if r["precision"] in a.precisions and r["objective"] in a.objectives]
    for precision in a.precisions:
        for objective in a.objectives:
            work = out / f"{precision}-{objective}"
            run = f"{precision}-{objective}"
            if run in results["pretrain"] and (work / "pretrained" / "model.safetensors").exists():
                print(f"[{precision} {objective}] pretrained already ({results['pretrain'][run]['steps']} steps)", flush=True)
            else:
                summary = _pretrain(a, shared, work, precision, objective, tokenizer, corpus)
                results["pretrain"][run] = {
                    k: summary.get(k) for k in ("steps", "train_seconds", "wall_s", "tokens_per_s", "eval_at_start", "eval_at_end", "precision")}
                print(f"[{precision} {objective}] pretrained {summary['steps']} steps in {summary['wall_s']} s", flush=True)
            arch = "electra" if objective == "electra" else "bert"
            for labels in sorted(a.labels):
                for seed in a.seeds:
                    if (precision, objective, labels, seed) in done:
                        continue
                    pre = _finetune(a, shared, str(work / "pretrained"), tokenizer, splits, labels, seed,
                                    work / f"ft-{labels}-{seed}", precision, objective)
                    key = (precision, arch, labels, seed)
                    if key not in scratch_done:
                        cfg = scratch_config(a.model, tokenizer, _settings(a, shared, precision, objective), shared / "work", "bert")
                        scratch_done[key] = _finetune(a, shared, cfg, tokenizer, splits, labels, seed,
                                                      out / f"{precision}-scratch-{arch}" / f"ft-{labels}-{seed}", precision, objective)
                    scr = scratch_done[key]
                    results["runs"].append({"precision": precision, "objective": objective, "labels": labels, "seed": seed,
                                            "pretrained": pre, "scratch": scr, "gain": round(pre["test"] - scr["test"], 4)})
                    print(f"[{precision} {objective}] {labels} labels seed {seed}: {pre['test']:.4f} vs {scr['test']:.4f}", flush=True)
                    (out / "objectives.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    results["table"] = _table(results)
    (out / "objectives.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "objectives.md").write_text(_markdown(results), encoding="utf-8")
    series = {}
    for (precision, objective), rows in _groups(results).items():
        xs = sorted({r["labels"] for r in rows})
        series[f"{objective} ({precision})"] = (xs, [100 * statistics.median(r["gain"] for r in rows if r["labels"] == x) for x in xs])
    plot_lines(series, out / "objectives.png", title="gain over from-scratch (median of seeds)", xlabel="labelled reviews",
               ylabel="accuracy points", logx=True)
    print(_markdown(results))
    return 0


def _groups(results: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results["runs"]:
        groups.setdefault((r["precision"], r["objective"]), []).append(r)
    return groups


def _table(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for (precision, objective), runs in _groups(results).items():
        pre = results["pretrain"][f"{precision}-{objective}"]
        row = {"precision": precision, "objective": objective, "steps": pre["steps"], "tokens_per_s": pre["tokens_per_s"]}
        for labels in sorted({r["labels"] for r in runs}):
            mine = [r for r in runs if r["labels"] == labels]
            row[str(labels)] = {
                "median_gain": round(100 * statistics.median(r["gain"] for r in mine), 2),
                "gains": [round(100 * r["gain"], 2) for r in mine],
                "median_pretrained": round(statistics.median(r["pretrained"]["test"] for r in mine), 4),
                "median_scratch": round(statistics.median(r["scratch"]["test"] for r in mine), 4),
            }
        rows.append(row)
    return rows


def _markdown(results: dict[str, Any]) -> str:
    table = results.get("table") or _table(results)
    labels = sorted({int(k) for row in table for k in row if k.isdigit()})
    head = "| precision | objective | steps | tokens/s | " + " | ".join(f"{n:,} labels" for n in labels) + " |"
    lines = [head, "|" + "---|" * (4 + len(labels))]
    for row in table:
        cells = [f"{row[str(n)]['median_gain']:+.1f} ({', '.join(f'{g:+.1f}' for g in row[str(n)]['gains'])})" for n in labels]
        lines.append(f"| {row['precision']} | {row['objective']} | {row['steps']:,} | {row['tokens_per_s']:,.0f} | " + " | ".join(cells) + " |")
    m = results["machine"]
    return (f"Median gain in test-accuracy points over seeds (each seed's gain in brackets); {results['date']}, "
            f"{m.get('cpu', m) if isinstance(m, dict) else m}, {results['threads']} threads.\n\n"
            + "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
