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

from pretune.checkpoint import load_model, load_tokenizer, model_source
from pretune.data.pretraining import BertInstanceConfig, BertPretrainingStream, GPTPretrainingStream
from pretune.data.shards import PreparedCorpus, prepare_corpus
from pretune.errors import PretuneError
from pretune.io import write_json
from pretune.report import plot_training
from pretune.tokenizer import Tokenizer
from pretune.train.distributed import Dist, all_sum, check_global_batch, init_distributed, on_main, shard
from pretune.train.rundir import prepare_out, saved_settings
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


def _held_out_sums(model: nn.Module, batches: list[dict[str, Any]], device: torch.device, d: Dist,
                   names: list[str]) -> dict[str, float]:
    """The metric sums ``names`` over the held-out batches, each rank evaluating its share."""
    mine, real = shard(batches, d)
    sums = torch.zeros(len(names), dtype=torch.float64, device=device)
    for i, batch in enumerate(mine):
        out = model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, return_logits=False)
        if i < real:  # the padding of a short share only keeps a sharded model's ranks in step
            sums += torch.stack([out.metrics[k].double() for k in names])
    return dict(zip(names, all_sum(sums, d).tolist()))


def _bert_eval(batches: list[dict[str, Any]], device: torch.device, d: Dist, nsp: bool):
    names = ["mlm_loss_sum", "mlm_tokens", "mlm_correct", *(["nsp_correct", "nsp_count"] if nsp else [])]

    def evaluate(model: nn.Module) -> dict[str, float]:
        s = _held_out_sums(model, batches, device, d, names)
        tokens = max(s["mlm_tokens"], 1.0)
        result = {"val_mlm_loss": s["mlm_loss_sum"] / tokens, "val_mlm_accuracy": s["mlm_correct"] / tokens}
        if nsp:
            result["val_nsp_accuracy"] = s["nsp_correct"] / max(s["nsp_count"], 1.0)
        return result

    return evaluate


def _gpt_eval(batches: list[dict[str, Any]], device: torch.device, d: Dist, nsp: bool = False):
    def evaluate(model: nn.Module) -> dict[str, float]:
        s = _held_out_sums(model, batches, device, d, ["lm_loss_sum", "lm_tokens"])
        loss = s["lm_loss_sum"] / max(s["lm_tokens"], 1.0)
        return {"val_loss": loss, "val_perplexity": math.exp(min(loss, 50))}

    return evaluate


def masked_tokens(batch: dict[str, Any]) -> torch.Tensor:
    """Items of BERT's token-level loss in a batch: the masked tokens (the trainer's global count)."""
    return (batch["mlm_labels"] != -100).sum()


def _streams(s: PretrainSettings, family: str, corpus: PreparedCorpus, tokenizer: Tokenizer, d: Any) -> tuple[Any, list, Any]:
    """The training batch stream, the fixed held-out batches and their evaluation function."""
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
    out = Path(s.out)
    check_global_batch(s.batch_size, d)
    on_main(lambda: prepare_out(s, inputs=(s.model, s.tokenizer, *(s.data or []))), d)
    seed_everything(run.seed)
    model, tokenizer = build(s)
    family = model.cfg.family
    t0 = time.perf_counter()
    corpus = _prepare(s, tokenizer, family, d)
    prep_s = time.perf_counter() - t0
    if family == "bert" and model_source(s.model).fresh:
        init_output_bias(model, corpus, s.output_bias)
    stream, held_out, make_eval = _streams(s, family, corpus, tokenizer, d)
    schedule = run.schedule or ("linear" if family == "bert" else "cosine")
    tcfg = TrainConfig(out_dir=out, max_steps=s.max_steps, run=dataclasses.replace(run, schedule=schedule),
                       desc=f"pretrain {family}", settings=saved_settings(s, d.world_size))
    trainer = Trainer(model, tcfg, stream, dist_info=d, loss_items=masked_tokens if family == "bert" else None)
    trainer.eval_fn = make_eval(held_out, trainer.device, d, s.masking.nsp)  # every rank evaluates its share
    before = None if run.resume else trainer.evaluate()
    t1 = time.perf_counter()
    history = trainer.fit()
    trainer.save_model(out, tokenizer)
    if not d.main:
        return {}
    plot_training(history, out / "loss.png", title=f"pretraining {family}")
    rates = [r["tokens_per_s"] for r in history if "tokens_per_s" in r]
    summary = {
        "family": family, "model": asdict(model.cfg), "steps": trainer.step,
        "train_seconds": round(time.perf_counter() - t1, 1), "prepare_seconds": round(prep_s, 1),
        "tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "train_tokens": corpus.num_tokens("train"), "eval_at_start": before,
        "eval_at_end": {k: v for r in history for k, v in r.items() if k.startswith("val_")},
        "world_size": d.world_size, "fsdp": bool(run.fsdp and d.enabled), "device": str(trainer.device),
        "precision": trainer.precision,
    }
    write_json(out / "pretrain_results.json", summary)
    return summary


def _prepare(s: PretrainSettings, tokenizer: Tokenizer, family: str, d: Dist) -> PreparedCorpus:
    """The token shards: rank 0 tokenizes (or finds the cache), then every rank opens them."""

    def prepare() -> PreparedCorpus:
        return prepare_corpus(
            s.data, tokenizer, Path(s.cache_dir) if s.cache_dir else Path(s.out) / "data-cache", mode=family,
            val_fraction=s.val_fraction, skip_bad_lines=s.skip_bad_lines, workers=s.workers,
            progress=s.trainer.progress and d.main,
        )

    on_main(lambda: prepare() and None, d)
    return prepare()


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
