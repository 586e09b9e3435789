"""Background batch preparation: same batches, same order, exact resume state, errors surface."""

from __future__ import annotations

import itertools

import pytest
import torch

from pretune.data.batching import FinetuneBatches
from pretune.data.prefetch import Prefetcher


def _batches(epochs: int | None = None) -> FinetuneBatches:
    features = [{"input_ids": list(range(1, 2 + i % 7)), "label": i % 2} for i in range(23)]

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows])
        return {"input_ids": ids, "labels": torch.tensor([r["label"] for r in rows])}

    return FinetuneBatches(features, 4, collate, seed=3, epochs=epochs)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_batches_in_the_same_order() -> None:
    direct = list(_batches(epochs=3))
    fetched = list(Prefetcher(_batches(epochs=3), depth=3))
    assert len(direct) == len(fetched) == 3 * 6
    assert all(_same(a, b) for a, b in zip(direct, fetched))


def test_state_is_that_of_the_last_batch_handed_out() -> None:
    pf = Prefetcher(_batches(), depth=4)
    it = iter(pf)
    consumed = [next(it) for _ in range(8)]
    # The thread has run ahead (the queue holds up to 4 more), yet the state points after batch 8.
    reference = _batches()
    ref_it = iter(reference)
    for _ in range(8):
        next(ref_it)
    assert pf.state_dict() == reference.state_dict() == {"epoch": 1, "position": 2, "seed": 3}
    # Resuming a fresh stream from that state continues exactly where the consumer stopped.
    resumed = _batches()
    resumed.load_state_dict(pf.state_dict())
    following = list(itertools.islice(Prefetcher(resumed), 5))
    expected = [next(ref_it) for _ in range(5)]
    assert all(_same(a, b) for a, b in zip(following, expected))
    assert len(consumed) == 8
    pf.close()


def test_errors_in_the_producer_reach_the_consumer() -> None:
    def broken():
        yield {"x": torch.zeros(1)}
        raise ValueError("row 7 is malformed")

    pf = Prefetcher(broken())
    assert torch.equal(next(iter(pf))["x"], torch.zeros(1))
    with pytest.raises(ValueError, match="row 7"):
        next(pf)


def test_load_state_after_start_is_refused_and_plain_iterators_have_no_state() -> None:
    pf = Prefetcher(iter([1, 2, 3]))
    assert pf.state_dict() is None
    assert list(pf) == [1, 2, 3]
    started = Prefetcher(_batches())
    next(iter(started))
    with pytest.raises(RuntimeError, match="before iteration"):
        started.load_state_dict({"epoch": 0, "position": 0, "seed": 3})
    started.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_pinned_batches() -> None:
    batch = next(iter(Prefetcher(_batches(), pin_memory=True)))
    assert all(v.is_pinned() for v in batch.values())
