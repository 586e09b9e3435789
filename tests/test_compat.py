"""The oldest versions pyproject.toml promises, where they lack what newer ones have: torch 2.4/2.5
keep FSDP2 in torch.distributed._composable.fsdp, tokenizers 0.19 has no encode_batch_fast.

torch 2.4 cannot be installed on this machine (PyPI has only CUDA builds of it), so these tests
simulate its layout rather than claim it was run; ``make minimums`` runs the other declared
minimum versions for real (tests/minimums.py)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from pretune.data import shards
from pretune.tokenizer import Tokenizer, encode_ids, train_tokenizer
from pretune.train import distributed


def test_fsdp2_is_found_where_torch_2_4_and_2_5_keep_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.fsdp import FSDPModule, fully_shard

    assert distributed.fsdp2() == (fully_shard, FSDPModule)  # this torch: the public module
    old_public = types.ModuleType("torch.distributed.fsdp")  # 2.4/2.5: FSDP1 only, no fully_shard
    composable = types.ModuleType("torch.distributed._composable.fsdp")

    class OldFSDPModule:
        pass

    def old_fully_shard(module, **kw):
        return module

    composable.FSDPModule, composable.fully_shard = OldFSDPModule, old_fully_shard
    monkeypatch.setitem(sys.modules, "torch.distributed.fsdp", old_public)
    monkeypatch.setitem(sys.modules, "torch.distributed._composable.fsdp", composable)
    assert distributed.fsdp2() == (old_fully_shard, OldFSDPModule)
    assert distributed._is_sharded(OldFSDPModule()) and not distributed._is_sharded(object())


class WithoutFastBatch:
    """A tokenizers backend as 0.19 has it: every method but encode_batch_fast."""

    def __init__(self, backend) -> None:
        self._backend = backend

    def __getattr__(self, name: str):
        if name == "encode_batch_fast":
            raise AttributeError(name)
        return getattr(self._backend, name)


def test_encoding_without_encode_batch_fast_gives_the_same_ids(tmp_path) -> None:
    texts = ["the cat sat on the mat", "눈이 와서 너무 좋다", "", "a dog ran far away, is it big?"]
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(texts * 20) + "\n", encoding="utf-8")
    tok = train_tokenizer([corpus], "wordpiece", 80, show_progress=False)
    old = WithoutFastBatch(tok.backend)
    assert not hasattr(old, "encode_batch_fast")
    ids = encode_ids(tok.backend, texts)
    assert ids == encode_ids(old, texts) and ids[0] and ids[2] == []
    legacy = Tokenizer(tok.backend)
    legacy.backend = old
    assert legacy.encode_batch(texts) == tok.encode_batch(texts) == ids
    flat, lens = shards._encode(old, texts, np.dtype(np.uint16))  # corpus preparation
    assert lens.tolist() == [len(x) for x in ids] and flat.tolist() == [t for x in ids for t in x]


def test_libraries_deprecation_notices_are_not_shown_to_users(capsys: pytest.CaptureFixture) -> None:
    """Found by make minimums: matplotlib 3.7.0 under pyparsing 3.3 warns 'parseString deprecated'
    for every plot; the command line shows warnings meant for users only."""
    import warnings

    from pretune.cli import plain_warnings

    with plain_warnings("pretrain"):
        warnings.warn("'parseString' deprecated - use 'parse_string'", DeprecationWarning, stacklevel=1)
        warnings.warn("soon gone", PendingDeprecationWarning, stacklevel=1)
        warnings.warn("12 examples were truncated", UserWarning, stacklevel=1)
    assert capsys.readouterr().err == "pretune pretrain: warning: 12 examples were truncated\n"
