"""How well a pretrained model predicts a text: a GPT's perplexity, a BERT's pseudo-perplexity.

**Perplexity** (GPT) is ``exp`` of the mean negative log-likelihood of each token given the ones
before it. A text longer than the context is scored with the sliding window of Hugging Face's
perplexity guide: windows of ``window`` tokens start every ``stride`` tokens, and each window
scores only the tokens the previous one did not reach, so each token is scored once, with at
least ``window - stride`` tokens of context (the first window's tokens with all before them).
The mean is over the tokens actually scored (the guide divides by a count one too high per
window when stride == window). With ``stride == window`` the windows do not overlap and each
window's first token, having no context in it, is not scored.

**Pseudo-perplexity** (BERT; Salazar et al., 2020): each token of each line is masked in turn and
scored by the masked-LM head given the rest of the line (``[CLS] line [SEP]``); ``exp`` of the
mean negative log-probability. The same pass gives the masked-LM accuracy (the original token is
the top-1 prediction). A BERT sees lines independently: a line longer than the context is cut.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from pretune.errors import PretuneError
from pretune.lm.common import limit_to_tokenizer, pad_rows

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int, progress: bool, what: str) -> Iterator[Sequence[T]]:
    starts = range(0, len(items), max(1, size))
    for first in tqdm(starts, desc=what, unit="batch", disable=not progress or len(starts) < 2):
        yield items[first : first + size]


def sliding_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first)`` of each window over ``n_tokens``: ``ids[begin:end]`` is its input and
    the tokens ``first .. end - 1`` its targets (Hugging Face's guide; see the module docstring)."""
    if window < 2:
        raise PretuneError(f"--window must be at least 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise PretuneError(f"--stride must be in 1..{window} (at most --window, else tokens are skipped), got {stride}")
    out, scored = [], 1  # the text's first token has nothing before it
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        first = max(scored, begin + 1)
        if first < end:
            out.append((begin, end, first))
        scored = max(scored, end)
        if end == n_tokens:
            break
    return out


class NothingToScore(PretuneError):
    """A text too short to score; the caller, who knows where the text came from, names it."""


@torch.no_grad()
def perplexity(model: Any, ids: list[int], *, window: int | None = None, stride: int | None = None, batch_size: int = 8,
               progress: bool = False) -> dict[str, Any]:
    """A GPT's perplexity of the token ids ``ids`` (see the module docstring). ``window`` defaults to
    the context, ``stride`` to half the window."""
    context = model.cfg.max_positions
    window = window or context
    if window > context:
        raise PretuneError(f"--window {window} is longer than the model's context ({context} tokens)")
    stride = stride or max(1, window // 2)
    spans = sliding_windows(len(ids), window, stride)
    if not spans:
        raise NothingToScore("the text has fewer than 2 tokens: nothing to predict")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in _chunks(spans, batch_size, progress, "perplexity"):
        x, mask = pad_rows([ids[b:e] for b, e, _ in batch], 0)
        y, _ = pad_rows([[-100] * (a - b) + ids[a:e] for b, e, a in batch], -100)
        out = model(x.to(device), padding_mask=None if bool(mask.all()) else mask.to(device), labels=y.to(device),
                    return_logits=False)
        total += float(out.metrics["lm_loss_sum"])
        count += int(out.metrics["lm_tokens"])
    nll = total / count
    return {"tokens": len(ids), "predicted": count, "nll": nll, "perplexity": math.exp(nll), "window": window,
            "stride": stride, "windows": len(spans)}


def _masked_copies(tokenizer: Any, lines: list[str], context: int) -> list[tuple[list[int], int]]:
    """``([CLS] line [SEP], j)`` for every token position j of every line (lines cut to the context)."""
    limit = context - 2
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    copies, cut = [], 0
    for ids in tokenizer.encode_batch(lines):
        cut += len(ids) > limit
        seq = [cls, *ids[:limit], sep]
        copies += [(seq, j) for j in range(1, len(seq) - 1)]
    if cut:
        warnings.warn(f"{cut} line(s) longer than the model's context were cut to {limit} tokens", stacklevel=3)
    return copies


@torch.no_grad()
def pseudo_perplexity(model: Any, tokenizer: Any, lines: list[str], *, batch_size: int = 32,
                      progress: bool = False) -> dict[str, Any]:
    """A BERT's masked-LM pseudo-perplexity and accuracy over ``lines`` (see the module docstring)."""
    copies = _masked_copies(tokenizer, lines, model.cfg.max_positions)
    if not copies:
        raise NothingToScore("the text has no tokens to mask")
    device = next(model.parameters()).device
    mask_id, pad = tokenizer.mask_id, tokenizer.padding_id
    logp_sum, correct = 0.0, 0
    for batch in _chunks(copies, batch_size, progress, "pseudo-perplexity"):
        x, mask = pad_rows([seq[:j] + [mask_id] + seq[j + 1 :] for seq, j in batch], pad)
        positions = torch.tensor([[j] for _, j in batch], device=device)
        targets = torch.tensor([[seq[j]] for seq, j in batch], device=device)
        out = model(x.to(device), padding_mask=None if bool(mask.all()) else mask.to(device), mlm_labels=targets,
                    mlm_positions=positions, return_logits=True)
        logits = limit_to_tokenizer(out.mlm_logits.float(), tokenizer.vocab_size)
        logp_sum += float(logits.log_softmax(-1).gather(1, targets.view(-1, 1)).sum())
        correct += int((logits.argmax(-1) == targets.view(-1)).sum())
    nll = -logp_sum / len(copies)
    return {"lines": len(lines), "predicted": len(copies), "pseudo_nll": nll, "pseudo_perplexity": math.exp(nll),
            "mlm_accuracy": correct / len(copies)}


def score_text(ready: Any, text: str, *, window: int | None = None, stride: int | None = None, batch_size: int = 8,
               progress: bool = False) -> dict[str, Any]:
    """``pretune perplexity``: a GPT's perplexity of the whole text, or a BERT's pseudo-perplexity and
    masked-LM accuracy over its non-empty lines (``ready``: a :class:`pretune.loader.ReadyModel`)."""
    with ready.autocast():
        if ready.family == "gpt":
            return perplexity(ready.model, ready.tokenizer.encode(text), window=window, stride=stride,
                              batch_size=batch_size, progress=progress)
        if window is not None or stride is not None:
            raise PretuneError("--window and --stride are for a GPT; a BERT scores each line on its own")
        lines = [line for line in text.splitlines() if line.strip()]
        return pseudo_perplexity(ready.model, ready.tokenizer, lines, batch_size=batch_size, progress=progress)


__all__ = ["NothingToScore", "perplexity", "pseudo_perplexity", "score_text", "sliding_windows"]
