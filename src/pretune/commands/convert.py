"""`pretune convert`: Hugging Face checkpoints to pretune model directories and back."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pretune.errors import PretuneError
from pretune.settings import add_command, require, setting


@dataclass
class ConvertSettings:
    from_hf: str | None = setting(None, metavar="HF_DIR", help="a Hugging Face BERT, OpenAI GPT or GPT-2 directory, or a Hub id (org/name[@revision]), to convert")
    to_hf: str | None = setting(None, metavar="DIR", help="a pretune model directory to export")
    out: str | None = setting(None, help="directory to write (appears whole when complete)")
    overwrite: bool = setting(False, help="replace --out if it holds anything")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "convert", ConvertSettings, run, help="convert between Hugging Face and pretune checkpoints")


def run(s: ConvertSettings) -> int:
    from pretune.checkpoint import export_hf, load_model, model_source, save_model
    from pretune.io import check_out

    require(s, "out")
    if bool(s.from_hf) == bool(s.to_hf):
        raise PretuneError("give exactly one of --from-hf HF_DIR or --to-hf DIR")
    source = s.from_hf or s.to_hf
    check_out(s.out, inputs=(source,), overwrite=s.overwrite)
    kind = model_source(source, "--from-hf" if s.from_hf else "--to-hf").kind
    if s.from_hf and kind != "huggingface":
        raise PretuneError(f"--from-hf {s.from_hf}: not a Hugging Face directory (config.json has no model_type)")
    if s.to_hf and kind != "pretune":
        raise PretuneError(f"--to-hf {s.to_hf}: not a pretune model directory")
    loaded = load_model(source)
    if s.from_hf:
        save_model(s.out, loaded.model, loaded.tokenizer, exclude=loaded.missing, replace=True)
    else:
        export_hf(loaded.model, s.out, loaded.tokenizer, exclude=loaded.missing)
    cfg = loaded.config
    absent = sorted({name.split(".")[0] for name in loaded.missing})
    note = f" (the source has no {', '.join(absent)} weights)" if absent else ""
    print(f"wrote {s.out}: {cfg.family} ({cfg.n_layers} layers, hidden {cfg.hidden}){note}")
    return 0
