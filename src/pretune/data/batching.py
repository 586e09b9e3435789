"""Fine-tuning batches: padding features into tensors, and the seeded, resumable batch stream.

:class:`Collator` pads a list of features (dicts of ints / lists of ints built by a task family)
to the longest sequence of the batch; :class:`FinetuneBatches` is the shuffled, seeded,
resumable stream of batches the trainer consumes, split across processes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pretune.errors import PretuneError

Feature = dict[str, Any]
IGNORE = -100



def _is_nested(x: Any) -> bool:
    return bool(x) and isinstance(x[0], list)


def feature_length(feature: Feature) -> int:
    """Total tokens of a feature (all choices / orderings together): the cost used to group batches."""
    ids = feature["input_ids"]
    return sum(len(s) for s in ids) if _is_nested(ids) else len(ids)


@dataclass
class Collator:
    """Pad features to the longest sequence in the batch (right padding).

    Produces ``input_ids`` ``(b, t)`` or ``(b, n, t)`` for multi-sequence features (choices, the
    two orderings of GPT similarity), ``padding_mask`` (1 = token) only when something is padded,
    ``token_type_ids`` when the features have them, ``extract_pos`` (index of each sequence's last
    token, GPT's extract token) when ``extract`` is set, ``labels`` (class ids, float scores or
    per-token tags padded with -100) and ``start_positions`` / ``end_positions`` for QA.
    """

    pad_id: int
    extract: bool = False

    def __call__(self, features: Sequence[Feature]) -> dict[str, Tensor]:
        first = features[0]["input_ids"]
        nested = _is_nested(first)
        seqs: list[list[int]] = [s for f in features for s in f["input_ids"]] if nested else [f["input_ids"] for f in features]
        if nested and len({len(f["input_ids"]) for f in features}) > 1:
            raise PretuneError("every example in a batch must have the same number of choices")
        lengths = [len(s) for s in seqs]
        width = max(lengths)
        shape = (len(features), len(first), width) if nested else (len(features), width)
        batch: dict[str, Tensor] = {"input_ids": torch.tensor(_pad(seqs, width, self.pad_id)).view(shape)}
        if min(lengths) < width:
            mask = [[1] * n + [0] * (width - n) for n in lengths]
            batch["padding_mask"] = torch.tensor(mask, dtype=torch.long).view(shape)
        if "token_type_ids" in features[0]:
            types = [s for f in features for s in f["token_type_ids"]] if nested else [f["token_type_ids"] for f in features]
            batch["token_type_ids"] = torch.tensor(_pad(types, width, 0)).view(shape)
        if self.extract:
            batch["extract_pos"] = torch.tensor([n - 1 for n in lengths]).view(shape[:-1])
        if "tags" in features[0]:
            batch["labels"] = torch.tensor(_pad([f["tags"] for f in features], width, IGNORE))
        elif "label" in features[0]:
            values = [f["label"] for f in features]
            dtype = torch.float32 if isinstance(values[0], float) else torch.long
            batch["labels"] = torch.tensor(values, dtype=dtype)
        if "start_positions" in features[0]:
            batch["start_positions"] = torch.tensor([f["start_positions"] for f in features])
            batch["end_positions"] = torch.tensor([f["end_positions"] for f in features])
        return batch


def _pad(rows: Sequence[Sequence[int]], width: int, value: int) -> list[list[int]]:
    return [list(r) + [value] * (width - len(r)) for r in rows]


def rank_share(ids: Sequence[int], rank: int, world_size: int) -> Sequence[int]:
    """Rank ``rank``'s contiguous slice of a global batch; slice sizes differ by at most one."""
    q, r = divmod(len(ids), world_size)
    start = rank * q + min(rank, r)
    return ids[start : start + q + int(rank < r)]


class FinetuneBatches:
    """Shuffled, seeded, resumable batches over a list of features, epoch after epoch.

    Each epoch's order depends only on ``(seed, epoch)``, so :meth:`state_dict` (epoch and
    batch position) resumes exactly. ``batch_size`` is the global batch; with ``world_size`` > 1
    rank ``r`` takes the r-th contiguous slice of each global batch. A last partial global batch is
    cut into slices whose sizes differ by at most one (the trainer weighs each rank's loss by its
    share, so the step is the one-process step); with fewer examples than processes it is dropped
    (one process would keep it: the only case where the runs differ). ``group_by_length`` sorts chunks of 50
    batches by length before cutting them into batches (less padding), then shuffles the batches.
    ``epochs=None`` repeats forever; ``shuffle=False`` keeps the order (evaluation).
    """

    def __init__(
        self,
        features: Sequence[Feature],
        batch_size: int,
        collate: Callable[[Sequence[Feature]], dict[str, Tensor]],
        *,
        shuffle: bool = True,
        seed: int = 0,
        epochs: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        group_by_length: bool = False,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise PretuneError(f"--batch-size must be at least 1, got {batch_size}")
        if batch_size % world_size:
            raise PretuneError(f"--batch-size {batch_size} must be divisible by the number of processes ({world_size})")
        if not features:
            raise PretuneError("no examples to make batches from")
        self.features = features
        self.batch_size = batch_size
        self.collate = collate
        self.shuffle = shuffle
        self.seed = seed
        self.epochs = epochs
        self.rank = rank
        self.world_size = world_size
        self.group_by_length = group_by_length
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches of the current epoch already handed out

    def __len__(self) -> int:
        """Batches per epoch."""
        full, tail = divmod(len(self.features), self.batch_size)
        return full + int(self._keeps(tail))

    def _keeps(self, tail: int) -> bool:
        """Whether a last partial batch of ``tail`` examples is used (every rank needs one)."""
        return 0 < tail and not self.drop_last and tail >= self.world_size

    def epoch_order(self, epoch: int) -> list[list[int]]:
        """The global batches (lists of feature indices) of ``epoch``."""
        n = len(self.features)
        order = list(range(n))
        rng = random.Random(self.seed * 1_000_003 + epoch)
        if self.shuffle:
            rng.shuffle(order)
        if self.group_by_length:
            chunk = self.batch_size * 50
            order = [
                i
                for k in range(0, n, chunk)
                for i in sorted(order[k : k + chunk], key=lambda j: -feature_length(self.features[j]))
            ]
        batches = [order[k : k + self.batch_size] for k in range(0, n, self.batch_size)]
        if batches and len(batches[-1]) < self.batch_size and not self._keeps(len(batches[-1])):
            batches.pop()
        if self.group_by_length and self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while self.epochs is None or self.epoch < self.epochs:
            batches = self.epoch_order(self.epoch)
            while self.position < len(batches):
                ids = batches[self.position]
                self.position += 1
                yield self.collate([self.features[i] for i in rank_share(ids, self.rank, self.world_size)])
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise PretuneError(
                f"cannot resume: the run was started with --seed {state['seed']}, now {self.seed}"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


__all__ = ["Collator", "FinetuneBatches", "feature_length", "rank_share"]
