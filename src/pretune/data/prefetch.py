"""Background batch preparation: the next batches are built (and pinned) while the model trains.

:class:`Prefetcher` wraps any batch iterator. A daemon thread pulls batches from it into a
bounded queue; with ``pin_memory`` their tensors are copied to page-locked memory there, so the
trainer's ``.to(device, non_blocking=True)`` overlaps the copy with compute. Instance creation,
masking and collation are numpy / torch work that releases the GIL, so the thread runs truly
beside the training step.

Resuming stays exact: each queued batch carries the wrapped stream's ``state_dict()`` taken right
after that batch was made, and :meth:`Prefetcher.state_dict` returns the state of the last batch
*handed out*, not of the batches still waiting in the queue. Batch streams in pretune draw their
randomness from their own seeded generators, never from the global RNGs, so building batches on
another thread changes no number.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import torch

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def pin(batch: Any) -> Any:
    """``batch`` with every tensor in page-locked memory (dicts, lists and tuples are walked)."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, dict):
        return {k: pin(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(pin(v) for v in batch)
    return batch


class Prefetcher:
    """Iterate ``batches`` with up to ``depth`` batches prepared ahead on a background thread."""

    def __init__(self, batches: Iterable[Any], depth: int = 2, pin_memory: bool = False) -> None:
        if depth < 1:
            raise ValueError("Prefetcher depth must be at least 1")
        self.inner = batches
        self.depth = depth
        self.pin_memory = pin_memory
        self._stateful = hasattr(batches, "state_dict")
        self._state: Any = None  # the inner state after the last batch handed out
        self._queue: queue.Queue[Any] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> Any:
        """The wrapped stream's state as of the last batch returned (``None`` if it has none)."""
        if not self._stateful:
            return None
        if self._thread is None:
            return self.inner.state_dict()  # type: ignore[attr-defined]
        return self._state

    def load_state_dict(self, state: Any) -> None:
        if self._thread is not None:
            raise RuntimeError("Prefetcher.load_state_dict must come before iteration starts")
        self.inner.load_state_dict(state)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    # -- iteration --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self._thread is None:
            self._start()
        return self

    def __next__(self) -> Any:
        if self._thread is None:
            self._start()
        assert self._queue is not None
        item = self._queue.get()
        if item is _DONE:
            self._queue.put(_DONE)  # later calls stop too
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.exc
        batch, self._state = item
        return batch

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._produce, name="pretune-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        assert self._queue is not None
        try:
            for batch in self.inner:
                if self.pin_memory:
                    batch = pin(batch)
                state = self.inner.state_dict() if self._stateful else None  # type: ignore[attr-defined]
                if not self._put((batch, state)):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Failure(exc))

    def _put(self, item: Any) -> bool:
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        """Stop the background thread (batches already queued are dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __del__(self) -> None:
        self._stop.set()


__all__ = ["Prefetcher", "pin"]
