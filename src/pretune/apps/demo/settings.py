"""The demo's settings: each a flag of ``pretune demo`` (torch-free, so ``--help`` is fast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pretune.settings import Precision, at_least, between, device_name, positive, setting


@dataclass
class DemoSettings:
    """Everything ``pretune demo`` takes. Defaults are the settings measured in docs/demo.md."""

    out: str = setting("demo_out", help="output directory")
    data_dir: str | None = setting(None, help="data root holding nsmc/ (default: $PRETUNE_DATA, ../shared/data, ~/.cache/pretune/data)")
    minutes: float = setting(13.0, check=positive, help="time for the whole demo: the set-up is measured, the fine-tuning "
                             "is fitted (epochs scaled down when time is short), pretraining gets the rest")
    device: str = setting("auto", check=device_name, help="auto, cpu or cuda")
    precision: Precision = setting("auto", help="auto: bf16 autocast where this machine computes it faster, else fp32")
    fresh: bool = setting(False, help="retrain the tokenizer and the pretrained model")
    gpt: bool = setting(False, help="also pretrain and fine-tune a small GPT")
    analysis: bool = setting(False, help="GPT-1 figure 2: layers transferred, zero-shot vs steps")
    full_test: bool = setting(False, help="score on all 50,000 test reviews")
    budgets: list[int] = setting(factory=lambda: [500, 2000, 10000], check=at_least(1), help="label budgets")
    test_sample: int = setting(5000, check=at_least(1), help="test reviews scored")
    validation_size: int = setting(500, check=at_least(1), help="training reviews held out for validation")
    model: str = setting("bert-tiny", help="BERT preset to pretrain and compare (its shape; ELECTRA trains a discriminator of it)")
    objective: Literal["mlm-nsp", "mlm", "electra"] = setting(
        "mlm-nsp", help="pretraining objective: BERT's masked LM + next-sentence prediction, masked LM only, or ELECTRA's "
        "replaced-token detection (docs/demo.md compares them at the demo's budget)")
    gpt_model: str = setting("gpt-mini", help="GPT preset (--gpt, --analysis)")
    vocab_size: int = setting(8000, check=at_least(1), help="tokenizer vocabulary")
    tokenizer_lines: int = setting(300_000, check=at_least(1), help="corpus lines the tokenizer is trained on")
    corpus_lines: int | None = setting(None, check=at_least(1), help="use only the first N lines of the unlabeled corpus "
                                       "(default: 60,000 per minute of --minutes, all of it from 11 minutes on)")
    # Pretraining settings measured in docs/demo.md: short sequences (reviews are short; more
    # steps per second), no dropout (minutes of data cannot be overfitted), a moderate peak rate
    # with a 300-step warmup, and the MLM output bias started at the unigram prior.
    seq_len: int = setting(64, check=at_least(8), help="pretraining sequence length")
    pretrain_batch: int = setting(32, check=at_least(1), help="pretraining batch")
    pretrain_lr: float = setting(1e-3, check=positive, help="pretraining peak learning rate")
    pretrain_warmup: int = setting(300, check=at_least(0), help="pretraining warm-up steps")
    pretrain_dropout: float = setting(0.0, check=between(0, 1, high_open=True), help="pretraining dropout")
    mask_prob: float = setting(0.15, check=between(0, 1, low_open=True, high_open=True), help="masked-LM fraction")
    pretrain_seconds: float | None = setting(None, check=positive, help="pretraining time per model (default: what --minutes leaves)")
    finetune_seq_len: int = setting(64, check=at_least(2), help="fine-tuning maximum length")
    finetune_batch: int = setting(32, check=at_least(1), help="fine-tuning batch")
    # Both twins fine-tune at this rate (docs/demo.md: at 2,000 labels both are better at 3e-4 than
    # at 1e-3, on validation and on test). With several rates each twin fine-tunes once per rate
    # and keeps the run with the best validation accuracy (the test sample never chooses).
    finetune_lrs: list[float] = setting(factory=lambda: [3e-4], flag="--finetune-lr",
                                        check=positive, help="fine-tuning learning rate of both twins; with several, each twin keeps its best on validation")
    finetune_dropout: float = setting(0.1, check=between(0, 1, high_open=True), help="fine-tuning dropout of both twins")
    # batches of similar length (less padding): 2.5x faster fine-tuning on a CPU, same accuracy
    # within noise (docs/demo.md); the time saved goes to pretraining
    finetune_group_by_length: bool = setting(True, flag="--no-group-by-length", negate=True,
                                             help="fine-tune with randomly composed batches instead of batches of similar length")
    finetune_epochs: dict[int, float] = field(default_factory=dict)  # labels -> epochs (default: epochs_for)
    analysis_save_every: int = setting(100, check=at_least(1), help="--analysis: GPT checkpoints every N steps, for zero-shot vs steps")
    seed: int = setting(0, help="random seed of splits, pretraining and fine-tuning")
    progress: bool = setting(True, negate=True, help="no progress bars")


# A short demo cannot pretrain on more than a fraction of NSMC's 662k unlabeled lines (at about 16
# tokens a line and at most 50k tokens/s, 60k lines hold over 20 s of pretraining per minute of
# --minutes), so it prepares and trains its tokenizer on a slice and does not spend its minutes there.
LINES_PER_MINUTE = 60_000
FULL_CORPUS_MINUTES = 11.0


def corpus_lines_for(minutes: float) -> int | None:
    """The unlabeled lines a demo of ``minutes`` uses (None: the whole corpus)."""
    return None if minutes >= FULL_CORPUS_MINUTES else int(LINES_PER_MINUTE * minutes)


def epochs_for(labels: int) -> float:
    """Fewer labels, more passes: about 20k example-passes, within 2 to 10 epochs."""
    return float(min(10, max(2, round(20_000 / labels))))


__all__ = ["FULL_CORPUS_MINUTES", "LINES_PER_MINUTE", "DemoSettings", "corpus_lines_for", "epochs_for"]
