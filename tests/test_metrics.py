"""Metrics against values computed by hand on small inputs and edge cases."""

from __future__ import annotations

import json
import math
import warnings

import pytest

from pretune.errors import PretuneError
from pretune.metrics import (
    QA_STYLES,
    accuracy,
    compute_metrics,
    entity_scores,
    f1_binary,
    matthews,
    normalize_korquad,
    normalize_squad,
    pearson,
    qa_scores,
    spearman,
)

# pred vs ref: TP = 2 (positions 0, 3), TN = 1 (position 1), FP = 1 (position 2), FN = 0
PRED = [1, 0, 1, 1]
REF = [1, 0, 0, 1]


def _recorded(fn, *args, **kwargs):
    """Call ``fn`` and return (its result, every warning it raised), none filtered out."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    return result, caught


# --------------------------------------------------------------------------------------------
# Labels


def test_accuracy():
    assert accuracy(PRED, REF) == pytest.approx(3 / 4)  # 3 of 4 agree


def test_f1_binary():
    # P = TP/(TP+FP) = 2/3, R = TP/(TP+FN) = 2/2 = 1, F1 = 2PR/(P+R) = (4/3)/(5/3) = 0.8
    assert f1_binary(PRED, REF) == pytest.approx(0.8)
    # class 0 as positive: TP0 = 1, FP0 = 0, FN0 = 1 -> P = 1, R = 1/2, F1 = 2/3
    assert f1_binary(PRED, REF, pos_label=0) == pytest.approx(2 / 3)
    # no positives anywhere: F1 = 0/0, reported as 0 without scikit-learn's "ill-defined" warning
    assert _recorded(f1_binary, [0, 0], [0, 0]) == (0.0, [])


def test_f1_binary_positive_class_never_predicted():
    # pred all 0 vs REF: TP = 0, FP = 0 (precision 0/0), FN = 2 -> F1 = 2TP/(2TP+FP+FN) = 0/2 = 0
    f1, caught = _recorded(f1_binary, [0, 0, 0, 0], REF)
    assert f1 == 0.0 and caught == []
    # predicted but never present: TP = 0, FP = 1, FN = 0 -> F1 = 0/1 = 0
    assert f1_binary([1, 0], [0, 0]) == 0.0


def test_matthews():
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2*1 - 1*0) / sqrt(3*2*2*1) = 2/sqrt(12)
    assert matthews(PRED, REF) == pytest.approx(2 / math.sqrt(12))
    # pred [1,1,0,0,1] vs ref [1,0,0,1,1]: TP = 2, FP = 1, TN = 1, FN = 1
    # MCC = (2*1 - 1*1) / sqrt((2+1)(2+1)(1+1)(1+1)) = 1/6
    assert matthews([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(1 / 6)


def test_matthews_single_class_is_zero_by_convention():
    # constant predictions [1,1,1,1] vs REF [1,0,0,1]: TP = 2, FP = 2, TN = FN = 0, so (TN+FN) = 0 and
    # the denominator is 0; scikit-learn (and GLUE's CoLA score) report 0.0, not undefined
    assert matthews([1, 1, 1, 1], REF) == 0.0
    # a single class among the references: pred [1,0,1] vs ref [1,1,1]: TP = 2, FN = 1, TN = FP = 0,
    # (TN+FP) = 0 -> 0/0 -> 0.0; without the convention accuracy 2/3 would suggest some signal
    assert matthews([1, 0, 1], [1, 1, 1]) == 0.0


def test_matthews_perfect_and_inverse():
    assert matthews(REF, REF) == pytest.approx(1.0)
    assert matthews([1 - r for r in REF], REF) == pytest.approx(-1.0)


def test_length_mismatch_is_a_bug():
    with pytest.raises(ValueError):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError):
        accuracy([], [])


# --------------------------------------------------------------------------------------------
# Correlation


def test_pearson():
    # x = [1,2,3], y = [1,2,4]: dx = [-1,0,1], dy = [-4/3,-1/3,5/3]
    # sum dx*dy = 4/3 + 0 + 5/3 = 3; sum dx^2 = 2; sum dy^2 = (16+1+25)/9 = 14/3
    # r = 3 / sqrt(2 * 14/3) = 3 / sqrt(28/3)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(3 / math.sqrt(28 / 3))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = [1,2,3,4], y = [2,1,4,3]: dx = [-1.5,-0.5,0.5,1.5], dy = [-0.5,-1.5,1.5,0.5]
    # sum dx*dy = 0.75 * 4 = 3; sum dx^2 = sum dy^2 = 5; r = 3/5
    assert pearson([1, 2, 3, 4], [2, 1, 4, 3]) == pytest.approx(0.6)


def test_spearman():
    # ranks x = [1,2,3,4], y = [1,3,2,4]: d = [0,-1,1,0], sum d^2 = 2, rho = 1 - 6*2/(4*(16-1)) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [1, 2, 4]) == pytest.approx(1.0)  # monotone, not linear


def test_spearman_ties_take_average_ranks():
    # x = [1,2,2,3] ranks [1, 2.5, 2.5, 4] (the tied 2s share ranks 2 and 3); y = [1,3,2,4] ranks [1,3,2,4]
    # Pearson of the ranks: means 2.5; dx = [-1.5,0,0,1.5], dy = [-1.5,0.5,-0.5,1.5]
    # sum dx*dy = 2.25 + 2.25 = 4.5; sum dx^2 = 4.5; sum dy^2 = 5; rho = 4.5/sqrt(22.5) = sqrt(0.9)
    # (the no-ties shortcut 1 - 6*sum d^2/(n(n^2-1)) = 1 - 6*0.5/60 = 0.95 would be wrong here)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))


@pytest.mark.parametrize(
    ("fn", "predictions", "references", "reason"),
    [
        (
            pearson,
            [2.5, 2.5, 2.5],
            [1.0, 2.0, 3.0],
            "Pearson correlation is undefined: the predictions are constant (all 2.5)",
        ),
        (
            spearman,
            [1.0, 2.0, 3.0],
            [4.0, 4.0, 4.0],
            "Spearman correlation is undefined: the references are constant (all 4)",
        ),
        (
            pearson,
            [1.0, 1.0],
            [2.0, 2.0],
            "the predictions are constant (all 1) and the references are constant (all 2)",
        ),
        (pearson, [1.0], [2.0], "there is only 1 example"),
        (spearman, [1.0, math.nan, 3.0], [1.0, 2.0, 3.0], "the predictions contain NaN or infinity"),
    ],
)
def test_undefined_correlation_is_none_with_one_warning(fn, predictions, references, reason):
    value, caught = _recorded(fn, predictions, references)
    assert value is None
    assert len(caught) == 1 and caught[0].category is RuntimeWarning
    message = str(caught[0].message)
    assert reason in message and message.endswith("reported as null") and "\n" not in message


# --------------------------------------------------------------------------------------------
# Extractive QA


def test_qa_styles_name_the_official_scripts():
    assert QA_STYLES == {
        "squad": "SQuAD v1.1 official evaluation",
        "korquad": "KorQuAD 1.0 official evaluation",
    }


def test_squad_normalisation():
    assert normalize_squad("The Cat!") == "cat"
    assert normalize_squad("  An  apple, the pie. ") == "apple pie"
    assert normalize_squad("Theater") == "theater"  # articles only as whole words
    assert normalize_squad("U.S.A.") == "usa"
    assert normalize_squad("A") == ""
    assert normalize_squad("《토지》") == "《토지》"  # not ASCII punctuation: kept


def test_korquad_normalisation():
    assert normalize_korquad("《임종석》") == "임종석"
    assert normalize_korquad("(A) 'b'") == "a b"
    assert normalize_korquad('"토지"의') == "토지 의"  # quotes become spaces, not nothing
    assert normalize_korquad("The Beatles!") == "the beatles"  # articles kept, "!" dropped


def test_squad_exact_match_and_f1():
    gold = {"q1": ["dog", "red cat"], "q2": ["a red cat sat"]}
    pred = {"q1": "The red cat.", "q2": "the big red cat"}
    # q1: normalised "red cat" == gold 2 -> EM 1, F1 1 (max over the gold answers)
    # q2: tokens [big, red, cat] vs [red, cat, sat]: common 2, P = R = 2/3, F1 = 2/3; EM 0
    # means: EM (1 + 0)/2 = 0.5, F1 (1 + 2/3)/2 = 5/6
    scores = qa_scores(pred, gold)
    assert scores["exact_match"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(5 / 6)


@pytest.mark.parametrize(
    ("pred", "gold", "squad", "korquad"),
    [
        # 《》 are not in string.punctuation: SQuAD compares "토지" with "《토지》"; KorQuAD spaces them out
        ("토지", "《토지》", (0.0, 0.0), (1.0, 1.0)),
        # SQuAD drops "the"; KorQuAD keeps it: chars "beatles" (7) all in "thebeatles" (10):
        # P = 1, R = 7/10, F1 = 1.4/1.7 = 14/17
        ("Beatles", "The Beatles", (1.0, 1.0), (0.0, 14 / 17)),
        # particle: tokens [서울에서] vs [서울] share nothing; chars 서,울,에,서 vs 서,울 share 서, 울:
        # P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
        ("서울에서", "서울", (0.0, 0.0), (0.0, 2 / 3)),
        # SQuAD deletes the quotes ("토지의"); KorQuAD turns them into spaces ("토지 의" != "토지의")
        # but its F1 ignores spaces, so the characters match exactly
        ('"토지"의', "토지의", (1.0, 1.0), (0.0, 1.0)),
        # tokens [1989년, 2월] vs [1989년, 2월, 15일]: P = 1, R = 2/3, F1 = 0.8
        # chars 1,9,8,9,년,2,월 (7) vs 1,9,8,9,년,2,월,1,5,일 (10): P = 1, R = 7/10, F1 = 14/17
        ("1989년 2월", "1989년 2월 15일", (0.0, 0.8), (0.0, 14 / 17)),
    ],
)
def test_squad_and_korquad_disagree(pred, gold, squad, korquad):
    for style, (em, f1) in (("squad", squad), ("korquad", korquad)):
        scores = qa_scores({"q": pred}, {"q": [gold]}, style=style)
        assert scores == {"exact_match": em, "f1": pytest.approx(f1)}, style


def test_qa_max_over_gold_answers_mean_over_questions():
    gold = {"q1": ["서울", "서울에서 열린"], "q2": ["토지"], "q3": ["《토지》", "토지 3부"]}
    pred = {"q1": "서울에서", "q2": "박경리", "q3": "토지"}
    # KorQuAD q1: vs 서울 2/3 (above); vs 서울에서열린 (6 chars, all 4 predicted ones in it): P 1, R 4/6,
    #   F1 = 2 * (2/3) / (5/3) = 4/5 -> max 4/5, EM 0. q2: nothing shared, 0. q3: 《토지》 -> 토지, EM 1, F1 1
    #   means: EM 1/3, F1 (4/5 + 0 + 1)/3 = 0.6
    assert qa_scores(pred, gold, style="korquad") == {
        "exact_match": pytest.approx(1 / 3),
        "f1": pytest.approx(0.6),
    }
    # SQuAD q1: vs [서울] 0; vs [서울에서, 열린]: P 1, R 1/2, F1 2/3. q2: 0.
    #   q3: vs [《토지》] 0; vs [토지, 3부]: P 1, R 1/2, F1 2/3. EM 0 everywhere. F1 (2/3 + 0 + 2/3)/3 = 4/9
    assert qa_scores(pred, gold, style="squad") == {"exact_match": 0.0, "f1": pytest.approx(4 / 9)}


@pytest.mark.parametrize("style", sorted(QA_STYLES))
def test_qa_empty_prediction_scores_zero(style):
    assert qa_scores({"q": ""}, {"q": ["토지"]}, style=style) == {"exact_match": 0.0, "f1": 0.0}


def test_qa_empty_normalised_answers_keep_the_official_quirk():
    # both official scripts: "" == "" gives EM 1, but F1 counts shared tokens and there are none: 0
    assert qa_scores({"q": ""}, {"q": ["The"]}, style="squad") == {"exact_match": 1.0, "f1": 0.0}
    assert qa_scores({"q": "《》"}, {"q": ["()"]}, style="korquad") == {"exact_match": 1.0, "f1": 0.0}


@pytest.mark.parametrize("style", sorted(QA_STYLES))
def test_qa_missing_prediction_scores_zero(style):
    (scores, caught) = _recorded(qa_scores, {"q1": "cat"}, {"q1": ["cat"], "q2": ["dog"]}, style=style)
    assert scores == {"exact_match": 0.5, "f1": 0.5}  # q1 perfect, q2 unanswered: (1 + 0)/2
    assert [str(w.message) for w in caught] == ["1 of 2 questions have no prediction; they score 0"]


def test_qa_unknown_style():
    with pytest.raises(PretuneError, match="unknown QA evaluation style 'korquad2'.*squad.*korquad"):
        qa_scores({"q": "a"}, {"q": ["a"]}, style="korquad2")


# --------------------------------------------------------------------------------------------
# Tagging


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


def test_entity_scores_hand_made_sentences():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"], ["B-MISC", "I-MISC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "I-ORG"], ["B-MISC", "O", "I-MISC"]]
    # gold entities (4): PER(0-1), LOC(3), ORG(5); MISC(0-1)
    # predicted (5): PER(0-1) right; ORG(3) type mismatch; ORG(5) opened by I- after O, right;
    #   MISC(0) boundary mismatch; MISC(2) opened by I- after O, not in gold
    # TP = 2 -> P = 2/5, R = 2/4, F1 = 2 * 0.4 * 0.5 / 0.9 = 4/9
    s = entity_scores(pred, gold)
    assert s == {"precision": pytest.approx(0.4), "recall": pytest.approx(0.5), "f1": pytest.approx(4 / 9)}


def test_entity_scores_conlleval_mode():
    # default (conlleval) mode: I-PER after O opens an entity, so it matches B-PER at the same place
    assert entity_scores([["O", "I-PER"]], [["O", "B-PER"]])["f1"] == 1.0
    assert entity_scores([["O", "O"]], [["O", "O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError):
        entity_scores([["O"]], [["O", "O"]])


# --------------------------------------------------------------------------------------------
# By name


def test_compute_metrics_dispatches_by_input_kind():
    assert compute_metrics(["mcc", "accuracy", "f1"], PRED, REF) == {
        "mcc": pytest.approx(2 / math.sqrt(12)),
        "accuracy": pytest.approx(0.75),
        "f1": pytest.approx(0.8),
    }
    qa = compute_metrics(["exact_match", "f1", "char_f1"], {"q": "the cat"}, {"q": ["cat"]})
    # default style squad drops "the": EM 1, F1 1
    # char_f1 is KorQuAD's and keeps articles: chars "thecat" (6) vs "cat" (3): P = 1/2, R = 1, F1 = 2/3
    assert qa == {"exact_match": 1.0, "f1": 1.0, "char_f1": pytest.approx(2 / 3)}
    tags = compute_metrics(["f1"], [["B-PER", "O", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]])
    assert tags == {"f1": 0.5}
    assert compute_metrics(["pearson", "spearman"], [1, 2, 3], [1, 2, 4])["spearman"] == pytest.approx(1.0)


def test_compute_metrics_qa_style():
    names = ["exact_match", "f1", "char_f1"]  # what korquad-recipe checkpoints list
    # KorQuAD: "the cat" vs "cat" differ (EM 0); f1 is the character F1 2/3 (above), as is char_f1
    qa = compute_metrics(names, {"q": "the cat"}, {"q": ["cat"]}, qa_style="korquad")
    assert qa == {"exact_match": 0.0, "f1": pytest.approx(2 / 3), "char_f1": pytest.approx(2 / 3)}
    # 토지 vs 《토지》: SQuAD keeps the brackets (EM 0, F1 0); char_f1 is KorQuAD's whatever the style
    pred, gold = {"q": "토지"}, {"q": ["《토지》"]}
    assert compute_metrics(names, pred, gold) == {"exact_match": 0.0, "f1": 0.0, "char_f1": 1.0}
    assert compute_metrics(names, pred, gold, qa_style="korquad") == {
        "exact_match": 1.0,
        "f1": 1.0,
        "char_f1": 1.0,
    }
    assert compute_metrics(["char_f1"], pred, gold) == {"char_f1": 1.0}


def test_compute_metrics_warns_once_per_call_for_missing_predictions():
    scores, caught = _recorded(compute_metrics, ["exact_match", "f1", "char_f1"], {}, {"q": ["a"]})
    assert scores == {"exact_match": 0.0, "f1": 0.0, "char_f1": 0.0}
    assert len(caught) == 1 and "1 of 1 questions have no prediction" in str(caught[0].message)


def test_compute_metrics_passes_undefined_correlation_as_none():
    scores, caught = _recorded(compute_metrics, ["pearson", "spearman"], [3.0, 3.0, 3.0], [1.0, 2.0, 3.0])
    assert scores == {"pearson": None, "spearman": None}
    assert len(caught) == 2  # one per metric
    assert json.dumps(scores) == '{"pearson": null, "spearman": null}'


def test_compute_metrics_unknown_name():
    with pytest.raises(PretuneError, match="unknown label metric.*bleu.*accuracy"):
        compute_metrics(["bleu"], PRED, REF)
    with pytest.raises(PretuneError, match="question answering"):
        compute_metrics(["mcc"], {"q": "a"}, {"q": ["a"]})


def test_compute_metrics_unknown_qa_style():
    # checked for every input kind, so a misspelt task setting fails before any scoring
    for predictions, references in (({"q": "a"}, {"q": ["a"]}), (PRED, REF)):
        with pytest.raises(PretuneError, match="'SQuAD'; choose from squad .*, korquad "):
            compute_metrics(["f1"], predictions, references, qa_style="SQuAD")
