"""Metrics against values computed by hand on small inputs."""

from __future__ import annotations

import math

import pytest

from pretune.errors import PretuneError
from pretune.metrics import (
    accuracy,
    compute_metrics,
    entity_scores,
    f1_binary,
    korquad_char_f1,
    matthews,
    normalize_answer,
    normalize_korquad,
    pearson,
    spearman,
    squad_scores,
)

# pred vs ref: TP = 2 (positions 0, 3), TN = 1 (position 1), FP = 1 (position 2), FN = 0
PRED = [1, 0, 1, 1]
REF = [1, 0, 0, 1]


def test_accuracy():
    assert accuracy(PRED, REF) == pytest.approx(3 / 4)  # 3 of 4 agree


def test_f1_binary():
    # P = TP/(TP+FP) = 2/3, R = TP/(TP+FN) = 2/2 = 1, F1 = 2PR/(P+R) = (4/3)/(5/3) = 0.8
    assert f1_binary(PRED, REF) == pytest.approx(0.8)
    # class 0 as positive: TP0 = 1, FP0 = 0, FN0 = 1 -> P = 1, R = 1/2, F1 = 2/3
    assert f1_binary(PRED, REF, pos_label=0) == pytest.approx(2 / 3)
    assert f1_binary([0, 0], [0, 0]) == 0.0  # no positives anywhere: 0, not an error


def test_matthews():
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2*1 - 1*0) / sqrt(3*2*2*1) = 2/sqrt(12)
    assert matthews(PRED, REF) == pytest.approx(2 / math.sqrt(12))
    assert matthews([1, 1, 1, 1], REF) == 0.0  # constant predictions: 0 by convention
    # pred [1,1,0,0,1] vs ref [1,0,0,1,1]: TP = 2, FP = 1, TN = 1, FN = 1
    # MCC = (2*1 - 1*1) / sqrt((2+1)(2+1)(1+1)(1+1)) = 1/6
    assert matthews([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(1 / 6)


def test_matthews_perfect_and_inverse():
    assert matthews(REF, REF) == pytest.approx(1.0)
    assert matthews([1 - r for r in REF], REF) == pytest.approx(-1.0)


def test_pearson():
    # x = [1,2,3], y = [1,2,4]: dx = [-1,0,1], dy = [-4/3,-1/3,5/3]
    # sum dx*dy = 4/3 + 0 + 5/3 = 3; sum dx^2 = 2; sum dy^2 = (16+1+25)/9 = 14/3
    # r = 3 / sqrt(2 * 14/3) = 3 / sqrt(28/3)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(28 / 3))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman():
    # ranks x = [1,2,3,4], y = [1,3,2,4]: d = [0,-1,1,0], sum d^2 = 2, rho = 1 - 6*2/(4*(16-1)) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [1, 2, 4]) == pytest.approx(1.0)  # monotone, not linear


def test_correlation_degenerate_inputs_return_zero_with_warning():
    with pytest.warns(RuntimeWarning, match="constant"):
        assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    with pytest.warns(RuntimeWarning, match="constant"):
        assert spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) == 0.0
    with pytest.warns(RuntimeWarning, match="fewer than two"):
        assert pearson([1.0], [2.0]) == 0.0


def test_length_mismatch_is_a_bug():
    with pytest.raises(ValueError):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_squad_normalisation():
    assert normalize_answer("The Cat!") == "cat"
    assert normalize_answer("  An  apple, the pie. ") == "apple pie"
    assert normalize_answer("Theater") == "theater"  # articles only as whole words
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("A") == ""


def test_squad_exact_match_and_f1():
    gold = {"q1": ["dog", "red cat"], "q2": ["a red cat sat"]}
    pred = {"q1": "The red cat.", "q2": "the big red cat"}
    # q1: normalised "red cat" == gold 2 -> EM 1, F1 1 (max over the gold answers)
    # q2: tokens [big, red, cat] vs [red, cat, sat]: common 2, P = R = 2/3, F1 = 2/3; EM 0
    # means: EM (1 + 0)/2 = 0.5, F1 (1 + 2/3)/2 = 5/6
    scores = squad_scores(pred, gold)
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(5 / 6)


def test_squad_missing_prediction_scores_zero():
    with pytest.warns(UserWarning, match="1 of 2 questions have no prediction"):
        scores = squad_scores({"q1": "cat"}, {"q1": ["the cat"], "q2": ["dog"]})
    assert scores == {"exact_match": pytest.approx(0.5), "f1": pytest.approx(0.5)}


def test_korquad_char_f1():
    assert normalize_korquad("《임종석》") == "임종석"
    assert normalize_korquad("(A) 'b'") == "a b"
    # pred "1989년 2월" -> chars 1,9,8,9,년,2,월 (7); gold "1989년 2월 15일" -> 1,9,8,9,년,2,월,1,5,일 (10)
    # common = 7 -> P = 7/7, R = 7/10, F1 = 2*1*0.7/1.7 = 14/17
    gold = {"q": ["1989년 2월 15일"]}
    assert korquad_char_f1({"q": "1989년 2월"}, gold) == pytest.approx(14 / 17)
    # token-level SQuAD F1 on the same pair: [1989년, 2월] vs [1989년, 2월, 15일] -> P 1, R 2/3, F1 0.8
    assert squad_scores({"q": "1989년 2월"}, gold)["f1"] == pytest.approx(0.8)
    assert korquad_char_f1({"q": "(임종석)"}, {"q": ["임종석"]}) == 1.0


def test_entity_scores_boundaries_and_types():
    # gold entities: PER(0-1), LOC(3); predicted: PER(0) (wrong right boundary), LOC(3) (right)
    # TP = 1 -> P = 1/2, R = 1/2, F1 = 1/2
    s = entity_scores([["B-PER", "O", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]])
    assert s == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    # gold PER(0); predicted PER(0) and ORG(2): TP = 1, P = 1/2, R = 1/1, F1 = 2*0.5*1/1.5 = 2/3
    s = entity_scores([["B-PER", "O", "B-ORG", "O"]], [["B-PER", "O", "O", "O"]])
    assert s["precision"] == pytest.approx(0.5) and s["recall"] == 1.0 and s["f1"] == pytest.approx(2 / 3)
    # right span, wrong type counts as wrong
    assert entity_scores([["B-LOC"]], [["B-PER"]])["f1"] == 0.0


def test_entity_scores_conlleval_mode():
    # default (conlleval) mode: I-PER after O opens an entity, so it matches B-PER at the same place
    assert entity_scores([["O", "I-PER"]], [["O", "B-PER"]])["f1"] == 1.0
    assert entity_scores([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError):
        entity_scores([["O"]], [["O", "O"]])


def test_compute_metrics_dispatches_by_input_kind():
    assert compute_metrics(["mcc", "accuracy", "f1"], PRED, REF) == {
        "mcc": pytest.approx(2 / math.sqrt(12)),
        "accuracy": pytest.approx(0.75),
        "f1": pytest.approx(0.8),
    }
    qa = compute_metrics(["exact_match", "f1", "char_f1"], {"q": "the cat"}, {"q": ["cat"]})
    # KorQuAD keeps English articles: chars "thecat" (6) vs "cat" (3): common 3, P = 1/2, R = 1, F1 = 2/3
    assert qa == {"exact_match": 1.0, "f1": 1.0, "char_f1": pytest.approx(2 / 3)}
    tags = compute_metrics(["f1"], [["B-PER", "O", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]])
    assert tags == {"f1": 0.5}
    assert compute_metrics(["pearson", "spearman"], [1, 2, 3], [1, 2, 4])["spearman"] == pytest.approx(1.0)


def test_compute_metrics_unknown_name():
    with pytest.raises(PretuneError, match="unknown label metric.*bleu.*accuracy"):
        compute_metrics(["bleu"], PRED, REF)
    with pytest.raises(PretuneError, match="question answering"):
        compute_metrics(["mcc"], {"q": "a"}, {"q": ["a"]})
