"""The output layer and its cross-entropy, fused and chunked: the loss without the full logits.

A vocabulary of 8k-40k makes the output layer the largest matmul of a small model, and its
``(rows, vocab)`` fp32 logits the largest tensor of a training step. :func:`linear_cross_entropy`
computes ``F.cross_entropy(F.linear(hidden, weight, bias), targets, reduction="sum")`` chunk by
chunk of rows: logits of the chunk, log-softmax in fp32, the loss and, when gradients are needed,
the gradient right away (``softmax - onehot``, multiplied into the gradients of ``hidden``,
``weight`` and ``bias``), as Liger-Kernel's fused linear cross-entropy does. Backward only scales
the stored gradients by the incoming scalar. The result equals the dense computation (tested to
1e-5 with every gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pretune import tuning


def _ce_sizes(device: torch.device, vocab: int, rows: int) -> tuple[int, int]:
    chunk = max(1, min(rows, tuning.CE_CHUNK_ELEMENTS.get(device.type, tuning.CE_CHUNK_DEFAULT) // max(1, vocab)))
    block = tuning.CE_BLOCK_ELEMENTS.get(device.type)
    block = chunk if block is None else max(1, min(chunk, block // max(1, vocab)))
    return chunk, block


@dataclass
class _Work:
    """The inputs, buffers and gradient accumulators of one fused pass."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    bias32: Tensor | None  # the fp32 bias added to bf16 products
    targets: Tensor
    ignore_index: int
    weights: Tensor | None  # per-row loss weights (None: 1 for every counted row)
    buf: Tensor  # (chunk, vocab) fp32 logits / log-probabilities / gradient
    low: Tensor | None  # the gradient cast once per block for bf16/fp16 weights
    grad_h: Tensor | None
    grad_w: Tensor | None
    grad_b: Tensor | None
    total: Tensor
    correct: Tensor
    with_correct: bool

    @property
    def need_any(self) -> bool:
        return self.grad_h is not None or self.grad_w is not None or self.grad_b is not None


def _prepare(hidden, weight, bias, targets, weights, ignore_index, chunk, with_correct, need) -> _Work:
    need_h, need_w, need_b = need
    need_b = need_b and bias is not None
    fp32 = weight.dtype == torch.float32
    acc = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    vocab, device = weight.shape[0], hidden.device
    buf = torch.empty(min(chunk, hidden.shape[0]), vocab, dtype=torch.float32, device=device)
    return _Work(
        hidden, weight, bias,
        bias32=None if fp32 or bias is None else bias.float(),
        targets=targets, weights=weights, ignore_index=ignore_index, buf=buf,
        low=None if fp32 or not (need_h or need_w or need_b) else torch.empty(buf.shape, dtype=weight.dtype, device=device),
        grad_h=torch.empty_like(hidden) if need_h else None,
        grad_w=torch.zeros(weight.shape, dtype=acc, device=device) if need_w else None,
        grad_b=torch.zeros(vocab, dtype=acc, device=device) if need_b else None,
        total=torch.zeros((), dtype=torch.float32, device=device),
        correct=torch.zeros((), dtype=torch.long, device=device),
        with_correct=with_correct,
    )


def _logits(w: _Work, h: Tensor, x: Tensor) -> None:
    """Write ``h @ weight.T + bias`` into the fp32 block ``x``."""
    if w.weight.dtype == torch.float32:
        if w.bias is None:
            torch.mm(h, w.weight.t(), out=x)
        else:
            torch.addmm(w.bias, h, w.weight.t(), out=x)
        return
    # bf16 product, cast into the fp32 buffer, fp32 bias added there: one rounding of the
    # logits, and faster on the CPU than bf16 addmm or a mixed-dtype add (0.7 against 1.0 ms
    # for (320, 8000))
    x.copy_(torch.mm(h, w.weight.t()))
    if w.bias32 is not None:
        x += w.bias32


def _row_weights(w: _Work, s: int, e: int, valid: Tensor, dtype: torch.dtype) -> Tensor:
    """The loss weight of rows ``s:e``: 0 for ignored rows, else 1 or the caller's weight."""
    if w.weights is None:
        return valid.to(dtype)
    return torch.where(valid, w.weights[s:e].to(dtype), 0.0)


def _block(w: _Work, s: int, e: int, x: Tensor, valid: Tensor, g_low: Tensor | None) -> None:
    """Loss (and hits) of rows ``s:e`` and, when asked, their logit gradient and hidden gradient."""
    _logits(w, w.hidden[s:e], x)
    safe = torch.where(valid, w.targets[s:e], 0).unsqueeze(1)
    if x.device.type == "cpu":
        # row by row, the CPU kernel reads a row before it writes it: in place is exact (tested)
        # and 4x faster than logsumexp + subtract
        torch.log_softmax(x, dim=1, out=x)
    else:
        x.copy_(torch.log_softmax(x, dim=1))
    picked = x.gather(1, safe).squeeze(1)
    w.total -= torch.where(valid, picked, 0.0).sum() if w.weights is None else (picked * _row_weights(w, s, e, valid, picked.dtype)).sum()
    if w.with_correct:
        # a hit when the target's log-probability is the row's largest: the same as argmax ==
        # target but for exact ties, and ~10x faster than argmax on CPU
        w.correct += ((picked >= x.amax(dim=1)) & valid).sum()
    if not w.need_any:
        return
    x.exp_()  # softmax, in place
    x.scatter_add_(1, safe, -valid.to(x.dtype).unsqueeze(1))  # minus one-hot
    g = x if g_low is None else g_low.copy_(x)
    if w.grad_h is not None:
        rows = w.grad_h[s:e]
        torch.mm(g, w.weight, out=rows)
        rows *= _row_weights(w, s, e, valid, rows.dtype).unsqueeze(1)  # ignored rows: no gradient


def _weight_grads(w: _Work, start: int, stop: int, valid: Tensor) -> None:
    """Add the chunk's share of the weight and bias gradients (the chunk's logit gradient is in ``buf``)."""
    g = (w.buf if w.low is None else w.low)[: stop - start]
    mask = _row_weights(w, start, stop, valid, g.dtype)
    if w.grad_w is not None:
        hv = w.hidden[start:stop] * mask.unsqueeze(1).to(w.hidden.dtype)
        if w.grad_w.dtype == g.dtype:
            w.grad_w.addmm_(g.t(), hv)
        else:
            w.grad_w += torch.mm(g.t(), hv).to(w.grad_w.dtype)
    if w.grad_b is not None:
        w.grad_b += (mask @ g).to(w.grad_b.dtype)


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of ``cross_entropy(hidden @ weight.T + bias, targets)``; rows at ``ignore_index`` add nothing."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, weights, ignore_index, chunk, block, with_correct, grad_enabled):  # noqa: D102
        # needs_input_grad says True under no_grad too: the caller tells whether grad mode is on
        need = tuple(grad_enabled and n for n in ctx.needs_input_grad[:3])
        w = _prepare(hidden, weight, bias, targets, weights, ignore_index, chunk, with_correct, need)
        n = hidden.shape[0]
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            valid_c = targets[start:stop] != ignore_index
            for s in range(start, stop, block):
                e = min(stop, s + block)
                low = None if w.low is None else w.low[s - start : e - start]
                _block(w, s, e, w.buf[s - start : e - start], valid_c[s - start : e - start], low)
            if w.grad_w is not None or w.grad_b is not None:
                _weight_grads(w, start, stop, valid_c)
        ctx.grads = (w.grad_h, w.grad_w, w.grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(w.correct)
        return w.total, w.correct

    @staticmethod
    def backward(ctx, grad_total, _grad_correct):  # noqa: D102
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy: backward through the same graph twice is not supported")
        grads, dtypes = ctx.grads, ctx.dtypes
        ctx.grads = None
        out = [None if g is None else g.mul_(grad_total.to(g.dtype)).to(dtype) for g, dtype in zip(grads, dtypes)]
        return out[0], out[1], out[2], None, None, None, None, None, None, None


@torch.compiler.disable  # eager under torch.compile: a Python loop of large matmuls gains nothing from tracing
def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    *,
    weights: Tensor | None = None,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
    block_rows: int | None = None,
    with_correct: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(loss_sum, count, correct)`` of ``F.cross_entropy(F.linear(hidden, weight, bias), targets)``.

    Equal to the dense computation (fp32 softmax) without materialising ``(rows, vocab)`` logits
    beyond one chunk; ``hidden`` is ``(..., h)`` and ``targets`` the matching ``(...)`` with
    ``ignore_index`` where nothing is predicted. ``correct`` (argmax hits on counted rows) is
    computed only when asked. ``weights`` (matching ``targets``) weigh each row's loss: the sum
    is then ``sum(weights * loss)`` and the gradients follow. Under autocast the matmuls run in the autocast dtype, as
    ``F.linear`` would, and the softmax in fp32. No host-device synchronisation.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    weights = None if weights is None else weights.reshape(-1)
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    elif hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    chunk, block = _ce_sizes(hidden.device, weight.shape[0], hidden.shape[0])
    chunk = chunk_rows or chunk
    block = min(chunk, block_rows or block)
    with torch.autocast(device_type, enabled=False):
        total, correct = _LinearCrossEntropy.apply(
            hidden, weight, bias, targets, weights, ignore_index, chunk, block, with_correct, torch.is_grad_enabled()
        )
    count = (targets != ignore_index).sum()
    return total, count, (correct if with_correct else None)


__all__ = ["linear_cross_entropy"]
