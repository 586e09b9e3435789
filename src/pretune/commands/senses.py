"""`pretune senses`: does the model give a word a different vector per sense? Measured layer by layer."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pretune.settings import Precision, Runtime, add_command, precision_setting, require, setting


@dataclass
class SensesSettings(Runtime):
    precision: Precision = precision_setting("fp32")
    model: str | None = setting(None, help="pretune or Hugging Face model directory, or a Hub id (org/name[@revision])")
    data: str | None = setting(None, metavar="FILE", help="sense<TAB>sentence rows (# comments and blank lines skipped), "
                               "or a set that ships with pretune: nun-ko (눈: snow, eye), bank-en (bank: river, money), "
                               "byeol-ko (별: star, particular; lines of NSMC)")
    word: str | None = setting(None, help="the word whose senses the sentences use (a bundled set knows its own)")
    untrained: bool = setting(False, help="also probe a freshly initialised model of the same config (the baseline)")
    seed: int = setting(0, help="initialisation seed of the untrained model")
    out: str | None = setting(None, metavar="DIR", help="write senses.json and the plots (senses_accuracy.png, senses_cosine.png) "
                              "here; a directory that holds anything only with --overwrite")
    overwrite: bool = setting(False, help="write into an --out directory that holds files (its senses.json and plots are replaced)")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "senses", SensesSettings, run, help="measure per layer whether a word's vectors separate its senses",
                description="For each layer (0 = embeddings): the leave-one-out nearest-neighbour sense accuracy of the "
                "word's vectors, and the mean cosine of same-sense and cross-sense sentence pairs.")


def run(s: SensesSettings) -> int:
    from pretune.io import write_json
    from pretune.loader import load_ready
    from pretune.senses import plot_probes, probe_table, read_senses, sense_probe, sense_set, untrained_twin

    require(s, "model", "data")
    data, s.word = sense_set(s.data, s.word)
    require(s, "word")
    if s.out:
        from pretune.checkpoint import model_source
        from pretune.io import check_out

        source = model_source(s.model)
        check_out(s.out, inputs=(data, *([source.path] if source.path is not None else [])), overwrite=s.overwrite)
    rows = read_senses(data)
    ready = load_ready(s.model, device=s.device, precision=s.precision, verb="senses")
    models = {"model": ready.model, **({"untrained": untrained_twin(ready.model, s.seed)} if s.untrained else {})}
    with ready.autocast():
        probes = {name: sense_probe(m, ready.tokenizer, rows, s.word) for name, m in models.items()}
    print(probe_table(probes))
    print(f"computed in {ready.precision}")
    if s.out:
        out = Path(s.out)
        write_json(out / "senses.json", {"model": s.model, "data": str(data), "word": s.word, "precision": ready.precision, **probes})
        pngs = plot_probes(probes, out)
        print(f"wrote {out / 'senses.json'}, {', '.join(str(p) for p in pngs)}")
    return 0
