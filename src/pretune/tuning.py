"""The model code's speed choices, in one place: each was measured (docs/benchmarks.md), and none
changes a result beyond rounding.

The model code reads these attributes when it runs, so a test or a benchmark can switch one off
(``monkeypatch.setattr(tuning, "CPU_DROPOUT_ATTENTION", False)``) to compare with the plain path.
"""

from __future__ import annotations

# Attention with dropout (training) on a CPU runs through ``models.core._attention_with_dropout``
# (baddbmm, softmax, dropout, bmm): SDPA's CPU flash kernel has no dropout and falls back to its
# math path, which costs more (attention forward + backward 1.29x faster, docs/benchmarks.md row 3).
# False: always SDPA.
CPU_DROPOUT_ATTENTION = True

# Under bf16 autocast on a CPU the projections gain from AMX, but SDPA's bf16 CPU backward is ~6x
# slower than its fp32 one (docs/benchmarks.md): attention itself runs in fp32. False: in bf16.
CPU_BF16_ATTENTION_IN_FP32 = True

# The fused output layer + cross-entropy (``models.fused_ce``), in logits elements per device type.
# A chunk of rows is the unit of every matmul (large enough that the (vocab, h) weight-gradient
# accumulator is read and written only a few times per step and the GEMMs stay efficient); only one
# chunk's fp32 logits exist at a time. A block (rows within a chunk that go through softmax and the
# hidden-gradient matmul together) may be set smaller to stay in cache; on a 2-core CPU smaller
# blocks lost to per-op overhead, so by default a block is the whole chunk.
CE_CHUNK_ELEMENTS = {"cpu": 1 << 25, "cuda": 1 << 28}
CE_CHUNK_DEFAULT = 1 << 26  # another device type
CE_BLOCK_ELEMENTS: dict[str, int] = {}

# Generation's next-token logits as (vocab, hidden) @ (hidden, b), reading the output matrix in its
# stored order; F.linear's h @ W^T took twice as long at batch 8 on a 2-core Zen 3 with MKL
# (docs/benchmarks.md). False: F.linear.
DECODE_WEIGHT_FIRST = True

__all__ = ["CE_BLOCK_ELEMENTS", "CE_CHUNK_DEFAULT", "CE_CHUNK_ELEMENTS", "CPU_BF16_ATTENTION_IN_FP32", "CPU_DROPOUT_ATTENTION",
           "DECODE_WEIGHT_FIRST"]
