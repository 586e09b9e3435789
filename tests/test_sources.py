"""Task data from the datasets library: a save_to_disk directory, a parquet or arrow file, or
hf:NAME[@split], each read as exactly the examples of the equivalent file, offline; one-line errors."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from pretune import cli
from pretune.checkpoint import read_weights, save_model
from pretune.config import preset
from pretune.errors import PretuneError
from pretune.models import build_model
from pretune.tasks import get_recipe, read_examples
from pretune.tokenizer import train_tokenizer

datasets = pytest.importorskip("datasets")

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WORDS = "the cat sat on a mat dog ran far away is big small red blue green why who good bad".split()


def same(a: list, b: list) -> bool:
    """The same examples, in the same order, apart from where each was read (file:line or row)."""
    strip = [dataclasses.replace(e, source="") for e in a], [dataclasses.replace(e, source="") for e in b]
    return len(a) > 0 and strip[0] == strip[1]


def _sentences(n: int, seed: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + k * (seed + 3)) % len(WORDS)] for k in range(4 + i % 5)) for i in range(n)]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sentence pairs with 0/1 labels as TSV files (train, validation) and as data sets: a
    ClassLabel column, saved to disk, as parquet, as arrow and as a folder of split files."""
    root = tmp_path_factory.mktemp("pairs")
    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["different", "same"])})
    splits = {}
    for split, n, seed in (("train", 40, 0), ("validation", 12, 1)):
        a, b = _sentences(n, seed), _sentences(n, seed + 5)
        labels = [int(x.split()[0] == y.split()[0]) ^ (i % 3 == 0) for i, (x, y) in enumerate(zip(a, b))]
        rows = [f"{x}\t{y}\t{label}" for x, y, label in zip(a, b, labels)]
        (root / f"{split}.tsv").write_text("sentence1\tsentence2\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
        splits[split] = datasets.Dataset.from_dict({"sentence1": a, "sentence2": b, "label": labels}, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root / "dict"))
    splits["train"].save_to_disk(str(root / "train-disk"))
    splits["train"].to_parquet(str(root / "train.parquet"))
    (root / "files").mkdir()
    for split, ds in splits.items():
        ds.to_parquet(str(root / "files" / f"{split}.parquet"))
    return root


def test_every_form_reads_the_examples_of_the_tsv(pairs: Path) -> None:
    recipe = get_recipe("classification", text_col="sentence1", text_pair_col="sentence2", label_col="label")
    tsv = read_examples(recipe, pairs / "train.tsv")
    assert {e.label for e in tsv} == {"0", "1"}  # ClassLabel ids, as the file holds them
    arrow = next((pairs / "train-disk").glob("*.arrow"))
    for value in (pairs / "train-disk", pairs / "train.parquet", arrow, f"{pairs / 'dict'}@train",
                  f"hf:{pairs / 'files'}@train"):
        assert same(read_examples(recipe, value), tsv), value
    val = read_examples(recipe, pairs / "validation.tsv")
    assert same(read_examples(recipe, pairs / "dict", split="validation"), val)  # the flag's split
    assert same(read_examples(recipe, f"hf:{pairs / 'files'}", split="validation"), val)
    assert read_examples(recipe, pairs / "train.parquet", split="test")[0].source == f"{pairs / 'train.parquet'} (row 0)"


def test_finetune_and_evaluate_from_data_sets_match_the_files(pairs: Path, tmp_path: Path, one_thread) -> None:
    corpus = pairs / "corpus.txt"
    corpus.write_text("\n".join(_sentences(60, 2)) + "\n", encoding="utf-8")
    tok = train_tokenizer([corpus], "wordpiece", 80, show_progress=False)
    torch.manual_seed(0)
    save_model(tmp_path / "pre", build_model(preset("bert-tiny", vocab_size=tok.vocab_size, max_positions=32, hidden=32,
                                                    n_heads=2, n_layers=1)), tok)
    common = ["--model", str(tmp_path / "pre"), "--task", "mrpc", "--text-col", "sentence1", "--text-pair-col",
              "sentence2", "--label-col", "label", "--epochs", "2", "--batch-size", "8", "--max-seq-len", "24",
              "--no-progress"]
    runs = {"files": ["--train", str(pairs / "train.tsv"), "--validation", str(pairs / "validation.tsv"),
                      "--test", str(pairs / "validation.tsv")],
            "hf": ["--train", f"hf:{pairs / 'files'}", "--validation", f"hf:{pairs / 'files'}",
                   "--test", f"{pairs / 'dict'}@validation"]}
    results = {}
    for name, data in runs.items():
        assert cli.main(["finetune", *common, *data, "--out", str(tmp_path / name)]) == 0
        results[name] = json.loads((tmp_path / name / "eval_results.json").read_text())
    for split in ("validation", "test"):
        assert results["hf"][split] == results["files"][split]
    a, b = (read_weights(tmp_path / n / "model.safetensors") for n in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same examples, the same steps
    assert cli.main(["evaluate", "--model", str(tmp_path / "hf"), "--data", str(pairs / "train.parquet"),
                     "--no-progress"]) == 0
    assert cli.main(["evaluate", "--model", str(tmp_path / "hf"), "--data", str(pairs / "train.tsv"),
                     "--no-progress"]) == 0
    scored = [json.loads((tmp_path / "hf" / f"eval_train.{x}.json").read_text()) for x in ("parquet", "tsv")]
    assert scored[0] == scored[1] and set(scored[0]) == {"accuracy", "f1", "computed_in"} and scored[0]["computed_in"] == "fp32"


def test_multiple_choice_regression_qa_and_tagging_from_data_sets(tmp_path: Path) -> None:
    cloze = DATA / "storycloze" / "cloze_test_val__spring2016.csv"
    with cloze.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))[:50]
    table = {k: [int(r[k]) if k == "AnswerRightEnding" else r[k] for r in rows] for k in rows[0]}
    datasets.Dataset.from_dict(table).to_parquet(str(tmp_path / "cloze.parquet"))
    recipe = get_recipe("storycloze")
    assert same(read_examples(recipe, tmp_path / "cloze.parquet"), read_examples(recipe, cloze)[:50])

    stsb = DATA / "glue" / "STS-B" / "glue-dev.tsv"
    lines = stsb.read_text(encoding="utf-8").splitlines()[1:41]
    cols = [line.split("\t") for line in lines]
    datasets.Dataset.from_dict({"sentence1": [c[7] for c in cols], "sentence2": [c[8] for c in cols],
                                "score": [float(c[9]) for c in cols]}).save_to_disk(str(tmp_path / "sts"))
    recipe = get_recipe("stsb")
    assert same(read_examples(recipe, tmp_path / "sts"), read_examples(recipe, stsb)[:40])

    squad = json.loads((DATA / "korquad" / "KorQuAD_v1.0_dev.json").read_text(encoding="utf-8"))
    squad["data"] = squad["data"][:3]
    (tmp_path / "qa.json").write_text(json.dumps(squad, ensure_ascii=False), encoding="utf-8")
    flat = [{"id": q["id"], "title": a["title"], "context": p["context"], "question": q["question"],
             "answers": {"text": [x["text"] for x in q["answers"]], "answer_start": [x["answer_start"] for x in q["answers"]]}}
            for a in squad["data"] for p in a["paragraphs"] for q in p["qas"]]
    datasets.Dataset.from_list(flat).save_to_disk(str(tmp_path / "qa"))
    recipe = get_recipe("korquad")
    assert same(read_examples(recipe, tmp_path / "qa", train=True), read_examples(recipe, tmp_path / "qa.json", train=True))

    tags = ["O", "B-PER", "I-PER", "B-LOC"]
    sentences = [(["Kim", "Min", "went", "to", "Seoul"], [1, 2, 0, 0, 3]), (["the", "cat"], [0, 0])]
    conll = "\n\n".join("\n".join(f"{w}\t{tags[t]}" for w, t in zip(*s)) for s in sentences) + "\n"
    (tmp_path / "ner.conll").write_text(conll, encoding="utf-8")
    feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                               "ner_tags": datasets.Sequence(datasets.ClassLabel(names=tags))})
    datasets.Dataset.from_dict({"tokens": [s[0] for s in sentences], "ner_tags": [s[1] for s in sentences]},
                               features=feats).to_parquet(str(tmp_path / "ner.parquet"))
    recipe = get_recipe("tagging")
    examples = read_examples(recipe, tmp_path / "ner.parquet")
    assert examples[0].tags == ["B-PER", "I-PER", "O", "O", "B-LOC"]  # the ClassLabel names
    assert same(examples, read_examples(recipe, tmp_path / "ner.conll"))


def _error(value: str | Path, **options) -> str:
    recipe = get_recipe("classification", text_col="sentence1", label_col="label", **options)
    with pytest.raises(PretuneError) as info:
        read_examples(recipe, value)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_one_line_errors(pairs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _error(f"{pairs / 'dict'}@test") == f"{pairs / 'dict'}@test: no split 'test'; the data set has train, validation"
    assert _error(pairs / "dict") == (f"{pairs / 'dict'}: the data set has splits train, validation; name one: "
                                      f"{pairs / 'dict'}@train")
    assert _error(pairs / "train.parquet", text_pair_col="premise") == (
        f"{pairs / 'train.parquet'}: column 'premise' not found; columns are ['sentence1', 'sentence2', 'label']")
    line = _error("hf:someone/no-such-set")
    assert line.startswith("hf:someone/no-such-set: cannot load the data set (")
    assert line.endswith("HF_DATASETS_OFFLINE=1 is set: run once online to put it in the datasets cache, or give a "
                         "local file or directory")
    assert _error(pairs / "nope.parquet") == f"{pairs / 'nope.parquet'}: no such file or data set directory"
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    assert _error(pairs / "train.parquet") == (f"{pairs / 'train.parquet'}: reading Hugging Face datasets needs the "
                                               f"datasets library: pip install 'pretune[hf]'")
