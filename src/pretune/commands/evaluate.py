"""`pretune evaluate`: score a fine-tuned model on a labelled file with its task's metrics."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pretune.errors import PretuneError
from pretune.settings import add_command, require
from pretune.train.settings import EvaluateSettings


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "evaluate", EvaluateSettings, run, help="score a fine-tuned model on a labelled file",
                description="Print the task's metrics for a fine-tuned model on --data and write them as JSON: "
                "to --out (an existing file only with --overwrite), or by default to MODEL/eval_<data file name>.json, "
                "the model directory's record of its latest evaluation on that file, which each evaluation replaces.")


def resolved_precision(s: EvaluateSettings) -> str:
    """``--precision`` as it will run on ``--device`` (fp32 unless asked otherwise), to pass on and report."""
    from pretune.precision import resolve_device, resolve_precision

    return resolve_precision(s.precision, resolve_device(s.device))


def run(s: EvaluateSettings) -> int:
    from pretune.checkpoint import model_source
    from pretune.inference import evaluate
    from pretune.io import write_json
    from pretune.validate import check_outputs

    require(s, "model", "data")
    check_outputs(s, s.out)
    precision = resolved_precision(s)
    if not s.out and model_source(s.model).hub:
        raise PretuneError(f"--model {s.model} is read from the Hugging Face cache, which is no place for results; "
                           f"give --out FILE")
    metrics = evaluate(
        s.model, s.data, task_name=s.task, columns=s.columns.overrides(), batch_size=s.batch_size, limit=s.limit,
        max_seq_len=s.max_seq_len, no_truncate=s.no_truncate, device=s.device, precision=precision,
        progress=s.progress,
    )
    name = re.sub(r"[/:]", "_", s.data[3:]) if s.data.startswith("hf:") else Path(s.data).name  # hf:org/set:config
    out = Path(s.out) if s.out else Path(s.model) / f"eval_{name}.json"
    # "computed_in", not "precision": tagging has a metric of that name
    write_json(out, {**metrics, "computed_in": precision})
    width = max(len(k) for k in (*metrics, "computed_in"))
    for name, value in metrics.items():
        print(f"{name.ljust(width)}  {'n/a' if value is None else f'{value:.4f}'}")
    print(f"{'computed_in'.ljust(width)}  {precision}")
    print(json.dumps({"written": str(out)}))
    return 0
