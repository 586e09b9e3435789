"""The HF comparison harness on a micro case, and the fast paths it measures against the plain ones."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "model", "mode", "device", "dtype", "batch", "seq_len", "pretune_tokens_per_s", "hf_tokens_per_s", "ratio",
    "pretune_peak_mem_mb", "hf_peak_mem_mb",
}
MICRO = {"vocab_size": 500, "max_positions": 64}


def _harness():
    spec = importlib.util.spec_from_file_location("compare_hf", ROOT / "benchmarks" / "compare_hf.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_hf"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["bert-tiny", "gpt-tiny"])
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_harness_micro_case_prints_the_keys_and_equal_first_losses(name: str, mode: str) -> None:
    pytest.importorskip("transformers")
    harness = _harness()
    record = harness.run_case(name, mode, 2, 32, warmup=0, repeats=1, overrides=MICRO)
    assert KEYS <= set(record)
    assert record["model"] == name and record["mode"] == mode and record["batch"] == 2 and record["seq_len"] == 32
    assert record["pretune_tokens_per_s"] > 0 and record["hf_tokens_per_s"] > 0
    assert abs(record["pretune_loss0"] - record["hf_loss0"]) <= 1e-4
    if record["pretune_peak_mem_mb"] is not None:
        assert record["pretune_peak_mem_mb"] > 0 and record["hf_peak_mem_mb"] > 0


def test_harness_can_use_the_trainers_optimizer() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("pretune.train.trainer")
    harness = _harness()
    record = harness.run_case("gpt-tiny", "train", 2, 16, warmup=0, repeats=1, overrides=MICRO, optimizer="trainer", memory=False)
    assert record["optimizer"] == "trainer" and record["ratio"] > 0


def test_harness_command_line_prints_one_json_line_per_case(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    import json

    harness = _harness()
    harness.CASES[:] = [("gpt-tiny", 16, 2, 2)]
    assert harness.main(["--warmup", "0", "--repeats", "1", "--modes", "infer", "--no-memory"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and KEYS <= set(json.loads(lines[0]))


def test_ablation_runs_every_variant() -> None:
    harness = _harness()
    harness.ABLATIONS  # noqa: B018
    record = harness.run_ablation("gpt-tiny", "infer", 2, 16, warmup=0, repeats=1, memory=False)
    assert set(record["ablation"]) == {"logits", "fused_ce"}
