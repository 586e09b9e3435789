"""ELECTRA: parity with transformers both ways (discriminator, generator, body; embeddings narrower
than the hidden size), the objective against a reference computed with transformers' modules,
the sampling, the masking, and a pretraining run through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretune.checkpoint import export_hf, load_model, save_model
from pretune.config import preset
from pretune.models import ELECTRA
from pretune.models.electra import ElectraPretraining, generator_config, sample_from_logits

transformers = pytest.importorskip("transformers")

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), t), generator=g)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    types = (torch.arange(t)[None, :] >= t // 2).long() * mask
    return ids * mask, mask, types


def _noisy(model: torch.nn.Module) -> torch.nn.Module:
    """Random LayerNorm and bias values, so that a swapped weight/bias cannot go unnoticed."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "norm" in name or name.endswith("bias"):
                p.normal_(0, 0.5)
    return model.eval()


def _hf_config(**kw):
    base = dict(vocab_size=97, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)
    return transformers.ElectraConfig(**{**base, **kw})


def _masked(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    keep = mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


@pytest.mark.parametrize("embedding_size", [16, 32])  # projected up to hidden 32, and not
def test_electra_discriminator_from_hf_matches_hidden_states_and_logits(tmp_path: Path, embedding_size: int) -> None:
    torch.manual_seed(0)
    hf_model = _noisy(transformers.ElectraForPreTraining(_hf_config(embedding_size=embedding_size)))
    hf_model.save_pretrained(tmp_path / "hf")
    loaded = load_model(tmp_path / "hf")
    ours = loaded.model.eval()
    assert isinstance(ours, ELECTRA) and ours.cfg.embedding_size == embedding_size
    assert (ours.body.embeddings_project is None) == (embedding_size == 32)
    assert sorted({k.split(".")[0] for k in loaded.missing}) == ["mlm", "pooler"]  # never in a discriminator
    ids, mask, types = _batch(97, [12, 7, 3])
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
        out = ours(ids, padding_mask=mask, token_type_ids=types, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states)
    for a, b in zip(ref.hidden_states, out.hidden_states):  # the projected embeddings, then every layer
        assert _masked(a, b, mask) <= TOL
    assert _masked(ref.logits, out.disc_logits, mask) <= TOL


def test_electra_generator_from_hf_matches_mlm_logits_and_the_masked_lm_loss(tmp_path: Path) -> None:
    torch.manual_seed(1)
    hf_model = _noisy(transformers.ElectraForMaskedLM(_hf_config(hidden_size=24, num_attention_heads=2)))
    hf_model.save_pretrained(tmp_path / "hf")
    loaded = load_model(tmp_path / "hf")
    ours = loaded.model.eval()
    assert sorted({k.split(".")[0] for k in loaded.missing}) == ["disc", "pooler"]
    ids, mask, types = _batch(97, [10, 10])
    labels = torch.full_like(ids, -100)
    labels[:, [2, 5]] = ids[:, [2, 5]]
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        out = ours(ids, padding_mask=mask, token_type_ids=types, mlm_labels=labels, return_logits=True)
        full = ours.mlm_logits(out.hidden)
    assert (ref.logits - full).abs().max().item() <= TOL
    assert abs(ref.loss.item() - out.mlm_loss.item()) <= TOL
    assert (out.mlm_logits - ref.logits[labels != -100]).abs().max().item() <= TOL


def test_electra_body_from_hf_electra_model(tmp_path: Path) -> None:
    torch.manual_seed(2)
    hf_model = _noisy(transformers.ElectraModel(_hf_config()))
    hf_model.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").model.eval()
    ids, mask, types = _batch(97, [9, 4])
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        assert _masked(ref, ours(ids, padding_mask=mask, token_type_ids=types).hidden, mask) <= TOL


def test_pretune_electra_exports_to_transformers_and_back(tmp_path: Path) -> None:
    cfg = preset("electra-tiny", vocab_size=97, max_positions=64, embedding_size=16, hidden=32, n_heads=4)
    torch.manual_seed(3)
    disc = _noisy(ELECTRA(cfg))
    gen = _noisy(ELECTRA(generator_config(cfg, 0.5)))
    pair = ElectraPretraining(disc, gen)
    state = pair.state_dict()
    save_model(tmp_path / "d", pair.discriminator, state=pair.discriminator_state(state))
    save_model(tmp_path / "g", pair.generator, state=pair.generator_state(state))
    for name in ("d", "g"):
        loaded = load_model(tmp_path / name)
        export_hf(loaded.model, tmp_path / f"{name}-hf", exclude=loaded.missing)
    hf_config = json.loads((tmp_path / "d-hf" / "config.json").read_text())
    assert hf_config["architectures"] == ["ElectraForPreTraining"] and hf_config["embedding_size"] == 16
    assert json.loads((tmp_path / "g-hf" / "config.json").read_text())["architectures"] == ["ElectraForMaskedLM"]
    hf_disc = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "d-hf").eval()
    hf_gen = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "g-hf").eval()
    ids, mask, types = _batch(97, [11, 6], seed=4)
    with torch.no_grad():
        d_out = disc.eval()(ids, padding_mask=mask, token_type_ids=types)
        assert _masked(hf_disc(input_ids=ids, attention_mask=mask, token_type_ids=types).logits, d_out.disc_logits, mask) <= TOL
        gen_alone = load_model(tmp_path / "g").model.eval()
        g_hidden = gen_alone(ids, padding_mask=mask, token_type_ids=types).hidden
        ref = hf_gen(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        assert _masked(ref, gen_alone.mlm_logits(g_hidden), mask) <= TOL
    # the generator directory holds the discriminator's embeddings (shared during pretraining)
    assert torch.equal(gen_alone.body.embeddings.tok.weight, disc.body.embeddings.tok.weight)
    back = load_model(tmp_path / "d-hf")
    assert back.config.embedding_size == 16 and back.config.family == "electra"


def test_sampling_inverts_the_cumulative_distribution() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    picks = [int(sample_from_logits(logits, torch.tensor([u]))) for u in (0.0, 0.09, 0.11, 0.29, 0.31, 0.59, 0.61, 0.999)]
    assert picks == [0, 0, 1, 1, 2, 2, 3, 3]
    many = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sample_from_logits(logits.expand(20000, -1), many), minlength=4).double() / 20000
    assert (counts - torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)).abs().max() < 0.01
    hot = sample_from_logits(torch.tensor([[0.0, 0.0, 0.0]]) * 2, torch.tensor([0.5]), temperature=0.5)
    assert int(hot) == 1  # uniform at any temperature: the middle of three


def test_electra_objective_matches_a_reference_built_from_transformers(tmp_path: Path) -> None:
    """Generator MLM loss + 50 x the mean replaced-token loss over real tokens, with the samples
    drawn as the reference draws them, computed by ElectraForMaskedLM and ElectraForPreTraining."""
    cfg = preset("electra-tiny", vocab_size=97, max_positions=64, embedding_size=16, hidden=32, n_heads=4,
                 dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(5)
    pair = ElectraPretraining(_noisy(ELECTRA(cfg)), _noisy(ELECTRA(generator_config(cfg, 0.5))))
    state = pair.state_dict()
    save_model(tmp_path / "d", pair.discriminator, state=pair.discriminator_state(state))
    save_model(tmp_path / "g", pair.generator, state=pair.generator_state(state))
    for name in ("d", "g"):
        loaded = load_model(tmp_path / name)
        export_hf(loaded.model, tmp_path / f"{name}-hf", exclude=loaded.missing)
    hf_disc = transformers.ElectraForPreTraining.from_pretrained(tmp_path / "d-hf").eval()
    hf_gen = transformers.ElectraForMaskedLM.from_pretrained(tmp_path / "g-hf").eval()

    ids, mask, types = _batch(97, [14, 9, 12], seed=6)
    original = ids.clone()
    positions = torch.tensor([[1, 4, 7, 0], [2, 3, 0, 0], [5, 6, 9, 11]])
    labels = torch.gather(original, 1, positions)
    labels[0, 3] = labels[1, 2:] = -100
    masked = ids.clone()
    masked[0, 1], masked[1, 3], masked[2, 9] = 4, 4, 4  # [MASK] = 4 at some slots; others shown as they are
    uniforms = torch.rand(3, 4, generator=torch.Generator().manual_seed(7))
    out = pair(masked, mlm_positions=positions, mlm_labels=labels, sample_uniforms=uniforms, padding_mask=mask,
               token_type_ids=types, return_logits=True)

    with torch.no_grad():
        gen_logits = hf_gen(input_ids=masked, attention_mask=mask, token_type_ids=types).logits
        slot_logits = gen_logits.gather(1, positions[..., None].expand(-1, -1, 97)).double()
        valid = labels != -100
        mlm = F.cross_entropy(slot_logits[valid], labels[valid])
        cdf = np.cumsum(torch.softmax(slot_logits, -1).numpy(), -1)
        sampled = torch.tensor([[int(np.searchsorted(cdf[r, j], uniforms[r, j].item() * cdf[r, j, -1], side="right"))
                                 for j in range(4)] for r in range(3)])
        corrupted, replaced = original.clone(), torch.zeros_like(original)
        for r, j in zip(*torch.nonzero(valid, as_tuple=True)):
            corrupted[r, positions[r, j]] = sampled[r, j]
            replaced[r, positions[r, j]] = int(sampled[r, j] != labels[r, j])
        disc_logits = hf_disc(input_ids=corrupted, attention_mask=mask, token_type_ids=types).logits
        bce = F.binary_cross_entropy_with_logits(disc_logits.double(), replaced.double(), reduction="none")
        disc = (bce * mask).sum() / mask.sum()
    assert torch.equal(out.corrupted, corrupted) and torch.equal(out.replaced, replaced)
    assert abs(out.mlm_loss.item() - mlm.item()) <= TOL
    assert abs(out.disc_loss.item() - disc.item()) <= TOL
    assert abs(out.loss.item() - (mlm + 50 * disc).item()) <= 50 * TOL
    assert int(out.metrics["replaced"]) == int(replaced.sum()) and int(out.metrics["disc_tokens"]) == int(mask.sum())


def test_generator_shape_follows_google_research_electra() -> None:
    small = preset("electra-small")
    gen = generator_config(small)
    assert (gen.hidden, gen.n_heads, gen.ffn, gen.n_layers, gen.embedding_size) == (64, 1, 256, 12, 128)
    base = generator_config(preset("electra-base"), 1 / 3)
    assert (base.hidden, base.n_heads, base.ffn, base.embedding_size) == (256, 4, 1024, 768)
    tiny = generator_config(preset("bert-tiny").replace(family="electra"))
    assert (tiny.hidden, tiny.n_heads, tiny.n_layers) == (32, 1, 2)


def test_a_koelectra_style_checkpoint_fine_tunes_and_its_predictions_score_as_reported(tmp_path: Path, capsys) -> None:
    """An ElectraForPreTraining directory as the hub ships KoELECTRA (embeddings 16 projected to
    hidden 64, a WordPiece vocab.txt, no tokenizer.json): fine-tuned by the command line on a
    classification task; its reported validation accuracy is the one predict's labels give."""
    from test_finetune import make_task_data

    from pretune.cli import main

    (tmp_path / "data").mkdir()
    d = make_task_data(tmp_path / "data", {"train": 240, "dev": 40})
    vocab = (d / "wp" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    torch.manual_seed(8)
    hf_model = transformers.ElectraForPreTraining(_hf_config(vocab_size=len(vocab), hidden_size=64, num_attention_heads=2,
                                                              intermediate_size=128))
    hf_model.save_pretrained(tmp_path / "koelectra")
    (tmp_path / "koelectra" / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (tmp_path / "koelectra" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    out = tmp_path / "tuned"
    assert main(["finetune", "--model", str(tmp_path / "koelectra"), "--task", "classification", "--train", str(d / "cls_train.tsv"),
                 "--validation", str(d / "cls_dev.tsv"), "--out", str(out), "--epochs", "5", "--batch-size", "16", "--lr", "2e-3",
                 "--max-seq-len", "48", "--no-progress"]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["accuracy"] > 0.8  # the synthetic task is learnable: far above chance
    assert json.loads((out / "config.json").read_text())["family"] == "electra"
    assert main(["predict", "--model", str(out), "--data", str(d / "cls_dev.tsv"), "--out", str(tmp_path / "p.jsonl")]) == 0
    preds = [json.loads(line)["label"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    gold = [line.split("\t")[-1] for line in (d / "cls_dev.tsv").read_text().splitlines()[1:]]
    assert sum(p == g for p, g in zip(preds, gold)) / len(gold) == pytest.approx(results["accuracy"])
