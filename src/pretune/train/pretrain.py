"""Recipe: raw text -> pretrained model. BERT learns masked-LM + next-sentence prediction, GPT the
causal language model, ELECTRA replaced-token detection with a small generator; the objective
follows the model's family unless ``--objective`` names another (``electra`` on a BERT preset
trains an ELECTRA discriminator of that shape).

Wires the components: tokenizer, token shards (``data/shards.py``), pretraining instances
(``data/pretraining.py``), the model, and the shared trainer. The run directory ends up a normal
model directory (config.json, model.safetensors, tokenizer files) plus ``metrics.jsonl``,
``loss.png``, ``pretrain_results.json`` and ``checkpoints/``; an ELECTRA run directory holds the
discriminator, and its generator as a model directory of its own in ``generator/``.
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
from pretune.config import objective_for
from pretune.data.pretraining import BertInstanceConfig, BertPretrainingStream, GPTPretrainingStream
from pretune.data.shards import PreparedCorpus, prepare_corpus
from pretune.errors import PretuneError
from pretune.io import write_json
from pretune.models.electra import ELECTRA, ElectraPretraining, electra_loss_items, generator_config
from pretune.report import plot_training
from pretune.tokenizer import Tokenizer
from pretune.train.distributed import Dist, all_sum, check_global_batch, init_distributed, on_main, shard
from pretune.train.rundir import prepare_out, saved_settings
from pretune.train.settings import PretrainSettings
from pretune.train.trainer import TrainConfig, Trainer, seed_everything
from pretune.validate import pretrain_settings

GENERATOR_DIR = "generator"  # an ELECTRA run directory's generator, a model directory of its own
CORPUS_MODE = {"mlm": "bert", "electra": "bert", "clm": "gpt"}  # sentences in documents, or one token stream


def build(s: PretrainSettings) -> tuple[nn.Module, Tokenizer, str]:
    """The model to pretrain (fresh from a preset/config, or continued from a directory), its
    tokenizer and the objective."""
    tokenizer = load_tokenizer(s.tokenizer)
    source = model_source(s.model)
    overrides = dict(s.overrides)
    if source.fresh:
        if tokenizer is None:
            raise PretuneError("--tokenizer is required when --model is a preset or config file")
        overrides.setdefault("vocab_size", tokenizer.vocab_size)
        overrides.setdefault("max_positions", max(s.seq_len, 128))
        if s.objective == "electra":
            overrides["family"] = "electra"  # a BERT preset's shape, as an ELECTRA discriminator
    loaded = load_model(s.model, overrides=overrides, tokenizer=None if source.fresh else tokenizer)
    tokenizer = tokenizer or loaded.tokenizer
    if tokenizer is None:
        raise PretuneError(f"--model {s.model}: has no tokenizer files; pass --tokenizer DIR")
    if tokenizer.vocab_size > loaded.config.vocab_size:
        raise PretuneError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {loaded.config.vocab_size}"
        )
    family = loaded.config.family
    objective = objective_for(s.objective, family, s.model)
    if tokenizer.kind == "wordpiece" and objective == "clm":
        raise PretuneError("a GPT needs a BPE tokenizer with <|endoftext|>; train one with --kind bpe")
    if tokenizer.kind == "bpe" and objective != "clm":
        raise PretuneError(f"a {family.upper()} needs a WordPiece tokenizer with [CLS] [SEP] [MASK]; train one with --kind wordpiece")
    if s.seq_len > loaded.config.max_positions:
        raise PretuneError(
            f"--seq-len {s.seq_len} is longer than the model's max_positions ({loaded.config.max_positions})"
        )
    model = loaded.model
    if objective == "electra":
        return _electra(s, model, source, overrides), tokenizer, objective
    if objective == "mlm" and not s.masking.nsp:
        # masked LM only: the pooler and the NSP head would get no gradient (and DDP would refuse them)
        model.pooler, model.nsp = None, None
    return model, tokenizer, objective


def _electra(s: PretrainSettings, discriminator: ELECTRA, source: Any, overrides: dict[str, Any]) -> ElectraPretraining:
    """The discriminator with its generator: the one saved beside a continued run, else a fresh one."""
    saved = None if source.fresh or source.path is None else source.path / GENERATOR_DIR
    if saved is not None and saved.is_dir():
        generator = load_model(saved, overrides={k: v for k, v in overrides.items() if k == "dropout"}).model
        if generator.cfg.family != "electra":
            raise PretuneError(f"{saved}: not an ELECTRA generator (family {generator.cfg.family!r})")
    else:
        generator = ELECTRA(generator_config(discriminator.cfg, s.electra.generator_size, s.electra.generator_layers))
    return ElectraPretraining(discriminator, generator, disc_weight=s.electra.disc_weight,
                              temperature=s.electra.generator_temperature)


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


ELECTRA_SUMS = ["mlm_loss_sum", "mlm_tokens", "mlm_correct", "sampled_original", "disc_loss_sum", "disc_tokens",
                "disc_correct", "replaced", "replaced_found", "said_replaced"]


def _electra_eval(batches: list[dict[str, Any]], device: torch.device, d: Dist, nsp: bool = False):
    """Held-out generator (masked LM) and discriminator figures: its loss and accuracy over every
    real token, and how many replacements it finds (recall) and how many of its "replaced" are
    right (precision)."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        s = _held_out_sums(model, batches, device, d, ELECTRA_SUMS)
        masked, tokens = max(s["mlm_tokens"], 1.0), max(s["disc_tokens"], 1.0)
        return {
            "val_mlm_loss": s["mlm_loss_sum"] / masked, "val_mlm_accuracy": s["mlm_correct"] / masked,
            "val_disc_loss": s["disc_loss_sum"] / tokens, "val_disc_accuracy": s["disc_correct"] / tokens,
            "val_replaced_share": s["replaced"] / tokens, "val_disc_recall": s["replaced_found"] / max(s["replaced"], 1.0),
            "val_disc_precision": s["replaced_found"] / max(s["said_replaced"], 1.0),
        }

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


# ELECTRA's masking (google-research/electra pretrain_helpers.mask): of the chosen tokens 85% are
# shown to the generator as [MASK], 15% as themselves, none replaced at random; no NSP.
ELECTRA_MASKING = dict(nsp=False, mask_fraction=0.85, random_fraction=0.0, sample_uniforms=True)


def _streams(s: PretrainSettings, objective: str, corpus: PreparedCorpus, tokenizer: Tokenizer, d: Any) -> tuple[Any, list, Any]:
    """The training batch stream, the fixed held-out batches and their evaluation function."""
    seed = s.trainer.seed
    if objective in ("mlm", "electra"):
        masking = {**dataclasses.asdict(s.masking), **(ELECTRA_MASKING if objective == "electra" else {})}
        icfg = BertInstanceConfig(seq_len=s.seq_len, **masking)
        stream = BertPretrainingStream(corpus, "train", tokenizer, icfg, s.batch_size, seed, d.rank, d.world_size)
        held_out = BertPretrainingStream.eval_batches(corpus, tokenizer, icfg, s.batch_size, s.eval_batches)
        return stream, held_out, _bert_eval if objective == "mlm" else _electra_eval
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
    model, tokenizer, objective = build(s)
    family = model.cfg.family
    t0 = time.perf_counter()
    corpus = _prepare(s, tokenizer, CORPUS_MODE[objective], d)
    prep_s = time.perf_counter() - t0
    if objective != "clm" and model_source(s.model).fresh:
        init_output_bias(model.generator.mlm if objective == "electra" else model.mlm, corpus, s.output_bias)
    stream, held_out, make_eval = _streams(s, objective, corpus, tokenizer, d)
    schedule = run.schedule or ("cosine" if objective == "clm" else "linear")
    tcfg = TrainConfig(out_dir=out, max_steps=s.max_steps, run=dataclasses.replace(run, schedule=schedule),
                       desc=f"pretrain {family}", settings=saved_settings(s, d.world_size))
    items = {"mlm": masked_tokens, "electra": electra_loss_items}.get(objective)
    trainer = Trainer(model, tcfg, stream, dist_info=d, loss_items=items)
    trainer.eval_fn = make_eval(held_out, trainer.device, d, s.masking.nsp)  # every rank evaluates its share
    before = None if run.resume else trainer.evaluate()
    t1 = time.perf_counter()
    history = trainer.fit()
    if objective == "electra":
        _save_electra(trainer, model, out, tokenizer)
    else:
        trainer.save_model(out, tokenizer)
    if not d.main:
        return {}
    plot_training(history, out / "loss.png", title=f"pretraining {family}")
    rates = [r["tokens_per_s"] for r in history if "tokens_per_s" in r]
    summary = {
        "family": family, "objective": objective, "model": asdict(model.cfg), "steps": trainer.step,
        "train_seconds": round(time.perf_counter() - t1, 1), "prepare_seconds": round(prep_s, 1),
        "tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
        "train_tokens": corpus.num_tokens("train"), "eval_at_start": before,
        "eval_at_end": {k: v for r in history for k, v in r.items() if k.startswith("val_")},
        "world_size": d.world_size, "fsdp": bool(run.fsdp and d.enabled), "device": str(trainer.device),
        "precision": trainer.precision,
    }
    if objective == "electra":
        summary["generator"] = asdict(model.generator.cfg)
    if objective == "mlm":
        summary["nsp"] = s.masking.nsp
    write_json(out / "pretrain_results.json", summary)
    return summary


def _save_electra(trainer: Trainer, model: ElectraPretraining, out: Path, tokenizer: Tokenizer) -> None:
    """The discriminator as the run's model directory, the generator in ``generator/`` (the shared
    embeddings in both), from the full state rank 0 gathers."""
    state = trainer.model_state()
    if trainer.dist.main:
        save_model(out / GENERATOR_DIR, model.generator, tokenizer, state=model.generator_state(state))
        save_model(out, model.discriminator, tokenizer, state=model.discriminator_state(state))


def _prepare(s: PretrainSettings, tokenizer: Tokenizer, mode: str, d: Dist) -> PreparedCorpus:
    """The token shards: rank 0 tokenizes (or finds the cache), then every rank opens them."""

    def prepare() -> PreparedCorpus:
        return prepare_corpus(
            s.data, tokenizer, Path(s.cache_dir) if s.cache_dir else Path(s.out) / "data-cache", mode=mode,
            val_fraction=s.val_fraction, skip_bad_lines=s.skip_bad_lines, workers=s.workers,
            progress=s.trainer.progress and d.main,
        )

    on_main(lambda: prepare() and None, d)
    return prepare()


def init_output_bias(head: nn.Module, corpus: PreparedCorpus, how: str) -> None:
    """Start a fresh masked-LM head's output bias (BERT's, an ELECTRA generator's) at the corpus's
    log unigram frequencies.

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
    vocab = head.bias.numel()
    counts = np.bincount(np.asarray(corpus.tokens("train")), minlength=vocab)[:vocab].astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    with torch.no_grad():
        head.bias.copy_(torch.from_numpy(logp - logp.mean()).to(head.bias.dtype))
