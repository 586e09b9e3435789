"""The memory check before training: per process, in the precision the run trains in, for the
lengths it will see (fine-tuning: the longest training example), and ``--no-memory-check``.
(The refusals themselves are rows 25 and 26 of docs/errors.md, run by tests/test_errors.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretune import validate
from pretune.config import preset
from pretune.errors import PretuneError
from pretune.train.settings import FinetuneSettings, PretrainSettings
from pretune.validate import check_memory, finetune_memory, parameter_count, training_bytes

ROOT = Path(__file__).resolve().parents[1]
GPU_16GB = 15_600_000_000  # what a 16 GB T4 or V100 has free once CUDA is up
BERT_BASE = preset("bert-base", vocab_size=30522)  # bert-base-uncased: 110 M parameters, 512 positions


@pytest.fixture(autouse=True)
def _one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def _free(monkeypatch: pytest.MonkeyPatch, n: int, where: str = "GPU") -> None:
    monkeypatch.setattr(validate, "available_bytes", lambda device: (n, where))


def _activations(cfg, batch: int, length: int, cpu: bool = False, precision: str = "fp32") -> int:
    """The activation part of the estimate (what changes with the batch, the length and the precision)."""
    return training_bytes(cfg, batch, length, cpu, precision=precision) - training_bytes(cfg, 0, length, cpu, precision=precision)


def _finetune(precision: str, device: str = "cuda", **kw) -> FinetuneSettings:
    s = FinetuneSettings(batch_size=32, **kw)
    s.trainer.precision, s.trainer.device = precision, device
    return s


def _features(lengths: list[int]) -> list[dict]:
    return [{"input_ids": [5] * n, "label": 0} for n in lengths]


def test_bert_base_batch_32_fine_tuning_starts_on_a_16_gb_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue: refused, estimated in fp32 at the model's 512 positions (18.9 GB). Batches are
    padded to their longest example, so sentences of up to 128 tokens take a quarter of that."""
    _free(monkeypatch, GPU_16GB)
    short = _features([20 + i % 109 for i in range(5000)])  # 20..128 tokens
    for precision in ("fp32", "fp16", "bf16"):
        finetune_memory(_finetune(precision), BERT_BASE, short)  # fits (about 6.0, 4.1, 4.1 GB)
    full = _features([512] * 100)
    with pytest.raises(PretuneError, match=r"--batch-size 32 x --max-seq-len 512: .* about 18\.9 GB and 15\.6 GB is free on the GPU"):
        finetune_memory(_finetune("fp32"), BERT_BASE, full)  # examples that really are 512 long, in fp32
    finetune_memory(_finetune("fp16"), BERT_BASE, full)  # in fp16: 10.5 GB
    # the longest example counts, within --max-seq-len, and the message says so
    with pytest.raises(PretuneError, match=r"--max-seq-len 512 \(the longest training example: 500 tokens\)"):
        finetune_memory(_finetune("fp32"), BERT_BASE, _features([40, 500, 60]))
    finetune_memory(_finetune("fp32", max_seq_len=128), BERT_BASE, _features([40, 500, 60]))  # cut to 128


def test_multiple_choice_counts_every_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    _free(monkeypatch, GPU_16GB)
    choice = [{"input_ids": [[5] * 200] * 4, "label": 0}]  # 4 choices of 200 tokens: 128 sequences a batch
    with pytest.raises(PretuneError, match="the longest training example: 200 tokens"):
        finetune_memory(_finetune("fp32"), BERT_BASE, choice)
    finetune_memory(_finetune("fp32"), BERT_BASE, [{"input_ids": [5] * 200, "label": 0}])


def test_two_processes_halve_each_ones_activations(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _activations(BERT_BASE, 16, 256) * 2 == _activations(BERT_BASE, 32, 256)
    one = training_bytes(BERT_BASE, 32, 256, False)
    each = training_bytes(BERT_BASE, 16, 256, False)  # weights, gradients and moments stay whole
    assert one - each == _activations(BERT_BASE, 32, 256) // 2
    # a GPU that holds half the batch but not all of it: refused for one process, fine for two
    _free(monkeypatch, (one + each) // 2)
    with pytest.raises(PretuneError, match="--batch-size 32 x --seq-len 256"):
        check_memory(BERT_BASE, 32, 256, "cuda", "--seq-len")
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets for each process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    check_memory(BERT_BASE, 32, 256, "cuda", "--seq-len")  # each on its own GPU
    # on a CPU both processes share the machine's RAM: their sum is what must fit
    _free(monkeypatch, (one + each) // 2, "CPU")
    with pytest.raises(PretuneError, match=r"about .* GB \(2 processes here, .* GB each\)"):
        check_memory(BERT_BASE, 32, 256, "cpu", "--seq-len")
    # FSDP shards the weights, gradients and moments: 16 bytes a parameter over the processes
    assert (training_bytes(BERT_BASE, 16, 256, False) - training_bytes(BERT_BASE, 16, 256, False, shards=2)
            == 16 * parameter_count(BERT_BASE) - 16 * parameter_count(BERT_BASE) // 2)


def test_half_precision_halves_the_activations_on_a_gpu() -> None:
    for precision in ("bf16", "fp16"):
        assert _activations(BERT_BASE, 32, 128, precision=precision) * 2 == _activations(BERT_BASE, 32, 128)
        # fp32 weights, gradients and moments stay; autocast adds a 2-byte copy of the weights
        assert (training_bytes(BERT_BASE, 0, 128, False, precision=precision)
                == training_bytes(BERT_BASE, 0, 128, False) + 2 * parameter_count(BERT_BASE))
    # on a CPU attention stays fp32 under autocast: less of a gain (3.5 bytes an activation), and
    # the attention probabilities kept for dropout stay fp32
    plain = BERT_BASE.replace(attn_dropout=0.0)
    assert _activations(plain, 32, 128, True, "bf16") * 8 == _activations(plain, 32, 128, True) * 7
    for precision in ("fp32", "bf16"):
        assert (_activations(BERT_BASE, 32, 128, True, precision) - _activations(plain, 32, 128, True, precision)
                == 32 * 12 * 12 * 128 * 128 * 4 * 4)  # 4 fp32 values a pair and head


def test_the_check_uses_the_precision_the_run_trains_in(monkeypatch: pytest.MonkeyPatch) -> None:
    fp32, fp16 = (training_bytes(BERT_BASE, 32, 512, False, precision=p) for p in ("fp32", "fp16"))
    _free(monkeypatch, (fp32 + fp16) // 2)
    with pytest.raises(PretuneError, match="or pass --no-memory-check to try anyway"):
        check_memory(BERT_BASE, 32, 512, "cuda", "--seq-len", precision="fp32")
    for precision in ("fp16", "bf16"):
        check_memory(BERT_BASE, 32, 512, "cuda", "--seq-len", precision=precision)


def test_no_memory_check_skips_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "c.txt").write_text("a b c\n", encoding="utf-8")
    _free(monkeypatch, 1, "CPU")  # nothing fits in one byte
    s = PretrainSettings(model="bert-tiny", tokenizer=str(tmp_path / "tok"), data=[str(tmp_path / "c.txt")], out=str(tmp_path / "o"))
    s.trainer.device = "cpu"
    with pytest.raises(PretuneError, match="a training step would need about"):
        validate.pretrain_settings(s)
    s.trainer.memory_check = False
    validate.pretrain_settings(s)
    f = _finetune("fp32", "cpu")
    with pytest.raises(PretuneError, match="a training step would need about"):
        finetune_memory(f, BERT_BASE, _features([64]))
    f.trainer.memory_check = False
    finetune_memory(f, BERT_BASE, _features([64]))


MEASURE = """
import torch
from pretune.config import preset
from pretune.models import build_model
torch.set_num_threads(1)
m = build_model(preset('bert-tiny', vocab_size=8000, max_positions=1024, attn_dropout=0.0))
ids = torch.randint(5, 8000, (8, 1024))
labels = torch.full((8, 1024), -100)
labels[:, ::7] = ids[:, ::7]
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') if line.startswith(key))
# the kernel's high-water mark of this process, reset to the resident set now (getrusage's ru_maxrss
# cannot be reset, and a child starts with its parent's: pytest's, after other tests, can be larger)
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
base = status('VmRSS:')
with torch.autocast('cpu', dtype=torch.bfloat16):
    loss = m(input_ids=ids, mlm_labels=labels, nsp_labels=torch.zeros(8, dtype=torch.long), return_logits=False).loss
loss.backward()
print(status('VmHWM:') - base)
"""


def test_the_bf16_estimate_is_near_a_measured_cpu_step() -> None:
    """One bf16-autocast forward and backward of bert-tiny (8 x 1,024 tokens, no attention dropout:
    the activations the precision changes) in a fresh process: the rise of its peak RSS against the
    estimate's activations (tests/test_errors.py measures fp32 with attention dropout the same way).
    Measured on the Xeon with AMX: 228 MB, estimate 220 MB (fp32: 257 MB, estimate 252 MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE], env=env, capture_output=True, text=True, check=True).stdout
    measured = int(out.split()[-1])
    cfg = preset("bert-tiny", vocab_size=8000, max_positions=1024, attn_dropout=0.0)
    estimate = _activations(cfg, 8, 1024, cpu=True, precision="bf16")
    assert 0.67 < estimate / measured < 1.5, (estimate, measured)
