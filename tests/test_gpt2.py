"""The GPT-2 family: pre-LN blocks and a final LayerNorm, exact parity with transformers' GPT2 both
ways, the presets, pretraining from scratch and fine-tuning with GPT-1's input transformations."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from pretune import hf
from pretune.checkpoint import export_hf, load_model, save_model
from pretune.cli import main
from pretune.config import preset
from pretune.errors import PretuneError
from pretune.models import build_model
from pretune.models.core import count_parameters
from pretune.tokenizer import Tokenizer, train_tokenizer
from pretune.train.finetune import FinetuneRun, finetune
from pretune.train.settings import FinetuneSettings

transformers = pytest.importorskip("transformers")

TOL = 1e-5
SHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def tiny_hf_gpt2(path: Path, *, tie: bool = True, act: str = "gelu_new", seed: int = 0) -> Path:
    """A random GPT2LMHeadModel with LayerNorm and bias values far from their defaults, saved to ``path``."""
    cfg = transformers.GPT2Config(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=48,
                                  activation_function=act, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(path)
    return path


def _batch(lengths: list[int], vocab: int = 101, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return ids * mask, mask


def _diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return (a[mask.bool()] - b[mask.bool()]).abs().max().item()


@pytest.mark.parametrize("act", ["gelu_new", "gelu"])
def test_gpt2_from_hf_matches_every_layer_and_the_logits(tmp_path: Path, act: str) -> None:
    ref = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_gpt2(tmp_path / "hf", act=act)).eval()
    loaded = load_model(tmp_path / "hf")
    ours = loaded.model.eval()
    assert (ours.cfg.norm, ours.cfg.embed_norm, ours.cfg.ffn, ours.cfg.activation) == ("pre", False, 48, "gelu_tanh" if act == "gelu_new" else "gelu")
    assert loaded.missing == []
    ids, mask = _batch([20, 11, 6])
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        out = ours(ids, padding_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == len(theirs.hidden_states) == 3
    for a, b in zip(theirs.hidden_states, out.hidden_states):  # embeddings, block 1, block 2 after ln_f
        assert _diff(a, b, mask) <= TOL
    assert _diff(theirs.logits, out.logits, mask) <= TOL


def test_gpt2_body_only_checkpoint_loads_and_matches(tmp_path: Path) -> None:
    tiny_hf_gpt2(tmp_path / "hf")
    body = transformers.GPT2Model.from_pretrained(tmp_path / "hf").eval()
    body.save_pretrained(tmp_path / "body")
    ours = load_model(tmp_path / "body").model.eval()
    ids, mask = _batch([9, 14], seed=1)
    with torch.no_grad():
        assert _diff(body(input_ids=ids, attention_mask=mask).last_hidden_state, ours(ids, padding_mask=mask).hidden, mask) <= TOL


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_export_loads_in_transformers_with_the_same_logits(tmp_path: Path, tie: bool) -> None:
    ours = load_model(tiny_hf_gpt2(tmp_path / "hf", tie=tie)).model.eval()
    assert ours.cfg.tie_embeddings is tie
    export_hf(ours, tmp_path / "back")
    saved = json.loads((tmp_path / "back" / "config.json").read_text())
    assert saved["model_type"] == "gpt2" and saved["architectures"] == ["GPT2LMHeadModel"]
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    ids, mask = _batch([15, 15, 7], seed=2)
    with torch.no_grad():
        assert _diff(again(input_ids=ids, attention_mask=mask).logits, ours(ids, padding_mask=mask).logits, mask) <= TOL
    # and a pretune model built from the gpt2 preset exports to GPT-2 (not OpenAI GPT)
    small = build_model(preset("gpt2-124m", n_layers=1, hidden=32, n_heads=2, vocab_size=50, max_positions=16))
    assert hf.config_to_hf(small.cfg)["model_type"] == "gpt2"


def test_presets_have_gpt2_shapes_and_parameter_counts() -> None:
    for name, (layers, hidden, heads, params) in {"gpt2-124m": (12, 768, 12, 124_439_808),
                                                  "gpt2-355m": (24, 1024, 16, 354_823_168)}.items():
        cfg = preset(name)
        assert (cfg.n_layers, cfg.hidden, cfg.n_heads, cfg.max_positions, cfg.vocab_size) == (layers, hidden, heads, 1024, 50257)
        assert (cfg.norm, cfg.embed_norm, cfg.activation, cfg.layer_norm_eps, cfg.type_vocab_size) == ("pre", False, "gelu_tanh", 1e-5, 0)
        with torch.device("meta"):
            assert count_parameters(build_model(cfg)) == params  # transformers' GPT2LMHeadModel counts (tied head)


def test_gpt2_initialisation_scales_residual_projections() -> None:
    torch.manual_seed(0)
    model = build_model(preset("gpt2-124m", n_layers=8, hidden=256, n_heads=4, vocab_size=100, max_positions=16))
    std = model.body.blocks[0].mlp.fc2.weight.std().item()
    assert abs(std - 0.02 / 4) < 0.0005  # 0.02 / sqrt(2 * 8), GPT-2's residual scaling
    assert abs(model.body.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.001


def test_unsupported_gpt2_configs_are_one_line_errors(tmp_path: Path) -> None:
    base = {"model_type": "gpt2", "vocab_size": 10, "n_layer": 1, "n_embd": 8, "n_head": 2, "n_positions": 8}
    with pytest.raises(PretuneError, match="scale_attn_by_inverse_layer_idx True is not supported"):
        hf.config_from_hf({**base, "scale_attn_by_inverse_layer_idx": True})
    with pytest.raises(PretuneError, match="activation_function 'relu' is not supported"):
        hf.config_from_hf({**base, "activation_function": "relu"})
    with pytest.raises(PretuneError, match="missing field 'n_head'"):
        hf.config_from_hf({k: v for k, v in base.items() if k != "n_head"})
    assert hf.config_from_hf(base).activation == "gelu_tanh"  # transformers' default: gelu_new
    gpt1 = build_model(preset("gpt-tiny", vocab_size=10, max_positions=8, ffn=100))
    with pytest.raises(PretuneError, match=r"OpenAIGPTLMHeadModel cannot hold this model: ffn=100"):
        hf.config_to_hf(gpt1.cfg)


# --------------------------------------------------------------------------------------------
# Pretraining from scratch, fine-tuning with GPT-1's input transformations


@pytest.fixture(scope="module")
def english(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is missing (the shared data sets sit beside the repo)")
    root = tmp_path_factory.mktemp("english")
    corpus = root / "shakespeare.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:120_000], encoding="utf-8")
    train_tokenizer([corpus], "bpe", 500, show_progress=False).save(root / "tok")
    return corpus, root / "tok"


def test_pretrain_a_gpt2_style_model_from_scratch(english: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    corpus, tok = english
    out = tmp_path / "gpt2"
    torch.set_num_threads(1)
    assert main([
        "pretrain", "--model", "gpt2-124m", "--tokenizer", str(tok), "--data", str(corpus), "--out", str(out),
        "--max-steps", "30", "--batch-size", "8", "--seq-len", "32", "--lr", "3e-3", "--warmup-steps", "3",
        "--eval-batches", "4", "--no-progress", "--set", "n_layers=2", "hidden=32", "n_heads=2", "ffn=64",
    ]) == 0
    res = json.loads((out / "pretrain_results.json").read_text())
    assert res["eval_at_end"]["val_loss"] < res["eval_at_start"]["val_loss"] - 0.5
    cfg = load_model(out).config
    assert (cfg.norm, cfg.embed_norm, cfg.vocab_size) == ("pre", False, 500)
    assert main(["convert", "--to-hf", str(out), "--out", str(tmp_path / "hf")]) == 0
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").config.model_type == "gpt2"
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "--max-new-tokens", "8", "First Citizen:"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("First Citizen:") and len(printed) > len("First Citizen:\n")  # streamed continuation


def test_finetune_a_gpt2_style_model_with_gpt1_input_transformations(english: tuple[Path, Path], tmp_path: Path) -> None:
    """A GPT-2 whose tokenizer has only <|endoftext|> (as the released one): start/delim/extract are
    added, the embedding grows, the output layer stays tied, and a classification task is learned."""
    corpus, _ = english
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train([str(corpus)], trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = Tokenizer(backend)
    torch.manual_seed(0)
    pre = save_model(tmp_path / "gpt2", build_model(preset("gpt2-124m", vocab_size=400, n_layers=2, hidden=64, n_heads=2,
                                                           max_positions=64)), tok)
    rng = random.Random(0)
    words = "the cat sat on a mat dog ran far away is big small red blue green why who".split()
    for split, n in (("train", 200), ("dev", 60)):
        rows = []
        for _ in range(n):
            good = rng.random() < 0.5
            text = rng.choices(words, k=rng.randint(4, 8)) + (["good"] if good else [])
            rng.shuffle(text)
            rows.append(f"{' '.join(text)}\t{'yes' if good else 'no'}")
        (tmp_path / f"{split}.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    trainer = dataclasses.replace(FinetuneSettings().trainer, lr=2e-3, seed=0, progress=False, log_every=5)
    s = FinetuneSettings(model=str(pre), task="classification", train=str(tmp_path / "train.tsv"),
                         validation=str(tmp_path / "dev.tsv"), out=str(tmp_path / "run"), epochs=10, batch_size=16,
                         max_seq_len=32, trainer=trainer)
    torch.set_num_threads(1)
    run = FinetuneRun(s)
    assert run.tokenizer.vocab_size == 404 and run.model.cfg.vocab_size == 404 and run.model.cfg.norm == "pre"
    # the auxiliary LM's output layer is still the (grown) token embedding: no untied copy
    assert run.model.cfg.tie_embeddings and run.model.lm_head is None
    assert run.model.body.embeddings.tok.weight.shape == (404, 64)
    ids = run.train_features.features[0]["input_ids"]
    assert ids[0] == run.tokenizer.start_id and ids[-1] == run.tokenizer.extract_id
    results = finetune(s)
    assert results["validation"]["accuracy"] > 0.8, results
