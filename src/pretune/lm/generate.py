"""Text from a GPT (GPT-1 or the GPT-2 family): :func:`generate`.

The prompts are left-padded into one batch (each row's positions count its own tokens only, as
``transformers`` does), the prefix runs through the model once, and each step then runs the model
on one new token per row against a key/value cache (:class:`pretune.models.core.KVCache`): no
recomputation of the prefix. The next token is the most likely one (greedy), or sampled
(``--sample``) after the logits are shaped in ``transformers``' order: repetition penalty,
temperature, top-k, top-p. A sample ends at the end-of-text token, at a ``--stop`` string (its
text is cut there) or after ``--max-new-tokens``.

**A prompt's samples do not depend on its batch.** Each sample draws from a generator of its own,
seeded from ``--seed``, the prompt's index and the sample's index, so ``--batch-size`` and the
other prompts never change it. The repetition penalty counts a row's prompt and output tokens, not
its left padding: ``transformers``' penalty gathers over every input id, padding included, so a
padded row of its batches has its pad token (often the end-of-text token) penalised, and its
output depends on the longest prompt beside it (Hugging Face's text-generation-inference fixed
the same in its server, PR #1765). Without padding, or padded with a token the row already holds,
the two agree token for token (tests/test_generate.py).

**Context**: a prompt longer than the context leaves room for is cut from the left (its last
``context - max_new_tokens`` tokens are kept) with a warning naming the prompt and how much was
cut; ``--max-new-tokens`` at or above the context is an error. An empty prompt starts from the
bos (else the end-of-text) token, as GPT-2 does.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pretune.errors import PretuneError
from pretune.lm.common import limit_to_tokenizer, pad_rows
from pretune.lm.settings import SamplingSettings
from pretune.models.core import KVCache


@dataclass
class Sample:
    """One generated continuation."""

    prompt_index: int
    sample_index: int
    prompt: str
    text: str  # the continuation's text (cut before a stop string)
    token_ids: list[int]  # the generated ids (the end-of-text token included when it ended the sample)
    finish: str  # "eos", "stop" or "length"
    prompt_tokens: int  # tokens of the prompt the model saw
    dropped: int  # prompt tokens cut from the left to fit the context
    seed: int  # the sampling seed of the call


# --- choosing the next token -----------------------------------------------------------------------


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """``logits`` (b, vocab) with every token outside the top ``top_k`` and outside the top-``top_p``
    nucleus (the fewest most likely tokens whose probability reaches ``top_p``) set to -inf. Each row
    keeps at least its most likely token; ties at the k-th logit are kept."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        before = probs.cumsum(-1) - probs  # the probability of the tokens ranked above each one
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def penalise_repeats(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty: the logits of tokens already seen, divided by ``penalty`` when
    positive and multiplied by it when negative."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def next_tokens(logits: Tensor, s: SamplingSettings, seen: Tensor,
                generators: Sequence[torch.Generator | None] | None = None) -> Tensor:
    """The next token of each row (b,): greedy, or sampled from the shaped distribution, row ``i``
    with ``generators[i]`` (None: torch's global generator)."""
    if s.repetition_penalty != 1.0:
        logits = penalise_repeats(logits, seen, s.repetition_penalty)
    if not s.sample:
        return logits.argmax(-1)
    probs = filter_logits(logits / s.temperature, s.top_k, s.top_p).softmax(-1)
    rows = generators if generators is not None else [None] * probs.shape[0]
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, rows, strict=True)])


def sample_seed(seed: int, prompt: int, sample: int) -> int:
    """The seed of one sample's generator: a function of the call's seed and the sample's place only."""
    return int(np.random.SeedSequence([seed, prompt, sample]).generate_state(1, np.uint64)[0])


# --- the decoding loop -----------------------------------------------------------------------------


@torch.no_grad()
def generate_ids(
    model: Any, prompts: list[list[int]], s: SamplingSettings, *, eos_id: int | None, pad: int = 0,
    n_tokens: int | None = None, generators: Sequence[torch.Generator | None] | None = None,
    on_token: Callable[[int, list[int]], bool] | None = None,
) -> list[tuple[list[int], str]]:
    """The new ids after each prompt (each fits the context with ``s.max_new_tokens``) and why it stopped.

    A row stops at ``eos_id`` ("eos", kept in its ids), when ``on_token(row, ids)`` returns True
    ("stop"), or after ``s.max_new_tokens`` ("length"); the batch stops when every row has. Ids at
    or past ``n_tokens`` (a padded vocabulary) are never chosen. Sampling draws row ``i``'s tokens
    from ``generators[i]``; the repetition penalty counts each row's own tokens, not its padding.
    """
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in pad_rows(prompts, pad, left=True))
    b, width = ids.shape
    keys_mask = torch.ones(b, width + s.max_new_tokens, dtype=torch.long, device=device)
    keys_mask[:, :width] = mask
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    seen = torch.zeros(b, model.cfg.vocab_size, dtype=torch.bool, device=device)
    rows, cols = mask.nonzero(as_tuple=True)
    seen[rows, ids[rows, cols]] = True
    cache = KVCache(model.cfg.n_layers, width + s.max_new_tokens)
    logits = model.next_token_logits(ids, mask, positions, cache)
    out: list[list[int]] = [[] for _ in range(b)]
    finish = ["length"] * b
    for step in range(s.max_new_tokens):
        token = next_tokens(limit_to_tokenizer(logits.float(), n_tokens or logits.shape[-1]), s, seen, generators)
        for row, t in enumerate(token.tolist()):
            if finish[row] != "length":
                continue
            out[row].append(t)
            if t == eos_id:
                finish[row] = "eos"
            elif on_token is not None and on_token(row, out[row]):
                finish[row] = "stop"
        if all(f != "length" for f in finish) or step == s.max_new_tokens - 1:
            break
        seen[torch.arange(b, device=device), token] = True
        positions = positions[:, -1:] + 1
        logits = model.next_token_logits(token[:, None], keys_mask[:, : width + step + 1], positions, cache)
    return list(zip(out, finish))


# --- text in, text out -------------------------------------------------------------------------------


def encode_prompts(tokenizer: Any, prompts: list[str], context: int, max_new_tokens: int) -> list[tuple[list[int], int]]:
    """Each prompt's ids (cut from the left, with a warning, to leave room for ``max_new_tokens``)
    and how many were cut."""
    room = context - max_new_tokens
    if room < 1:
        raise PretuneError(
            f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the model's context of {context} tokens"
        )
    start = next((tokenizer.role_id(r) for r in ("bos", "eos") if tokenizer.has_role(r)), None)
    out = []
    for i, text in enumerate(prompts):
        ids = tokenizer.encode(text)
        if not ids:
            if start is None:
                raise PretuneError(f"prompt {i + 1} is empty and the tokenizer has no bos or eos token to start from")
            ids = [start]
        dropped = max(0, len(ids) - room)
        if dropped:
            warnings.warn(
                f"prompt {i + 1} has {len(ids)} tokens: its first {dropped} were cut so that it and --max-new-tokens "
                f"{max_new_tokens} fit the model's context of {context} tokens", stacklevel=2,
            )
        out.append((ids[dropped:], dropped))
    return out


class TextStream:
    """The text of one sample as its tokens arrive: cut at the first stop string, and shown (through
    ``on_text``) only as far as no stop string could still begin and no UTF-8 character is partial."""

    def __init__(self, tokenizer: Any, stops: list[str], on_text: Callable[[str], None] | None = None) -> None:
        self.tokenizer, self.stops, self.on_text = tokenizer, stops, on_text
        self.hold = max((len(x) for x in stops), default=1) - 1
        self.text, self.shown = "", 0

    def update(self, ids: list[int]) -> bool:
        """Take the sample's ids so far; True when a stop string has appeared."""
        text = self.tokenizer.decode(ids)
        cuts = [text.find(x) for x in self.stops if x in text]
        if cuts:
            self.text = text[: min(cuts)]
            self.flush()
            return True
        self.text = text
        safe = len(text.rstrip("\ufffd")) - self.hold
        self._show(safe)
        return False

    def flush(self) -> None:
        self._show(len(self.text))

    def _show(self, upto: int) -> None:
        if self.on_text is not None and upto > self.shown:
            self.on_text(self.text[self.shown : upto])
            self.shown = upto


def generate(
    model: Any, tokenizer: Any, prompts: list[str], s: SamplingSettings, *, batch_size: int = 8,
    on_text: Callable[[int, str], None] | None = None,
) -> list[Sample]:
    """Continue each prompt ``s.num_samples`` times with a GPT (``model`` on its device, in eval mode).

    Sample ``k`` of prompt ``p`` is a function of ``s.seed``, ``p`` and ``k`` only (not of
    ``batch_size`` or of the other prompts).

    ``on_text(row, text)`` receives each sample's text as it is generated (rows are numbered prompt by
    prompt, sample by sample), for streaming. Run it under the autocast of the precision wanted.
    """
    s.check()
    seed = s.seed if s.seed is not None else random.SystemRandom().randrange(2**31)
    device = next(model.parameters()).device
    encoded = encode_prompts(tokenizer, prompts, model.cfg.max_positions, s.max_new_tokens)
    rows = [(p, k) for p in range(len(prompts)) for k in range(s.num_samples)]
    eos = tokenizer.eos_id if tokenizer.has_role("eos") else None
    samples = []
    for first in range(0, len(rows), batch_size):
        batch = rows[first : first + batch_size]
        streams = [TextStream(tokenizer, list(s.stop or []), None if on_text is None else
                              (lambda text, r=first + j: on_text(r, text))) for j in range(len(batch))]
        generators = [torch.Generator(device).manual_seed(sample_seed(seed, p, k)) for p, k in batch] if s.sample else None
        done = generate_ids(model, [encoded[p][0] for p, _ in batch], s, eos_id=eos, pad=tokenizer.padding_id,
                            n_tokens=tokenizer.vocab_size, generators=generators,
                            on_token=lambda j, ids, streams=streams: streams[j].update(ids))
        for (p, k), stream, (ids, finish) in zip(batch, streams, done):
            if finish != "stop":
                stream.update(ids)
                stream.flush()
            samples.append(Sample(p, k, prompts[p], stream.text, ids, finish, len(encoded[p][0]), encoded[p][1], seed))
    return samples


__all__ = ["Sample", "TextStream", "encode_prompts", "filter_logits", "generate", "generate_ids", "next_tokens",
           "penalise_repeats", "sample_seed"]
