"""`pretune convert`: Hugging Face checkpoints to pretune model directories and back.

A fine-tuned model travels with its task head: ``--to-hf`` writes the transformers class that
holds it (``BertForSequenceClassification``, ``GPT2DoubleHeadsModel`` ...; see pretune.hf.HEADS),
``--from-hf`` reads such a class into a fine-tuned pretune directory (config.json's ``task``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pretune.errors import PretuneError
from pretune.settings import add_command, require, setting


@dataclass
class ConvertSettings:
    from_hf: str | None = setting(None, metavar="HF_DIR", help="a Hugging Face BERT, OpenAI GPT or GPT-2 directory, or a Hub id (org/name[@revision]), to convert "
                                  "(a fine-tuned class such as BertForSequenceClassification keeps its head)")
    to_hf: str | None = setting(None, metavar="DIR", help="a pretune model directory to export (a fine-tuned one as the "
                                "transformers class of its task head)")
    out: str | None = setting(None, help="directory to write (appears whole when complete)")
    body_only: bool = setting(False, help="export or import the body alone, without a fine-tuned model's task head")
    overwrite: bool = setting(False, help="replace --out if it holds anything")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "convert", ConvertSettings, run, help="convert between Hugging Face and pretune checkpoints")


def run(s: ConvertSettings) -> int:
    from pretune.checkpoint import (
        CONFIG_FILE,
        export_hf,
        load_model,
        model_source,
        save_model,
        state_dict_for_saving,
    )
    from pretune.config import read_json
    from pretune.io import check_out

    require(s, "out")
    if bool(s.from_hf) == bool(s.to_hf):
        raise PretuneError("give exactly one of --from-hf HF_DIR or --to-hf DIR")
    source = s.from_hf or s.to_hf
    check_out(s.out, inputs=(source,), overwrite=s.overwrite)
    flag = "--from-hf" if s.from_hf else "--to-hf"
    kind = model_source(source, flag).kind
    if s.from_hf and kind != "huggingface":
        raise PretuneError(f"--from-hf {s.from_hf}: not a Hugging Face directory (config.json has no model_type)")
    if s.to_hf and kind != "pretune":
        raise PretuneError(f"--to-hf {s.to_hf}: not a pretune model directory")
    loaded = load_model(source)
    task = None if s.body_only else loaded.task
    if s.from_hf:
        state = {**state_dict_for_saving(loaded.model, loaded.missing), **(loaded.head if task is not None else {})}
        save_model(s.out, loaded.model, loaded.tokenizer, task, replace=True, state=state)
    else:
        export_hf(loaded.model, s.out, loaded.tokenizer, exclude=loaded.missing, task=task, head=loaded.head,
                  body_only=s.body_only, source=f"--to-hf {s.to_hf}")
    cfg = loaded.config
    absent = sorted({name.split(".")[0] for name in loaded.missing})
    note = f" (the source has no {', '.join(absent)} weights)" if absent else ""
    what = f", with its {task.family} head" if task is not None else ""
    if s.to_hf:
        what += f", as {read_json(Path(s.out) / CONFIG_FILE)['architectures'][0]}"
    print(f"wrote {s.out}: {cfg.family} ({cfg.n_layers} layers, hidden {cfg.hidden}){what}{note}")
    return 0
