"""The settings of generation, scoring and fill-mask: each declared once (no torch imported here).

The library functions take these objects and the commands' flags are generated from them
(:mod:`pretune.settings`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pretune.errors import PretuneError
from pretune.settings import Runtime, at_least, between, check_ranges, positive, setting


def parse_roles(items: list[str] | dict[str, str] | None) -> dict[str, str]:
    """``["mask=<mask>", "eos=</s>"]`` as ``{role: token}`` (the ``--token-role`` flag)."""
    if isinstance(items, dict):
        return dict(items)
    out = {}
    for item in items or []:
        role, sep, token = item.partition("=")
        if not sep or not role or not token:
            raise PretuneError(f"--token-role {item!r} must look like ROLE=TOKEN (e.g. mask=<mask>)")
        out[role] = token
    return out


@dataclass
class SamplingSettings:
    """How each next token is chosen."""

    max_new_tokens: int = setting(50, metavar="N", check=at_least(1), help="tokens to generate after each prompt (at most)")
    sample: bool = setting(False, help="sample the next token (with --temperature, --top-k, --top-p); default: greedy")
    temperature: float = setting(1.0, check=positive, help="divide the logits by this before sampling (with --sample)")
    top_k: int = setting(0, metavar="K", check=at_least(0), help="sample among the K most likely tokens only (0: all; with --sample)")
    top_p: float = setting(1.0, metavar="P", check=between(0, 1, low_open=True), help="sample among the fewest most likely tokens whose probability "
                           "reaches P (nucleus sampling; 1: all; with --sample)")
    repetition_penalty: float = setting(1.0, check=positive, help="divide (multiply, when negative) the logit of every token already "
                                        "in the prompt or the output by this (CTRL; 1: off)")
    stop: list[str] | None = setting(None, help="stop a sample when its text contains one of these strings (cut there)")
    num_samples: int = setting(1, metavar="N", check=at_least(1), help="samples per prompt (with --sample)")
    seed: int | None = setting(None, help="random seed for sampling (default: a fresh one, reported with --json); each sample "
                               "depends on it and its prompt's and its own number only, not on --batch-size")

    def check(self) -> None:
        """One-line errors for what the declared ranges (``check=``, :func:`pretune.settings.check_ranges`)
        cannot say: sampling knobs without --sample, empty stop strings."""
        check_ranges(self)
        if not self.sample and (self.temperature != 1.0 or self.top_k or self.top_p != 1.0):
            raise PretuneError("--temperature, --top-k and --top-p shape sampling: add --sample (greedy decoding ignores them)")
        if self.stop is not None and any(not s for s in self.stop):
            raise PretuneError("--stop strings must not be empty")
        if self.num_samples > 1 and not self.sample:
            raise PretuneError(f"--num-samples {self.num_samples} without --sample: greedy decoding gives {self.num_samples} "
                               "identical continuations; add --sample")


@dataclass
class LMRuntime(Runtime):
    """The model to use and how to read its tokenizer."""

    model: str | None = setting(None, help="a trained pretune or Hugging Face model directory, or a Hub id (org/name[@revision])")
    token_roles: dict = setting(
        factory=dict, flag="--token-role", metavar="ROLE=TOKEN", parse=parse_roles,
        help="the token of a special role when the tokenizer's config does not say (pad, unk, cls, sep, mask, "
        "bos, eos), e.g. --token-role eos=</s> mask=<mask>")
    batch_size: int = setting(8, check=at_least(1), help="sequences per forward pass")


__all__ = ["LMRuntime", "SamplingSettings", "parse_roles"]
