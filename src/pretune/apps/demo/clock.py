"""The demo's clock: ``--minutes`` bounds the whole demo, not only pretraining.

The set-up (tokenizers, corpus preparation, label splits) is measured as it runs. Then the
from-scratch twins fine-tune first: the pretrained twins use identical settings, so their time is
then known, not guessed. Pretraining gets what is left of ``--minutes`` after both, minus the
probes and the report. When the time left is short, fine-tuning takes at most
:data:`FINETUNE_SHARE` of it and every label budget's epochs are scaled down by the same factor
(the same for both twins); the first run's cost comes from :data:`PRIOR`, later ones from the runs
measured so far. The plan is printed, and written to ``results.json``, with what each stage got.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

FINETUNE_SHARE = 0.5  # at most this share of the time left after set-up, when time is short
PROBES_S = 10.0  # contextual embeddings, learning curve, report (measured: a few seconds)
PRETRAIN_OVERHEAD_S = 5.0  # the evaluation before and after pretraining, saving, plotting
MIN_PRETRAIN_S = 20.0  # per model: fewer seconds would leave the pretrained twin untrained


@dataclass
class FinetuneCost:
    """Seconds of one fine-tuning run: training example-passes, examples scored, and a fixed part."""

    train_s: float  # seconds per training example-pass
    score_s: float  # seconds per example scored (validation after every epoch, then validation and test)
    run_s: float  # model, data and saving

    def seconds(self, labels: int, epochs: float, validation: int, test: int) -> float:
        scored = validation * (math.ceil(epochs) + 1) + test
        return labels * epochs * self.train_s + scored * self.score_s + self.run_s

    def scaled(self, factor: float) -> FinetuneCost:
        return FinetuneCost(self.train_s * factor, self.score_s * factor, self.run_s * factor)


# bert-tiny at length 64, batches grouped by length, on the project's 2-core CPU with nothing else
# running (docs/demo.md, the grouped runs: 2,000 labels x 10 epochs in 18 s, 10,000 x 2 in 16 s,
# each scoring 500 validation reviews per epoch and 5,000 test reviews). Only the first run's
# epochs rest on it; later ones on the runs measured (a loaded machine is several times slower).
PRIOR = FinetuneCost(train_s=0.0006, score_s=0.0005, run_s=1.0)


@dataclass
class Clock:
    """The demo's deadline, what each stage was given and what it took."""

    total_s: float
    started: float = field(default_factory=time.perf_counter)
    given: dict[str, Any] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def say(self, what: str, value: Any, words: str) -> None:
        self.given[what] = value
        print(f"[clock {self.elapsed():.0f}/{self.total_s:.0f} s] {words}", flush=True)


def scaled_epochs(epochs: dict[int, float], factor: float) -> dict[int, float]:
    """Each label budget's epochs times ``factor``, never under one pass over the labels."""
    return {n: round(max(min(1.0, e), e * factor), 2) for n, e in epochs.items()}


def fit_epochs(epochs: dict[int, float], copies: int, budget_s: float, cost: FinetuneCost, validation: int,
               test: int) -> tuple[dict[int, float], float]:
    """The epochs per label budget (the given ones scaled down by one factor, at most 1) whose
    ``copies`` runs each fit into ``budget_s`` seconds, and their estimated seconds."""
    def seconds(factor: float) -> float:
        return sum(copies * cost.seconds(n, e, validation, test) for n, e in scaled_epochs(epochs, factor).items())

    low, high = 0.0, 1.0
    if seconds(high) > budget_s:
        for _ in range(30):  # bisection: seconds() grows with the factor
            mid = (low + high) / 2
            low, high = (mid, high) if seconds(mid) <= budget_s else (low, mid)
    chosen = scaled_epochs(epochs, high if seconds(high) <= budget_s else low)
    return chosen, sum(copies * cost.seconds(n, e, validation, test) for n, e in chosen.items())


__all__ = ["Clock", "FINETUNE_SHARE", "FinetuneCost", "MIN_PRETRAIN_S", "PRIOR", "PRETRAIN_OVERHEAD_S", "PROBES_S", "fit_epochs",
           "scaled_epochs"]
