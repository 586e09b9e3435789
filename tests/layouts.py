"""Checks of fine-tuning input layouts shared by several test modules."""

from __future__ import annotations

from typing import Any


def assert_gpt_tagging_layout(run: Any) -> None:
    """A GPT tagging run's features: ``<|start|> sentence <|extract|>`` with the sentence encoded
    exactly as the tokenizer encodes the joined words (each word after the first as in running
    text: byte-level BPE's leading space, SentencePiece's boundary mark), each word's pieces
    decoding to the word, and each word's tag on its first piece."""
    tok = run.tokenizer
    assert len(run.train_features.features) == len(run.train_examples)
    for feat in run.train_features.features:
        words = run.train_examples[feat["example"]].tokens
        ids = feat["input_ids"]
        assert ids[0] == tok.start_id and ids[-1] == tok.extract_id
        assert ids[1:-1] == tok.encode(" ".join(words))
        bounds = [*feat["word_starts"], len(ids) - 1]
        pieces = [tok.decode(ids[a:b]) for a, b in zip(bounds, bounds[1:])]
        if tok.kind == "bpe":  # byte-level: the space is part of the word's first piece
            assert pieces == [words[0], *(" " + w for w in words[1:])]
        else:
            assert [p.strip() for p in pieces] == words
        assert [p for p, t in enumerate(feat["tags"]) if t != -100] == feat["word_starts"]
