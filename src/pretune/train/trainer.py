"""The training loop shared by pretraining and fine-tuning.

The trainer knows nothing about BERT or GPT (but for a table of each family's Adam settings): it is given a model, an endless iterable of batches
(dicts of tensors) and a ``step_fn`` that returns an object with a ``.loss``. It owns the
optimizer (AdamW with the weight decay and epsilon of the model family's reference implementation,
:data:`ADAM_RULES`), the warmup-then-decay schedule, gradient accumulation and clipping, autocast,
optional ``torch.compile``, DistributedDataParallel or FSDP2 under ``torchrun`` with objectives
that do not depend on the number of processes, periodic evaluation, atomic checkpoints and exact
resumption (model, optimizer, schedule, every rank's RNG, the data position and the time already
spent), loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from pretune.checkpoint import read_weights
from pretune.checkpoint import save_model as save_model_dir
from pretune.data.prefetch import Prefetcher
from pretune.errors import PretuneError
from pretune.io import atomic_dir, write_json, write_text
from pretune.precision import autocast, resolve_precision
from pretune.train.distributed import (
    Dist,
    all_sum,
    full_model_state,
    full_optimizer_state,
    fully_shard_model,
    gather_to_main,
    init_distributed,
    load_full_state,
    on_main,
    rank_seed,
    resolve_device,
    unwrap,
)
from pretune.train.rundir import (
    CHECKPOINTS,
    METRICS,
    SETTINGS_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    checkpoint_dirs,
    remove_temporaries,
)
from pretune.train.settings import TrainSettings


@dataclass
class TrainConfig:
    """A training run: where it writes, how many steps, and the user's settings for it."""

    out_dir: Path
    max_steps: int
    run: TrainSettings = field(default_factory=TrainSettings)
    desc: str = "train"
    prefetch: int = 2  # batches prepared ahead on a background thread (0: in the loop)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float | None = None  # Adam's epsilon; None: the model family's (param_groups)
    settings: dict[str, Any] | None = None  # the command's settings, saved with each checkpoint for --resume

    @classmethod
    def make(cls, out_dir: str | Path, max_steps: int, *, desc: str = "train", prefetch: int = 2, **run: Any) -> TrainConfig:
        """A config from ``TrainSettings`` fields given by name (for code and tests)."""
        return cls(Path(out_dir), max_steps, TrainSettings(**run), desc=desc, prefetch=prefetch)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        r = self.run
        if r.schedule not in (None, "linear", "cosine", "constant"):
            raise PretuneError(f"--schedule must be linear, cosine or constant, got {r.schedule!r}")
        for flag, value in (("--max-steps", self.max_steps), ("--grad-accum", r.grad_accum), ("--keep-last", r.keep_last),
                            ("--log-every", r.log_every)):
            if int(value) < 1:
                raise PretuneError(f"{flag} must be at least 1, got {value}")
        for flag, value in (("--eval-every", r.eval_every), ("--save-every", r.save_every), ("--warmup-steps", r.warmup_steps),
                            ("--time-budget", r.time_budget_s), ("--grad-clip", r.grad_clip), ("--weight-decay", r.weight_decay)):
            if value < 0:
                raise PretuneError(f"{flag} must be >= 0, got {value}")
        if r.lr <= 0:
            raise PretuneError(f"--lr must be positive, got {r.lr}")


# --- optimizer and schedule ----------------------------------------------------------------------

@dataclass(frozen=True)
class AdamRule:
    """How a model family's reference implementation runs Adam: which parameters its weight decay
    leaves alone, and its epsilon."""

    eps: float
    exempt: str  # "bias+layernorm": every bias and every LayerNorm parameter; "vectors": every parameter of rank < 2
    source: str  # the reference implementation it follows (docs/architecture.md, "The trainer")

    def decays(self, name: str, param: nn.Parameter, layernorm: set[str]) -> bool:
        if self.exempt == "vectors":
            return param.dim() >= 2
        return name.rsplit(".", 1)[-1] != "bias" and name not in layernorm


_BERT_RULE = AdamRule(1e-6, "bias+layernorm", "google-research/bert optimization.py: AdamWeightDecayOptimizer, "
                      "exclude_from_weight_decay=['LayerNorm', 'layer_norm', 'bias'], epsilon=1e-6")
_GPT_RULE = AdamRule(1e-8, "vectors", "openai/finetune-transformer-lm train.py/opt.py: l2=0.01 on every parameter of "
                     "rank > 1 (vector_l2 off), e=1e-8; GPT-2 has no released training code: nanoGPT and the transformers "
                     "Trainer do the same (every matrix decayed, embeddings included; eps 1e-8)")

# The rule of each model family (``cfg.family``). Position and segment embeddings are matrices and
# are decayed by all of them; a model without a family (a test's plain module) gets the GPT rule,
# PyTorch's own default epsilon.
ADAM_RULES: dict[str, AdamRule] = {
    "bert": _BERT_RULE,
    "electra": AdamRule(1e-6, "bias+layernorm", "google-research/electra model/optimization.py: as BERT's, "
                        "exclude_from_weight_decay=['LayerNorm', 'layer_norm', 'bias'], epsilon=1e-6"),
    "gpt": _GPT_RULE,
}


def adam_rule(model: nn.Module) -> AdamRule:
    """The Adam rule of ``model``'s family (:data:`ADAM_RULES`)."""
    return ADAM_RULES.get(getattr(getattr(model, "cfg", None), "family", None), _GPT_RULE)


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    head_lr: float | None = None,
    head_prefixes: tuple[str, ...] = ("head.",),
    layer_decay: float | None = None,
    no_decay: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """AdamW parameter groups, with the weight decay and epsilon of the model family's reference
    implementation (:func:`adam_rule`); ``no_decay`` names parameters never decayed besides (a
    token table whose pretrained rows are frozen: decay would move them).

    Parameters under ``head_prefixes`` (the newly added layers) get ``head_lr``; the pretrained body
    gets ``lr``, scaled by ``layer_decay ** (depth from the top)`` when layer-wise decay is asked
    for. Frozen parameters (``requires_grad=False``) are left out.
    """
    rule = adam_rule(model)
    layernorm = {f"{m}.{p}" if m else p for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)
                 for p, _ in mod.named_parameters(recurse=False)}
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", 0)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith(head_prefixes)
        group_lr = head_lr if (is_head and head_lr is not None) else lr
        if layer_decay is not None and not is_head:
            if ".blocks." in name:
                depth = n_layers - int(name.split(".blocks.")[1].split(".")[0])
            elif ".embeddings." in name:
                depth = n_layers + 1
            else:
                depth = 0
            group_lr = lr * layer_decay**depth
        decay = weight_decay if rule.decays(name, p, layernorm) and name not in no_decay else 0.0
        key = (group_lr, decay == 0.0, is_head)
        g = groups.setdefault(key, {"params": [], "names": [], "lr": group_lr, "weight_decay": decay, "eps": rule.eps,
                                    "name": "head" if is_head else "body"})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_optimizer(groups: list[dict[str, Any]], cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the parameter groups, fused on CUDA and CPU; each group's epsilon is its own
    (the family's, from :func:`param_groups`) unless ``cfg.eps`` sets one for all."""
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    for g in clean:
        g["initial_lr"] = g["lr"]
        if cfg.eps is not None:
            g["eps"] = cfg.eps
    # One fused kernel for all parameters (CUDA and CPU); the per-tensor loop costs more than the
    # whole transformer body of the small models on a CPU.
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(clean, lr=cfg.run.lr, betas=cfg.betas, fused=fused or None)


def lr_factor(step: int, cfg: TrainConfig, time_fraction: float = 0.0) -> float:
    """Linear warmup to 1, then linear decay to 0 (BERT), cosine to 0 (GPT-1) or constant.

    Under a time budget the decay follows whichever is further along: the steps or the clock
    (``time_fraction`` of the budget spent), so a run cut by time still ends at a low rate.
    """
    warmup, schedule = cfg.run.warmup_steps, cfg.run.schedule or "linear"
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, cfg.max_steps - warmup)
    progress = min(1.0, max((step - warmup) / span, time_fraction))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


# --- RNG state ---------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (loadable with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- checkpoints -------------------------------------------------------------------------------


def read_trainer_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``trainer_state.pt``, loaded with ``weights_only=True`` (tensors and plain values only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise PretuneError(f"{path}: cannot read the checkpoint ({first}); delete {path.parent} to resume from the one "
                           "before, or start afresh with --overwrite") from None


def _rebind(groups: list[dict[str, Any]], model: nn.Module) -> list[dict[str, Any]]:
    """The parameter groups with the model's current parameters (FSDP replaces them by shards)."""
    params = dict(model.named_parameters())
    return [{**g, "params": [params[n] for n in g["names"]]} if "names" in g else g for g in groups]


def batch_size_of(batch: dict[str, Any]) -> int:
    """Examples in a batch: the first dimension of its ``input_ids``."""
    ids = batch.get("input_ids")
    return int(ids.shape[0]) if isinstance(ids, torch.Tensor) else 1


class _Window:
    """What the log reports since the last record: summed loss, micro-batches, tokens, time."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.count = 0
        self.tokens = 0
        self.started = time.perf_counter()


class Trainer:
    """Runs ``max_steps`` optimizer steps of ``step_fn`` over ``train_batches``.

    **Exact objectives across processes and micro-batches.** Before a step's forward passes the
    trainer counts every micro-batch's examples and, given ``loss_items``, the items of a
    token-level loss (masked tokens, labelled tags), and sums both over the step's micro-batches
    and all ranks. Each micro-batch's loss is then scaled so that the step's gradient is that of
    the global objective: the mean over the step's examples, with token-level sums divided by
    their global count (handed to the model as ``loss_denominator``, the way Hugging Face's
    ``num_items_in_batch`` is). The run is the same, to rounding, however the global batch is split
    into processes and micro-batches. Each rank draws its own dropout from a seed derived from
    ``seed`` and its rank; data order and masking do not depend on the rank.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        train_batches: Iterable[dict[str, Any]],
        *,
        groups: list[dict[str, Any]] | None = None,
        step_fn: Callable[[nn.Module, dict[str, Any]], Any] | None = None,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        on_eval: Callable[[int, dict[str, float]], bool] | None = None,
        dist_info: Dist | None = None,
        loss_items: Callable[[dict[str, Any]], Any] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.cfg = cfg
        run = cfg.run
        self.dist = dist_info or init_distributed(run.device)
        self.device = resolve_device(run.device, self.dist)
        self.model = model.to(self.device)
        # Batches are built (and pinned, for a GPU) on a background thread while the model trains.
        pin = self.device.type == "cuda"
        self.batches = Prefetcher(train_batches, cfg.prefetch, pin_memory=pin) if cfg.prefetch else train_batches
        self.step_fn = step_fn or (lambda m, b: m(**b))
        self.eval_fn, self.on_eval, self.loss_items, self.clock = eval_fn, on_eval, loss_items, clock
        groups = groups if groups is not None else param_groups(model, run.lr, run.weight_decay)
        self.train_model = self._wrap(self.model)
        self.groups = _rebind(groups, self.unwrapped)  # FSDP shards the parameters: the optimizer takes the shards
        self.optimizer = build_optimizer(self.groups, cfg, self.device)
        self.elapsed = 0.0  # seconds of training, the same on every rank; drives a time budget
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg, self._time_fraction()))
        self.precision = resolve_precision(run.precision, self.device)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._writer = None
        self._checked = False
        seed_everything(rank_seed(run.seed, self.dist.rank))  # dropout: each rank its own random numbers

    # The model that runs the step: sharded (FSDP2) or replicated (DDP), and/or compiled.
    def _wrap(self, model: nn.Module) -> nn.Module:
        wrapped = model
        if self.dist.enabled and self.cfg.run.fsdp:
            wrapped = fully_shard_model(model, self.device, self.dist)
        elif self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DDP(model, device_ids=ids, find_unused_parameters=False)
        if self.cfg.run.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _time_fraction(self) -> float:
        budget = self.cfg.run.time_budget_s
        return self.elapsed / budget if budget else 0.0

    def _shared_elapsed(self, since: float, before: float) -> float:
        """Training seconds so far (``before`` from earlier runs) as rank 0 measured them."""
        now = before + self.clock() - since
        if not self.dist.enabled:
            return now  # one process: no tensor, no device sync per step
        value = torch.tensor([now], dtype=torch.float64, device=self.device)
        dist.broadcast(value, 0)
        return float(value.item())

    @property
    def unwrapped(self) -> nn.Module:
        return unwrap(self.train_model)

    # --- saving and resuming (every rank calls these; rank 0 reads and writes) -------------------

    def model_state(self) -> dict[str, torch.Tensor]:
        """The whole model's tensors on rank 0 (gathered from the shards under FSDP), ``{}`` elsewhere."""
        return full_model_state(self.unwrapped, self.dist)

    def save_model(self, out: Path, tokenizer: Any = None, task: Any = None) -> None:
        """Save the model directory ``out`` (weights, config and tokenizer as one version) from rank 0."""
        state = self.model_state()
        if self.dist.main:
            save_model_dir(out, self.unwrapped, tokenizer, task, state=state)

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step-N`` atomically (rank 0) and keep the last ``keep_last``."""
        data_state = self.batches.state_dict() if hasattr(self.batches, "state_dict") else None
        weights = self.model_state()
        optim = full_optimizer_state(self.unwrapped, self.optimizer, self.dist)
        rngs = gather_to_main(rng_state(), self.dist)
        if not self.dist.main:
            return None
        target = self.cfg.out_dir / CHECKPOINTS / f"step-{self.step}"
        state = {
            "step": self.step, "optimizer": optim, "scheduler": self.scheduler.state_dict(), "rng": rngs,
            "data": data_state, "elapsed": self.elapsed, "world_size": self.dist.world_size,
            "config": json.loads(json.dumps({k: v for k, v in asdict(self.cfg).items() if k != "settings"}, default=str)),
        }
        try:
            with atomic_dir(target) as tmp:
                save_file(weights, str(tmp / WEIGHTS_FILE))
                torch.save(state, tmp / STATE_FILE)
                if self.cfg.settings is not None:
                    write_json(tmp / SETTINGS_FILE, self.cfg.settings)
        except OSError as exc:
            previous = checkpoint_dirs(self.cfg.out_dir)
            keep = f"; the previous checkpoint {previous[-1]} is intact" if previous else ""
            raise PretuneError(f"could not save checkpoint {target}: {exc.strerror or exc}{keep}") from None
        for old in checkpoint_dirs(self.cfg.out_dir)[: -self.cfg.run.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def load_checkpoint(self, path: Path) -> None:
        """Restore everything from a checkpoint: rank 0 reads it, each rank gets its share and its RNG state."""
        held: dict[str, Any] = {}

        def read() -> dict[str, Any]:
            state = read_trainer_state(path / STATE_FILE)
            held["weights"], held["optimizer"] = read_weights(path / WEIGHTS_FILE), state.pop("optimizer")
            return state

        state = on_main(read, self.dist)
        load_full_state(self.unwrapped, self.optimizer, held.get("weights", {}), held.get("optimizer", {}), self.dist)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self._restore_rng(state["rng"])
        if state["data"] is not None:
            self.batches.load_state_dict(state["data"])
        self._truncate_metrics(self.step)

    def _restore_rng(self, states: list[dict[str, Any]]) -> None:
        if len(states) == self.dist.world_size:
            set_rng_state(states[self.dist.rank])
            return
        seed_everything(rank_seed(self.cfg.run.seed + self.step, self.dist.rank))
        if self.dist.main:
            warnings.warn(f"the checkpoint was written by {len(states)} process(es) and this run has {self.dist.world_size}: "
                          "dropout draws new random numbers (data order and masking are unchanged)", stacklevel=2)

    def _truncate_metrics(self, step: int) -> None:
        """Drop log records written after ``step`` by the run that was interrupted."""
        path = self.cfg.out_dir / METRICS
        if not path.is_file() or not self.dist.main:
            return
        kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line and json.loads(line)["step"] <= step]
        self.history = [json.loads(line) for line in kept]
        write_text(path, "".join(line + "\n" for line in kept))

    # --- logging ---------------------------------------------------------------------------

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.dist.main:
            return
        with open(self.cfg.out_dir / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.cfg.out_dir / "tensorboard"))
            except ImportError:
                self._writer = False
        if self._writer:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, record["step"])
            self._writer.flush()

    def _all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return all_sum(value, self.dist) / self.dist.world_size if self.dist.enabled else value

    # --- evaluation --------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """``eval_fn`` on every rank, in eval mode without gradients. A distributed ``eval_fn``
        evaluates this rank's share and returns the same metrics on every rank (see
        :func:`pretune.train.distributed.shard`): no rank waits while another evaluates alone, and
        a sharded (FSDP) model runs its forward passes on all ranks together."""
        if self.eval_fn is None:
            return {}
        model = self.unwrapped
        was_training = model.training
        model.eval()
        with torch.no_grad(), autocast(self.device, self.precision):
            metrics = self.eval_fn(model)
        model.train(was_training)
        return metrics

    # --- the loop ----------------------------------------------------------------------------

    def fit(self) -> list[dict[str, Any]]:
        """Train to ``max_steps`` (resuming first if asked) and return the log records."""
        try:
            return self._fit()
        finally:  # also when training stops with an error: no batch thread left running
            if isinstance(self.batches, Prefetcher):
                self.batches.close()

    def _fit(self) -> list[dict[str, Any]]:
        self._start()
        self.train_model.train()
        iterator: Iterator[dict[str, Any]] = iter(self.batches)
        bar = self._progress_bar()
        window = _Window(self.device)
        bad_step = torch.full((), -1, device=self.device, dtype=torch.long)
        since, before = self.clock(), self.elapsed
        stop = False
        while self.step < self.cfg.max_steps and not stop:
            bad_step = self._train_step(iterator, window, bad_step)
            if self.cfg.run.time_budget_s:
                self.elapsed = self._shared_elapsed(since, before)
            self.step += 1
            self._advance_bar(bar)
            stop, window = self._after_step(window, bad_step, bar)
        bar.close()
        if self._writer:
            self._writer.close()
        return self.history

    def _start(self) -> None:
        """Open the run directory (rank 0) and resume from its newest checkpoint when asked."""
        found = on_main(self._open_run_dir, self.dist)
        if found is not None:
            self.load_checkpoint(Path(found))

    def _open_run_dir(self) -> str | None:
        """Rank 0: create the run directory, remove what killed saves left, and name the checkpoint
        to resume from (a fresh start removes an earlier run's checkpoints and log)."""
        out = self.cfg.out_dir
        out.mkdir(parents=True, exist_ok=True)
        remove_temporaries(out)
        if not self.cfg.run.resume:
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
            (out / METRICS).unlink(missing_ok=True)
            return None
        found = checkpoint_dirs(out)
        if not found:
            raise PretuneError(f"--resume: {out} holds no complete checkpoint ({CHECKPOINTS}/step-N) to continue from; "
                               "start afresh with --overwrite instead")
        return str(found[-1])

    def _progress_bar(self) -> tqdm:
        """Under a time budget the clock ends the run, so the bar counts seconds (its ETA is the
        budget's end); otherwise it counts steps."""
        budget = self.cfg.run.time_budget_s
        return tqdm(
            total=round(budget) if budget else self.cfg.max_steps, initial=round(self.elapsed) if budget else self.step,
            desc=self.cfg.desc, unit="s" if budget else "step",
            disable=not (self.cfg.run.progress and self.dist.main), dynamic_ncols=True,
        )

    def _advance_bar(self, bar: tqdm) -> None:
        bar.update(min(int(self.elapsed), bar.total) - bar.n if self.cfg.run.time_budget_s else 1)

    def _train_step(self, iterator: Iterator[dict[str, Any]], window: _Window, bad_step: torch.Tensor) -> torch.Tensor:
        """One optimizer step over ``grad_accum`` micro-batches; returns the first non-finite step seen."""
        run, model = self.cfg.run, self.train_model
        micro = [self._next_batch(iterator) for _ in range(run.grad_accum)]
        for i, (batch, (scale, denominator)) in enumerate(zip(micro, self._loss_scales(micro))):
            ids = batch.get("input_ids")
            window.tokens += int(ids.numel()) if isinstance(ids, torch.Tensor) else 0
            batch = self._to_device(batch)
            if isinstance(denominator, dict):
                batch["loss_denominator"] = {k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in denominator.items()}
            elif denominator is not None:
                batch["loss_denominator"] = torch.tensor(denominator, dtype=torch.float32, device=self.device)
            with self._grad_sync(i == len(micro) - 1), autocast(self.device, self.precision):
                loss = self.step_fn(model, batch).loss
            if scale != 1.0:
                loss = loss * scale
            (loss / run.grad_accum).backward()
            window.loss += loss.detach().float()
            window.count += 1
            bad_step = torch.where((~torch.isfinite(loss.detach())) & (bad_step < 0), self.step + 1, bad_step)
        if not self._checked:
            self._check_gradients()
        if run.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)  # the global norm, also over FSDP shards
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return bad_step

    @staticmethod
    def _next_batch(iterator: Iterator[dict[str, Any]]) -> dict[str, Any]:
        try:
            return next(iterator)
        except StopIteration:
            raise PretuneError("the training data ran out before --max-steps; it must repeat (epochs)") from None

    def _loss_scales(self, micro: list[dict[str, Any]]) -> list[tuple[float, Any]]:
        """Each micro-batch's loss multiplier and token-loss denominator (see the class docstring).

        With ``n`` examples and ``t`` loss items in a micro-batch, ``N`` and ``T`` their sums over
        the step's ``A`` micro-batches and ``W`` ranks: accumulation divides each loss by ``A`` and
        DDP averages over ``W``, so ``scale = A * W * n / N`` weighs each micro-batch's mean by its
        share of the examples, and a token-level sum divided by ``T * n / N`` contributes
        ``sum / T``. Equal micro-batches: scale 1 and denominator ``T / (A * W)``. A ``loss_items``
        that returns a dict counts the items of several token-level losses (ELECTRA: masked tokens
        and real tokens); the denominators are then a dict with the same keys.
        """
        n = [batch_size_of(b) for b in micro]
        items = [self.loss_items(b) for b in micro] if self.loss_items is not None else []
        if any(t is None for t in items):  # a mean over examples only
            items = []
        named = bool(items) and isinstance(items[0], dict)
        names = sorted(items[0]) if named else (["items"] if items else [])
        counts = [[float(t[k]) for k in names] if named else [float(t)] for t in items]
        local = torch.tensor([sum(n), *[sum(c[j] for c in counts) for j in range(len(names))]], dtype=torch.float64)
        # the counts are on the host; only ranks need them on the device (NCCL), where .tolist() syncs
        total, *tokens = (all_sum(local.to(self.device), self.dist) if self.dist.enabled else local).tolist()
        parts = len(micro) * self.dist.world_size

        def denominator(k: int) -> Any:
            values = {name: max(t, 1.0) * k / total for name, t in zip(names, tokens)}
            return values if named else values.get("items")

        return [(parts * k / total, denominator(k)) for k in n]

    def _grad_sync(self, last: bool) -> Any:
        """Gradients are synchronised across ranks on a step's last micro-batch only."""
        if not self.dist.enabled:
            return nullcontext()
        if self.cfg.run.fsdp:
            self.unwrapped.set_requires_gradient_sync(last)
            return nullcontext()
        return nullcontext() if last else self.train_model.no_sync()

    def _check_gradients(self) -> None:
        """After the first step under DDP/FSDP: a trainable parameter without a gradient cannot be
        synchronised (and DDP would fail obscurely at the next step): name every such parameter."""
        self._checked = True
        if not self.dist.enabled:
            return
        missing = [n for n, p in self.unwrapped.named_parameters() if p.requires_grad and p.grad is None]
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise PretuneError(
                f"{len(missing)} trainable parameter(s) got no gradient in the first step, so they cannot be synchronised "
                f"across processes: {shown}; the model handed to the trainer must hold only parts its loss uses"
            )

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        non_blocking = self.device.type == "cuda"
        return {k: (v.to(self.device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    def _after_step(self, window: _Window, bad_step: torch.Tensor, bar: tqdm) -> tuple[bool, _Window]:
        """Log, evaluate and save when due; returns whether to stop, and the log window."""
        run = self.cfg.run
        out_of_time = bool(run.time_budget_s) and self.elapsed > run.time_budget_s
        last = self.step == self.cfg.max_steps or out_of_time
        do_log = self.step % run.log_every == 0 or last
        do_eval = self.eval_fn is not None and ((run.eval_every and self.step % run.eval_every == 0) or last)
        do_save = (run.save_every and self.step % run.save_every == 0) or last
        if not (do_log or do_eval or do_save):
            return False, window
        self._check_finite(bad_step, bar)  # a host sync only at these points
        record: dict[str, Any] = {"step": self.step}
        if do_log:
            record.update(self._log_record(window, bar))
            window = _Window(self.device)
        stop = out_of_time
        if do_eval:
            metrics, stop = self._evaluate_and_decide(stop)
            record.update(metrics)
        if do_log or do_eval:
            self.log(record)
        if do_save or stop:
            self.save_checkpoint()
            if self.dist.enabled:
                dist.barrier()
        return stop, window

    def _check_finite(self, bad_step: torch.Tensor, bar: tqdm) -> None:
        """Stop every rank at the first step whose loss was non-finite on any rank."""
        never = torch.iinfo(torch.long).max
        first = torch.where(bad_step < 0, never, bad_step)
        if self.dist.enabled:
            first = first.clone()
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        if int(first) != never:
            good = checkpoint_dirs(self.cfg.out_dir)
            keep = f"; the last good checkpoint is {good[-1]}" if good else ""
            bar.close()
            raise PretuneError(f"the loss became non-finite at step {int(first)}; lower --lr or check the data{keep}")

    def _log_record(self, window: _Window, bar: tqdm) -> dict[str, Any]:
        elapsed = time.perf_counter() - window.started
        mean_loss = self._all_reduce_mean(window.loss / max(window.count, 1)).item()
        # the schedule's factor times --lr: the peak rate's, whatever group comes first (the
        # embeddings' under --layer-decay, a head's under --head-lr)
        factor = self.scheduler.get_last_lr()[0] / self.optimizer.param_groups[0]["initial_lr"]
        record = {
            "loss": mean_loss, "lr": self.cfg.run.lr * factor,
            "tokens_per_s": window.tokens * self.dist.world_size / max(elapsed, 1e-9), "elapsed_s": elapsed,
        }
        bar.set_postfix(step=self.step, loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
        return record

    def _evaluate_and_decide(self, stop: bool) -> tuple[dict[str, float], bool]:
        """Evaluate (every rank its share), let ``on_eval`` decide to stop (on every rank, with the
        same metrics), and keep rank 0's decision."""
        metrics = self.evaluate()
        if self.on_eval is not None:
            stop = bool(self.on_eval(self.step, metrics)) or stop
        if self.dist.enabled:
            flag = torch.tensor([int(stop)], device=self.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        return metrics, stop
