"""Hugging Face Hub ids as --model / --tokenizer: a cache built in the test, read offline.

``org/name`` loads exactly the weights of the directory it was made from, ``@revision`` picks the
pinned snapshot, and a repository or revision that is not there is one line saying what to do.
Also: the former presets ``gpt2`` / ``gpt2-medium`` (Hub ids of pretrained weights) are errors
naming the new preset and the Hub id, and fine-tuning a preset says it starts from scratch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hubcache import add_snapshot

from pretune import cli, hub
from pretune.checkpoint import load_model, load_tokenizer, model_source, read_weights
from pretune.config import PRESETS, preset
from pretune.errors import PretuneError

transformers = pytest.importorskip("transformers")

WORDS = "the cat sat on a mat dog ran far away is big small red blue green".split()
MAIN, OLD = "a" * 40, "b" * 40  # two commits of org/tiny-bert


def _tiny_bert(path: Path, seed: int) -> Path:
    """A BertForPreTraining saved by transformers, with a WordPiece vocab.txt beside it."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=37, max_position_embeddings=32)
    torch.manual_seed(seed)
    transformers.BertForPreTraining(cfg).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CACHE/hub with org/tiny-bert at two commits (main: seed 0; tag v1: seed 1) and the directories."""
    root = tmp_path_factory.mktemp("hubids")
    add_snapshot(root / "hub", "org/tiny-bert", _tiny_bert(root / "main", 0), MAIN, refs=("main",))
    add_snapshot(root / "hub", "org/tiny-bert", _tiny_bert(root / "old", 1), OLD, refs=("v1",))
    return root


@pytest.fixture
def offline(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_which_values_are_hub_ids() -> None:
    assert hub.parse("org/name") == ("org/name", None)
    assert hub.parse("openai-community/gpt2@v1.0") == ("openai-community/gpt2", "v1.0")
    assert hub.parse("bert-base-uncased@" + MAIN) == ("bert-base-uncased", MAIN)
    assert hub.parse("org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    for path_like in ("./org/name", "/abs/dir", "runs/a/b", "~/m", "conf.json", "org/conf.json", "a..b", "a--b/c"):
        assert hub.parse(path_like) is None, path_like


def test_a_hub_id_loads_exactly_the_weights_of_its_directory(offline: Path) -> None:
    source = model_source("org/tiny-bert")
    assert source.kind == "huggingface" and source.hub and source.path.parent.name == "snapshots"
    ours, local = load_model("org/tiny-bert"), load_model(offline / "main")
    assert _same_weights(ours.model, local.model)
    assert ours.tokenizer.encode("the cat sat") == local.tokenizer.encode("the cat sat")
    assert not _same_weights(ours.model, load_model(offline / "old").model)  # the two commits differ


def test_a_revision_picks_its_snapshot(offline: Path) -> None:
    old = load_model(offline / "old").model
    assert _same_weights(load_model("org/tiny-bert@v1").model, old)  # a tag
    assert _same_weights(load_model(f"org/tiny-bert@{OLD}").model, old)  # a commit
    assert _same_weights(load_model(f"org/tiny-bert@{MAIN}").model, load_model(offline / "main").model)


def test_tokenizer_and_convert_take_hub_ids(offline: Path, tmp_path: Path) -> None:
    tok = load_tokenizer("org/tiny-bert@v1")
    assert tok.kind == "wordpiece" and tok.vocab_size == 5 + len(WORDS)
    assert cli.main(["convert", "--from-hf", "org/tiny-bert", "--out", str(tmp_path / "pt")]) == 0
    assert _same_weights(load_model(tmp_path / "pt").model, load_model(offline / "main").model)


def test_finetune_from_a_hub_id_runs_as_from_its_directory(offline: Path, tmp_path: Path) -> None:
    rows = [f"{' '.join(WORDS[(i + k) % len(WORDS)] for k in range(5))}\t{i % 2}" for i in range(24)]
    (tmp_path / "t.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    results = []
    for model, out in (("org/tiny-bert@v1", "hub"), (str(offline / "old"), "dir")):
        assert cli.main(["finetune", "--model", model, "--task", "classification", "--train", str(tmp_path / "t.tsv"),
                         "--validation-split", "0.25", "--out", str(tmp_path / out), "--epochs", "1", "--batch-size", "8",
                         "--max-seq-len", "16", "--no-progress"]) == 0
        results.append(read_weights(tmp_path / out / "model.safetensors"))
    a, b = results
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same start, the same steps


def test_a_gpt2_hub_id_generates_what_its_directory_generates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    from pretune.tokenizer import train_tokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) + "\n", encoding="utf-8")
    tok = train_tokenizer([corpus], "bpe", 300, show_progress=False)
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=32, n_embd=32, n_layer=1, n_head=2,
                                  bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "gpt2")
    tok.save(tmp_path / "gpt2")
    add_snapshot(tmp_path / "hub", "org/tiny-gpt2", tmp_path / "gpt2", "e" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    outputs = []
    for model in (str(tmp_path / "gpt2"), "org/tiny-gpt2", f"org/tiny-gpt2@{'e' * 40}"):
        assert cli.main(["generate", "--model", model, "--max-new-tokens", "8", "--seed", "1", "--json", "the cat",
                         "a dog"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2] and outputs[0].count("\n") == 2


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_what_is_not_in_the_cache_is_one_line(offline: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    line = _error(["embed", "--model", "org/missing", "a cat"], capsys)
    assert "org/missing is not in the Hugging Face cache" in line and "HF_HUB_OFFLINE=1 is set" in line
    assert "run once online" in line and str(offline / "hub") in line
    line = _error(["embed", "--model", "org/tiny-bert@v2", "a cat"], capsys)
    assert "revision 'v2' of org/tiny-bert is not in the Hugging Face cache" in line
    line = _error(["tokenizer", "encode", "--tokenizer", "org/missing", "a cat"], capsys)
    assert line.startswith("pretune tokenizer: error: --tokenizer org/missing: no such local directory")
    line = _error(["embed", "--model", "bert-tinyy", "a cat"], capsys)  # a bare name: presets named too
    assert "or preset (presets: bert-tiny," in line and "bert-tinyy is not in the Hugging Face cache" in line
    (tmp_path / "d.tsv").write_text("text\tlabel\na\t1\n", encoding="utf-8")
    line = _error(["evaluate", "--model", "org/tiny-bert", "--data", str(tmp_path / "d.tsv")], capsys)
    assert "give --out FILE" in line


def test_former_gpt2_presets_name_the_new_preset_and_the_hub_id(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert "gpt2" not in PRESETS and "gpt2-124m" in PRESETS and "gpt2-355m" in PRESETS
    for old, new, hub_id in (("gpt2", "gpt2-124m", "openai-community/gpt2"),
                             ("gpt2-medium", "gpt2-355m", "openai-community/gpt2-medium")):
        line = _error(["generate", "--model", old, "hi"], capsys)
        assert f"--model {old}: no longer a preset" in line and new in line and f"pass {hub_id}" in line
        with pytest.raises(PretuneError, match=new):
            preset(old)


def test_finetuning_a_preset_says_it_starts_from_scratch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pretune.tokenizer import train_tokenizer

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) + "\n", encoding="utf-8")
    train_tokenizer([corpus], "wordpiece", 60, show_progress=False).save(tmp_path / "tok")
    rows = [f"{' '.join(WORDS[(i + k) % len(WORDS)] for k in range(5))}\t{i % 2}" for i in range(12)]
    (tmp_path / "t.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert cli.main(["finetune", "--model", "bert-tiny", "--set", "hidden=32", "n_heads=2", "n_layers=1",
                     "--tokenizer", str(tmp_path / "tok"), "--task", "classification", "--train", str(tmp_path / "t.tsv"),
                     "--validation-split", "0.25", "--out", str(tmp_path / "o"), "--epochs", "1", "--max-seq-len", "16",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "from scratch: bert-tiny is a preset, so the model starts from random weights" in out
    assert out.count("from scratch") == 1
