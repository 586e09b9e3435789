"""`pretune predict`: one JSON line of predictions per input, from a fine-tuned model."""

from __future__ import annotations

import argparse

from pretune.settings import add_command, require
from pretune.train.settings import EvaluateSettings


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "predict", EvaluateSettings, run, help="predict with a fine-tuned model, one JSON line per input",
                description="Write predictions for --data (labels optional) to --out: label and probabilities, "
                "score, chosen answer, answer text, or tags, with each input's source file:line. An existing --out "
                "file is replaced only with --overwrite, and never when it is an input.")


def run(s: EvaluateSettings) -> int:
    from pretune.inference import predict
    from pretune.validate import check_outputs

    require(s, "model", "data", "out")
    check_outputs(s, s.out)
    n = predict(
        s.model, s.data, s.out, task_name=s.task, columns=s.columns.overrides(), batch_size=s.batch_size,
        limit=s.limit, max_seq_len=s.max_seq_len, no_truncate=s.no_truncate, device=s.device,
        precision=s.precision, progress=s.progress,
    )
    print(f"wrote {n} predictions to {s.out}")
    return 0
