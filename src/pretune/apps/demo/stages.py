"""The demo's stages, each a call of the library: tokenizer, pretraining, fine-tuning."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from pretune.apps.demo.data import corpus_slice
from pretune.apps.demo.settings import DemoSettings, epochs_for
from pretune.data.settings import MaskingSettings
from pretune.errors import PretuneError
from pretune.io import atomic_dir
from pretune.train.settings import Columns, FinetuneSettings, PretrainSettings, TrainSettings


def demo_precision(s: DemoSettings) -> str:
    """The precision the demo trains in: ``s.precision`` resolved by the library's one rule."""
    from pretune import precision

    return precision.resolve_precision(s.precision, precision.resolve_device(s.device))


def tokenizer_stage(kind: str, corpus: Path, out: Path, s: DemoSettings) -> Path:
    """A WordPiece (BERT) or byte-level BPE (GPT) tokenizer trained on the start of the corpus."""
    from pretune.tokenizer import train_tokenizer

    target = out / ("tokenizer" if kind == "wordpiece" else "tokenizer-bpe")
    if (target / "tokenizer.json").is_file() and not s.fresh:
        print(f"reusing {target}")
        return target
    sample = corpus_slice(corpus, out / "work", s.tokenizer_lines)
    tok = train_tokenizer([sample], kind, s.vocab_size, lowercase=False, show_progress=s.progress)
    with atomic_dir(target) as tmp:
        tok.save(tmp)
    print(f"{kind} vocabulary: {tok.vocab_size} tokens; '눈이 와서 너무 좋다' -> {tok.tokenize('눈이 와서 너무 좋다')}")
    return target


def _pretrain_settings(kind: str, corpus: Path, tokenizer_dir: Path, out: Path, seconds: float, s: DemoSettings) -> PretrainSettings:
    """The demo's pretraining run of ``kind`` for ``seconds`` (one place, for preparing and training)."""
    analysis = kind == "gpt" and s.analysis  # the zero-shot analysis reads the GPT's checkpoints along the way
    trainer = TrainSettings(
        lr=s.pretrain_lr, warmup_steps=s.pretrain_warmup, log_every=10, seed=s.seed, device=s.device,
        precision=demo_precision(s), time_budget_s=seconds, progress=s.progress,
        save_every=s.analysis_save_every if analysis else 0, keep_last=1_000_000 if analysis else 1,
    )
    bert = kind == "bert"
    return PretrainSettings(
        model=s.model if bert else s.gpt_model, tokenizer=str(tokenizer_dir), data=[str(corpus)],
        objective=("electra" if s.objective == "electra" else "mlm") if bert else "clm",
        out=str(out / f"pretrain-{kind}"), max_steps=1_000_000,  # the time budget ends the run; the schedule follows the clock
        batch_size=s.pretrain_batch, seq_len=s.seq_len, cache_dir=str(out / "data-cache"),
        masking=MaskingSettings(mask_prob=s.mask_prob, nsp=s.objective == "mlm-nsp"), trainer=trainer,
        overrides={"max_positions": max(s.seq_len, s.finetune_seq_len), "dropout": s.pretrain_dropout,
                   "attn_dropout": s.pretrain_dropout},
    )


def pretrained_exists(kind: str, out: Path, s: DemoSettings) -> bool:
    """Whether a finished pretraining run of ``kind`` with this ``--objective`` is in ``out`` and is
    to be reused (not --fresh)."""
    path = out / f"pretrain-{kind}" / "pretrain_results.json"
    if s.fresh or not path.is_file():
        return False
    if kind != "bert":
        return True
    done = json.loads(path.read_text(encoding="utf-8"))
    objective = "electra" if done.get("objective") == "electra" else ("mlm-nsp" if done.get("nsp", True) else "mlm")
    if objective != s.objective:
        print(f"{path.parent} was pretrained with --objective {objective}; pretraining again with {s.objective}")
        return False
    return True


def prepare_stage(kind: str, corpus: Path, tokenizer_dir: Path, out: Path, s: DemoSettings) -> None:
    """Tokenize the corpus into the token shards pretraining reads (cached: pretraining then finds
    them at once), so that the set-up is measured before pretraining's time is set."""
    from pretune.data.shards import prepare_corpus
    from pretune.tokenizer import Tokenizer

    ps = _pretrain_settings(kind, corpus, tokenizer_dir, out, 0.0, s)
    prepare_corpus(ps.data, Tokenizer.load(tokenizer_dir), Path(ps.cache_dir), mode=kind, val_fraction=ps.val_fraction,
                   skip_bad_lines=ps.skip_bad_lines, workers=ps.workers, progress=s.progress)


def pretrain_stage(kind: str, corpus: Path, tokenizer_dir: Path, out: Path, seconds: float, s: DemoSettings) -> Path:
    """Pretrain the BERT (or GPT) for ``seconds``; a finished run in ``out`` is reused unless --fresh."""
    from pretune.train.pretrain import pretrain

    run_dir = out / f"pretrain-{kind}"
    if pretrained_exists(kind, out, s):
        print(f"reusing {run_dir}")
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    pretrain(_pretrain_settings(kind, corpus, tokenizer_dir, out, seconds, s))
    return run_dir


def finetune_stage(model: str, tokenizer_dir: Path | None, splits: dict[str, Any], labels: int, out: Path,
                   s: DemoSettings, lr: float, epochs: float | None = None, **extra: Any) -> dict[str, Any]:
    """Fine-tune ``model`` on NSMC at learning rate ``lr`` with the demo's other settings (the same
    for every run); ``extra`` adds FinetuneSettings fields (the GPT analysis's ``transfer_layers``).
    With no ``tokenizer_dir`` the model directory's own tokenizer is used; ``epochs`` defaults to
    the label budget's (``s.finetune_epochs``, else :func:`epochs_for`)."""
    from pretune.train import finetune as ft

    trainer = dataclasses.replace(
        FinetuneSettings().trainer, lr=lr, seed=s.seed, device=s.device, precision=demo_precision(s),
        progress=s.progress, log_every=20, overwrite=True,  # a rerun of the demo replaces the run
    )
    settings = FinetuneSettings(
        model=model, task="nsmc", train=str(splits["budgets"][labels]), validation=str(splits["validation"]),
        test=str(splits["test"]), out=str(out), tokenizer=None if tokenizer_dir is None else str(tokenizer_dir),
        epochs=epochs if epochs is not None else s.finetune_epochs.get(labels, epochs_for(labels)), batch_size=s.finetune_batch,
        max_seq_len=s.finetune_seq_len, group_by_length=s.finetune_group_by_length, columns=Columns(),
        overrides={"dropout": s.finetune_dropout, "attn_dropout": s.finetune_dropout}, trainer=trainer, **extra,
    )
    return ft.finetune(settings)


def finetune_best_lr(model: str, tokenizer_dir: Path | None, splits: dict[str, Any], labels: int, out: Path,
                     s: DemoSettings, epochs: float | None = None) -> dict[str, Any]:
    """Fine-tune once per learning rate of ``s.finetune_lrs`` into ``out/lr-<lr>`` and keep the run
    with the best validation accuracy (the first on ties); the others' weights are deleted.

    Returns the chosen run's summary with ``lr`` and ``candidates`` (lr, validation, test) added.
    """
    if not s.finetune_lrs:
        raise PretuneError("DemoSettings.finetune_lrs is empty: give at least one fine-tuning learning rate")
    shutil.rmtree(out, ignore_errors=True)
    tried = [(lr, finetune_stage(model, tokenizer_dir, splits, labels, out / f"lr-{lr:g}", s, lr, epochs))
             for lr in s.finetune_lrs]
    best_lr, best = max(tried, key=lambda pair: pair[1]["validation"]["accuracy"])  # max keeps the first of ties
    for lr, _ in tried:
        if lr != best_lr:
            for weights in (out / f"lr-{lr:g}").rglob("*.safetensors"):
                weights.unlink()
    candidates = [{"lr": lr, "validation": r["validation"]["accuracy"], "test": r["test"]["accuracy"]} for lr, r in tried]
    return {**best, "lr": best_lr, "candidates": candidates}


def scratch_config(preset_name: str, tok_dir: Path, s: DemoSettings, work: Path, family: str) -> str:
    """A config file for the from-scratch twin: the same shape and vocabulary as the pretrained model."""
    from pretune.config import preset
    from pretune.tokenizer import Tokenizer

    tok = Tokenizer.load(tok_dir)
    if family == "gpt":
        tok.ensure_gpt_special_tokens()
    cfg = preset(preset_name, vocab_size=tok.vocab_size, max_positions=max(s.seq_len, s.finetune_seq_len))
    if family == "bert" and s.objective == "electra":  # the twin of an ELECTRA discriminator of the preset's shape
        cfg = cfg.replace(family="electra")
    path = work / f"scratch-{family}.json"
    cfg.save(path)
    return str(path)


__all__ = ["demo_precision", "finetune_best_lr", "finetune_stage", "prepare_stage", "pretrain_stage", "pretrained_exists",
           "scratch_config", "tokenizer_stage"]
