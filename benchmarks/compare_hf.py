"""pretune against Hugging Face ``transformers``, side by side, on the same shapes and batches.

For every case both libraries get the same model shape, the same initial weights (pretune's
initialisation exported through :func:`pretune.hf.to_hf_state_dict`), the same random token
batches, batch size, sequence length, dtype and thread count. After a warm-up the two run
alternately (the order flips every repeat, so drift in a shared machine's speed hits both
alike) and the median step time of the repeats gives tokens/s. One JSON line per case goes to
stdout; notes (first-step losses, settings) go to stderr.

Modes
-----
``train``: one full optimizer step of the pretraining objective: forward, loss, backward,
gradient clipping at 1.0, AdamW step, ``zero_grad``. BERT: masked LM on 15% of the positions +
next-sentence prediction (pretune's sparse MLM head on the masked positions against
``BertForPreTraining`` with ``labels`` (-100 elsewhere) and ``next_sentence_label``: the same
targets). GPT: causal LM on every position (``OpenAIGPTLMHeadModel`` with ``labels``).

``infer``: the same objective's loss, forward only (eval mode, ``torch.inference_mode``): what a
validation pass computes.

Fairness: HF runs with ``attn_implementation="sdpa"`` where the model supports it (BERT; OpenAI
GPT in transformers only has its eager attention), dropout as configured in both (0.1, as in
the papers), the same AdamW (fused, the default of HF's Trainer; ``--optimizer trainer`` for
what pretune's trainer builds), settings and parameter groups (no decay on biases, LayerNorm and
position/segment embeddings), the same autocast (bf16 on ``--dtype bf16``), and the same
``torch.compile`` setting (``--compile auto``: on for CUDA, off on CPU).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over one step (parameters, gradients
and optimizer state included). On CPU, an approximation: the bytes of the side's parameters and
optimizer state plus the peak RSS increase during one step (``malloc_trim`` first, then the
kernel's RSS high-water mark reset through ``/proc/self/clear_refs``), measured after the timed
repeats. Freed heap memory is not returned within a step, so this errs high, for both sides.

MFU (CUDA only): tokens/s x (6 N + 12 L H T) FLOPs per token against the device's dense bf16
peak (H100 SXM / H200: 989 TFLOP/s; ``--peak-tflops`` to override). N counts every parameter
(the tied word embedding once: it is also the output layer).

Usage::

    python benchmarks/compare_hf.py --quick
    python benchmarks/compare_hf.py                      # every case, CPU fp32
    python benchmarks/compare_hf.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from pretune import hf as hfconv  # noqa: E402
from pretune.config import ModelConfig, preset  # noqa: E402
from pretune.models import build_model  # noqa: E402
from pretune.models.core import count_parameters  # noqa: E402

# (model, seq_len, cpu batch, cuda batch). CPU batches follow the reference figures.
CASES = [
    ("bert-tiny", 128, 32, 256),
    ("bert-mini", 128, 32, 256),
    ("bert-small", 128, 32, 256),
    ("bert-base", 128, 8, 128),
    ("gpt-tiny", 128, 32, 256),
    ("gpt-mini", 128, 32, 256),
    ("gpt1", 128, 8, 128),
    ("gpt-tiny", 512, 8, 64),
    ("gpt-mini", 512, 8, 64),
    ("gpt1", 512, 2, 32),
]
QUICK = ("bert-mini", "gpt-mini")

# Dense bf16 peak (TFLOP/s) by device name fragment; the first match wins.
PEAK_BF16_TFLOPS = [("H200", 989.0), ("H100", 989.0), ("A100", 312.0)]

MLM_FRACTION = 0.15
LR = 1e-4
WEIGHT_DECAY = 0.01


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- models and batches ------------------------------------------------------------------------


def _transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def build_pair(cfg: ModelConfig, device: torch.device, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """pretune's model and the HF model with the same initial weights."""
    transformers = _transformers()
    torch.manual_seed(seed)
    ours = build_model(cfg)
    hf_cfg = hfconv.config_to_hf(cfg)
    if cfg.family == "bert":
        config = transformers.BertConfig(**hf_cfg)
        config._attn_implementation = "sdpa"
        theirs = transformers.BertForPreTraining(config)
    else:
        # transformers' OpenAI GPT has only its own (eager) attention: no "sdpa" to ask for.
        config = transformers.OpenAIGPTConfig(**hf_cfg)
        theirs = transformers.OpenAIGPTLMHeadModel(config)
    state = hfconv.to_hf_state_dict(ours.state_dict(), cfg)
    result = theirs.load_state_dict(state, strict=False)
    tied = re.compile(r"(cls\.predictions\.decoder\.(weight|bias)|lm_head\.weight|position_ids|attn\.bias)$")
    missing = [k for k in result.missing_keys if not tied.search(k)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weights did not transfer: missing {missing}, unexpected {result.unexpected_keys}")
    if hasattr(theirs, "tie_weights"):
        theirs.tie_weights()
    return ours.to(device), theirs.to(device)


def make_batches(cfg: ModelConfig, batch: int, seq: int, count: int, device: torch.device, seed: int = 1) -> list[dict]:
    """Random full-length batches, with the targets in pretune's and in HF's form."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(5, cfg.vocab_size, (batch, seq), generator=g)
        item: dict[str, Any] = {"input_ids": ids}
        if cfg.family == "bert":
            types = torch.zeros_like(ids)
            types[:, seq // 2 :] = 1
            n_pred = max(1, round(MLM_FRACTION * seq))
            # n_pred distinct positions per row, never [CLS] at 0
            positions = torch.rand(batch, seq - 1, generator=g).argsort(dim=1)[:, :n_pred] + 1
            positions, _ = positions.sort(dim=1)
            targets = torch.randint(5, cfg.vocab_size, (batch, n_pred), generator=g)
            dense = torch.full_like(ids, -100)
            dense.scatter_(1, positions, targets)
            ids = ids.scatter(1, positions, 4)  # the [MASK] id of the masked inputs
            item.update(
                input_ids=ids, token_type_ids=types, mlm_positions=positions, mlm_labels=targets,
                hf_labels=dense, nsp_labels=torch.randint(0, 2, (batch,), generator=g),
            )
        out.append({k: v.to(device) for k, v in item.items()})
    return out


def pretune_loss(model, b: dict) -> torch.Tensor:
    if "mlm_positions" in b:
        return model(
            b["input_ids"], token_type_ids=b["token_type_ids"], mlm_positions=b["mlm_positions"],
            mlm_labels=b["mlm_labels"], nsp_labels=b["nsp_labels"], return_logits=False,
        ).loss
    return model(b["input_ids"], labels=b["input_ids"], return_logits=False).loss


def hf_loss(model, b: dict) -> torch.Tensor:
    if "mlm_positions" in b:
        return model(
            input_ids=b["input_ids"], token_type_ids=b["token_type_ids"], labels=b["hf_labels"],
            next_sentence_label=b["nsp_labels"],
        ).loss
    return model(input_ids=b["input_ids"], labels=b["input_ids"]).loss


def param_groups_for(model: torch.nn.Module) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases, LayerNorm and position/segment embeddings (both libraries)."""
    no_decay = re.compile(r"(position|positions_embed|token_type|embeddings\.pos\.|embeddings\.seg\.)")
    decay, rest = [], []
    for name, p in model.named_parameters():
        (rest if p.dim() < 2 or no_decay.search(name) else decay).append(p)
    return [{"params": decay, "lr": LR, "weight_decay": WEIGHT_DECAY}, {"params": rest, "lr": LR, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, device: torch.device, kind: str = "fused") -> torch.optim.Optimizer:
    """The same AdamW for either library's model.

    ``fused`` (default): ``torch.optim.AdamW(fused=True)``, the default of ``transformers``'
    Trainer since torch 2.8 (``adamw_torch_fused``), on CPU as on CUDA. ``trainer``: what
    pretune's trainer builds (``build_optimizer``: fused too, on CPU and CUDA).
    """
    if kind == "trainer":
        from pretune.train.trainer import TrainConfig, build_optimizer

        cfg = TrainConfig.make(Path("/tmp/unused"), 1, lr=LR, weight_decay=WEIGHT_DECAY)
        return build_optimizer(param_groups_for(model), cfg, device)
    if kind != "fused":
        raise ValueError(f"--optimizer must be fused or trainer, got {kind!r}")
    return torch.optim.AdamW(param_groups_for(model), lr=LR, betas=(0.9, 0.999), eps=1e-6, fused=True)


# --- one step ------------------------------------------------------------------------------------


@dataclass
class Runner:
    """One library's model, optimizer and step function."""

    name: str
    model: torch.nn.Module
    loss_fn: Any
    optimizer: torch.optim.Optimizer | None
    autocast: torch.dtype | None
    device: torch.device
    step_model: torch.nn.Module | None = None

    def _ctx(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def train_step(self, batch: dict) -> torch.Tensor:
        with self._ctx():
            loss = self.loss_fn(self.step_model if self.step_model is not None else self.model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def infer_step(self, batch: dict) -> torch.Tensor:
        with torch.inference_mode(), self._ctx():
            return self.loss_fn(self.step_model if self.step_model is not None else self.model, batch)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# --- memory --------------------------------------------------------------------------------------


def alternate(
    runners: list[Runner], batches: list[dict], mode: str, device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Step times per runner: all runners on the same batch, order flipped every repeat, warm-up dropped."""
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(warmup + repeats):
        b = batches[i % len(batches)]
        for r in runners if i % 2 == 0 else runners[::-1]:
            fn = r.train_step if mode == "train" else r.infer_step
            elapsed = time_call(lambda fn=fn, b=b: fn(b), device)
            if i >= warmup:
                times[r.name].append(elapsed)
    return times


def _static_bytes(runner: Runner) -> int:
    total = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    total += sum(b.numel() * b.element_size() for b in runner.model.buffers())
    if runner.optimizer is not None:
        for state in runner.optimizer.state.values():
            total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


def _rss_kib(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1))


def peak_memory_mb(runner: Runner, fn, device: torch.device) -> float | None:
    """Peak memory of one call of ``fn`` (see the module docstring for what is counted)."""
    gc.collect()
    static = _static_bytes(runner)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _rss_kib("VmRSS")
        fn()
        grown = max(0, _rss_kib("VmHWM") - before) * 1024
    except OSError:
        return None
    return (static + grown) / 2**20


# --- one case ------------------------------------------------------------------------------------


def flops_per_token(cfg: ModelConfig, n_params: int, seq: int) -> float:
    return 6.0 * n_params + 12.0 * cfg.n_layers * cfg.hidden * seq


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "given"
    if device.type != "cuda":
        return None, ""
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, name
    return None, name


def run_case(
    model_name: str,
    mode: str,
    batch: int,
    seq: int,
    *,
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    warmup: int = 2,
    repeats: int = 5,
    compile: str = "auto",
    overrides: dict[str, Any] | None = None,
    peak: float | None = None,
    memory: bool = True,
    loss_tol: float | None = None,
    optimizer: str = "fused",
) -> dict[str, Any]:
    """Time one case and return its JSON record."""
    device = torch.device(device)
    cfg = preset(model_name, **(overrides or {}))
    if seq > cfg.max_positions:
        raise ValueError(f"{model_name}: seq {seq} > max_positions {cfg.max_positions}")
    ours, theirs = build_pair(cfg, device)
    autocast = torch.bfloat16 if dtype == "bf16" else None
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    use_compile = compile == "on" or (compile == "auto" and device.type == "cuda")
    runners = []
    for name, model, fn in (("pretune", ours, pretune_loss), ("hf", theirs, hf_loss)):
        opt = make_optimizer(model, device, optimizer) if mode == "train" else None
        step_model = torch.compile(model) if use_compile else None
        runners.append(Runner(name, model, fn, opt, autocast, device, step_model))
    batches = make_batches(cfg, batch, seq, max(2, min(4, warmup + repeats)), device)

    # Sanity check: the same loss from the same weights and batch (dropout off for this check).
    losses = {}
    for r in runners:
        r.model.eval()
        with torch.no_grad(), r._ctx():
            losses[r.name] = float(r.loss_fn(r.model, batches[0]))
    tol = loss_tol if loss_tol is not None else (1e-4 if autocast is None else 5e-2)
    diff = abs(losses["pretune"] - losses["hf"])
    note(
        f"[{model_name} {mode} b={batch} t={seq}] first-step loss: pretune {losses['pretune']:.6f}, "
        f"HF {losses['hf']:.6f} (|diff| {diff:.2e})"
    )
    if diff > tol * max(1.0, abs(losses["hf"])):
        raise RuntimeError(f"{model_name}: losses disagree: pretune {losses['pretune']} vs HF {losses['hf']}")

    for r in runners:
        r.model.train(mode == "train")
    times = alternate(runners, batches, mode, device, warmup, repeats)

    tokens = batch * seq
    record: dict[str, Any] = {
        "model": model_name, "mode": mode, "device": device.type, "dtype": dtype, "batch": batch, "seq_len": seq,
    }
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    record.update(
        pretune_tokens_per_s=round(tps["pretune"], 1), hf_tokens_per_s=round(tps["hf"], 1),
        ratio=round(tps["pretune"] / tps["hf"], 3),
    )
    mem = {}
    for r in runners:
        fn = r.train_step if mode == "train" else r.infer_step
        mem[r.name] = peak_memory_mb(r, lambda fn=fn, b=batches[0]: fn(b), device) if memory else None
    record.update(
        pretune_peak_mem_mb=None if mem["pretune"] is None else round(mem["pretune"], 1),
        hf_peak_mem_mb=None if mem["hf"] is None else round(mem["hf"], 1),
    )
    record.update(pretune_loss0=round(losses["pretune"], 6), hf_loss0=round(losses["hf"], 6))
    peak_value, device_name = peak_tflops(device, peak)
    if peak_value:
        n_params = count_parameters(ours)
        per_token = flops_per_token(cfg, n_params, seq) * (1 if mode == "train" else 1 / 3)
        record.update(
            pretune_mfu=round(tps["pretune"] * per_token / (peak_value * 1e12), 4),
            hf_mfu=round(tps["hf"] * per_token / (peak_value * 1e12), 4),
            peak_tflops=peak_value, device_name=device_name,
        )
    record["threads"] = torch.get_num_threads()
    if mode == "train":
        record["optimizer"] = optimizer
    del runners, ours, theirs, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


# --- ablation: pretune against itself ------------------------------------------------------------

# Variants of pretune's own training step, to measure what one optimisation contributes.
def _bert_dense_mlm(model, b):
    """MLM labels as a (b, t) tensor: the head runs on the gathered masked positions."""
    return model(
        b["input_ids"], token_type_ids=b["token_type_ids"], mlm_labels=b["hf_labels"], nsp_labels=b["nsp_labels"],
    ).loss


def _bert_sparse_logits(model, b):
    """Fixed prediction slots, full (n_masked, vocab) logits kept (``return_logits=True``)."""
    return model(
        b["input_ids"], token_type_ids=b["token_type_ids"], mlm_positions=b["mlm_positions"],
        mlm_labels=b["mlm_labels"], nsp_labels=b["nsp_labels"], return_logits=True,
    ).loss


def _gpt_logits(model, b):
    """Full (b, t, vocab) logits, then cross-entropy (``return_logits=True``)."""
    return model(b["input_ids"], labels=b["input_ids"], return_logits=True).loss


ABLATIONS = {
    "bert": [("labels_bt", _bert_dense_mlm), ("slots_logits", _bert_sparse_logits), ("fused_ce", pretune_loss)],
    "gpt": [("logits", _gpt_logits), ("fused_ce", pretune_loss)],
}


def run_ablation(
    model_name: str, mode: str, batch: int, seq: int, *, device: str | torch.device = "cpu", warmup: int = 1,
    repeats: int = 5, memory: bool = True, optimizer: str = "fused",
) -> dict[str, Any]:
    """pretune's step with each variant of ``ABLATIONS``, alternating, from the same weights."""
    device = torch.device(device)
    cfg = preset(model_name)
    variants = ABLATIONS[cfg.family]
    torch.manual_seed(0)
    first = build_model(cfg).to(device)
    runners = []
    for i, (name, fn) in enumerate(variants):
        model = first if i == 0 else build_model(cfg).to(device)
        if i:
            model.load_state_dict(first.state_dict())
        model.train(mode == "train")
        opt = make_optimizer(model, device, optimizer) if mode == "train" else None
        runners.append(Runner(name, model, fn, opt, None, device))
    batches = make_batches(cfg, batch, seq, max(2, min(4, warmup + repeats)), device)
    times = alternate(runners, batches, mode, device, warmup, repeats)
    tps = {k: batch * seq / statistics.median(v) for k, v in times.items()}
    base = variants[0][0]
    record: dict[str, Any] = {"model": model_name, "mode": mode, "batch": batch, "seq_len": seq, "ablation": {}}
    for r in runners:
        entry = {"tokens_per_s": round(tps[r.name], 1), "ratio_vs_" + base: round(tps[r.name] / tps[base], 3)}
        if memory:
            fn = r.train_step if mode == "train" else r.infer_step
            entry["peak_mem_mb"] = round(peak_memory_mb(r, lambda fn=fn, b=batches[0]: fn(b), device) or 0, 1)
        record["ablation"][r.name] = entry
    return record


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="bert-mini and gpt-mini only (seq 128)")
    p.add_argument("--models", nargs="*", help="only these presets")
    p.add_argument("--modes", nargs="*", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--seq-len", type=int, nargs="*", help="only these sequence lengths")
    p.add_argument("--batch", type=int, help="batch size for every case (default: per case)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast on both sides")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per side (default 2, --quick 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per side (default 5, --quick 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="torch.compile both sides")
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU (default by device)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--ablation", action="store_true", help="pretune variants against each other (no HF)")
    p.add_argument(
        "--optimizer", default="fused", choices=["fused", "trainer"],
        help="AdamW for both sides: fused (HF Trainer's default) or what pretune's trainer builds",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        note("--device cuda: CUDA is not available on this machine")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    cases = [c for c in CASES if c[1] == 128 and c[0] in QUICK] if args.quick else CASES
    if args.models:
        cases = [c for c in cases if c[0] in args.models]
    if args.seq_len:
        cases = [c for c in cases if c[1] in args.seq_len]
    import transformers

    note(
        f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}, "
        f"dtype {args.dtype}, threads {torch.get_num_threads()}, warmup {warmup}, repeats {repeats}"
    )
    for name, seq, cpu_batch, cuda_batch in cases:
        batch = args.batch or (cuda_batch if device.type == "cuda" else cpu_batch)
        for mode in args.modes:
            if args.ablation:
                record = run_ablation(
                    name, mode, batch, seq, device=device, warmup=warmup, repeats=repeats, memory=not args.no_memory,
                    optimizer=args.optimizer,
                )
                print(json.dumps(record), flush=True)
                continue
            record = run_case(
                name, mode, batch, seq, device=device, dtype=args.dtype, warmup=warmup, repeats=repeats,
                compile=args.compile, peak=args.peak_tflops, memory=not args.no_memory, optimizer=args.optimizer,
            )
            print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
