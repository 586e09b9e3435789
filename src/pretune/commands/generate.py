"""`pretune generate`: continue prompts with a GPT (GPT-1 or the GPT-2 family)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pretune.errors import PretuneError
from pretune.lm.settings import LMRuntime, SamplingSettings
from pretune.settings import add_command, nested, require, setting


@dataclass
class GenerateSettings(LMRuntime):
    sampling: SamplingSettings = nested(SamplingSettings)
    prompts_file: str | None = setting(None, flag="--prompts", metavar="FILE", help="prompts, one per line (blank lines skipped)")
    as_json: bool = setting(False, flag="--json", help="one JSON line per sample instead of text")
    prompt: list[str] | None = setting(None, positional=True, help="prompts (default: --prompts FILE, else the lines of stdin)")


def register(sub: argparse._SubParsersAction) -> None:
    add_command(sub, "generate", GenerateSettings, run, help="continue prompts with a GPT",
                description="Continue each prompt with a GPT (GPT-1 or GPT-2 family) using a key/value cache: greedy by "
                "default, --sample for temperature / top-k / top-p sampling. One prompt with one sample streams its "
                "text as it is generated. A prompt too long for the context is cut from the left, with a warning. Give "
                "prompts before --stop / --token-role (they take several values) or after --.")


def read_prompts(s: GenerateSettings) -> list[str]:
    """The prompts of the command line, of --prompts FILE, or the lines of a piped stdin."""
    from pretune.io import read_texts

    if s.prompt and s.prompts_file:
        raise PretuneError("give prompts as arguments or with --prompts FILE, not both")
    if s.prompts_file:
        from pretune.io import read_text_file

        path = Path(s.prompts_file)
        prompts = [line for line in read_text_file(path, flag="--prompts").splitlines() if line.strip()]
        if not prompts:
            raise PretuneError(f"--prompts {path}: no prompt in the file (every line is blank)")
        return prompts
    return read_texts(s.prompt)


def run(s: GenerateSettings) -> int:
    from pretune.lm.generate import generate
    from pretune.loader import load_ready

    require(s, "model")
    prompts = read_prompts(s)
    s.sampling.check()
    ready = load_ready(s.model, family="gpt", lm_output=True, roles=s.token_roles, device=s.device, precision=s.precision,
                       verb="generate")
    stream = len(prompts) == 1 and s.sampling.num_samples == 1 and not s.as_json
    if stream:
        print(prompts[0], end="", flush=True)
    with ready.autocast():
        samples = generate(ready.model, ready.tokenizer, prompts, s.sampling, batch_size=s.batch_size,
                           on_text=(lambda _row, text: print(text, end="", flush=True)) if stream else None)
    if stream:
        print()
        return 0
    for x in samples:
        if s.as_json:
            print(json.dumps({"prompt": x.prompt, "prompt_index": x.prompt_index, "sample": x.sample_index, "text": x.text,
                              "finish": x.finish, "new_tokens": len(x.token_ids), "prompt_tokens": x.prompt_tokens,
                              "prompt_tokens_cut": x.dropped, "seed": x.seed}, ensure_ascii=False))
        else:
            print(f"--- prompt {x.prompt_index + 1}, sample {x.sample_index + 1} ({x.finish})", file=sys.stderr, flush=True)
            print(x.prompt + x.text, flush=True)
    return 0
