"""Tokenize a corpus once into memory-mapped token shards, cached by content key.

``prepare_corpus`` streams documents from text files, tokenizes them in batches (in a pool of
worker processes or in-process) and appends to growing files, so memory stays bounded by one
batch of documents plus 8 bytes per sentence (the offset lists, spilled to disk as they grow).
The result is a directory ``cache_root/<key[:16]>/``::

    meta.json                    settings, counts, {"complete": true}
    train.tokens.bin             flat token ids (uint16 if the vocabulary fits, else uint32)
    train.sent_offsets.npy       int64, start of each sentence in tokens; one extra entry at the end
    train.doc_offsets.npy        int64, index of each document's first sentence; one extra entry
    val.*                        the same for the validation split

The offset arrays are CSR-style: sentence ``i`` is ``tokens[sent[i]:sent[i + 1]]`` and document
``d`` holds sentences ``doc[d]:doc[d + 1]``. In ``bert`` mode a sentence is a line of the corpus
(BERT's segment pairs are built from them); in ``gpt`` mode each document is one "sentence" (its
lines joined with ``"\\n"``) followed by the tokenizer's end-of-text id, so the token file is the
GPT training stream with a separator between documents.

The key hashes each file's absolute path, size and mtime, the tokenizer's serialized JSON and the
settings that change the tokens, so a second call with the same inputs returns at once. The cache
directory is built under a temporary name and renamed when complete; concurrent callers (the
ranks of a distributed job) wait on a lock file and the later ones reuse the first one's result.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import queue
import shutil
import struct
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from pretune.data import corpus
from pretune.errors import PretuneError
from pretune.io import fsync_tree, made_dirs, swap_dir

FORMAT_VERSION = 1
SPLITS = ("train", "val")
Mode = Literal["bert", "gpt"]
_HASH_SCALE = 1_000_000  # validation split resolution: a document is val if hash % 1e6 < fraction * 1e6


# --- hashing ---------------------------------------------------------------------------------


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer over a uint64 array (wrapping arithmetic): a fast, good bit mixer."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def is_val_document(doc_index: np.ndarray, val_fraction: float) -> np.ndarray:
    """Whether each (global, 0-based) document index belongs to the validation split.

    A pure function of the index, so the split is the same on every run and machine.
    """
    h = splitmix64(np.asarray(doc_index, dtype=np.uint64) ^ np.uint64(0x5EED_0F_7A1))
    return (h % np.uint64(_HASH_SCALE)).astype(np.int64) < round(val_fraction * _HASH_SCALE)


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65535), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of the tokenizer's serialized JSON (what ``tokenizer.json`` holds)."""
    return hashlib.sha256(tokenizer.backend.to_str().encode("utf-8")).hexdigest()


def cache_key(
    files: Sequence[Path], tokenizer: Any, *, mode: str, val_fraction: float, skip_bad_lines: bool
) -> str:
    """Hex sha256 over the files (absolute path, size, mtime_ns), the tokenizer and the settings."""
    h = hashlib.sha256()
    settings = {
        "format_version": FORMAT_VERSION,
        "mode": mode,
        "val_fraction": float(val_fraction),
        "skip_bad_lines": bool(skip_bad_lines),
        "tokenizer": tokenizer_digest(tokenizer),
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    for f in files:
        st = f.stat()
        h.update(json.dumps([str(f.resolve()), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()


# --- the prepared corpus ---------------------------------------------------------------------


@dataclass
class PreparedCorpus:
    """A prepared cache directory: read-only memory-mapped views of each split."""

    path: Path
    meta: dict[str, Any]
    _views: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | Path) -> PreparedCorpus:
        """Open a complete cache directory (raises PretuneError if it is not one)."""
        path = Path(path)
        meta = _read_meta(path)
        if meta is None:
            raise PretuneError(f"{path}: not a complete prepared corpus (no meta.json marked complete)")
        return cls(path, meta)

    @property
    def mode(self) -> Mode:
        return self.meta["mode"]

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def _check(self, split: str) -> None:
        if split not in SPLITS:
            raise PretuneError(f"unknown split {split!r}; choose train or val")

    def num_tokens(self, split: str) -> int:
        self._check(split)
        return int(self.meta["splits"][split]["tokens"])

    def num_sentences(self, split: str) -> int:
        self._check(split)
        return int(self.meta["splits"][split]["sentences"])

    def num_documents(self, split: str) -> int:
        self._check(split)
        return int(self.meta["splits"][split]["documents"])

    def tokens(self, split: str) -> np.ndarray:
        """Flat token ids of ``split`` (a read-only memmap; empty array for an empty split)."""
        self._check(split)
        name = f"{split}.tokens"
        if name not in self._views:
            n = self.num_tokens(split)
            if n == 0:
                self._views[name] = np.empty(0, dtype=self.dtype)
            else:
                self._views[name] = np.memmap(
                    self.path / f"{split}.tokens.bin", dtype=self.dtype, mode="r", shape=(n,)
                )
        return self._views[name]

    def sentences(self, split: str) -> np.ndarray:
        """int64 start offset of each sentence, plus the end of the last (length sentences + 1)."""
        return self._offsets(split, "sent_offsets")

    def documents(self, split: str) -> np.ndarray:
        """int64 index of each document's first sentence, plus the sentence count (length docs + 1)."""
        return self._offsets(split, "doc_offsets")

    def _offsets(self, split: str, what: str) -> np.ndarray:
        self._check(split)
        name = f"{split}.{what}"
        if name not in self._views:
            self._views[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return self._views[name]

    def __getstate__(self) -> dict[str, Any]:  # pickle without the memmaps (workers reopen them)
        return {"path": self.path, "meta": self.meta, "_views": {}}


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("complete") is not True:
        return None
    if meta.get("format_version") != FORMAT_VERSION:
        return None
    return meta


# --- writing ---------------------------------------------------------------------------------


class _SplitWriter:
    """Appends tokens, sentence offsets and document offsets of one split to files in ``tmp``."""

    def __init__(self, tmp: Path, split: str, dtype: np.dtype) -> None:
        self.tmp, self.split, self.dtype = tmp, split, dtype
        self.tok = open(tmp / f"{split}.tokens.bin", "wb")
        self.sent = open(tmp / f"{split}.sent_offsets.raw", "wb")
        self.doc = open(tmp / f"{split}.doc_offsets.raw", "wb")
        self.n_tokens = self.n_sents = self.n_docs = 0

    def append(self, tokens: np.ndarray, sent_lens: np.ndarray, doc_sizes: np.ndarray) -> None:
        """Add documents: their flat tokens, each sentence's length, each document's sentence count."""
        if doc_sizes.size == 0:
            return
        starts = self.n_tokens + np.concatenate(([0], np.cumsum(sent_lens[:-1], dtype=np.int64)))
        doc_starts = self.n_sents + np.concatenate(([0], np.cumsum(doc_sizes[:-1], dtype=np.int64)))
        tokens.astype(self.dtype, copy=False).tofile(self.tok)
        starts.astype(np.int64).tofile(self.sent)
        doc_starts.astype(np.int64).tofile(self.doc)
        self.n_tokens += int(tokens.size)
        self.n_sents += int(sent_lens.size)
        self.n_docs += int(doc_sizes.size)

    def pop_last_document(self) -> tuple[np.ndarray, np.ndarray]:
        """Remove the last document written; return its tokens and sentence lengths."""
        for fh in (self.tok, self.sent, self.doc):
            fh.flush()
        doc_start = int(np.fromfile(self.tmp / f"{self.split}.doc_offsets.raw", np.int64, 1, offset=8 * (self.n_docs - 1))[0])
        sent = np.fromfile(self.tmp / f"{self.split}.sent_offsets.raw", np.int64, offset=8 * doc_start)
        tok_start = int(sent[0])
        lens = np.diff(np.append(sent, self.n_tokens))
        tokens = np.fromfile(
            self.tmp / f"{self.split}.tokens.bin", self.dtype, offset=self.dtype.itemsize * tok_start
        )
        self.tok.truncate(self.dtype.itemsize * tok_start)
        self.sent.truncate(8 * doc_start)
        self.doc.truncate(8 * (self.n_docs - 1))
        for fh in (self.tok, self.sent, self.doc):
            fh.seek(0, os.SEEK_END)
        self.n_tokens, self.n_sents, self.n_docs = tok_start, doc_start, self.n_docs - 1
        return tokens, lens

    def finish(self) -> dict[str, int]:
        """Close the files and turn the raw offset lists into ``.npy`` arrays with a final sentinel."""
        for fh in (self.tok, self.sent, self.doc):
            fh.close()
        for what, end in (("sent_offsets", self.n_tokens), ("doc_offsets", self.n_sents)):
            raw = self.tmp / f"{self.split}.{what}.raw"
            n = raw.stat().st_size // 8
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<i8")), "fortran_order": False, "shape": (n + 1,)}
            with open(self.tmp / f"{self.split}.{what}.npy", "wb") as out, open(raw, "rb") as src:
                np.lib.format.write_array_header_1_0(out, header)
                shutil.copyfileobj(src, out, 1 << 22)  # streamed: no memory map, bounded memory
                out.write(struct.pack("<q", end))
            raw.unlink()
        return {"tokens": self.n_tokens, "sentences": self.n_sents, "documents": self.n_docs}

    def close(self) -> None:
        for fh in (self.tok, self.sent, self.doc):
            fh.close()


# --- tokenizing ------------------------------------------------------------------------------

_WORKER_BACKEND: Any = None


def _init_worker(tokenizer_json: str) -> None:
    """Pool initializer: one single-threaded tokenizer per worker process."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    import tokenizers

    global _WORKER_BACKEND
    _WORKER_BACKEND = tokenizers.Tokenizer.from_str(tokenizer_json)


def _encode(backend: Any, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Flat token ids and per-text lengths of ``texts`` (no special tokens)."""
    if not texts:
        return np.empty(0, dtype), np.empty(0, np.int64)
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # the former: tokenizers >= 0.20
    ids = [e.ids for e in encode(texts, add_special_tokens=False)]
    lens = np.fromiter(map(len, ids), np.int64, len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype, int(lens.sum()))
    return flat, lens


def _worker_encode(texts: list[str], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    return _encode(_WORKER_BACKEND, texts, np.dtype(dtype))


@dataclass
class _Batch:
    first_doc: int  # global index of the batch's first document
    texts: list[str]  # sentences (bert) or joined documents (gpt)
    doc_sizes: np.ndarray  # texts per document
    nbytes: int  # approximate UTF-8 bytes read, for progress


def _batches(
    files: Sequence[Path], mode: str, batch_docs: int, max_texts: int, read_kw: dict[str, Any]
) -> Iterator[_Batch]:
    """Group documents into batches of at most ``batch_docs`` documents / about ``max_texts`` texts."""
    texts: list[str] = []
    sizes: list[int] = []
    nbytes = 0
    first = 0
    for doc in corpus.iter_documents(files, **read_kw):
        if mode == "gpt":
            joined = "\n".join(doc)
            texts.append(joined)
            sizes.append(1)
            nbytes += len(joined.encode("utf-8")) + 2
        else:
            texts.extend(doc)
            sizes.append(len(doc))
            nbytes += sum(len(s.encode("utf-8")) for s in doc) + len(doc) + 1
        if len(sizes) >= batch_docs or len(texts) >= max_texts:
            yield _Batch(first, texts, np.asarray(sizes, np.int64), nbytes)
            first += len(sizes)
            texts, sizes, nbytes = [], [], 0
    if sizes:
        yield _Batch(first, texts, np.asarray(sizes, np.int64), nbytes)


def _input_bytes(files: Sequence[Path]) -> int:
    """Approximate uncompressed size of the inputs (gzip's ISIZE trailer for .gz files)."""
    total = 0
    for f in files:
        size = f.stat().st_size
        if f.name.lower().endswith(".gz") and size >= 18:
            with open(f, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                isize = struct.unpack("<I", fh.read(4))[0]
            total += isize if isize >= size else size * 4  # ISIZE wraps at 4 GiB
        else:
            total += size
    return total


# --- the main entry point --------------------------------------------------------------------


def prepare_corpus(
    paths: str | Path | Iterable[str | Path],
    tokenizer: Any,
    cache_root: str | Path,
    *,
    mode: Mode = "bert",
    val_fraction: float = 0.01,
    skip_bad_lines: bool = False,
    workers: int | None = None,
    batch_docs: int = 256,
    progress: bool = True,
) -> PreparedCorpus:
    """Tokenize ``paths`` once into ``cache_root/<key[:16]>/`` and return memory-mapped views.

    ``mode="bert"`` keeps lines as sentences inside documents (for segment pairs); ``"gpt"`` joins
    each document's lines with ``"\\n"`` and ends it with the end-of-text id (``[SEP]`` for a
    WordPiece tokenizer). A fraction ``val_fraction`` of the documents (chosen by a hash of the
    document's index, so stable; at least one document when positive) goes to the ``val`` split.
    ``workers``: None or 0 tokenizes in this process (the Rust library's own threads, with a
    reader thread ahead; measured fastest on 2 cores), N > 0 uses a spawn pool of N
    single-threaded tokenizer processes (the main process then only reads and writes). An
    existing complete cache is returned at once, without reading the corpus.
    """
    if mode not in ("bert", "gpt"):
        raise PretuneError(f"corpus mode must be 'bert' or 'gpt', got {mode!r}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise PretuneError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if batch_docs < 1:
        raise PretuneError(f"batch_docs must be at least 1, got {batch_docs}")
    files = [Path(p) for p in corpus.check_paths(paths, skip_bad_lines)]
    key = cache_key(files, tokenizer, mode=mode, val_fraction=val_fraction, skip_bad_lines=skip_bad_lines)
    root = Path(cache_root)
    final = root / key[:16]
    meta = _read_meta(final)
    if meta is not None and meta.get("key") == key:
        return PreparedCorpus(final, meta)
    with made_dirs(root, what="cannot create the cache directory"):  # a failed build leaves no empty folder
        lock = root / f".{key[:16]}.lock"
        try:
            with _lock(lock):
                return _build_locked(files, tokenizer, root, key, mode, val_fraction, skip_bad_lines, workers,
                                     batch_docs, progress)
        except BaseException:
            lock.unlink(missing_ok=True)
            raise


def _build_locked(files: list[Path], tokenizer: Any, root: Path, key: str, mode: str, val_fraction: float,
                  skip_bad_lines: bool, workers: int | None, batch_docs: int, progress: bool) -> PreparedCorpus:
    """Build the cache entry ``root/<key[:16]>`` under its lock (or find it finished by another process)."""
    final = root / key[:16]
    meta = _read_meta(final)  # another process may have finished it while we waited
    if meta is not None and meta.get("key") == key:
        return PreparedCorpus(final, meta)
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)  # an incomplete or stale directory
    for stale in root.glob(f".tmp-{key[:16]}-*"):  # left by a killed run (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta = _build(files, tokenizer, tmp, key, mode, val_fraction, skip_bad_lines, workers, batch_docs, progress)
        fsync_tree(tmp)
        swap_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PreparedCorpus(final, meta)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (released if the holder dies); no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _separator_id(tokenizer: Any) -> int:
    if tokenizer.has_role("eos"):
        return int(tokenizer.eos_id)
    if tokenizer.has_role("sep"):
        return int(tokenizer.sep_id)
    raise PretuneError("gpt mode needs a tokenizer with an end-of-text token (<|endoftext|>) or [SEP]")


def _build(
    files: list[Path],
    tokenizer: Any,
    tmp: Path,
    key: str,
    mode: str,
    val_fraction: float,
    skip_bad_lines: bool,
    workers: int | None,
    batch_docs: int,
    progress: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    dtype = token_dtype(tokenizer.vocab_size)
    sep = _separator_id(tokenizer) if mode == "gpt" else None
    stats = corpus.ReadStats()
    read_kw = {"skip_bad_lines": skip_bad_lines, "stats": stats}
    writers = {s: _SplitWriter(tmp, s, dtype) for s in SPLITS}
    counts = {"documents_read": 0, "documents_dropped": 0, "sentences_dropped": 0}
    n_workers = 0 if workers is None else int(workers)
    bar = tqdm(
        total=_input_bytes(files), unit="B", unit_scale=True, desc=f"prepare {mode} corpus",
        disable=not progress, dynamic_ncols=True, mininterval=0.5,
    )
    batches = _batches(files, mode, batch_docs, max_texts=max(4096, batch_docs * 64), read_kw=read_kw)
    try:
        with contextlib.closing(_tokenized(batches, tokenizer, dtype, n_workers)) as tokenized:
            for batch, (flat, lens) in tokenized:
                _store(batch, flat, lens, writers, val_fraction, sep, counts)
                bar.update(batch.nbytes)
                bar.set_postfix(docs=counts["documents_read"], tokens=writers["train"].n_tokens + writers["val"].n_tokens, refresh=False)
        bar.update(max(0, bar.total - bar.n))
        bar.close()
        splits = _finish_splits(writers, files, val_fraction)
    finally:
        bar.close()
        for w in writers.values():
            w.close()
    meta = {
        **_meta(files, tokenizer, key, mode, dtype, val_fraction, skip_bad_lines), "separator_id": sep,
        "splits": splits, "lines": stats.lines, "bad_lines": stats.bad_lines, **counts, "workers": n_workers,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _meta(files: list[Path], tokenizer: Any, key: str, mode: str, dtype: np.dtype, val_fraction: float,
          skip_bad_lines: bool) -> dict[str, Any]:
    """What a cache directory was built from (its ``meta.json``, with the counts added)."""
    return {
        "format": "pretune-shards", "format_version": FORMAT_VERSION, "complete": True, "key": key, "mode": mode,
        "dtype": dtype.name, "val_fraction": val_fraction, "skip_bad_lines": skip_bad_lines,
        "files": [{"path": str(f.resolve()), "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in files],
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "sha256": tokenizer_digest(tokenizer)},
    }


def _finish_splits(writers: dict[str, _SplitWriter], files: list[Path], val_fraction: float) -> dict[str, dict[str, int]]:
    """Check that both splits are usable (moving one document to val if it got none); finish them."""
    names = ", ".join(str(f) for f in files)
    if writers["train"].n_docs + writers["val"].n_docs == 0:
        raise PretuneError(f"no usable document in {names}: every line tokenized to nothing")
    if val_fraction > 0 and writers["val"].n_docs == 0:
        if writers["train"].n_docs < 2:
            raise PretuneError(
                f"{names}: only 1 document, so there is none left for a validation split; add documents "
                "(a blank line separates them) or pass --val-fraction 0"
            )
        tokens, lens = writers["train"].pop_last_document()
        writers["val"].append(tokens, lens, np.array([lens.size], np.int64))
    if writers["train"].n_docs == 0:
        raise PretuneError(f"{names}: every document went to the validation split; lower --val-fraction")
    return {s: w.finish() for s, w in writers.items()}


def _tokenized(
    batches: Iterator[_Batch], tokenizer: Any, dtype: np.dtype, workers: int
) -> Iterator[tuple[_Batch, tuple[np.ndarray, np.ndarray]]]:
    """Yield each batch with its tokens, in order, holding only a few batches in memory.

    ``workers == 0``: a thread reads ahead while this thread encodes (the Rust library releases
    the GIL and uses its own threads). Otherwise a spawn pool of single-threaded tokenizers, with at
    most ``2 * workers`` batches in flight.
    """
    if workers <= 0:
        for batch in _read_ahead(batches, depth=2):
            yield batch, _encode(tokenizer.backend, batch.texts, dtype)
        return
    ctx = mp.get_context("spawn")
    with _main_hidden():  # children need only pretune, never the caller's script
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer.backend.to_str(),))
    with pool:
        pending: deque[tuple[_Batch, Any]] = deque()
        for batch in batches:
            pending.append((batch, pool.apply_async(_worker_encode, (batch.texts, dtype.name))))
            batch.texts = []  # the worker has its copy; free ours
            if len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Hide ``__main__``'s file and spec while spawning, so children do not re-run the caller's
    script (which would recurse, or hang the pool, in a script without a ``__main__`` guard)."""
    main = sys.modules.get("__main__")
    saved = {a: getattr(main, a) for a in ("__file__", "__spec__") if hasattr(main, a)}
    try:
        if "__file__" in saved:
            del main.__file__
        if "__spec__" in saved:
            main.__spec__ = None
        yield
    finally:
        for a, v in saved.items():
            setattr(main, a, v)


def _read_ahead(items: Iterator[_Batch], depth: int) -> Iterator[_Batch]:
    """Run ``items`` in a background thread, ``depth`` items ahead; errors re-raise here."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as exc:  # handed to the consumer
            q.put(("error", exc))

    thread = threading.Thread(target=produce, name="pretune-corpus-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.1)
        thread.join()


def _store(
    batch: _Batch,
    flat: np.ndarray,
    lens: np.ndarray,
    writers: dict[str, _SplitWriter],
    val_fraction: float,
    sep: int | None,
    counts: dict[str, int],
) -> None:
    """Drop empty sentences and documents, add separators (gpt), route documents to their split."""
    n_docs = batch.doc_sizes.size
    counts["documents_read"] += n_docs
    if sep is not None:  # gpt: one text per document; end each non-empty one with the separator
        nonempty = lens > 0
        flat = np.insert(flat, np.cumsum(lens)[nonempty], np.asarray(sep, flat.dtype))
        lens = np.where(nonempty, lens + 1, 0)
    keep = lens > 0
    doc_of_text = np.repeat(np.arange(n_docs), batch.doc_sizes)
    kept_per_doc = np.bincount(doc_of_text, weights=keep, minlength=n_docs).astype(np.int64)
    counts["sentences_dropped"] += int((~keep).sum())
    counts["documents_dropped"] += int((kept_per_doc == 0).sum())
    val_doc = (
        is_val_document(np.arange(batch.first_doc, batch.first_doc + n_docs), val_fraction)
        if val_fraction > 0
        else np.zeros(n_docs, bool)
    )
    for split, in_split in (("train", ~val_doc), ("val", val_doc)):
        doc_mask = in_split & (kept_per_doc > 0)
        if not doc_mask.any():
            continue
        text_mask = keep & doc_mask[doc_of_text]
        tokens = flat[np.repeat(text_mask, lens)]
        writers[split].append(tokens, lens[text_mask], kept_per_doc[doc_mask])
