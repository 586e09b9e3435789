"""The demo's report: ``report.md`` from ``report_template.md`` and the results."""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Any

from pretune.io import write_text

TEMPLATE = Path(__file__).with_name("report_template.md")


def _pct(pre: dict[str, Any], key: str, where: str) -> str:
    value = (pre.get(where) or {}).get(key)
    return f"{100 * value:.1f}%" if value is not None else "n/a"


def _precision_words(precision: str) -> str:
    return "bf16 autocast" if precision == "bf16" else "fp32"


def _lr_words(lrs: list[float]) -> str:
    if len(lrs) == 1:
        return f"learning rate {lrs[0]:g}"
    return f"one run per learning rate in {', '.join(f'{x:g}' for x in lrs)}, the one with the best validation accuracy kept (column `lr`)"


def clock_words(results: dict[str, Any]) -> str:
    """What ``--minutes`` planned for each stage (see :mod:`pretune.apps.demo.clock`)."""
    c = results.get("clock", {})
    parts = [f"`--minutes {c['minutes']:g}`"] if "minutes" in c else []
    parts += [f"{what} {c[key]:.0f} s" for key, what in (("setup_s", "set-up took"), ("finetune_s", "fine-tuning planned"),
                                                          ("pretrain_s", "pretraining given")) if key in c]
    return ", ".join(parts) if parts else "no clock"


def runs_table(runs: list[dict[str, Any]]) -> str:
    lines = ["| model | init | labels | accuracy | lr | validation | seconds |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['init']} | {r['labels']:,} | {r['accuracy']:.4f} | {r['lr']:g} | {r['validation']:.4f} | "
              f"{r['seconds']:.0f} |" for r in runs]
    return "\n".join(lines)


def conclusion(results: dict[str, Any]) -> str:
    """One sentence: the pretrained BERT against its scratch twin at 2,000 labels (or the middle budget)."""
    by = {(r["model"], r["init"], r["labels"]): r["accuracy"] for r in results["runs"]}
    gains = {n: by[("bert", "pretrained", n)] - by[("bert", "scratch", n)] for n in sorted({r["labels"] for r in results["runs"]})
             if ("bert", "pretrained", n) in by and ("bert", "scratch", n) in by}
    if not gains:
        return "No pretrained/scratch pair was run."
    key = 2000 if 2000 in gains else sorted(gains)[len(gains) // 2]
    verdict = (f"beats the same BERT trained from scratch by {100 * gains[key]:.1f} accuracy points" if gains[key] > 0
               else f"does not beat the same BERT trained from scratch ({100 * gains[key]:+.1f} points)")
    return (f"With {key:,} labels, the BERT pretrained for {results['pretrain']['bert']['train_seconds']:.0f} s on unlabeled "
            f"reviews {verdict}: {100 * by[('bert', 'pretrained', key)]:.1f}% vs {100 * by[('bert', 'scratch', key)]:.1f}% "
            f"on the test sample.")


def cosine_table(emb: dict[str, Any]) -> str:
    n = len(emb["sentences"])
    lines = ["| | " + " | ".join(str(i + 1) for i in range(n)) + " |", "|---" * (n + 1) + "|"]
    lines += [f"| {i + 1}. {emb['sentences'][i]} ({emb['senses'][i]}) | " + " | ".join(f"{emb['cosine'][i][j]:.2f}" for j in range(n))
              + " |" for i in range(n)]
    return "\n".join(lines)


def _left_out(n: int) -> str:
    return f", {n} longer than the model's positions left out" if n else ""


def _probe_section(name: str, probes: dict[str, Any], stem: str, left_out: int) -> str:
    """One set's probe: the pretrained model against its untrained twin, layer by layer."""
    from pretune.senses import SENSE_SETS, chance_accuracy, probe_table

    pre, twin = probes["pretrained"], probes["untrained"]
    best = max(pre["layers"][1:], key=lambda x: x["nn_accuracy"])
    senses = ", ".join(f"{n} {sense}" for sense, n in pre["senses"].items())
    return (
        f"\n#### \"{pre['word']}\" in {pre['sentences']} sentences ({senses}{_left_out(left_out)}; "
        f"`src/pretune/data/senses/{SENSE_SETS[name][1].name}`, `pretune senses --data {name}`)\n"
        f"Chance {chance_accuracy(pre['senses']):.2f}. Pretrained: best transformer layer {best['layer']} at "
        f"**{best['nn_accuracy']:.2f}**, layer 0 at {pre['layers'][0]['nn_accuracy']:.2f}; the untrained twin reaches "
        f"{max(x['nn_accuracy'] for x in twin['layers'][1:]):.2f} at its best transformer layer.\n\n"
        f"{probe_table(probes)}\n\n![sense accuracy by layer]({stem}_accuracy.png) ![cosine by layer]({stem}_cosine.png)\n"
    )


def senses_section(emb: dict[str, Any]) -> str:
    """The sense probes (:data:`pretune.apps.demo.probes.PROBE_SETS`): per layer, the pretrained
    model against its untrained twin."""
    from pretune.apps.demo.probes import PROBE_SETS

    probes, left_out = emb.get("probes") or {}, emb.get("left_out", {})
    skipped = [f"`{name}` ({n} of its sentences are longer than the model's positions)"
               for name, n in left_out.items() if name not in probes]
    if not probes and not skipped:
        return ""
    return (
        "\n### The sense probes\n"
        "Leave-one-out nearest-neighbour sense accuracy of the word's vector (the nearest other sentence is of the "
        "same sense; chance is the share of other sentences of the same sense) and the mean cosine of same- and "
        "cross-sense pairs, at every layer (0 = embeddings: the token and its position, nearly static), for the "
        "pretrained model and its untrained twin (same shape, fresh weights).\n"
        + "".join(_probe_section(name, p, PROBE_SETS[name], left_out.get(name, 0)) for name, p in probes.items())
        + (f"\nNot probed: {', '.join(skipped)}.\n" if skipped else "")
    )


def sense_counts() -> dict[str, str]:
    """The template's counts of the corpus lines that use each probed sense (:data:`SENSE_LINES`)."""
    from pretune.apps.demo.probes import CORPUS_LINES, SENSE_LINES

    nun, byeol = SENSE_LINES["nun-ko"], SENSE_LINES["byeol-ko"]
    return {"corpus_lines": f"{CORPUS_LINES:,}", "snow_lines": f"{nun['snow']:,}", "eye_lines": f"{nun['eye']:,}",
            "snow_every": f"{round(CORPUS_LINES / nun['snow'], -2):,.0f}", "star_lines": f"{byeol['star']:,}",
            "particular_lines": f"{byeol['particular']:,}"}


def analysis_section(results: dict[str, Any]) -> str:
    if "analysis" not in results:
        return ""
    a = results["analysis"]
    layers = "\n".join(f"| {k} | {v:.4f} |" for k, v in a["layers_transferred"].items())
    zero = "\n".join(f"| {k} | {v:.4f} |" for k, v in a["zero_shot"].items())
    return (f"\n## GPT-1 analyses (figure 2 of the paper)\n| layers transferred | accuracy |\n|---:|---:|\n{layers}\n\n"
            f"![layers transferred](layers_transferred.png)\n\n| pretraining step | zero-shot accuracy |\n|---:|---:|\n{zero}\n\n"
            f"![zero-shot](zero_shot.png)\n")


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """Fill the template with the results and write ``out/report.md``."""
    s, pre, emb = results["settings"], results["pretrain"]["bert"], results["contextual_embedding"]
    precision = _precision_words(results.get("precision", "fp32"))
    separated = emb["same_sense_mean"] > emb["cross_sense_mean"]
    text = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(
        conclusion=conclusion(results), machine=results["machine"], date=results["date"],
        total_s=f"{results['timings_s'].get('total', 0):.0f}", clock=clock_words(results), command=results["command"],
        corpus=results["corpus"],
        budgets=", ".join(f"{n:,}" for n in s["budgets"]), validation_size=f"{s['validation_size']:,}",
        test_size=f"{results['test_size']:,}", vocab_size=f"{results['vocab_size']:,}", model=s["model"],
        layers=pre["model"]["n_layers"], hidden=pre["model"]["hidden"], heads=pre["model"]["n_heads"],
        seq_len=s["seq_len"], pretrain_batch=s["pretrain_batch"], pretrain_lr=s["pretrain_lr"],
        pretrain_warmup=s["pretrain_warmup"], pretrain_dropout=s["pretrain_dropout"], steps=pre["steps"],
        pretrain_s=f"{pre['train_seconds']:.0f}", tokens_per_s=f"{pre['tokens_per_s'] or 0:,.0f}", precision=precision,
        mlm_start=_pct(pre, "val_mlm_accuracy", "eval_at_start"), mlm_end=_pct(pre, "val_mlm_accuracy", "eval_at_end"),
        nsp_end=_pct(pre, "val_nsp_accuracy", "eval_at_end"), finetune_seq_len=s["finetune_seq_len"],
        finetune_batch=s["finetune_batch"], grouped=" (grouped by length)" if s.get("finetune_group_by_length") else "",
        lr_words=_lr_words(s["finetune_lrs"]), finetune_dropout=s["finetune_dropout"], epochs=results["epochs"],
        runs_table=runs_table(results["runs"]), same_sense=f"{emb['same_sense_mean']:.3f}",
        cross_sense=f"{emb['cross_sense_mean']:.3f}",
        sense_verdict="same-sense pairs are closer, as contextual embeddings should make them" if separated
        else "the model does not separate the senses at this amount of pretraining",
        cosine_table=cosine_table(emb), **sense_counts(), senses=senses_section(emb), analysis=analysis_section(results),
        stages="\n".join(f"| {k} | {v:.0f} |" for k, v in results["timings_s"].items()),
    )
    return write_text(out / "report.md", text)


__all__ = ["conclusion", "sense_counts", "senses_section", "write_report"]
