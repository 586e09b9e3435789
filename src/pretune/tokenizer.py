"""Tokenizers: a thin wrapper over Hugging Face ``tokenizers``: any ``tokenizer.json`` it loads, and
the two kinds pretune trains.

Trained here:

- ``wordpiece``: BERT's pipeline (BertNormalizer, BertPreTokenizer, WordPiece with ``##``
  continuations), special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
- ``bpe``: byte-level BPE (GPT-2 style, nothing is ever unknown) with ``<|endoftext|>`` as the
  document separator and GPT-1's fine-tuning tokens ``<|start|> <|delim|> <|extract|>``, plus
  ``<|pad|>``. Hugging Face ``openai-gpt`` files (BPE with ``</w>`` word ends) load too.

Loaded: a ``tokenizer.json`` of any model type (WordPiece, BPE, Unigram/SentencePiece with
Metaspace, WordLevel; ``kind`` says which), or classic ``vocab.txt`` / ``vocab.json`` +
``merges.txt``. **Roles** (pad, unk, cls, sep, mask, bos, eos, and GPT-1's start, delim,
extract) are found in this order: a role given by the caller (``--token-role mask=<mask>``), the
tokenizer's own config (``special_tokens_map.json``, ``tokenizer_config.json``), a known token
name in the vocabulary (:data:`ROLE_CANDIDATES`), and for cls/bos and sep/eos each other's token
(``[CLS]`` and ``<s>`` open a sequence, ``[SEP]`` and ``</s>`` close one).

:meth:`Tokenizer.encode` never adds special tokens; pretune's transforms do. A saved directory
holds ``tokenizer.json`` plus the classic vocabulary files, and loads with Hugging Face's
``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers

from pretune.data import corpus
from pretune.errors import PretuneError
from pretune.io import write_text

KINDS = ("wordpiece", "bpe")  # the kinds pretune trains
MODEL_KINDS = {models.WordPiece: "wordpiece", models.BPE: "bpe", models.Unigram: "unigram", models.WordLevel: "wordlevel"}
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BPE_SPECIALS = ["<|endoftext|>", "<|pad|>", "<|start|>", "<|delim|>", "<|extract|>"]
# role -> the tokens that play it when no config names one; the first in the vocabulary wins.
ROLE_CANDIDATES = {
    "pad": ("[PAD]", "<|pad|>", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]",),
    "sep": ("[SEP]",),
    "mask": ("[MASK]", "<mask>"),
    "bos": ("<s>",),
    "eos": ("<|endoftext|>", "</s>"),
    "start": ("<|start|>",),
    "delim": ("<|delim|>",),
    "extract": ("<|extract|>",),
}
ROLES = tuple(ROLE_CANDIDATES)
# a role with no token of its own is played by its partner's
_PARTNER = {"cls": "bos", "bos": "cls", "sep": "eos", "eos": "sep"}
# Hugging Face config keys of the roles they have
_HF_KEYS = {
    "pad": "pad_token",
    "unk": "unk_token",
    "cls": "cls_token",
    "sep": "sep_token",
    "mask": "mask_token",
    "bos": "bos_token",
    "eos": "eos_token",
}
_KNOWN_SPECIALS = {t for names in ROLE_CANDIDATES.values() for t in names}


def _role_property(role: str) -> property:
    def get(self: Tokenizer) -> int:
        return self.role_id(role)

    get.__doc__ = f"Id of the {role} token."
    return property(get)


def encode_ids(backend: tokenizers.Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts (no special tokens), in parallel in the Rust library:
    ``encode_batch_fast`` (tokenizers >= 0.20: no character offsets computed), else ``encode_batch``."""
    if not texts:
        return []
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    return [e.ids for e in encode(texts, add_special_tokens=False)]


class Tokenizer:
    """A tokenizer of any ``tokenizers`` model type, with the tokens playing each special role.

    ``roles`` maps a role to its token (see the module docstring); a role given here must name a
    token of the vocabulary.
    """

    def __init__(self, backend: tokenizers.Tokenizer, roles: Mapping[str, str] | None = None):
        kind = MODEL_KINDS.get(type(backend.model))
        if kind is None:
            raise PretuneError(
                f"unsupported tokenizer model {type(backend.model).__name__}; expected one of "
                f"{', '.join(t.__name__ for t in MODEL_KINDS)}"
            )
        self.kind = kind
        backend.no_padding()
        backend.no_truncation()
        self.backend = backend
        self.roles: dict[str, str] = {}
        self._special_ids: frozenset[int] | None = None
        self.set_roles(roles or {})

    def set_roles(self, roles: Mapping[str, str], *, strict: bool = True) -> None:
        """Name the tokens of some roles, and mark them special (so text holding them splits them
        out). ``strict``: a token not in the vocabulary is an error; else that role is skipped."""
        for role, token in roles.items():
            if role not in ROLE_CANDIDATES:
                raise PretuneError(f"--token-role {role}={token}: unknown role {role!r}; roles: {', '.join(ROLES)}")
            if self.backend.token_to_id(token) is None:
                if strict:
                    raise PretuneError(f"--token-role {role}={token}: {token!r} is not in the tokenizer's vocabulary")
                continue
            self.roles[role] = token
        named = [t for t in dict.fromkeys(self.roles.values()) if self.backend.token_to_id(t) not in self.special_ids]
        if named:
            self.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in named])
            self._special_ids = None

    # -- encoding -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, with no special tokens added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """Token ids of many texts at once (parallel in the Rust library), no special tokens added."""
        return encode_ids(self.backend, list(texts))

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` (no special tokens)."""
        return self.backend.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``: WordPiece joins ``##`` pieces, byte-level BPE restores the exact bytes."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        """Id of ``token``, or None when it is not in the vocabulary."""
        return self.backend.token_to_id(token)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str | None]:
        return [self.backend.id_to_token(i) for i in ids]

    # -- special tokens -------------------------------------------------------------------------
    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of all special tokens."""
        if self._special_ids is None:
            added = self.backend.get_added_tokens_decoder()
            self._special_ids = frozenset(i for i, t in added.items() if t.special)
        return self._special_ids

    def role_token(self, role: str, *, partner: bool = True) -> str | None:
        """The token playing ``role``, or None: named, else a known name, else (``partner``) the
        token of cls/bos's or sep/eos's partner role."""
        if role not in ROLE_CANDIDATES:
            raise PretuneError(f"unknown token role {role!r}; roles: {', '.join(ROLES)}")
        if role in self.roles:
            return self.roles[role]
        found = next((t for t in ROLE_CANDIDATES[role] if self.backend.token_to_id(t) is not None), None)
        if found is None and partner and role in _PARTNER:
            return self.role_token(_PARTNER[role], partner=False)
        return found

    def role_id(self, role: str) -> int:
        """Id of the token playing ``role`` (``pad``, ``cls``, ``eos``, ``start``, ...)."""
        token = self.role_token(role)
        if token is None:
            names = " or ".join(ROLE_CANDIDATES[role] + ROLE_CANDIDATES.get(_PARTNER.get(role, ""), ()))
            hint = ("call ensure_gpt_special_tokens() to add it" if role in ("start", "delim", "extract", "pad") and self.kind == "bpe"
                    else f"name its token with --token-role {role}=TOKEN")
            raise PretuneError(f"this tokenizer has no {role} token (looked for {names}); {hint}")
        return self.backend.token_to_id(token)

    def has_role(self, role: str) -> bool:
        return self.role_token(role) is not None

    def hf_token_ids(self) -> dict[str, int]:
        """``bos_token_id``, ``eos_token_id``, ``pad_token_id`` of the roles this tokenizer has
        (for a Hugging Face ``config.json``: ``generate`` stops at the eos token); without a bos
        token, the eos token opens a text too."""
        ids = {f"{role}_token_id": self.role_id(role) for role in ("bos", "eos", "pad") if self.has_role(role)}
        if "eos_token_id" in ids:  # GPT-2's convention: one end-of-text token opens and closes
            ids.setdefault("bos_token_id", ids["eos_token_id"])
        return ids

    @property
    def padding_id(self) -> int:
        """The id every batch pads with: the pad token, else the end-of-text token, else 0. Padding
        is always masked, so only its being a real id matters (the one rule of every collator)."""
        for role in ("pad", "eos"):
            if self.has_role(role):
                return self.role_id(role)
        return 0

    pad_id = _role_property("pad")
    unk_id = _role_property("unk")
    cls_id = _role_property("cls")
    sep_id = _role_property("sep")
    mask_id = _role_property("mask")
    bos_id = _role_property("bos")
    eos_id = _role_property("eos")
    start_id = _role_property("start")
    delim_id = _role_property("delim")
    extract_id = _role_property("extract")

    def add_special_tokens(self, tokens: list[str]) -> list[str]:
        """Add the tokens not yet in the vocabulary as special tokens (new ids at the end).

        Returns the tokens that were added; a model using this tokenizer must grow its embedding.
        """
        missing = [t for t in dict.fromkeys(tokens) if self.backend.token_to_id(t) is None]
        present_not_special = [
            t for t in tokens if t not in missing and self.backend.token_to_id(t) not in self.special_ids
        ]
        new = missing + present_not_special
        if new:
            self.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in new])
            self._special_ids = None
        return missing

    def ensure_gpt_special_tokens(self) -> list[str]:
        """Add whichever GPT-1 tokens are missing: start, delim, extract, and end of text and pad
        unless a token already plays that role (KoGPT2's ``</s>`` and ``<pad>``). Byte-level BPE
        or SentencePiece (BPE or Unigram); a WordPiece vocabulary is BERT's."""
        if self.kind == "wordpiece":
            raise PretuneError("GPT special tokens are for BPE or SentencePiece tokenizers; this one is wordpiece")
        roles = {"<|endoftext|>": "eos", "<|pad|>": "pad"}
        return self.add_special_tokens([t for t in BPE_SPECIALS if t not in roles or not self.has_role(roles[t])])

    # -- save / load ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` plus ``vocab.txt`` (WordPiece) or ``vocab.json`` + ``merges.txt``
        (BPE) and the Hugging Face config files (with the roles), each atomically. Returns the directory."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        vocab = self.backend.get_vocab(with_added_tokens=True)
        by_id = sorted(vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise PretuneError(f"{d}: tokenizer ids are not contiguous; cannot write a vocabulary file")
        files = {"tokenizer.json": self.backend.to_str(pretty=True)}
        if self.kind == "wordpiece":
            files["vocab.txt"] = "".join(t + "\n" for t, _ in by_id)
        elif self.kind == "bpe":
            merges = json.loads(files["tokenizer.json"])["model"]["merges"]
            files["vocab.json"] = json.dumps(dict(by_id), ensure_ascii=False)
            files["merges.txt"] = "#version: 0.2\n" + "".join(
                (m if isinstance(m, str) else " ".join(m)) + "\n" for m in merges
            )
        own = {role: t for role in ROLES if (t := self.role_token(role, partner=False)) is not None}
        specials = {_HF_KEYS[role]: t for role, t in own.items() if role in _HF_KEYS}
        extra = [self.backend.id_to_token(i) for i in sorted(self.special_ids)]
        extra = [t for t in extra if t not in specials.values()]
        if extra:
            specials["additional_special_tokens"] = extra
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "pretune_kind": self.kind, "pretune_roles": own, **specials}
        if self.kind == "wordpiece":
            config["do_lower_case"] = _lowercases(self.backend)
        else:
            config["model_input_names"] = ["input_ids", "attention_mask"]
        files["tokenizer_config.json"] = json.dumps(config, indent=2, ensure_ascii=False)
        files["special_tokens_map.json"] = json.dumps(specials, indent=2, ensure_ascii=False)
        for name, text in files.items():
            write_text(d / name, text)
        return d

    @classmethod
    def load(cls, path: str | Path, roles: Mapping[str, str] | None = None) -> Tokenizer:
        """Load from a directory holding ``tokenizer.json``, or ``vocab.txt`` (BERT), or
        ``vocab.json`` + ``merges.txt`` (GPT BPE); a path to a ``tokenizer.json`` file also works.
        The roles come from the directory's config files, then ``roles`` (which win)."""
        p = Path(path)
        if p.is_file() and p.suffix == ".json":
            return cls(_from_json_file(p), roles)
        if p.is_file():
            raise PretuneError(f"{p}: a file, not a tokenizer directory (pass the directory holding tokenizer.json)")
        if not p.is_dir():
            raise PretuneError(f"{p}: tokenizer directory not found")
        config = _read_json(p / "tokenizer_config.json")
        specials_map = _read_json(p / "special_tokens_map.json")
        if (p / "tokenizer.json").is_file():
            backend = _from_json_file(p / "tokenizer.json")
        elif (p / "vocab.txt").is_file():
            backend = _bert_from_vocab(p / "vocab.txt", config, specials_map)
        elif (p / "vocab.json").is_file() and (p / "merges.txt").is_file():
            backend = _gpt_from_files(p, specials_map)
        else:
            raise PretuneError(
                f"{p}: no tokenizer files; looked for tokenizer.json, vocab.txt, or vocab.json + merges.txt"
            )
        tok = cls(backend)
        tok.set_roles(_configured_roles(config, specials_map), strict=False)
        tok.set_roles(roles or {})
        return tok

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"



def _lowercases(backend: tokenizers.Tokenizer) -> bool:
    norm = json.loads(backend.to_str()).get("normalizer") or {}
    steps = norm.get("normalizers", [norm])
    return any(
        s.get("type") == "Lowercase" or (s.get("type") == "BertNormalizer" and s.get("lowercase"))
        for s in steps
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PretuneError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _from_json_file(path: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust library raises plain Exception
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if path.name == "tokenizer.json":
            raise PretuneError(f"{path}: cannot load the tokenizer ({first}); the file is damaged") from None
        raise PretuneError(f"{path}: not a tokenizer.json ({first}); pass a tokenizer directory") from None


def _configured_roles(config: dict, specials_map: dict) -> dict[str, str]:
    """The roles a Hugging Face (or pretune) tokenizer directory names in its config files."""
    roles = {}
    for source in (config, specials_map):
        roles.update({role: t for role, key in _HF_KEYS.items() if (t := _token_str(source.get(key)))})
    saved = config.get("pretune_roles")
    if isinstance(saved, dict):
        roles.update({r: t for r, t in saved.items() if r in ROLE_CANDIDATES and isinstance(t, str)})
    return roles


def _token_str(value: object) -> str | None:
    """A special token from a Hugging Face map: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _register_specials(backend: tokenizers.Tokenizer, specials_map: dict) -> None:
    """Mark known special tokens already in the vocabulary (and those the map names) as special."""
    named = [_token_str(v) for k, v in specials_map.items() if k != "additional_special_tokens"]
    named += [_token_str(v) for v in specials_map.get("additional_special_tokens", [])]
    candidates = [t for t in dict.fromkeys([*_KNOWN_SPECIALS, *named]) if t]
    present = sorted((i, t) for t in candidates if (i := backend.token_to_id(t)) is not None)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for _, t in present])


def _bert_from_vocab(vocab_file: Path, config: dict, specials_map: dict) -> tokenizers.Tokenizer:
    """BERT's WordPiece pipeline from a bare ``vocab.txt`` (as Hugging Face's BertTokenizer builds it)."""
    vocab = models.WordPiece.read_file(str(vocab_file))
    unk = _token_str(config.get("unk_token")) or _token_str(specials_map.get("unk_token")) or "[UNK]"
    if unk not in vocab:
        raise PretuneError(f"{vocab_file}: unknown token {unk} is not in the vocabulary")
    backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    _register_specials(backend, specials_map)
    cls_tok, sep_tok = "[CLS]", "[SEP]"
    if cls_tok in vocab and sep_tok in vocab:
        backend.post_processor = _bert_post_processor(vocab[cls_tok], vocab[sep_tok])
    return backend


def _bert_post_processor(cls_id: int, sep_id: int) -> processors.TemplateProcessing:
    """[CLS] A [SEP] (B [SEP]): used by Hugging Face callers only; pretune encodes without it."""
    return processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def _gpt_from_files(directory: Path, specials_map: dict) -> tokenizers.Tokenizer:
    """GPT BPE from ``vocab.json`` + ``merges.txt``: openai-gpt style (``</w>`` word ends, lower-cased
    BERT-like pre-tokenization) or GPT-2 style byte-level, detected from the vocabulary."""
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    try:
        vocab, merges = models.BPE.read_file(str(vocab_file), str(merges_file))
    except Exception as exc:
        raise PretuneError(f"{directory}: cannot read vocab.json + merges.txt ({exc})") from None
    if any(t.endswith("</w>") for t in vocab):  # Hugging Face openai-gpt layout
        unk = "<unk>" if "<unk>" in vocab else None
        backend = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token=unk, end_of_word_suffix="</w>"))
        backend.normalizer = normalizers.BertNormalizer(lowercase=True)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.BPEDecoder(suffix="</w>")
    else:
        backend = tokenizers.Tokenizer(models.BPE(vocab, merges))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
    _register_specials(backend, specials_map)
    return backend


# -- training ---------------------------------------------------------------------------------
def _wordpiece_backend(lowercase: bool) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    # strip_accents=False explicitly: left as None it follows `lowercase`, and accent stripping
    # NFD-decomposes Hangul syllables into jamo (the multilingual-BERT bug).
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _bpe_backend(lowercase: bool) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(models.BPE())
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def train_tokenizer(
    files: str | Path | Iterable[str | Path],
    kind: str,
    vocab_size: int,
    *,
    lowercase: bool = False,
    min_frequency: int = 2,
    show_progress: bool = True,
    skip_bad_lines: bool = False,
    stats: corpus.ReadStats | None = None,
) -> Tokenizer:
    """Train a ``wordpiece`` or byte-level ``bpe`` tokenizer on text files, streaming their lines."""
    if kind not in KINDS:
        raise PretuneError(f"unknown tokenizer kind {kind!r}; choose wordpiece or bpe")
    minimum = len(WORDPIECE_SPECIALS) + 1 if kind == "wordpiece" else len(BPE_SPECIALS) + 256
    if vocab_size <= minimum:
        raise PretuneError(f"--vocab-size {vocab_size} is too small for {kind}; it must be over {minimum}")
    if min_frequency < 1:
        raise PretuneError(f"--min-frequency must be at least 1, got {min_frequency}")
    paths = corpus.check_paths(files, skip_bad_lines)
    if kind == "wordpiece":
        backend = _wordpiece_backend(lowercase)
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=WORDPIECE_SPECIALS,
            continuing_subword_prefix="##",
            show_progress=show_progress,
        )
    else:
        backend = _bpe_backend(lowercase)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=BPE_SPECIALS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
    texts: Iterator[str] = corpus.iter_texts(paths, skip_bad_lines=skip_bad_lines, stats=stats)
    backend.train_from_iterator(texts, trainer=trainer)
    if kind == "wordpiece":
        backend.post_processor = _bert_post_processor(
            backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
        )
    return Tokenizer(backend)


__all__ = ["BPE_SPECIALS", "KINDS", "ROLES", "ROLE_CANDIDATES", "WORDPIECE_SPECIALS", "Tokenizer", "train_tokenizer"]
