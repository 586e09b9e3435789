"""Recipe: raw text -> pretrained model. BERT learns masked-LM + next-sentence prediction, GPT the
causal language model; the objective follows the model's family.

Wires the components: tokenizer, token shards (``data/shards.py``), pretraining instances
(``data/pretraining.py``), the model, and the shared trainer. The run directory ends up a normal
model directory (config.json, model.safetensors, tokenizer files) plus ``metrics.jsonl``,
``loss.png``, ``pretrain_results.json`` and ``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pretune.checkpoint import load_model, load_tokenizer, model_source, save_model
from pretune.data.pretraining import BertInstanceConfig, BertPretrainingStream, GPTPretrainingStream
from pretune.data.shards import PreparedCorpus, prepare_corpus
from pretune.errors import PretuneError
from pretune.io import write_json
from pretune.report import plot_training
from pretune.tokenizer import Tokenizer
from pretune.train.distributed import init_distributed
from pretune.train.settings import PretrainSettings
from pretune.train.trainer import TrainConfig, Trainer, seed_everything
from pretune.validate import pretrain_settings


def build(s: PretrainSettings) -> tuple[nn.Module, Tokenizer]:
    """The model to pretrain (fresh from a preset/config, or continued from a directory) and its tokenizer."""
    tokenizer = load_tokenizer(s.tokenizer)
    source = model_source(s.model)
    overrides = dict(s.overrides)
    if source.fresh:
        if tokenizer is None:
            raise PretuneError("--tokenizer is required when --model is a preset or config file")
        overrides.setdefault("vocab_size", tokenizer.vocab_size)
        overrides.setdefault("max_positions", max(s.seq_len, 128))
    loaded = load_model(s.model, overrides=overrides, tokenizer=None if source.fresh else tokenizer)
    tokenizer = tokenizer or loaded.tokenizer
    if tokenizer is None:
        raise PretuneError(f"--model {s.model}: has no tokenizer files; pass --tokenizer DIR")
    if tokenizer.vocab_size > loaded.config.vocab_size:
        raise PretuneError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {loaded.config.vocab_size}"
        )
    family = loaded.config.family
    if tokenizer.kind == "wordpiece" and family == "gpt":
        raise PretuneError("a GPT needs a BPE tokenizer with <|endoftext|>; train one with --kind bpe")
    if tokenizer.kind == "bpe" and family == "bert":
        raise PretuneError("a BERT needs a WordPiece tokenizer with [CLS] [SEP] [MASK]; train one with --kind wordpiece")
    if s.seq_len > loaded.config.max_positions:
        raise PretuneError(
            f"--seq-len {s.seq_len} is longer than the model's max_positions ({loaded.config.max_positions})"
        )
    model = loaded.model
    if family == "bert" and not s.masking.nsp:
        # masked LM only: the pooler and the NSP head would get no gradient (and DDP would refuse them)
        model.pooler, model.nsp = None, None
    return model, tokenizer


def _bert_eval(batches: list[dict[str, Any]], device: torch.device):
    def evaluate(model: nn.Module) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        for batch in batches:
            out = model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, return_logits=False)
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0) + v.float()
        result = {
            "val_mlm_loss": (sums["mlm_loss_sum"] / sums["mlm_tokens"]).item(),
            "val_mlm_accuracy": (sums["mlm_correct"] / sums["mlm_tokens"]).item(),
        }
        if "nsp_count" in sums:
            result["val_nsp_accuracy"] = (sums["nsp_correct"] / sums["nsp_count"]).item()
        return result

    return evaluate


def _gpt_eval(batches: list[dict[str, Any]], device: torch.device):
    def evaluate(model: nn.Module) -> dict[str, float]:
        total = count = 0.0
        for batch in batches:
            out = model(**{k: v.to(device) for k, v in batch.items()}, return_logits=False)
            total += out.metrics["lm_loss_sum"].float().item()
            count += out.metrics["lm_tokens"].item()
        loss = total / max(count, 1)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50))}

    return evaluate


def _streams(s: PretrainSettings, family: str, corpus: PreparedCorpus, tokenizer: Tokenizer, d: Any) -> tuple[Any, list, Any]:
    """The training batch stream, the fixed held-out batches and their evaluation function."""
    if s.batch_size % d.world_size:
        raise PretuneError(f"--batch-size {s.batch_size} must be divisible by the number of processes ({d.world_size})")
    seed = s.trainer.seed
    if family == "bert":
        icfg = BertInstanceConfig(seq_len=s.seq_len, **dataclasses.asdict(s.masking))
        stream = BertPretrainingStream(corpus, "train", tokenizer, icfg, s.batch_size, seed, d.rank, d.world_size)
        held_out = BertPretrainingStream.eval_batches(corpus, tokenizer, icfg, s.batch_size, s.eval_batches)
        return stream, held_out, _bert_eval
    stream = GPTPretrainingStream(corpus, "train", s.seq_len, s.batch_size, seed, d.rank, d.world_size)
    held_out = GPTPretrainingStream.eval_batches(corpus, s.seq_len, s.batch_size, s.eval_batches)
    return stream, held_out, _gpt_eval


def pretrain(s: PretrainSettings) -> dict[str, Any]:
    """Run pretraining; returns the summary also written to ``pretrain_results.json``."""
    pretrain_settings(s)  # before any work: ranges, files, --out, lengths, memory
    run = s.trainer
    d = init_distributed(run.device)
    seed_everything(run.seed)
    model, tokenizer = build(s)
    family = model.cfg.family
    out = Path(s.out)
    if out.exists() and not out.is_dir():
        raise PretuneError(f"--out {out}: exists and is not a directory")
    t0 = time.perf_counter()
    corpus = prepare_corpus(
        s.data, tokenizer, Path(s.cache_dir) if s.cache_dir else out / "data-cache", mode=family,
        val_fraction=s.val_fraction, skip_bad_lines=s.skip_bad_lines, workers=s.workers, progress=run.progress and d.main,
    )
    prep_s = time.perf_counter() - t0
    if family == "bert" and model_source(s.model).fresh:
        init_output_bias(model, corpus, s.output_bias)
    stream, held_out, make_eval = _streams(s, family, corpus, tokenizer, d)
    schedule = run.schedule or ("linear" if family == "bert" else "cosine")
    tcfg = TrainConfig(out_dir=out, max_steps=s.max_steps, run=dataclasses.replace(run, schedule=schedule),
                       desc=f"pretrain {family}")
    trainer = Trainer(model, tcfg, stream, dist_info=d)
    trainer.eval_fn = make_eval(held_out, trainer.device)  # held-out batches, moved to the device per use
    before = trainer.evaluate() if d.main and not (run.resume and trainer_has_checkpoint(out)) else None
    t1 = time.perf_counter()
    history = trainer.fit()
    if not d.main:
        return {}
    save_model(out, trainer.unwrapped, tokenizer)
    plot_training(history, out / "loss.png", title=f"pretraining {family}")
    rates = [r["tokens_per_s"] for r in history if "tokens_per_s" in r]
    summary = {
        "family": family, "model": asdict(model.cfg), "steps": trainer.step,
        "train_seconds": round(time.perf_counter() - t1, 1), "prepare_seconds": round(prep_s, 1),
        "tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "train_tokens": corpus.num_tokens("train"), "eval_at_start": before,
        "eval_at_end": {k: v for r in history for k, v in r.items() if k.startswith("val_")},
        "world_size": d.world_size, "device": str(trainer.device), "precision": trainer.precision,
    }
    write_json(out / "pretrain_results.json", summary)
    return summary


def init_output_bias(model: nn.Module, corpus: PreparedCorpus, how: str) -> None:
    """Start a fresh BERT's MLM output bias at the corpus's log unigram frequencies.

    At zero, the first few hundred steps go into learning the unigram distribution, and the
    easiest way there is to make every hidden state alike (the model "predicts frequent tokens"
    whatever the input); representations collapse before they learn anything contextual, and a
    short pretraining then transfers worse than a random initialisation (docs/demo.md has the
    measurements). With the prior in the bias from step 0, the gradient is about context from
    the start. Add-one smoothing; softmax ignores the constant, so the mean is taken out.
    """
    if how == "zero":
        return
    if how != "unigram":
        raise PretuneError(f"--output-bias must be unigram or zero, got {how!r}")
    vocab = model.mlm.bias.numel()
    counts = np.bincount(np.asarray(corpus.tokens("train")), minlength=vocab)[:vocab].astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    with torch.no_grad():
        model.mlm.bias.copy_(torch.from_numpy(logp - logp.mean()).to(model.mlm.bias.dtype))


def trainer_has_checkpoint(out: Path) -> bool:
    from pretune.train.trainer import checkpoint_dirs

    return bool(checkpoint_dirs(out))
