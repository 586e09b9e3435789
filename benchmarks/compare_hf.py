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

Against the machine's limit: every case states its model FLOPs per token
(:func:`model_flops_per_token`: train 6 M + 12 L h T, infer 2 M + 4 L h T, M the weight
multiply-adds per token, BERT's MLM output layer at the masked positions only, GPT's at every
position; the same count for both sides), each side's model GFLOP/s (tokens/s x FLOPs/token)
and its fraction of the matmul peak measured in the same process just before the case's timed
steps (:func:`matmul_peak`: the best of six GEMM shapes of the models' layers, in the case's
dtype, with the benchmark's threads).

MFU (CUDA only): the same model FLOPs against the device's datasheet dense bf16 peak (H100 SXM /
H200: 989 TFLOP/s; ``--peak-tflops`` to override).

Usage::

    python benchmarks/compare_hf.py --quick              # bert-mini, gpt-mini: fp32, then bf16
    python benchmarks/compare_hf.py                      # every case, CPU fp32
    python benchmarks/compare_hf.py --device cuda --dtype bf16
    python benchmarks/compare_hf.py --dtype fp32 bf16    # every case in both

``--quick`` in bf16 on a CPU without ``amx_bf16``/``avx512_bf16`` (bf16 emulated, ~10-40x
slower than fp32) runs bert-mini and gpt-mini on one 32-token sequence instead (QUICK_BF16_EMULATED).
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

# Everything the harness uses from the library, in one place (plus pretune.train.trainer's
# build_optimizer, imported where --optimizer trainer asks for it).
from pretune import hf as hfconv  # noqa: E402
from pretune.config import ModelConfig, preset  # noqa: E402
from pretune.models import build_model  # noqa: E402
from pretune.precision import cpu_bf16_features  # noqa: E402

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
# --quick in bf16 on a CPU without bf16 hardware (no amx_bf16/avx512_bf16): torch emulates bf16
# matmuls there at 1-7 GFLOP/s (fp32: 45-60), so the same models run on one 32-token sequence,
# to keep --quick within a few minutes. (model, seq_len, cpu batch, cuda batch), as CASES.
QUICK_BF16_EMULATED = [("bert-mini", 32, 1, 1), ("gpt-mini", 32, 1, 1)]

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


# --- model FLOPs and the machine's limit ------------------------------------------------------------


def predictions_per_seq(seq: int) -> int:
    """Masked positions per BERT sequence in these batches (15%, at least one): 19 of 128."""
    return max(1, round(MLM_FRACTION * seq))


def matmul_macs_per_token(cfg: ModelConfig, seq: int, n_pred: int | None = None) -> float:
    """Multiply-adds per token of the model's weight matrices (biases, LayerNorm, GELU, softmax and
    embedding lookups are not counted).

    Every layer: q, k, v and output projections (4 h^2) and the feed-forward (2 h f). GPT: the
    output layer (h V, tied to the token embedding) at every position. BERT: the MLM transform
    and output layer (h^2 + h V) at the ``n_pred`` masked positions only, as in BERT's own code
    (HF's ``BertForPreTraining`` computes them at every position, pretune at the masked ones: the
    rest is not part of the objective), and the pooler + NSP (h^2 + 2 h) once per sequence.
    """
    h, v = cfg.hidden, cfg.vocab_size
    body = cfg.n_layers * (4 * h * h + 2 * h * cfg.ffn)
    if cfg.family == "gpt":
        return float(body + h * v)
    n_pred = predictions_per_seq(seq) if n_pred is None else n_pred
    return body + (n_pred * (h * h + h * v) + h * h + 2 * h) / seq


def model_flops_per_token(cfg: ModelConfig, seq: int, mode: str, n_pred: int | None = None) -> float:
    """Model FLOPs per token: train 6 M + 12 L h T, infer 2 M + 4 L h T (M: :func:`matmul_macs_per_token`).

    Forward: 2 FLOPs per multiply-add; the backward computes the input's and the weight's gradient:
    twice that. Attention: q k^T and (attention) v are T h multiply-adds per token and layer each,
    4 L h T FLOPs forward; counted over all T keys for GPT too (as in the PaLM paper's MFU: causal
    kernels may skip half of it). pretune computes BERT's last layer only at [CLS] and the masked
    positions: that saving is not subtracted; both sides are credited the same model FLOPs.
    """
    passes = 3 if mode == "train" else 1
    return passes * (2 * matmul_macs_per_token(cfg, seq, n_pred) + 4 * cfg.n_layers * cfg.hidden * seq)


# (k, n) of the layers' GEMMs, rows x k times k x n: q/k/v (fused), feed-forward in and out, of the
# mini (h 256) and base (h 768) shapes.
PEAK_WIDTHS = ((256, 768), (256, 1024), (1024, 256), (768, 2304), (768, 3072), (3072, 768))


def peak_rows(dtype: str, device: torch.device) -> int:
    """Rows of the peak probe's GEMMs: tokens per batch of a typical case, fewer for emulated bf16."""
    if device.type == "cuda":
        return 16384
    if dtype == "bf16" and not cpu_bf16_features():
        return 256  # emulated: 2 GFLOP per shape would take seconds
    return 2048


def time_matmul(rows: int, k: int, n: int, dtype: str, device: torch.device, repeats: int = 2) -> float:
    """Best seconds of one ``x @ w.T`` (``nn.Linear``'s forward layout) after a warm-up call."""
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, k, generator=g).to(device, dt)
    w = torch.randn(n, k, generator=g).to(device, dt)
    inner = 20 if device.type == "cuda" else 1  # a GPU GEMM is too short to time one at a time
    best = float("inf")
    for i in range(repeats + 1):
        elapsed = time_call(lambda: [torch.nn.functional.linear(x, w) for _ in range(inner)], device)
        best = min(best, elapsed / inner) if i else best
    return best


def matmul_peak(dtype: str, device: torch.device, rows: int | None = None, widths=None, timer=None) -> dict[str, Any]:
    """The machine's matmul limit for ``dtype``, measured now: the best GFLOP/s over the GEMM shapes
    (``rows`` x k x n for each (k, n) of ``widths``, default :data:`PEAK_WIDTHS`) with the current
    thread count. Returns ``gflops``, the best ``shape`` and every shape's GFLOP/s."""
    rows, widths, timer = rows or peak_rows(dtype, device), widths or PEAK_WIDTHS, timer or time_matmul
    per_shape = {f"{rows}x{k}x{n}": 2 * rows * k * n / timer(rows, k, n, dtype, device) / 1e9 for k, n in widths}
    best = max(per_shape, key=per_shape.get)
    return {"gflops": per_shape[best], "shape": best, "per_shape": per_shape}


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (GFLOP/s span 0.01 on a micro case to 10^5 on a GPU)."""
    return float(f"{x:.{digits}g}")


def throughput_fields(tps: dict[str, float], per_token: float, peak: dict[str, Any]) -> dict[str, Any]:
    """Model GFLOP/s of both sides and their fraction of the measured peak."""
    out: dict[str, Any] = {
        "flops_per_token": round(per_token), "peak_gflops": _sig(peak["gflops"]), "peak_shape": peak["shape"],
    }
    for side in ("pretune", "hf"):
        gflops = tps[side] * per_token / 1e9
        out[f"{side}_gflops"] = _sig(gflops)
        out[f"{side}_peak_fraction"] = _sig(gflops / peak["gflops"])
    return out


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


def mfu_fields(tps: dict[str, float], per_token: float, device: torch.device, peak: float | None) -> dict[str, Any]:
    """MFU against the datasheet bf16 peak (CUDA, or ``--peak-tflops``); nothing where none is known."""
    peak_value, device_name = peak_tflops(device, peak)
    if not peak_value:
        return {}
    return dict(
        pretune_mfu=round(tps["pretune"] * per_token / (peak_value * 1e12), 4),
        hf_mfu=round(tps["hf"] * per_token / (peak_value * 1e12), 4),
        peak_tflops=peak_value, device_name=device_name,
    )


# --- one case ------------------------------------------------------------------------------------


def make_runners(cfg: ModelConfig, mode: str, dtype: str, device: torch.device, compile: str, optimizer: str):
    """Both sides' runners, from the same initial weights."""
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"--dtype must be fp32 or bf16, got {dtype!r}")
    ours, theirs = build_pair(cfg, device)
    autocast = torch.bfloat16 if dtype == "bf16" else None
    use_compile = compile == "on" or (compile == "auto" and device.type == "cuda")
    runners = []
    for name, model, fn in (("pretune", ours, pretune_loss), ("hf", theirs, hf_loss)):
        opt = make_optimizer(model, device, optimizer) if mode == "train" else None
        step_model = torch.compile(model) if use_compile else None
        runners.append(Runner(name, model, fn, opt, autocast, device, step_model))
    return runners


def first_losses(runners: list[Runner], batch: dict, label: str, tol: float) -> dict[str, float]:
    """Both sides' loss on the same weights and batch, dropout off; they must agree within ``tol``."""
    losses = {}
    for r in runners:
        r.model.eval()
        with torch.no_grad(), r._ctx():
            losses[r.name] = float(r.loss_fn(r.model, batch))
    diff = abs(losses["pretune"] - losses["hf"])
    note(f"[{label}] first-step loss: pretune {losses['pretune']:.6f}, HF {losses['hf']:.6f} (|diff| {diff:.2e})")
    if diff > tol * max(1.0, abs(losses["hf"])):
        raise RuntimeError(f"{label}: losses disagree: pretune {losses['pretune']} vs HF {losses['hf']}")
    return losses


def memory_fields(runners: list[Runner], batch: dict, mode: str, device: torch.device) -> dict[str, Any]:
    out = {}
    for r in runners:
        fn = r.train_step if mode == "train" else r.infer_step
        mem = peak_memory_mb(r, lambda fn=fn: fn(batch), device)
        out[f"{r.name}_peak_mem_mb"] = None if mem is None else round(mem, 1)
    return out


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
    matmul_limit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time one case and return its JSON record. ``matmul_limit`` (a :func:`matmul_peak` result)
    replaces the peak probe otherwise run for this case, just before its timed steps."""
    started = time.perf_counter()
    device = torch.device(device)
    cfg = preset(model_name, **(overrides or {}))
    if seq > cfg.max_positions:
        raise ValueError(f"{model_name}: seq {seq} > max_positions {cfg.max_positions}")
    label = f"{model_name} {mode} {dtype} b={batch} t={seq}"
    runners = make_runners(cfg, mode, dtype, device, compile, optimizer)
    batches = make_batches(cfg, batch, seq, max(2, min(4, warmup + repeats)), device)
    tol = loss_tol if loss_tol is not None else (1e-4 if dtype == "fp32" else 5e-2)
    losses = first_losses(runners, batches[0], label, tol)
    limit = matmul_limit or matmul_peak(dtype, device)
    for r in runners:
        r.model.train(mode == "train")
    times = alternate(runners, batches, mode, device, warmup, repeats)

    record: dict[str, Any] = dict(model=model_name, mode=mode, device=device.type, dtype=dtype, batch=batch, seq_len=seq)
    tps = {k: batch * seq / statistics.median(v) for k, v in times.items()}
    record.update(
        pretune_tokens_per_s=round(tps["pretune"], 1), hf_tokens_per_s=round(tps["hf"], 1),
        ratio=round(tps["pretune"] / tps["hf"], 3),
    )
    record.update(memory_fields(runners, batches[0], mode, device) if memory else dict.fromkeys(
        ("pretune_peak_mem_mb", "hf_peak_mem_mb")))
    record.update(pretune_loss0=round(losses["pretune"], 6), hf_loss0=round(losses["hf"], 6))
    per_token = model_flops_per_token(cfg, seq, mode)
    record.update(throughput_fields(tps, per_token, limit))
    if cfg.family == "bert":
        record["predictions_per_seq"] = predictions_per_seq(seq)
    record.update(mfu_fields(tps, per_token, device, peak), threads=torch.get_num_threads())
    record.update({"optimizer": optimizer} if mode == "train" else {})
    note(_summary(record) + f" (case: {time.perf_counter() - started:.0f} s)")
    del runners, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def _summary(r: dict[str, Any]) -> str:
    return (
        f"[{r['model']} {r['mode']} {r['dtype']} b={r['batch']} t={r['seq_len']}] "
        f"{r['flops_per_token'] / 1e6:.2f} MFLOP/token; peak {r['peak_gflops']:.1f} GFLOP/s ({r['peak_shape']}); "
        f"pretune {r['pretune_tokens_per_s']:,.0f} tok/s = {r['pretune_gflops']:.2f} GFLOP/s "
        f"= {100 * r['pretune_peak_fraction']:.1f}% of peak; HF {r['hf_tokens_per_s']:,.0f} tok/s "
        f"= {r['hf_gflops']:.2f} GFLOP/s = {100 * r['hf_peak_fraction']:.1f}%; ratio {r['ratio']:.2f}x"
    )


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
    p.add_argument("--quick", action="store_true", help="bert-mini and gpt-mini only (seq 128), fp32 and bf16")
    p.add_argument("--models", nargs="*", help="only these presets")
    p.add_argument("--modes", nargs="*", default=["train", "infer"], choices=["train", "infer"])
    p.add_argument("--seq-len", type=int, nargs="*", help="only these sequence lengths")
    p.add_argument("--batch", type=int, help="batch size for every case (default: per case)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--dtype", nargs="+", default=None, choices=["fp32", "bf16"],
        help="bf16 = autocast on both sides; several run one after the other (default fp32, --quick both)",
    )
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


def select_cases(args: argparse.Namespace, dtype: str, device: torch.device) -> list[tuple[str, int, int, int]]:
    """The cases to run in ``dtype``: every case, or --quick's (smaller in bf16 where it is emulated)."""
    if not args.quick:
        cases = CASES
    elif dtype == "bf16" and device.type == "cpu" and not cpu_bf16_features():
        cases = QUICK_BF16_EMULATED
    else:
        cases = [c for c in CASES if c[1] == 128 and c[0] in QUICK]
    if args.models:
        cases = [c for c in cases if c[0] in args.models]
    if args.seq_len:
        cases = [c for c in cases if c[1] in args.seq_len]
    return cases


def run_cases(args: argparse.Namespace, dtype: str, device: torch.device, warmup: int, repeats: int) -> None:
    """Every selected case in ``dtype``, one JSON line each."""
    for name, seq, cpu_batch, cuda_batch in select_cases(args, dtype, device):
        batch = args.batch or (cuda_batch if device.type == "cuda" else cpu_batch)
        for mode in args.modes:
            if args.ablation:
                record = run_ablation(
                    name, mode, batch, seq, device=device, warmup=warmup, repeats=repeats, memory=not args.no_memory,
                    optimizer=args.optimizer,
                )
            else:
                record = run_case(
                    name, mode, batch, seq, device=device, dtype=dtype, warmup=warmup, repeats=repeats,
                    compile=args.compile, peak=args.peak_tflops, memory=not args.no_memory, optimizer=args.optimizer,
                )
            print(json.dumps(record), flush=True)


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
    dtypes = args.dtype or (["fp32"] if args.ablation or not args.quick else ["fp32", "bf16"])
    import transformers

    note(
        f"torch {torch.__version__}, transformers {transformers.__version__}, device {device}, "
        f"dtype {' '.join(dtypes)}, threads {torch.get_num_threads()}, warmup {warmup}, repeats {repeats}, "
        f"CPU bf16 features {sorted(cpu_bf16_features()) or 'none'}"
    )
    for dtype in dtypes:
        run_cases(args, dtype, device, warmup, repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
