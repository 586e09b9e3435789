"""Exact parity with Hugging Face transformers, both directions, on padded batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretune.checkpoint import export_hf, load_model
from pretune.errors import PretuneError

transformers = pytest.importorskip("transformers")

TOL = 1e-5


def _padded_batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), t), generator=g)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    ids = ids * mask  # pad id 0
    types = torch.zeros_like(ids)
    types[:, t // 2 :] = 1
    types = types * mask
    return ids, mask, types


def _tiny_hf_bert(tmp_path: Path, act: str = "gelu") -> Path:
    cfg = transformers.BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, hidden_act=act,
    )
    torch.manual_seed(0)
    model = transformers.BertForPreTraining(cfg).eval()
    # Random LayerNorm and bias values, so a swapped weight/bias cannot go unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _tiny_hf_gpt(tmp_path: Path) -> Path:
    cfg = transformers.OpenAIGPTConfig(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4, afn="gelu")
    torch.manual_seed(0)
    model = transformers.OpenAIGPTLMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf"


def _bert_outputs_hf(model, ids, mask, types):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    return out.hidden_states[-1], out.prediction_logits, out.seq_relationship_logits


def _bert_outputs_ours(model, ids, mask, types):
    with torch.no_grad():
        out = model(ids, token_type_ids=types, padding_mask=mask)
        return out.hidden, model.mlm_logits(out.hidden), model.nsp(out.pooled)


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    if mask is not None and a.dim() == 3:
        sel = mask.bool()
        a, b = a[sel], b[sel]
    return (a - b).abs().max().item()


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_bert_from_hf_matches_hidden_states_and_every_head(tmp_path: Path, act: str) -> None:
    hf_dir = _tiny_hf_bert(tmp_path, act)
    hf_model = transformers.BertForPreTraining.from_pretrained(hf_dir).eval()
    ours = load_model(hf_dir).model.eval()
    ids, mask, types = _padded_batch(99, [17, 9, 3])
    for a, b in zip(_bert_outputs_hf(hf_model, ids, mask, types), _bert_outputs_ours(ours, ids, mask, types)):
        assert _max_diff(a, b, mask) <= TOL


def test_bert_export_to_hf_loads_in_transformers_with_same_outputs(tmp_path: Path) -> None:
    hf_dir = _tiny_hf_bert(tmp_path)
    ours = load_model(hf_dir).model.eval()
    export_hf(ours, tmp_path / "back")
    again = transformers.BertForPreTraining.from_pretrained(tmp_path / "back").eval()
    ids, mask, types = _padded_batch(99, [12, 12, 5], seed=1)
    for a, b in zip(_bert_outputs_hf(again, ids, mask, types), _bert_outputs_ours(ours, ids, mask, types)):
        assert _max_diff(a, b, mask) <= TOL


def test_bert_model_without_heads_loads_and_matches(tmp_path: Path) -> None:
    hf_dir = _tiny_hf_bert(tmp_path)
    body = transformers.BertModel.from_pretrained(hf_dir).eval()
    body.save_pretrained(tmp_path / "body")
    loaded = load_model(tmp_path / "body")
    assert any(k.startswith("mlm.") for k in loaded.missing)  # heads were initialised fresh
    ids, mask, types = _padded_batch(99, [10, 4])
    with torch.no_grad():
        ref = body(input_ids=ids, attention_mask=mask, token_type_ids=types)
        out = loaded.model.eval()(ids, token_type_ids=types, padding_mask=mask)
    assert _max_diff(ref.last_hidden_state, out.hidden, mask) <= TOL
    assert _max_diff(ref.pooler_output, out.pooled) <= TOL


def test_sparse_mlm_loss_equals_dense_head_on_masked_positions(tmp_path: Path) -> None:
    hf_dir = _tiny_hf_bert(tmp_path)
    hf_model = transformers.BertForPreTraining.from_pretrained(hf_dir).eval()
    ours = load_model(hf_dir).model.eval()
    ids, mask, types = _padded_batch(99, [16, 16, 16], seed=3)
    g = torch.Generator().manual_seed(0)
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.3, ids, torch.full_like(ids, -100))
    nsp = torch.tensor([0, 1, 0])
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, next_sentence_label=nsp)
        dense = ours(ids, token_type_ids=types, mlm_labels=labels, nsp_labels=nsp, return_logits=True)  # full logits
        # the same targets as fixed prediction slots (gather, no host sync)
        positions = torch.zeros(3, 16, dtype=torch.long)
        slot_labels = torch.full((3, 16), -100)
        for row in range(3):
            where = (labels[row] != -100).nonzero().flatten()
            positions[row, : len(where)] = where
            slot_labels[row, : len(where)] = labels[row, where]
        sparse = ours(ids, token_type_ids=types, mlm_labels=slot_labels, mlm_positions=positions, nsp_labels=nsp)
    assert dense.mlm_logits is not None and sparse.mlm_logits is None
    assert sparse.hidden.shape[1] == 1 + 16  # the sparse path ran: the last layer at [CLS] and the 16 slots only
    assert abs(ref.loss.item() - dense.loss.item()) <= TOL
    assert abs(sparse.loss.item() - dense.loss.item()) <= TOL


def test_gpt_from_hf_matches_hidden_states_and_lm_logits(tmp_path: Path) -> None:
    hf_dir = _tiny_hf_gpt(tmp_path)
    hf_model = transformers.OpenAIGPTLMHeadModel.from_pretrained(hf_dir).eval()
    ours = load_model(hf_dir).model.eval()
    ids, mask, _ = _padded_batch(101, [20, 11, 6], seed=2)
    with torch.no_grad():
        ref = hf_model(input_ids=ids, attention_mask=mask, output_hidden_states=True, labels=ids)
        out = ours(ids, padding_mask=mask, labels=ids, return_logits=True)
    assert _max_diff(ref.hidden_states[-1], out.hidden, mask) <= TOL
    assert _max_diff(ref.logits, out.logits, mask) <= TOL
    # Unpadded: causal attention without any mask must give the same result as HF too.
    with torch.no_grad():
        full = ids[:1, :20]
        assert _max_diff(hf_model(input_ids=full).logits, ours(full).logits) <= TOL


def test_gpt_export_to_hf_loads_in_transformers_with_same_outputs(tmp_path: Path) -> None:
    hf_dir = _tiny_hf_gpt(tmp_path)
    ours = load_model(hf_dir).model.eval()
    export_hf(ours, tmp_path / "back")
    again = transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "back").eval()
    ids, mask, _ = _padded_batch(101, [15, 15], seed=4)
    with torch.no_grad():
        assert _max_diff(again(input_ids=ids).logits, ours(ids).logits) <= TOL


def test_checkpoint_with_wrong_shape_names_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    hf_dir = _tiny_hf_bert(tmp_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PretuneError, match=r"fc1\.weight.*\(37, 32\).*\(40, 32\)"):
        load_model(hf_dir)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_untied_output_layer_round_trips_with_transformers(tmp_path: Path, family: str) -> None:
    """tie_embeddings=False: the decoder / lm_head is a weight of its own, both ways."""
    torch.manual_seed(0)
    if family == "bert":
        cfg = transformers.BertConfig(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, tie_word_embeddings=False,
        )
        hf_model = transformers.BertForPreTraining(cfg).eval()
        decoder, embedding = hf_model.cls.predictions.decoder.weight, hf_model.bert.embeddings.word_embeddings.weight
    else:
        cfg = transformers.OpenAIGPTConfig(vocab_size=101, n_positions=64, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=False)
        hf_model = transformers.OpenAIGPTLMHeadModel(cfg).eval()
        decoder, embedding = hf_model.lm_head.weight, hf_model.transformer.tokens_embed.weight
    assert decoder.data_ptr() != embedding.data_ptr()  # really untied in transformers
    hf_model.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").model.eval()
    assert ours.cfg.tie_embeddings is False
    assert torch.equal(ours.decoder_weight, decoder) and not torch.equal(ours.decoder_weight, ours.body.embeddings.tok.weight)
    ids, mask, types = _padded_batch(99, [12, 7], seed=5)
    with torch.no_grad():
        if family == "bert":
            ref = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types).prediction_logits
            got = ours.mlm_logits(ours(ids, token_type_ids=types, padding_mask=mask).hidden)
        else:
            ref, got = hf_model(input_ids=ids, attention_mask=mask).logits, ours(ids, padding_mask=mask).logits
    assert _max_diff(ref, got, mask) <= TOL
    export_hf(ours, tmp_path / "back")
    assert json.loads((tmp_path / "back" / "config.json").read_text())["tie_word_embeddings"] is False
    cls = transformers.BertForPreTraining if family == "bert" else transformers.OpenAIGPTLMHeadModel
    again = cls.from_pretrained(tmp_path / "back").eval()
    with torch.no_grad():
        back = again(input_ids=ids, attention_mask=mask, **({"token_type_ids": types} if family == "bert" else {}))
    assert _max_diff(back.prediction_logits if family == "bert" else back.logits, got, mask) <= TOL


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_last_layer_on_predicted_rows_only_gives_the_same_loss_and_gradients(norm: str) -> None:
    """Pretraining runs BERT's last layer at [CLS] and the masked positions only: nothing changes."""
    from pretune.config import preset
    from pretune.models import build_model

    cfg = preset("bert-tiny", vocab_size=97, max_positions=32, dropout=0.0, attn_dropout=0.0, norm=norm, n_layers=3)
    model = build_model(cfg)
    ids, mask, types = _padded_batch(97, [20, 14, 9], seed=6)
    g = torch.Generator().manual_seed(1)
    positions = torch.stack([torch.randperm(n, generator=g)[:4] for n in (20, 14, 9)])
    slot_labels = torch.randint(5, 97, (3, 4), generator=g)
    slot_labels[2, 3] = -100  # an unused slot
    nsp = torch.tensor([1, 0, 1])
    kw = dict(token_type_ids=types, padding_mask=mask, mlm_labels=slot_labels, mlm_positions=positions, nsp_labels=nsp)
    full = model(ids, return_logits=True, **kw)  # every row of every layer, then gather
    full.loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    sparse = model(ids, return_logits=False, **kw)  # last layer at [CLS] + predicted rows
    assert sparse.hidden.shape == (3, 1 + 4, cfg.hidden)
    assert abs(sparse.loss.item() - full.loss.item()) <= 1e-5
    assert abs(sparse.nsp_loss.item() - full.nsp_loss.item()) <= 1e-6
    sparse.loss.backward()
    for name, p in model.named_parameters():
        if name in ref_grads:
            assert (p.grad - ref_grads[name]).abs().max().item() <= 1e-5, name
