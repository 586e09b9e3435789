"""The model layer's fast paths against the plain computations they replace: the fused output
layer + cross-entropy, and the CPU attention with dropout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pretune import tuning
from pretune.config import preset
from pretune.models import build_model, core
from pretune.models.core import _attention_with_dropout, attention_mask
from pretune.models.fused_ce import linear_cross_entropy

# --- linear_cross_entropy == F.cross_entropy(F.linear(...)) ------------------------------------------


def _dense(h, w, b, t):
    return F.cross_entropy(F.linear(h, w, b), t, ignore_index=-100, reduction="sum")


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk,block", [(None, None), (1, 1), (7, 3), (16, 16), (100, 100)])
def test_fused_cross_entropy_equals_dense_in_value_and_gradients(with_bias: bool, chunk, block) -> None:
    torch.manual_seed(0)
    n, h, v = 37, 16, 101
    hidden = torch.randn(n, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    bias = torch.randn(v, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (n,))
    targets[::4] = -100
    params = [p for p in (hidden, weight, bias) if p is not None]

    ref = _dense(hidden, weight, bias, targets)
    count = (targets != -100).sum()
    (ref / count).backward()
    ref_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    total, got_count, correct = linear_cross_entropy(
        hidden, weight, targets, bias, chunk_rows=chunk, block_rows=block, with_correct=True
    )
    (total / got_count).backward()

    assert got_count == count
    assert abs((total / got_count).item() - (ref / count).item()) <= 1e-5
    for p, g in zip(params, ref_grads):
        assert (p.grad - g).abs().max().item() <= 1e-5
    with torch.no_grad():
        logits = F.linear(hidden, weight, bias)
    assert correct == ((logits.argmax(1) == targets) & (targets != -100)).sum()


def test_fused_cross_entropy_without_grad_and_with_every_row_ignored() -> None:
    torch.manual_seed(1)
    hidden, weight = torch.randn(5, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 11, (5,))
    with torch.no_grad():
        total, _, _ = linear_cross_entropy(hidden, weight, targets)
    assert not total.requires_grad
    assert abs(total.item() - _dense(hidden, weight, None, targets).item()) <= 1e-4
    with torch.inference_mode():
        linear_cross_entropy(hidden, weight, targets)
    total, count, _ = linear_cross_entropy(hidden, weight, torch.full((5,), -100))
    (total / count.clamp(min=1)).backward()
    assert total.item() == 0 and count.item() == 0 and hidden.grad.abs().max() == 0


def test_fused_cross_entropy_under_bf16_autocast_is_close_to_dense() -> None:
    torch.manual_seed(2)
    n, h, v = 40, 16, 300
    hidden, weight = torch.randn(n, h, requires_grad=True), (0.3 * torch.randn(v, h)).requires_grad_()
    bias = torch.randn(v, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    targets[::5] = -100
    params = (hidden, weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, weight, bias).float()
        ref = F.cross_entropy(logits, targets, reduction="sum")
    ref.backward()
    ref_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, count, correct = linear_cross_entropy(hidden, weight, targets, bias, with_correct=True)
    assert abs(total.item() - ref.item()) <= 1e-3 * abs(ref.item())
    assert correct == ((logits.argmax(1) == targets) & (targets != -100)).sum()
    total.backward()
    for p, g in zip(params, ref_grads):
        assert p.grad.dtype == torch.float32
        # both sides multiply in bf16: they agree to bf16's precision, not fp32's
        assert (p.grad - g).abs().max().item() <= 2e-2 * g.abs().max().item()
    assert hidden.grad[::5].abs().max() == 0  # ignored rows get no gradient


def test_attention_runs_in_fp32_under_cpu_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """SDPA's bf16 CPU backward is slow: under CPU bf16 autocast the projections run in bf16 and
    attention in fp32, close to the all-fp32 result."""
    cfg = preset("bert-tiny", vocab_size=100, max_positions=16, dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ids = torch.randint(0, 100, (2, 16))
    pad = torch.ones(2, 16, dtype=torch.long)
    pad[1, 10:] = 0
    dtypes = []
    original = F.scaled_dot_product_attention
    monkeypatch.setattr(
        core.F, "scaled_dot_product_attention", lambda q, *a, **k: dtypes.append(q.dtype) or original(q, *a, **k)
    )
    ref = model(ids, padding_mask=pad).hidden
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(ids, padding_mask=pad).hidden
    assert dtypes == [torch.float32] * (2 * cfg.n_layers)
    assert (got.float() - ref)[pad.bool()].abs().max().item() <= 0.1  # every real token


def test_gpt_fused_loss_equals_the_logits_path_with_the_same_gradients() -> None:
    cfg = preset("gpt-tiny", vocab_size=300, max_positions=32, dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(0)
    a = build_model(cfg)
    b = build_model(cfg)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 300, (3, 20))
    labels = ids.clone()
    labels[1, 12:] = -100
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    dense = a(ids, padding_mask=mask, labels=labels, return_logits=True)
    fused = b(ids, padding_mask=mask, labels=labels)  # the default with labels: fused, no logits
    with torch.no_grad():  # the grad mode does not change what is returned
        assert b(ids, padding_mask=mask, labels=labels).logits is None
        assert b(ids, padding_mask=mask, labels=labels, return_logits=True).logits is not None
        assert torch.equal(b(ids, padding_mask=mask).logits, dense.logits.detach())  # no labels: the logits
    assert dense.logits is not None and fused.logits is None
    assert abs(dense.loss.item() - fused.loss.item()) <= 1e-5
    assert dense.metrics["lm_tokens"] == fused.metrics["lm_tokens"]
    dense.loss.backward()
    fused.loss.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad - q.grad).abs().max().item() <= 1e-5, name


def test_bert_fused_mlm_equals_the_logits_path_with_metrics_and_gradients() -> None:
    cfg = preset("bert-tiny", vocab_size=300, max_positions=32, dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(0)
    a = build_model(cfg)
    b = build_model(cfg)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(5, 300, (2, 16))
    positions = torch.tensor([[1, 4, 9, 0], [2, 3, 0, 0]])
    targets = torch.tensor([[7, 8, 9, -100], [10, 11, -100, -100]])
    nsp = torch.tensor([0, 1])
    kw = dict(mlm_positions=positions, mlm_labels=targets, nsp_labels=nsp)
    dense, fused = a(ids, return_logits=True, **kw), b(ids, **kw)  # the default: fused, no logits
    with torch.no_grad():  # the grad mode does not change what is returned
        assert b(ids, **kw).mlm_logits is None
        assert torch.equal(b(ids, return_logits=True, **kw).mlm_logits, dense.mlm_logits.detach())
    assert fused.mlm_logits is None and dense.mlm_logits is not None
    assert abs(dense.loss.item() - fused.loss.item()) <= 1e-5
    for key in ("mlm_tokens", "mlm_correct"):
        assert dense.metrics[key] == fused.metrics[key]
    assert abs(dense.metrics["mlm_loss_sum"].item() - fused.metrics["mlm_loss_sum"].item()) <= 1e-4
    dense.loss.backward()
    fused.loss.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p.grad - q.grad).abs().max().item() <= 1e-5, name


# --- CPU attention with dropout == SDPA ---------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_cpu_dropout_attention_equals_sdpa_without_dropout(causal: bool, padded: bool) -> None:
    torch.manual_seed(0)
    b, n, t, d = 3, 2, 7, 4
    q, k, v = (torch.randn(b, n, t, d, dtype=torch.float64, requires_grad=True) for _ in range(3))
    pad = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]) if padded else None
    mask = attention_mask(pad, causal, t)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
    got = _attention_with_dropout(q, k, v, mask, causal, 0.0)
    keep = torch.ones(b, dtype=torch.bool)[:, None, None, None] if pad is None else pad.bool()[:, None, :, None]
    keep = keep.expand(b, n, t, d)
    assert (ref - got)[keep].abs().max().item() <= 1e-12
    grads_ref = torch.autograd.grad((ref * keep).sum(), (q, k, v))
    grads_got = torch.autograd.grad((got * keep).sum(), (q, k, v))
    for a, g in zip(grads_ref, grads_got):
        assert (a - g).abs().max().item() <= 1e-12


def test_cpu_dropout_attention_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    x = torch.ones(1, 1, 64, 8)
    outs = torch.stack([_attention_with_dropout(x, x, x, None, False, 0.5) for _ in range(400)])
    assert abs(outs.mean().item() - 1.0) < 0.02


def test_training_forward_uses_the_cpu_path_and_matches_sdpa_in_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = preset("bert-tiny", vocab_size=100, max_positions=16)
    torch.manual_seed(0)
    model = build_model(cfg)
    ids = torch.randint(0, 100, (2, 16))
    calls = []
    original = core._attention_with_dropout
    monkeypatch.setattr(core, "_attention_with_dropout", lambda *a: calls.append(1) or original(*a))
    model.train()
    model(ids)
    assert len(calls) == cfg.n_layers
    monkeypatch.setattr(tuning, "CPU_DROPOUT_ATTENTION", False)
    model(ids)
    assert len(calls) == cfg.n_layers  # SDPA this time


def test_tuning_switches_change_speed_not_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model code reads its speed choices from ``pretune.tuning`` when it runs: the output layer
    + loss in chunks of 3 rows and decoding through F.linear give what the defaults give."""
    from pretune.models.core import KVCache

    torch.manual_seed(0)
    model = build_model(preset("gpt-tiny", vocab_size=50, hidden=32, n_heads=2, n_layers=1, max_positions=16)).eval()
    ids = torch.randint(0, 50, (2, 7))
    hidden = torch.randn(10, 32, requires_grad=True)
    targets = torch.randint(0, 50, (10,))

    def run() -> tuple[Tensor, Tensor, Tensor]:
        hidden.grad = None
        total, _, _ = linear_cross_entropy(hidden, model.decoder_weight, targets)
        total.backward()
        with torch.no_grad():
            logits = model.next_token_logits(ids, None, None, KVCache(1, 7))
        return total.detach(), hidden.grad.clone(), logits

    default = run()
    monkeypatch.setattr(tuning, "CE_CHUNK_ELEMENTS", {"cpu": 3 * 50})  # 4 chunks instead of 1
    monkeypatch.setattr(tuning, "DECODE_WEIGHT_FIRST", False)
    switched = run()
    for a, b in zip(default, switched):
        assert torch.allclose(a, b, atol=1e-5)


def test_fused_cross_entropy_row_weights_equal_the_dense_weighted_sum() -> None:
    torch.manual_seed(3)
    hidden = torch.randn(13, 8, requires_grad=True)
    weight = torch.randn(40, 8, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)
    targets = torch.randint(0, 40, (13,))
    targets[[2, 7]] = -100
    weights = torch.rand(13)
    total, count, _ = linear_cross_entropy(hidden, weight, targets, bias, weights=weights, chunk_rows=5, block_rows=2)
    total.backward()
    got = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    per_row = F.cross_entropy(F.linear(hidden, weight, bias), targets, ignore_index=-100, reduction="none")
    dense = (per_row * weights).sum()
    dense.backward()
    assert torch.allclose(total, dense, atol=1e-5) and int(count) == 11
    for g, t in zip(got, (hidden, weight, bias)):
        assert torch.allclose(g, t.grad, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_new_tokens_on_padding_rows_are_initialised_like_new_rows(tied: bool) -> None:
    """A table padded past its tokenizer (56 rows, 50 tokens): GPT-1's tokens get ids 50-52, rows
    the table already has. They are drawn afresh like rows past the table (pretraining never gave
    them meaning), the tokenizer's rows are kept, and the rows no id reaches are cut."""
    from pretune.train.surgery import resize_vocab

    torch.manual_seed(0)
    model = build_model(preset("gpt-tiny", vocab_size=56, hidden=32, n_heads=2, n_layers=1, max_positions=16,
                               tie_embeddings=tied))
    with torch.no_grad():
        model.body.embeddings.tok.weight[50:] = 7.0  # what padding rows may hold after pretraining
        model.decoder_weight[50:] = 7.0
    old = model.body.embeddings.tok.weight.detach().clone()
    assert resize_vocab(model, 53, new_from=50) == range(50, 53)
    emb = model.body.embeddings.tok.weight.detach()
    assert emb.shape == (53, 32) and torch.equal(emb[:50], old[:50])
    for table in (emb, model.decoder_weight.detach()):
        assert (table[50:] != 7.0).all() and table[50:].std() == pytest.approx(0.02, rel=0.3)
    assert resize_vocab(model, 53, new_from=53) == range(53, 53)  # nothing new: nothing drawn
    assert torch.equal(model.body.embeddings.tok.weight.detach(), emb)


def test_transfer_layers_reinitialises_gpt2_blocks_as_gpt2_does() -> None:
    """GPT-2's residual projections start at std / sqrt(2 L): blocks re-initialised by
    --transfer-layers too, through the model's own initialisation."""
    from pretune.train.surgery import transfer_layers

    torch.manual_seed(0)
    cfg = preset("gpt2-124m", vocab_size=50, hidden=64, n_heads=2, n_layers=8, max_positions=16)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.body.blocks.parameters():
            p.fill_(3.0)  # "pretrained"
    assert transfer_layers(model, 6) == 2
    std = cfg.initializer_range
    for block in model.body.blocks[6:]:
        assert block.attn.proj.weight.std().item() == pytest.approx(std / 4, rel=0.1)  # 1/sqrt(2 * 8)
        assert block.mlp.fc2.weight.std().item() == pytest.approx(std / 4, rel=0.1)
        assert block.attn.qkv.weight.std().item() == pytest.approx(std, rel=0.1)
    assert (model.body.blocks[5].attn.proj.weight == 3.0).all()


@pytest.mark.parametrize("family", ["bert", "gpt"])
@pytest.mark.parametrize("tied", [True, False])
def test_resize_vocab_grows_every_vocabulary_layer_and_keeps_ties(family: str, tied: bool) -> None:
    from pretune.train.surgery import resize_vocab

    torch.manual_seed(0)
    model = build_model(preset(f"{family}-tiny", vocab_size=50, hidden=32, n_heads=2, n_layers=1,
                               max_positions=16, tie_embeddings=tied))
    old_emb = model.body.embeddings.tok.weight.detach().clone()
    old_out = model.decoder_weight.detach().clone()
    resize_vocab(model, 54)
    assert model.cfg.vocab_size == 54 and model.body.embeddings.tok.weight.shape == (54, 32)
    assert model.decoder_weight.shape == (54, 32)
    assert torch.equal(model.body.embeddings.tok.weight[:50], old_emb)
    assert torch.equal(model.decoder_weight[:50], old_out)
    assert (model.decoder_weight is model.body.embeddings.tok.weight) == tied
    ids = torch.tensor([[1, 52, 53, 2]])
    if family == "gpt":  # the new ids can be read and predicted: no index past the output layer
        out = model(ids, labels=ids, return_logits=True)
        assert out.logits.shape == (1, 4, 54) and torch.isfinite(out.loss)
    else:
        assert model.mlm.bias.shape == (54,) and torch.all(model.mlm.bias[50:] == 0)
        out = model(ids, mlm_labels=ids)
        assert torch.isfinite(out.loss)
