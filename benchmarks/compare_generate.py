"""Generation speed: pretune's ``generate`` against ``transformers``' ``generate``, side by side.

For every case both libraries get the same weights (pretune's initialisation exported through
:func:`pretune.hf.to_hf_state_dict`), the same prompts (random token ids, ``--prompt-len`` each),
greedy decoding of exactly ``--new-tokens`` tokens (no end-of-text stop), the same thread count and
fp32. Each side generates once as a warm-up (a few tokens), then the two alternate for
``--repeats`` rounds (the order flips every round, so a shared machine's drift hits both alike)
and the median time gives new tokens per second (prefill included). Both sides' tokens are
compared: greedy decoding of the same weights must agree.

Each model shape runs twice: as GPT-1 (post-LN, ``OpenAIGPTLMHeadModel``: transformers'
OpenAI GPT has no key/value cache, so each step recomputes the whole prefix) and as GPT-2
(pre-LN, ``GPT2LMHeadModel`` with ``attn_implementation="sdpa"`` and its dynamic cache). pretune
uses its key/value cache in both.

One JSON line per case goes to stdout; a Markdown table and notes go to stderr.

Usage::

    python benchmarks/compare_generate.py                  # gpt-mini and gpt1, batch 1 and 8, 128 new tokens
    python benchmarks/compare_generate.py --quick          # gpt-tiny, batch 1 and 2, 16 new tokens (seconds)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from pretune import hf as hfconv  # noqa: E402
from pretune.config import ModelConfig, preset  # noqa: E402
from pretune.lm.generate import generate_ids  # noqa: E402
from pretune.lm.settings import SamplingSettings  # noqa: E402
from pretune.models import build_model  # noqa: E402
from pretune.report import machine  # noqa: E402

MODELS = ("gpt-mini", "gpt1")
BATCHES = (1, 8)
STYLES = {"gpt1": dict(norm="post"), "gpt2": dict(norm="pre")}  # GPT-1 blocks, GPT-2 blocks


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_pair(cfg: ModelConfig, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """pretune's GPT and transformers' (OpenAIGPTLMHeadModel or GPT2LMHeadModel) with the same weights."""
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    ours = build_model(cfg).eval()
    hf_cfg = hfconv.config_to_hf(cfg)
    if cfg.norm == "pre":
        theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_cfg, attn_implementation="sdpa"))
    else:
        theirs = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(**hf_cfg))
    result = theirs.load_state_dict(hfconv.to_hf_state_dict(ours.state_dict(), cfg), strict=False)
    if [k for k in result.missing_keys if not k.endswith(("lm_head.weight", "attn.bias", "position_ids"))] or result.unexpected_keys:
        raise RuntimeError(f"weights did not transfer: {result}")
    theirs.tie_weights()
    return ours, theirs.eval()


def run_ours(model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int) -> tuple[float, list[list[int]]]:
    s = SamplingSettings(max_new_tokens=new_tokens)
    start = time.perf_counter()
    out = generate_ids(model, prompts.tolist(), s, eos_id=None)
    return time.perf_counter() - start, [ids for ids, _ in out]


@torch.no_grad()
def run_hf(model: torch.nn.Module, prompts: torch.Tensor, new_tokens: int) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    return time.perf_counter() - start, out[:, prompts.shape[1]:].tolist()


def run_case(name: str, style: str, batch: int, args: argparse.Namespace) -> dict:
    cfg = preset(name, **STYLES[style], vocab_size=args.vocab, max_positions=args.prompt_len + args.new_tokens, dropout=0.0,
                 attn_dropout=0.0)
    ours, theirs = build_pair(cfg)
    prompts = torch.randint(5, cfg.vocab_size, (batch, args.prompt_len), generator=torch.Generator().manual_seed(1))
    run_ours(ours, prompts, 4)  # warm-up
    run_hf(theirs, prompts, 4)
    times: dict[str, list[float]] = {"pretune": [], "hf": []}
    tokens: dict[str, list[list[int]]] = {}
    for r in range(args.repeats):
        order = [("pretune", run_ours, ours), ("hf", run_hf, theirs)]
        for side, fn, model in order if r % 2 == 0 else order[::-1]:
            seconds, tokens[side] = fn(model, prompts, args.new_tokens)
            times[side].append(seconds)
    new = batch * args.new_tokens
    ours_tps, hf_tps = (new / statistics.median(times[s]) for s in ("pretune", "hf"))
    return {
        "model": name, "style": style, "hf_class": type(theirs).__name__, "hf_kv_cache": style == "gpt2",
        "batch": batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "threads": torch.get_num_threads(),
        "pretune_tokens_per_s": round(ours_tps, 1), "hf_tokens_per_s": round(hf_tps, 1), "ratio": round(ours_tps / hf_tps, 2),
        "same_tokens": tokens["pretune"] == tokens["hf"], "repeats": args.repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=list(STYLES))
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=40478, help="vocabulary size (GPT-1's by default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="gpt-tiny, batch 1 and 2, 16 new tokens, vocab 1000, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.new_tokens, args.vocab, args.repeats = ["gpt-tiny"], [1, 2], 16, 1000, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    note(f"{machine()}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, fp32; {load}")
    rows = []
    for name in args.models:
        for style in args.styles:
            for batch in args.batches:
                started = time.perf_counter()
                record = run_case(name, style, batch, args)
                rows.append(record)
                print(json.dumps(record), flush=True)
                note(f"  {name} {style} batch {batch}: {time.perf_counter() - started:.0f} s")
    note("\n| model | blocks (HF class) | batch | pretune tok/s | transformers tok/s | ratio | same tokens |")
    note("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        cache = "KV cache" if r["hf_kv_cache"] else "no KV cache"
        note(f"| {r['model']} | {r['style']} ({r['hf_class']}, {cache}) | {r['batch']} | {r['pretune_tokens_per_s']:,.1f} | "
             f"{r['hf_tokens_per_s']:,.1f} | {r['ratio']:.2f} | {'yes' if r['same_tokens'] else 'NO'} |")
    note(f"load after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    return 0 if all(r["same_tokens"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
