"""Task readers and recipes: the real data sets in ../shared/data, and every user error."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from pretune.errors import PretuneError
from pretune.tasks import RECIPES, get_recipe
from pretune.tasks.base import split_examples
from pretune.tasks.choice import ChoiceExample, read_choices
from pretune.tasks.classification import TextExample, build_label_map, class_ids, read_table
from pretune.tasks.qa import QAExample, read_squad, split_squad_by_article
from pretune.tasks.tagging import read_conll

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _data(rel: str) -> Path:
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"real data file {path} is missing (see ../shared/data/README.md)")
    return path


def _write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


# --------------------------------------------------------------------------------------------
# Real data: row counts from the data README and first-row fields

REAL = [
    # recipe, file, rows, first row checks
    ("nsmc", "nsmc/train.tsv", 150_000, {"text": "불쌍해;;", "label": "0", "line": 2}),
    ("nsmc", "nsmc/test.tsv", 50_000, {"label": "1"}),
    ("kornli", "kornli/xnli.dev.ko.tsv", 2_490, {"label": "neutral", "text": '그리고 그가 말했다, "엄마, 저 왔어요."'}),
    ("kornli", "kornli/xnli.test.ko.tsv", 5_010, {}),
    ("korsts", "korsts/sts-train.tsv", 5_749, {"label": 5.0, "text": "비행기가 이륙하고 있다."}),
    ("korsts", "korsts/sts-dev.tsv", 1_500, {}),
    ("korsts", "korsts/sts-test.tsv", 1_379, {}),
    ("cola", "glue/CoLA/in_domain_train.tsv", 8_551, {"label": "1", "line": 1,
     "text": "Our friends won't buy this analysis, let alone the next one we propose."}),
    ("cola", "glue/CoLA/in_domain_dev.tsv", 527, {}),
    ("cola", "glue/CoLA/out_of_domain_dev.tsv", 516, {"text": "Somebody just left - guess who."}),
    ("stsb", "glue/STS-B/sts-train.tsv", 5_749, {"label": 5.0, "text": "A plane is taking off.",
     "text_pair": "An air plane is taking off."}),
    ("stsb", "glue/STS-B/sts-dev.tsv", 1_500, {}),
    ("stsb", "glue/STS-B/sts-test.tsv", 1_379, {}),
    ("stsb", "glue/STS-B/glue-dev.tsv", 1_500, {"label": 5.0, "text": "A man with a hard hat is dancing.", "line": 2}),
    ("mrpc", "glue/MRPC/msr_paraphrase_train.txt", 4_076, {"label": "1", "line": 2}),
    ("mrpc", "glue/MRPC/msr_paraphrase_test.txt", 1_725, {}),
]  # fmt: skip


@pytest.mark.parametrize("recipe,rel,rows,first", REAL, ids=[r[1] for r in REAL])
def test_real_table_recipes(recipe, rel, rows, first):
    examples = get_recipe(recipe).read(_data(rel))
    assert len(examples) == rows
    e = examples[0]
    assert isinstance(e, TextExample) and e.text
    for key, value in first.items():
        if key == "line":
            assert e.source.endswith(f"{Path(rel).name}:{value}")
        else:
            assert getattr(e, key) == value
    r = RECIPES[recipe]
    if r.family == "regression":
        assert all(isinstance(x.label, float) and 0.0 <= x.label <= 5.0 for x in examples)
        assert e.text_pair
    else:
        assert build_label_map(examples) == list(r.label_names)
        assert (e.text_pair is not None) == (recipe in ("kornli", "mrpc"))


def test_real_mrpc_keeps_quotes():
    e = get_recipe("mrpc").read(_data("glue/MRPC/msr_paraphrase_train.txt"))[0]
    assert e.text.startswith('Amrozi accused his brother, whom he called "the witness"')


def test_real_stsb_rows_with_extra_trailing_columns():
    path = _data("glue/STS-B/sts-train.tsv")
    wide = [
        i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.count("\t") > 6
    ]
    assert wide, "expected STS-B rows with extra trailing columns"
    examples = get_recipe("stsb").read(path)
    by_line = {int(e.source.rsplit(":", 1)[1]): e for e in examples}
    assert "http" not in by_line[wide[0]].text_pair  # the extra columns are sources, not sentences


def test_real_storycloze():
    examples = get_recipe("storycloze").read(_data("storycloze/cloze_test_val__spring2016.csv"))
    assert len(examples) == 1_871
    e = examples[0]
    assert isinstance(e, ChoiceExample)
    assert e.context.startswith(
        "Rick grew up in a troubled household. He never found good support in family,"
    )
    assert e.choices == ["He is happy now.", "He joined a gang."]
    assert e.label == 0  # AnswerRightEnding 1 -> index 0
    assert {x.label for x in examples} == {0, 1}
    train, held = split_examples(examples, 0.1, seed=1)
    assert (len(train), len(held)) == (1_684, 187)


def test_real_korquad_and_article_split():
    path = _data("korquad/KorQuAD_v1.0_dev.json")
    examples = read_squad(path)
    assert len(examples) == 5_774
    e = examples[0]
    assert isinstance(e, QAExample) and e.id == "6548850-0-0" and e.title == "임종석"
    assert e.answers == [("1989년 2월 15일", 0)]
    assert len({x.title for x in examples}) == 140  # 964 paragraphs; 4 repeat a paragraph of the same article
    train, dev = split_squad_by_article(read_squad(path), 0.1, seed=0)
    assert len(train) + len(dev) == 5_774
    assert not {x.title for x in train} & {x.title for x in dev}
    assert 0.1 <= len(dev) / 5_774 < 0.2
    assert split_squad_by_article(examples, 0.1, seed=0) == (train, dev)  # deterministic


# --------------------------------------------------------------------------------------------
# read_table


def test_tsv_ignores_quotes_and_csv_honours_them(tmp_path):
    tsv = _write(tmp_path, "a.tsv", 'text\tlabel\n"unbalanced quote\tpos\nsays "hi"\tneg\n')
    assert [e.text for e in read_table(tsv, text_col="text", label_col="label")] == [
        '"unbalanced quote',
        'says "hi"',
    ]
    csv_ = _write(tmp_path, "a.csv", 'text,label\n"a, b",x\n"two\nlines",y\nplain,z\n')
    examples = read_table(csv_, text_col="text", label_col="label")
    assert [e.text for e in examples] == ["a, b", "two\nlines", "plain"]
    assert [e.source.rsplit(":", 1)[1] for e in examples] == ["2", "3", "5"]  # start line of each record


def test_columns_by_index_without_header_and_pairs(tmp_path):
    path = _write(tmp_path, "b.tsv", "x\t0\tfirst\tsecond\ny\t1\tthird\tfourth\n")
    examples = read_table(path, header=False, text_col=2, text_pair_col="3", label_col=1)
    assert examples[1] == TextExample("third", "fourth", "1", f"{path}:2")


def test_jsonl_and_bom(tmp_path):
    path = _write(tmp_path, "c.jsonl", '{"text": "good", "label": 1}\n\n{"text": "bad", "label": 0}\n')
    assert [(e.text, e.label) for e in read_table(path, text_col="text", label_col="label")] == [
        ("good", "1"),
        ("bad", "0"),
    ]
    bom = _write(tmp_path, "d.tsv", "text\tlabel\nhi\tx\n", encoding="utf-8-sig")
    assert read_table(bom, text_col="text", label_col="label")[0].text == "hi"  # BOM not part of 'text'


def test_regression_and_multiple_choice(tmp_path):
    path = _write(tmp_path, "r.tsv", "s1\ts2\tscore\na\tb\t3.5\n")
    assert (
        read_table(path, text_col="s1", text_pair_col="s2", label_col="score", regression=True)[0].label
        == 3.5
    )
    mc = _write(tmp_path, "m.csv", "c1,c2,e1,e2,e3,ans\nOne.,Two.,x,y,z,3\n")
    e = read_choices(mc, context_col=["c1", "c2"], choice_cols=["e1", "e2", "e3"],
                   label_col="ans", choice_label_base=1)[0]  # fmt: skip
    assert e == ChoiceExample("One. Two.", ["x", "y", "z"], 2, f"{mc}:2")


def test_error_missing_file(tmp_path):
    with pytest.raises(PretuneError, match="nope.tsv: file not found"):
        read_table(tmp_path / "nope.tsv", text_col="text")


def test_error_empty_file(tmp_path):
    with pytest.raises(PretuneError, match="empty.tsv: file is empty"):
        read_table(_write(tmp_path, "empty.tsv", "\n\n"), text_col="text")
    with pytest.raises(PretuneError, match="header.tsv: no rows after the header"):
        read_table(_write(tmp_path, "header.tsv", "text\tlabel\n"), text_col="text")


def test_error_missing_column_lists_columns(tmp_path):
    path = _write(tmp_path, "cols.tsv", "sentence\tlabel\nhi\t1\n")
    with pytest.raises(
        PretuneError, match=r"cols.tsv: column 'text' not found; columns are \['sentence', 'label'\]"
    ):
        read_table(path, text_col="text", label_col="label")
    with pytest.raises(PretuneError, match=r"cols.tsv: column 5 not found: rows have 2 columns"):
        read_table(path, header=False, text_col=5)
    with pytest.raises(PretuneError, match="no header"):
        read_table(path, header=False, text_col="sentence")


def test_error_ragged_rows(tmp_path):
    path = _write(tmp_path, "ragged.tsv", "text\tlabel\nok\t1\nmissing label\n")
    with pytest.raises(PretuneError, match=r"ragged.tsv:3: row has 1 fields, expected 2"):
        read_table(path, text_col="text", label_col="label")
    wide = _write(tmp_path, "wide.tsv", "a\tb\t1\na\tb\t2\textra\n")
    with pytest.raises(PretuneError, match=r"wide.tsv:2: row has 4 fields, expected 3"):
        read_table(wide, header=False, text_col=0, label_col=2)
    assert len(read_table(wide, header=False, text_col=0, label_col=2, allow_extra_fields=True)) == 2


def test_error_non_numeric_regression_label(tmp_path):
    path = _write(tmp_path, "reg.tsv", "text\tscore\na\t1.0\nb\thigh\n")
    with pytest.raises(PretuneError, match=r"reg.tsv:3: regression label 'high' is not a number"):
        read_table(path, text_col="text", label_col="score", regression=True)
    nan = _write(tmp_path, "nan.tsv", "text\tscore\na\tnan\n")
    with pytest.raises(PretuneError, match=r"nan.tsv:2"):
        read_table(nan, text_col="text", label_col="score", regression=True)


def test_error_other_table_mistakes(tmp_path):
    with pytest.raises(PretuneError, match=r"bad.json: cannot tell the delimiter.*use .tsv, .csv or .jsonl"):
        read_table(_write(tmp_path, "bad.json", "{}"), text_col="text")
    with pytest.raises(PretuneError, match=r"j.jsonl:2: not valid JSON"):
        read_table(_write(tmp_path, "j.jsonl", '{"text": "a"}\n{oops\n'), text_col="text")
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("text\nok\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(PretuneError, match=r"latin.tsv:3: not valid utf-8-sig"):
        read_table(latin, text_col="text")
    mc = _write(tmp_path, "mc.csv", "c,e1,e2,ans\nctx,x,y,3\n")
    with pytest.raises(PretuneError, match=r"mc.csv:2: label '3' is not a choice number 1..2"):
        read_choices(mc, context_col="c", choice_cols=["e1", "e2"], label_col="ans",
                   choice_label_base=1)  # fmt: skip
    with pytest.raises(PretuneError, match="multiple-choice needs --choice-cols"):
        read_choices(mc, context_col="c")
    with pytest.raises(PretuneError, match=r"el.tsv:3: empty label"):
        read_table(_write(tmp_path, "el.tsv", "t\tl\na\tx\nb\t \n"), text_col="t", label_col="l")


# --------------------------------------------------------------------------------------------
# Labels


def test_build_label_map_sorts_numbers_numerically():
    ex = [TextExample("t", None, lab, f"f:{i}") for i, lab in enumerate(["10", "2", "1", "2", "-1"])]
    assert build_label_map(ex) == ["-1", "1", "2", "10"]
    words = [TextExample("t", None, lab, "f:1") for lab in ["neutral", "entailment", "contradiction"]]
    assert build_label_map(words) == ["contradiction", "entailment", "neutral"]
    with pytest.raises(PretuneError, match="no labels"):
        build_label_map([TextExample("t", None, None, "f:1")])


def test_encode_labels_and_unseen_label(tmp_path):
    train = read_table(_write(tmp_path, "train.tsv", "t\tl\na\tpos\nb\tneg\n"), text_col="t", label_col="l")
    labels = build_label_map(train)
    assert labels == ["neg", "pos"] and class_ids(train, labels) == [1, 0]
    dev = read_table(_write(tmp_path, "dev.tsv", "t\tl\na\tpos\nb\tmixed\n"), text_col="t", label_col="l")
    with pytest.raises(
        PretuneError, match=r"dev.tsv:3: label 'mixed' was never seen in the training data \(training labels: \['neg', 'pos'\]\)"
    ):
        class_ids(dev, labels)


# --------------------------------------------------------------------------------------------
# SQuAD


def _squad(tmp_path: Path, answers: list[list[tuple[str, int]]], name: str = "squad.json") -> Path:
    context = "The cat sat on the mat."
    qas = [{"id": f"q{i}", "question": f"Q{i}?", "answers": [{"text": t, "answer_start": s} for t, s in ans]}
           for i, ans in enumerate(answers)]  # fmt: skip
    doc = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}
    return _write(tmp_path, name, json.dumps(doc))


def test_squad_offset_mismatch_is_skipped_with_warning(tmp_path):
    path = _squad(tmp_path, [[("cat", 4), ("cat", 5)], [("mat", 3)]])  # "cat" at 5 and "mat" at 3 are wrong
    with pytest.warns(UserWarning, match=r"squad.json: skipped 2 of 3 answers"):
        ex = read_squad(path)
    assert [e.answers for e in ex] == [[("cat", 4)], []]  # evaluation keeps every question
    with pytest.warns(UserWarning, match="1 questions left without an answer were dropped"):
        ex = read_squad(path, train=True)
    assert [e.id for e in ex] == ["q0"]


def test_squad_all_answers_bad(tmp_path):
    with pytest.raises(
        PretuneError, match=r"bad.json: all 2 answers have answer_start offsets that do not match"
    ):
        read_squad(_squad(tmp_path, [[("cat", 0)], [("mat", 1)]], "bad.json"))


def test_squad_malformed(tmp_path):
    with pytest.raises(PretuneError, match=r"broken.json:2: not valid JSON"):
        read_squad(_write(tmp_path, "broken.json", '{"data":\n [,]}'))
    with pytest.raises(PretuneError, match=r"list.json: not SQuAD v1.1 JSON"):
        read_squad(_write(tmp_path, "list.json", "[]"))


def test_split_by_article_has_no_shared_titles():
    ex = [QAExample(f"{t}{i}", "q", "c", [("c", 0)], "f", title=t) for t in "abcdefghij" for i in range(3)]
    train, dev = split_squad_by_article(ex, 0.3, seed=7)
    assert len(dev) == 9 and len(train) == 21
    assert not {e.title for e in train} & {e.title for e in dev}
    assert split_squad_by_article(ex, 0.3, seed=8) != (train, dev)
    with pytest.raises(PretuneError, match="--validation-split 1.5 must be between 0 and 1"):
        split_squad_by_article(ex, 1.5)


# --------------------------------------------------------------------------------------------
# CoNLL


def test_read_conll(tmp_path):
    text = "-DOCSTART- -X- O O\n\n# comment\nJohn\tB-PER\nlives\tO\n\nParis\tB-LOC\n#\tO\n"
    ex = read_conll(_write(tmp_path, "a.conll", text))
    assert [e.tokens for e in ex] == [["John", "lives"], ["Paris", "#"]]
    assert [e.tags for e in ex] == [["B-PER", "O"], ["B-LOC", "O"]]
    assert ex[1].source.endswith("a.conll:7")
    spaced = read_conll(_write(tmp_path, "b.txt", "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n"))
    assert spaced[0].tags == ["B-ORG", "O"] and spaced[0].tokens == ["EU", "rejects"]


def test_read_conll_errors(tmp_path):
    with pytest.raises(PretuneError, match=r"bad.conll:3: malformed line 'lives'"):
        read_conll(_write(tmp_path, "bad.conll", "John\tB-PER\n\nlives\n"))
    with pytest.raises(PretuneError, match=r"blank.conll: no sentences"):
        read_conll(_write(tmp_path, "blank.conll", "# only a comment\n"))


# --------------------------------------------------------------------------------------------
# Recipes and splits


def test_recipes_are_consistent():
    assert {"nsmc", "kornli", "korsts", "cola", "stsb", "mrpc", "storycloze", "korquad"} <= set(RECIPES)
    assert {"classification", "regression", "multiple-choice", "qa", "tagging"} <= set(RECIPES)
    assert RECIPES["cola"].main_metric == "mcc" and RECIPES["korsts"].main_metric == "spearman"
    assert RECIPES["mrpc"].main_metric == "f1" and RECIPES["korquad"].main_metric == "f1"


def test_get_recipe_errors_and_overrides(tmp_path):
    with pytest.raises(PretuneError, match=r"unknown task 'glue'; choose one of nsmc, kornli"):
        get_recipe("glue")
    with pytest.raises(PretuneError, match=r"does not take colour; its settings are text_col"):
        get_recipe("classification", colour="red")
    path = _write(tmp_path, "mine.csv", "review,stars\nfine,5\n")
    recipe = get_recipe("classification", text_col="review", label_col="stars")
    assert recipe.read(path)[0].label == "5"
    assert RECIPES["classification"].options["text_col"] == "text"  # the registry is untouched
    conll = _write(tmp_path, "t.conll", "a\tX\tB-PER\n")
    assert get_recipe("tagging", tag_col=1).read(conll)[0].tags == ["X"]


def test_split_examples_deterministic():
    items = list(range(20))
    a, b = split_examples(items, 0.25, seed=3)
    assert len(b) == 5 and sorted(a + b) == items and a == sorted(a)
    assert split_examples(items, 0.25, seed=3) == (a, b)
    with pytest.raises(PretuneError, match="--validation-split 0 must be between 0 and 1"):
        split_examples(items, 0)


def test_squad_clean_file_gives_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_squad(_squad(tmp_path, [[("cat", 4)]]))
