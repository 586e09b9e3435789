"""Decoding by hand: QA span choice over windows (tasks/qa.py:best_spans), word tags read at each
word's first sub-token (tasks/tagging.py:word_tags), and the metric edge cases that
tests/test_metrics.py does not cover, each against a value worked out in the comments."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from pretune.metrics import accuracy, entity_scores, f1_binary, matthews, pearson, qa_scores, spearman
from pretune.tasks.qa import QAExample, best_spans, qa_features
from pretune.tasks.tagging import TaggingExample, tagging_features, word_tags
from pretune.tokenizer import train_tokenizer

CONTEXT = "alpha beta gamma, delta epsilon"
# character spans of the five words: alpha 0-5, beta 6-10, gamma 11-16 (the comma 16-17 is a token of its
# own in a real tokenizer; here it is left out), delta 18-23, epsilon 24-31
WORDS = [(0, 5), (6, 10), (11, 16), (18, 23), (24, 31)]
QUESTION = 3  # [CLS] q [SEP]: the window's first context token is at position 3


def _window(example: int, words: range, start: list[float], end: list[float], around: float = 0.0) -> tuple[dict, torch.Tensor]:
    """A feature over ``words`` of the context and its (positions, 2) logits: ``start`` / ``end``
    for the context tokens, ``around`` on [CLS], the question and the final [SEP]."""
    n = len(words)
    logits = torch.full((QUESTION + n + 1, 2), around)
    logits[QUESTION : QUESTION + n, 0] = torch.tensor(start)
    logits[QUESTION : QUESTION + n, 1] = torch.tensor(end)
    return {"example": example, "context_start": QUESTION, "offsets": [WORDS[w] for w in words]}, logits


def _decode(windows: list[tuple[dict, torch.Tensor]], max_answer_len: int = 30, examples=None):
    examples = examples or [QAExample("q", "which?", CONTEXT, [], "test")]
    return best_spans(examples, [f for f, _ in windows], [lg for _, lg in windows], max_answer_len)


# --------------------------------------------------------------------------------------------
# QA: the best valid span over all windows of a question


def test_best_span_is_taken_over_all_windows_of_a_question() -> None:
    # window 1 (words 0-2): best start beta 2 + best end beta 2 = 4; window 2 (words 2-4): delta 3 + epsilon 3 = 6
    first = _window(0, range(0, 3), [0, 2, 0], [0, 2, 0])
    second = _window(0, range(2, 5), [0, 3, 0], [0, 0, 3])
    assert _decode([first, second])["q"] == ("delta epsilon", 18, 6.0)
    # the same windows in the other order: the same answer (the best wins, not the last)
    assert _decode([second, first])["q"] == ("delta epsilon", 18, 6.0)
    # the text is the context between the first token's start and the last token's end, punctuation included
    across = _window(0, range(0, 5), [0, 0, 5, 0, 0], [0, 0, 0, 5, 0])
    assert _decode([across])["q"] == ("gamma, delta", 11, 10.0)


def test_best_span_respects_max_answer_len() -> None:
    # start logits [10, 6, 0, 0, 0], end logits [0, 0, 5, 10, 0]:
    #   alpha..delta (4 tokens) 10 + 10 = 20; beta..delta (3) 6 + 10 = 16; alpha..gamma (3) 10 + 5 = 15
    #   single tokens: alpha 10 + 0, beta 6, gamma 5, delta 0 + 10 = 10
    window = _window(0, range(5), [10, 6, 0, 0, 0], [0, 0, 5, 10, 0])
    assert _decode([window], max_answer_len=4)["q"] == ("alpha beta gamma, delta", 0, 20.0)  # exactly 4: allowed
    assert _decode([window], max_answer_len=3)["q"] == ("beta gamma, delta", 6, 16.0)
    # one token: alpha and delta tie at 10; the first start wins (as run_squad.py's stable sort keeps it)
    assert _decode([window], max_answer_len=1)["q"] == ("alpha", 0, 10.0)


def test_best_span_never_ends_before_it_starts_nor_leaves_the_context() -> None:
    # start [0, 0, 1, 10, 0], end [10, 0, 0, 1, 0]: delta..alpha would score 20 but ends first;
    # valid: delta..delta 11, alpha..alpha 10, gamma..delta 2
    window = _window(0, range(5), [0, 0, 1, 10, 0], [10, 0, 0, 1, 0])
    assert _decode([window])["q"] == ("delta", 18, 11.0)
    # [CLS], the question and [SEP] carry the highest logits (100) but are not context: never an answer
    loud = _window(0, range(5), [0, 0, 1, 10, 0], [10, 0, 0, 1, 0], around=100.0)
    assert _decode([loud])["q"] == ("delta", 18, 11.0)


def test_best_span_across_windows_keeps_the_first_on_a_tie_and_scores_a_question_without_windows() -> None:
    # both windows' best is 4 (beta in the first, delta in the second): the first window's is kept
    first = _window(0, range(0, 3), [0, 2, 0], [0, 2, 0])
    second = _window(0, range(2, 5), [0, 2, 0], [0, 2, 0])
    assert _decode([first, second])["q"] == ("beta", 6, 4.0)
    examples = [QAExample("q", "?", CONTEXT, [], "a"), QAExample("r", "?", CONTEXT, [], "b")]
    empty = ({"example": 1, "context_start": QUESTION, "offsets": []}, torch.zeros(QUESTION + 1, 2))
    got = _decode([first, empty], examples=examples)
    assert got["q"] == ("beta", 6, 4.0) and got["r"] == ("", -1, -math.inf)


def test_windows_from_qa_features_decode_back_to_the_answer(tmp_path: Path) -> None:
    """Real windows (doc_stride) and offsets from the tokenizer: logits peaking on the answer's
    tokens, in whichever window holds it, decode to exactly the answer's text and offset."""
    words = [f"w{i}" for i in range(40)]
    context = " ".join(words[:25]) + " the river thames " + " ".join(words[25:])
    (tmp_path / "corpus.txt").write_text((context + "\n which river ?\n") * 20, encoding="utf-8")
    tok = train_tokenizer([tmp_path / "corpus.txt"], "wordpiece", 200, lowercase=True, show_progress=False)
    answer = "river thames"
    example = QAExample("q", "which river?", context, [(answer, context.index(answer))], "test")
    fs = qa_features(tok, [example], max_seq_len=24, doc_stride=8)
    assert len(fs.features) > 3  # the context needs several windows
    logits = []
    for feat in fs.features:
        lg = torch.zeros(len(feat["input_ids"]), 2)
        for k, (s, e) in enumerate(feat["offsets"]):
            text = context[s:e]
            lg[feat["context_start"] + k, 0] += 5.0 * (text == "river")
            lg[feat["context_start"] + k, 1] += 5.0 * (text == "thames")
        logits.append(lg)
    assert best_spans([example], fs.features, logits, 30)["q"] == (answer, context.index(answer), 10.0)
    # with max_answer_len 1 the two-token answer is not allowed: one of its tokens alone scores 5
    text, start, score = best_spans([example], fs.features, logits, 1)["q"]
    assert text in ("river", "thames") and score == 5.0 and context[start : start + len(text)] == text


# --------------------------------------------------------------------------------------------
# Tagging: a tag per word, read at its first sub-token


def test_word_tags_read_the_first_sub_token_and_fill_cut_words() -> None:
    labels = ["O", "B-LOC", "I-LOC"]
    # positions: 0 [CLS] | word 0 = 1, 2 | word 1 = 3 | 4 [SEP]; word 2 was cut off (-1)
    feat = {"word_starts": [1, 3, -1]}
    logits = torch.tensor([[9, 0, 0], [0, 5, 1], [0, 1, 5], [3, 1, 2], [9, 0, 0]], dtype=torch.float)
    # word 0: position 1 -> B-LOC (its second piece says I-LOC and is ignored); word 1: O; word 2: cut -> O
    assert word_tags([feat], [logits], labels) == [["B-LOC", "O", "O"]]
    # without an O tag a cut word gets the first tag; a tie goes to the first of the tied tags
    tied = torch.tensor([[0, 0], [2, 2], [1, 3]], dtype=torch.float)
    assert word_tags([{"word_starts": [1, 2, -1]}], [tied], ["B-PER", "I-PER"]) == [["B-PER", "I-PER", "B-PER"]]


def test_tagging_features_and_word_tags_agree_on_split_words(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat\n" * 50 + "the mats\n" * 3, encoding="utf-8")
    tok = train_tokenizer([tmp_path / "corpus.txt"], "wordpiece", 60, lowercase=True, show_progress=False)
    example = TaggingExample(["the", "cats", "sat"], ["O", "B-X", "O"], "test")
    feat = tagging_features(tok, [example], 32, ["O", "B-X"], False, "bert").features[0]
    pieces = tok.tokenize("cats")
    assert pieces == ["cat", "##s"]  # the word is split: its tag sits on its first piece only
    starts = feat["word_starts"]
    assert starts == [1, 2, 2 + len(pieces)]
    assert feat["tags"] == [-100, 0, 1, *[-100] * (len(pieces) - 1), 0, -100]
    # logits saying B-X on every piece of "cats" after the first, O elsewhere: read at the first, it is O
    logits = torch.zeros(len(feat["input_ids"]), 2)
    logits[:, 0] = 1.0
    logits[3 : 2 + len(pieces), :] = torch.tensor([0.0, 1.0])
    assert word_tags([feat], [logits], ["O", "B-X"]) == [["O", "O", "O"]]
    logits[2] = torch.tensor([0.0, 1.0])
    assert word_tags([feat], [logits], ["O", "B-X"]) == [["O", "B-X", "O"]]


# --------------------------------------------------------------------------------------------
# Metric edge cases not in tests/test_metrics.py


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args, **kwargs)
    return value, [str(w.message) for w in caught]


def test_labels_with_a_single_class() -> None:
    # references all 1, predictions [1, 1, 0]: 2 of 3 agree
    assert accuracy([1, 1, 0], [1, 1, 1]) == pytest.approx(2 / 3)
    # F1 of class 1: TP = 2, FP = 0, FN = 1 -> 2TP / (2TP + FP + FN) = 4/5
    assert f1_binary([1, 1, 0], [1, 1, 1]) == pytest.approx(0.8)
    # all right, one class on both sides: TP = 3 -> F1 = 1; MCC's 0/0 is 0.0 by the documented
    # convention, with no warning about the confusion matrix's shape (a user cannot act on it)
    assert f1_binary([1, 1, 1], [1, 1, 1]) == 1.0
    assert _quiet(matthews, [1, 1, 1], [1, 1, 1]) == (0.0, [])
    assert _quiet(matthews, [0, 0], [0, 0]) == (0.0, [])


def test_correlation_with_ties_on_both_sides_and_two_points() -> None:
    # x = [1, 1, 2, 2] ranks [1.5, 1.5, 3.5, 3.5]; y = [1, 2, 2, 3] ranks [1, 2.5, 2.5, 4]; both means 2.5
    # dx = [-1, -1, 1, 1], dy = [-1.5, 0, 0, 1.5]: sum dx dy = 3, sum dx^2 = 4, sum dy^2 = 4.5 -> 3/sqrt(18)
    assert spearman([1, 1, 2, 2], [1, 2, 2, 3]) == pytest.approx(3 / math.sqrt(18))
    # Pearson of the raw values: x mean 1.5, dx = [-.5, -.5, .5, .5]; y mean 2, dy = [-1, 0, 0, 1]:
    # sum dx dy = 1, sum dx^2 = 1, sum dy^2 = 2 -> 1/sqrt(2) (here equal to Spearman's 3/sqrt(18))
    assert pearson([1, 1, 2, 2], [1, 2, 2, 3]) == pytest.approx(1 / math.sqrt(2))
    assert pearson([1, 2], [2, 1]) == pytest.approx(-1.0)  # two points are always on a line


def test_qa_questions_without_gold_and_predictions_without_a_question() -> None:
    # q1: "a cat" vs "cat": SQuAD drops "a" -> EM 1, F1 1; q2 has no gold answer: 0 (the scripts would crash);
    # q3 is not a question of the gold set: ignored. Means over q1, q2: EM 0.5, F1 0.5
    assert qa_scores({"q1": "a cat", "q2": "b", "q3": "x"}, {"q1": ["cat"], "q2": []}) == {"exact_match": 0.5, "f1": 0.5}
    # an empty answer against gold ["the", "cat"]: normalised "" == "" for "the" -> EM 1; F1 0 against both
    assert qa_scores({"q": ""}, {"q": ["the", "cat"]}) == {"exact_match": 1.0, "f1": 0.0}
    # KorQuAD: an answer of quotes and brackets only normalises to "" as well
    assert qa_scores({"q": "《 》"}, {"q": ["토지"]}, style="korquad") == {"exact_match": 0.0, "f1": 0.0}


def test_entities_on_edges() -> None:
    # gold has no entity, one predicted: P = 0/1 = 0, R = 0/0 -> 0, F1 0; and the other way round
    assert _quiet(entity_scores, [["B-PER", "O"]], [["O", "O"]]) == ({"precision": 0.0, "recall": 0.0, "f1": 0.0}, [])
    assert _quiet(entity_scores, [["O", "O"]], [["B-PER", "O"]]) == ({"precision": 0.0, "recall": 0.0, "f1": 0.0}, [])
    # I-LOC right after B-PER opens a LOC (conlleval): PER(0) and LOC(1) match gold B-PER B-LOC -> 1
    assert entity_scores([["B-PER", "I-LOC"]], [["B-PER", "B-LOC"]])["f1"] == 1.0
    # an entity closing the sentence counts; B-LOC B-LOC is two entities, not one:
    # gold LOC(1-2) and LOC(3); predicted LOC(1), LOC(2), LOC(3): TP 1 (LOC(3)), P = 1/3, R = 1/2, F1 = 0.4
    s = entity_scores([["O", "B-LOC", "B-LOC", "B-LOC"]], [["O", "B-LOC", "I-LOC", "B-LOC"]])
    assert s == {"precision": pytest.approx(1 / 3), "recall": 0.5, "f1": pytest.approx(0.4)}
