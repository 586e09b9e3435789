"""Fine-tuned task heads, both ways with transformers: a fine-tuned pretune model exports as the
transformers class of its head (BertForSequenceClassification ...), and such a class imports as a
fine-tuned pretune model; the logits agree (fp32, eval mode, <= 1e-5). Heads no class computes
exactly are refused with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretune import cli, hf
from pretune.checkpoint import export_hf, load_model, save_model
from pretune.config import preset
from pretune.data.batching import Collator
from pretune.errors import PretuneError
from pretune.inference import load_finetuned
from pretune.models import build_model
from pretune.tasks import TaskModel, TaskSpec, get_family, get_recipe
from pretune.tokenizer import train_tokenizer
from pretune.train.finetune import build_task_model
from pretune.train.settings import FinetuneSettings

transformers = pytest.importorskip("transformers")

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")
PRESETS = {"bert": "bert-tiny", "electra": "electra-tiny", "openai-gpt": "gpt-tiny", "gpt2": "gpt2-124m"}
EXTRA = {"electra": {"embedding_size": 16}}  # ELECTRA's embeddings narrower than the hidden size, projected up
LABELS = {"classification": ["neg", "neu", "pos"], "tagging": ["O", "B-X", "I-X", "B-Y"]}
AUTO = {
    "classification": "AutoModelForSequenceClassification", "regression": "AutoModelForSequenceClassification",
    "tagging": "AutoModelForTokenClassification", "qa": "AutoModelForQuestionAnswering",
    "multiple-choice": "AutoModelForMultipleChoice",
}
LENGTHS = [17, 9, 4]


HEAD_NAMES = ("head.out.", "classifier.", "qa_outputs.", "score.", "summary.")


def _randomise(model: torch.nn.Module) -> None:
    """LayerNorm weights about 1, LayerNorm and Linear biases far from 0, a task head of weights far
    larger than its initial ones: a dropped or swapped bias cannot go unnoticed, nor a head whose
    logits barely move from example to example."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or "ln_" in name:
                p.normal_(1.0, 0.2) if name.endswith("weight") else p.normal_(0.0, 0.5)
            elif name.endswith("bias") or any(h in name for h in HEAD_NAMES):
                p.normal_(0.0, 0.5)


def _spec(family: str, labels: list[str] | None = None, **fields) -> TaskSpec:
    recipe = get_recipe(family)
    return TaskSpec(recipe=family, family=family, metric_names=list(recipe.metric_names),
                    main_metric=recipe.main_metric, labels=labels, max_seq_len=64, **fields)


def _finetuned(directory: Path, arch: str, family: str, *, seed: int = 0, tie: bool = True, **fields) -> TaskModel:
    """A pretune fine-tuned model directory (random weights), as `pretune finetune` saves one."""
    torch.manual_seed(seed)
    cfg = preset(PRESETS[arch], vocab_size=99, n_layers=2, hidden=32, n_heads=4, max_positions=64, tie_embeddings=tie,
                 **EXTRA.get(arch, {}))
    spec = _spec(family, LABELS.get(family), **fields)
    model = TaskModel(build_model(cfg), spec, get_family(family))
    _randomise(model)
    save_model(directory, model, None, spec)
    return model.eval()


def _batch(gpt: bool, choices: int = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch as pretune's collator lays it out (pad id 0; GPT: the extract position)."""
    g = torch.Generator().manual_seed(seed)
    feats = []
    for n in LENGTHS:
        seqs = [torch.randint(5, 99, (n - k,), generator=g).tolist() for k in range(max(choices, 1))]
        feat = {"input_ids": seqs if choices else seqs[0]}
        if not gpt:
            types = [[0] * (len(s) // 2) + [1] * (len(s) - len(s) // 2) for s in seqs]
            feat["token_type_ids"] = types if choices else types[0]
        feats.append(feat)
    return Collator(0, extract=gpt)(feats)


def _ours(model: TaskModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _theirs(hf_model, family: str, batch: dict[str, torch.Tensor], gpt: bool) -> torch.Tensor:
    """transformers' logits on the same batch, in pretune's layout ((b, C), (b,), (b, n), (b, t, 2), (b, t, C))."""
    kw = {"input_ids": batch["input_ids"], "attention_mask": batch["padding_mask"]}
    if not gpt:
        kw["token_type_ids"] = batch["token_type_ids"]
    if gpt and family == "multiple-choice":  # causal, padded on the right: no token up to the extract one sees padding
        kw = {"input_ids": batch["input_ids"], "mc_token_ids": batch["extract_pos"]}  # (OpenAIGPT takes no 3-d mask)
    with torch.no_grad():
        out = hf_model(**kw)
    if family == "qa":
        return torch.stack([out.start_logits, out.end_logits], -1)
    if gpt and family == "multiple-choice":
        return out.mc_logits
    return out.logits.squeeze(-1) if family == "regression" else out.logits


def _compare(ours: torch.Tensor, theirs: torch.Tensor, batch: dict[str, torch.Tensor], per_token: bool) -> float:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    if per_token:  # padding positions: pretune's QA masks them, transformers does not
        sel = batch["padding_mask"].bool()
        ours, theirs = ours[sel], theirs[sel]
    return (ours - theirs).abs().max().item()


def _pretune_task_model(directory: Path) -> TaskModel:
    """pretune's own inference model for a directory: load_finetuned without the tokenizer it needs for text."""
    loaded = load_model(directory)
    model = TaskModel(loaded.model, loaded.task, get_family(loaded.task.family))
    model.head.load_state_dict({k[len("head."):]: v for k, v in loaded.head.items()})
    return model.eval()


# --------------------------------------------------------------------------------------------
# Export: pretune fine-tuned -> the transformers class of its head

EXPORTS = [
    ("bert", "classification", "BertForSequenceClassification"),
    ("bert", "regression", "BertForSequenceClassification"),
    ("bert", "tagging", "BertForTokenClassification"),
    ("bert", "qa", "BertForQuestionAnswering"),
    ("bert", "multiple-choice", "BertForMultipleChoice"),
    ("electra", "classification", "ElectraForSequenceClassification"),
    ("electra", "regression", "ElectraForSequenceClassification"),
    ("electra", "tagging", "ElectraForTokenClassification"),
    ("electra", "qa", "ElectraForQuestionAnswering"),
    ("electra", "multiple-choice", "ElectraForMultipleChoice"),
    ("openai-gpt", "classification", "OpenAIGPTForSequenceClassification"),
    ("openai-gpt", "regression", "OpenAIGPTForSequenceClassification"),
    ("openai-gpt", "multiple-choice", "OpenAIGPTDoubleHeadsModel"),
    ("gpt2", "classification", "GPT2ForSequenceClassification"),
    ("gpt2", "multiple-choice", "GPT2DoubleHeadsModel"),
    ("gpt2", "tagging", "GPT2ForTokenClassification"),
]


@pytest.mark.parametrize("arch,family,cls", EXPORTS, ids=[f"{a}-{f}" for a, f, _ in EXPORTS])
def test_export_gives_transformers_the_same_logits(tmp_path: Path, arch: str, family: str, cls: str, capsys) -> None:
    gpt = arch in ("openai-gpt", "gpt2")
    fields = {"pair_mode": "entailment"} if gpt else {}  # one ordering: what one transformers sequence holds
    _finetuned(tmp_path / "ft", arch, family, **fields)
    assert cli.main(["convert", "--to-hf", str(tmp_path / "ft"), "--out", str(tmp_path / "hf")]) == 0
    assert f"as {cls}" in capsys.readouterr().out
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == [cls]
    if family in LABELS:
        assert [config["id2label"][str(i)] for i in range(len(LABELS[family]))] == LABELS[family]
    if family in ("classification", "regression"):
        assert config["problem_type"] == ("regression" if family == "regression" else "single_label_classification")
    loader = getattr(transformers, cls if gpt and family == "multiple-choice" else AUTO[family])
    theirs_model, info = loader.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert type(theirs_model).__name__ == cls
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # nothing initialised at random, nothing left
    theirs_model.eval()
    ours_model = _pretune_task_model(tmp_path / "ft")
    batch = _batch(gpt, choices=3 if family == "multiple-choice" else 0)
    ours, theirs = _ours(ours_model, batch), _theirs(theirs_model, family, batch, gpt)
    assert _compare(ours, theirs, batch, family in ("qa", "tagging")) <= TOL


def test_gpt_classification_bias_is_folded_into_the_bias_free_score_layer(tmp_path: Path) -> None:
    """transformers' GPT score layer has no bias: the export folds pretune's into the weight, exactly
    on a LayerNorm's outputs, and leaves the body untouched."""
    model = _finetuned(tmp_path / "ft", "gpt2", "classification", pair_mode="entailment")
    export_hf(load_model(tmp_path / "ft").model, tmp_path / "hf", task=model.spec, head={
        k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    theirs = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert not torch.equal(theirs.score.weight, model.head.out.weight)  # folded, since the bias is not 0
    assert torch.equal(theirs.transformer.ln_f.bias, model.body.norm_f.bias)  # the body is the body
    batch = _batch(True)
    assert _compare(_ours(model, batch), _theirs(theirs, "classification", batch, True), batch, False) <= TOL


@pytest.mark.parametrize("lm_coef", [0.5, 0.0])
def test_untied_gpt_multiple_choice_keeps_its_lm_layer_or_says_it_has_none(tmp_path: Path, lm_coef: float) -> None:
    """DoubleHeads holds an LM layer too: an untied GPT fine-tuned with the LM loss exports its own
    (same LM logits); one fine-tuned without it has none, and the export says so."""
    model = _finetuned(tmp_path / "ft", "gpt2", "multiple-choice", tie=False, lm_coef=lm_coef)
    loaded = load_model(tmp_path / "ft")
    if lm_coef:
        export_hf(loaded.model, tmp_path / "hf", exclude=loaded.missing, task=loaded.task, head=loaded.head)
    else:
        with pytest.warns(UserWarning, match="no LM output layer of its own.*mc_logits are exact"):
            export_hf(loaded.model, tmp_path / "hf", exclude=loaded.missing, task=loaded.task, head=loaded.head)
    theirs, info = transformers.GPT2DoubleHeadsModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert set(info["missing_keys"]) == (set() if lm_coef else {"lm_head.weight"})
    batch = _batch(True, choices=3)
    out = theirs.eval()(input_ids=batch["input_ids"], mc_token_ids=batch["extract_pos"])
    assert _compare(_ours(model, batch), out.mc_logits.detach(), batch, False) <= TOL
    if lm_coef:
        flat = batch["input_ids"].flatten(0, 1)
        with torch.no_grad():
            ours_lm = torch.nn.functional.linear(model.body(flat)[0], model.lm_head.weight)
        assert (out.logits.detach().flatten(0, 1) - ours_lm).abs().max().item() <= TOL


def test_fold_bias_refuses_a_layernorm_that_has_no_constant_direction() -> None:
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(3, 16, generator=g), torch.randn(3, generator=g)
    gamma = 1 + 0.1 * torch.randn(16, generator=g)
    assert hf.fold_bias(w, b, gamma, torch.zeros(16)) is None  # β = 0: every output sums to 0 after 1/γ
    assert torch.equal(hf.fold_bias(w, torch.zeros(3), gamma, torch.zeros(16)), w)  # no bias: nothing to fold
    beta = torch.randn(16, generator=g)
    folded = hf.fold_bias(w, b, gamma, beta)
    z = torch.randn(5, 16, generator=g, dtype=torch.float64)
    h = ((z - z.mean(1, keepdim=True)) / z.std(1, unbiased=False, keepdim=True) * gamma.double() + beta.double())
    assert torch.allclose(h @ folded.double().T, h @ w.double().T + b.double(), atol=1e-5)


@pytest.mark.parametrize("case", ["openai-gpt tagging", "similarity pair", "unfoldable bias"])
def test_export_refuses_a_head_no_transformers_class_computes(tmp_path: Path, case: str) -> None:
    if case == "openai-gpt tagging":
        _finetuned(tmp_path / "ft", "openai-gpt", "tagging")
        why = "transformers has no openai-gpt class for a tagging head"
    elif case == "similarity pair":
        _finetuned(tmp_path / "ft", "openai-gpt", "regression", pair_mode="similarity", columns={"text_pair_col": "text2"})
        why = "the sum of a pair's two orderings"
    else:
        model = _finetuned(tmp_path / "ft", "openai-gpt", "classification")
        with torch.no_grad():
            model.body.blocks[-1].norm2.bias.zero_()  # a LayerNorm output with no constant direction
        save_model(tmp_path / "ft", model, None, model.spec, replace=True)
        why = "cannot be folded"
    loaded = load_model(tmp_path / "ft")
    with pytest.raises(PretuneError, match=why + ".*pass --body-only"):
        export_hf(loaded.model, tmp_path / "hf", exclude=loaded.missing, task=loaded.task, head=loaded.head)
    assert not (tmp_path / "hf").exists()
    # --body-only: the body alone, as the LM class, which transformers loads with the same hidden states
    assert cli.main(["convert", "--to-hf", str(tmp_path / "ft"), "--out", str(tmp_path / "body"), "--body-only"]) == 0
    config = json.loads((tmp_path / "body" / "config.json").read_text())
    assert config["architectures"] == ["OpenAIGPTLMHeadModel"] and hf.TASK_KEY not in config
    body = transformers.OpenAIGPTModel.from_pretrained(tmp_path / "body").eval()
    ours = load_model(tmp_path / "ft").model.eval()
    ids = _batch(True)["input_ids"]
    with torch.no_grad():
        assert (body(input_ids=ids).last_hidden_state - ours(ids).hidden).abs().max().item() <= TOL


# --------------------------------------------------------------------------------------------
# Import: a transformers fine-tuned class -> a fine-tuned pretune model

IMPORTS = [
    ("BertForSequenceClassification", "classification", {"id2label": {0: "neg", 1: "neu", 2: "pos"}}),
    ("BertForSequenceClassification", "regression", {"num_labels": 1}),
    ("BertForTokenClassification", "tagging", {"id2label": {0: "O", 1: "B-X", 2: "I-X", 3: "B-Y"}}),
    ("BertForQuestionAnswering", "qa", {}),
    ("BertForMultipleChoice", "multiple-choice", {}),
    ("ElectraForSequenceClassification", "classification", {"id2label": {0: "neg", 1: "neu", 2: "pos"}}),
    ("ElectraForSequenceClassification", "regression", {"num_labels": 1}),
    ("ElectraForTokenClassification", "tagging", {"id2label": {0: "O", 1: "B-X", 2: "I-X", 3: "B-Y"}}),
    ("ElectraForQuestionAnswering", "qa", {}),
    ("ElectraForMultipleChoice", "multiple-choice", {}),
]


def _hf_bert(directory: Path, cls: str, **config) -> Path:
    """A tiny random transformers BERT or ELECTRA fine-tuned class, saved."""
    if cls.startswith("Electra"):
        config.setdefault("embedding_size", 16)
    config_cls = transformers.ElectraConfig if cls.startswith("Electra") else transformers.BertConfig
    cfg = config_cls(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                     max_position_embeddings=64, **config)
    torch.manual_seed(0)
    model = getattr(transformers, cls)(cfg).eval()
    _randomise(model)
    model.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("cls,family,config", IMPORTS, ids=[f"{c}-{f}" for c, f, _ in IMPORTS])
def test_transformers_fine_tuned_class_loads_with_its_head(tmp_path: Path, cls: str, family: str, config: dict) -> None:
    hf_dir = _hf_bert(tmp_path / "hf", cls, **config)
    loaded = load_model(hf_dir)
    assert loaded.task.family == family and loaded.task.recipe == family  # the family's generic recipe
    assert loaded.task.labels == LABELS.get(family)
    ours_model = _pretune_task_model(hf_dir)
    theirs_model = getattr(transformers, cls).from_pretrained(hf_dir).eval()
    batch = _batch(False, choices=3 if family == "multiple-choice" else 0, seed=1)
    assert _compare(_ours(ours_model, batch), _theirs(theirs_model, family, batch, False), batch,
                    family in ("qa", "tagging")) <= TOL
    # convert --from-hf: a fine-tuned pretune directory, the same head and task
    assert cli.main(["convert", "--from-hf", str(hf_dir), "--out", str(tmp_path / "pt")]) == 0
    saved = json.loads((tmp_path / "pt" / "config.json").read_text())["task"]
    assert saved["family"] == family and saved["labels"] == LABELS.get(family)
    assert _compare(_ours(_pretune_task_model(tmp_path / "pt"), batch), _ours(ours_model, batch), batch, False) == 0


def test_placeholder_label_names_become_class_ids(tmp_path: Path) -> None:
    """transformers' LABEL_0, LABEL_1 (no names given) read as the classes "0", "1", as GLUE files write them."""
    hf_dir = _hf_bert(tmp_path / "hf", "BertForSequenceClassification", num_labels=2)
    assert load_model(hf_dir).task.labels == ["0", "1"]


@pytest.mark.parametrize("arch,family", [("openai-gpt", "classification"), ("gpt2", "multiple-choice"),
                                         ("gpt2", "tagging"), ("bert", "classification"),
                                         ("electra", "multiple-choice")])
def test_pretune_export_reads_back_as_the_same_fine_tuned_model(tmp_path: Path, arch: str, family: str) -> None:
    """Round trip: pretune -> transformers -> pretune keeps the task (its record) and the logits."""
    gpt = arch in ("openai-gpt", "gpt2")
    model = _finetuned(tmp_path / "ft", arch, family, pair_mode="entailment", columns={"text_col": "review"})
    assert cli.main(["convert", "--to-hf", str(tmp_path / "ft"), "--out", str(tmp_path / "hf")]) == 0
    back = load_model(tmp_path / "hf")
    assert back.task == model.spec
    batch = _batch(gpt, choices=3 if family == "multiple-choice" else 0, seed=2)
    diff = _compare(_ours(_pretune_task_model(tmp_path / "hf"), batch), _ours(model, batch), batch, family == "tagging")
    assert diff <= TOL


@pytest.mark.parametrize("case", ["multi-label", "gpt2 trained on plain text"])
def test_a_head_pretune_cannot_hold_is_refused_and_the_body_loads(tmp_path: Path, case: str) -> None:
    if case == "multi-label":
        hf_dir = _hf_bert(tmp_path / "hf", "BertForSequenceClassification", num_labels=3,
                          problem_type="multi_label_classification")
        body_cls, why = transformers.BertModel, "problem_type 'multi_label_classification'"
    else:
        cfg = transformers.GPT2Config(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=1)
        torch.manual_seed(0)
        model = transformers.GPT2ForSequenceClassification(cfg)
        _randomise(model)
        model.save_pretrained(tmp_path / "hf")
        hf_dir, body_cls, why = tmp_path / "hf", transformers.GPT2Model, "not laid out as pretune's GPT-1"
    with pytest.warns(UserWarning, match=f"head is not loaded: .*{why}.*only the body is loaded"):
        loaded = load_model(hf_dir)
    assert loaded.task is None and not loaded.head
    ids = _batch(case != "multi-label", seed=3)["input_ids"]
    with torch.no_grad():
        ref = body_cls.from_pretrained(hf_dir).eval()(input_ids=ids).last_hidden_state
        assert (loaded.model.eval()(ids).hidden - ref).abs().max().item() <= TOL
    with pytest.warns(UserWarning), pytest.raises(PretuneError, match="holds no task head pretune can run"):
        load_finetuned(hf_dir, device="cpu")


# --------------------------------------------------------------------------------------------
# End to end: predict and evaluate run a downloaded fine-tuned checkpoint


def test_predict_and_evaluate_run_a_transformers_classifier(tmp_path: Path, capsys) -> None:
    words = "the cat sat on a mat dog ran far away is big small red blue green good bad".split()
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(words[i:] + words[:i]) for i in range(len(words))) + "\n")
    tok = train_tokenizer([tmp_path / "corpus.txt"], "wordpiece", 90, lowercase=True, show_progress=False)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=37, max_position_embeddings=64, id2label={0: "bad", 1: "good"})
    torch.manual_seed(0)
    theirs = transformers.BertForSequenceClassification(cfg).eval()
    _randomise(theirs)
    theirs.save_pretrained(tmp_path / "hf")
    tok.save(tmp_path / "hf")
    rows = [(" ".join(words[i % 7: i % 7 + 3 + i % 4]), "good" if i % 3 else "bad") for i in range(12)]
    (tmp_path / "data.tsv").write_text("review\tstars\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    columns = ["--text-col", "review", "--label-col", "stars"]
    assert cli.main(["predict", "--model", str(tmp_path / "hf"), "--task", "classification", *columns, "--data",
                     str(tmp_path / "data.tsv"), "--out", str(tmp_path / "preds.jsonl"), "--device", "cpu",
                     "--precision", "fp32", "--no-progress"]) == 0
    preds = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    enc = [tok.encode(t) for t, _ in rows]  # [CLS] text [SEP], as BERT's run_glue lays a sentence out
    with torch.no_grad():
        probs = [theirs(input_ids=torch.tensor([[tok.cls_id, *e, tok.sep_id]])).logits.softmax(-1)[0] for e in enc]
    for p, q in zip(preds, probs):
        assert [p["probabilities"]["bad"], p["probabilities"]["good"]] == pytest.approx(q.tolist(), abs=1e-5)
        assert p["label"] == ("good" if q[1] > q[0] else "bad")
    assert cli.main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "pt")]) == 0
    assert cli.main(["evaluate", "--model", str(tmp_path / "pt"), *columns, "--data", str(tmp_path / "data.tsv"),
                     "--out", str(tmp_path / "eval.json"), "--device", "cpu", "--precision", "fp32",
                     "--no-progress"]) == 0
    accuracy = sum(p["label"] == y for p, (_, y) in zip(preds, rows)) / len(rows)
    assert json.loads((tmp_path / "eval.json").read_text())["accuracy"] == pytest.approx(accuracy)
    # fine-tuning it further starts from its head (same task, same labels)
    recipe = get_recipe("classification", text_col="review", label_col="stars")
    settings = FinetuneSettings(model=str(tmp_path / "hf"), task="classification")
    model, _, new = build_task_model(settings, recipe, recipe.read(tmp_path / "data.tsv", train=True))
    assert torch.equal(model.head.out.weight, theirs.classifier.weight) and new == ("head.",)


def test_similarity_mode_without_pairs_exports(tmp_path: Path) -> None:
    """pair_mode similarity adds two orderings of a pair only: a one-sentence task reads one sequence."""
    model = _finetuned(tmp_path / "ft", "openai-gpt", "regression", pair_mode="similarity")  # no text_pair_col
    loaded = load_model(tmp_path / "ft")
    export_hf(loaded.model, tmp_path / "hf", exclude=loaded.missing, task=loaded.task, head=loaded.head)
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    batch = _batch(True, seed=4)
    assert _compare(_ours(model, batch), _theirs(theirs, "regression", batch, True), batch, False) <= TOL


def test_head_tensors_without_a_named_class_are_a_clear_error(tmp_path: Path) -> None:
    """An old checkpoint whose config.json names no architectures: say which class to name."""
    hf_dir = _hf_bert(tmp_path / "hf", "BertForSequenceClassification", num_labels=2)
    config = json.loads((hf_dir / "config.json").read_text())
    del config["architectures"]
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(PretuneError, match=r"classifier\.bias belong to a fine-tuned class.*BertForSequenceClassification"):
        load_model(hf_dir)
