#!/usr/bin/env bash
# Same results before and after a code change: pretrain and fine-tune with two checkouts, compare.
#   bash benchmarks/same_results.sh OLD_CHECKOUT [WORK_DIR]
# OLD_CHECKOUT is another checkout of pretune (e.g. `git worktree add /tmp/old <commit>`); this
# checkout is the new one. Pretraining (150 steps of bert-tiny on 40,000 NSMC lines) and fine-tuning
# (2 epochs on 2,000 NSMC labels from the old checkout's pretrained model) run with both; the
# per-step losses and the accuracies are printed side by side (they should be equal).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD_SRC=$(cd "$1" && pwd)/src
WORK=${2:-/tmp/pretune-same-results}
DATA=$ROOT/../shared/data/nsmc
PY=$ROOT/.venv/bin/python
mkdir -p "$WORK" && cd "$WORK"
(zcat "$DATA/unlabeled.txt.gz" || true) | head -40000 > corpus.txt  # zcat ends by SIGPIPE once head has its lines
head -2001 "$DATA/train.tsv" > train2k.tsv
(head -1 "$DATA/train.tsv"; sed -n 100000,100500p "$DATA/train.tsv") > val.tsv
head -2001 "$DATA/test.tsv" > test.tsv
NEW="env PYTHONPATH=$ROOT/src $PY -m pretune"
OLD="env PYTHONPATH=$OLD_SRC $PY -m pretune"
export OMP_NUM_THREADS=2
rm -rf tok pre_old pre_new ft_old ft_new ft_new_on_old
$OLD tokenizer train --kind wordpiece --vocab-size 4000 --out tok corpus.txt > /dev/null
COMMON="--model bert-tiny --tokenizer tok --data corpus.txt --max-steps 150 --batch-size 32 --seq-len 64 --lr 1e-3 --warmup-steps 30 --log-every 10 --precision fp32 --no-progress"
$OLD pretrain $COMMON --out pre_old --set dropout=0 attn_dropout=0 max_positions=64 > pre_old.log
$NEW pretrain $COMMON --out pre_new --set dropout=0 attn_dropout=0 max_positions=64 > pre_new.log
FT="--task nsmc --train train2k.tsv --validation val.tsv --test test.tsv --epochs 2 --batch-size 32 --lr 3e-4 --max-seq-len 64 --group-by-length --precision fp32 --no-progress"
# without dropout: since the scale-out work each process draws dropout from a seed derived from
# --seed and its rank, so checkouts before it draw other masks (with dropout 0.1 the runs differ
# by that alone: largest per-step loss difference 0.037 on 2026-11-29)
$OLD finetune --model pre_old $FT --out ft_old --set dropout=0 attn_dropout=0 > ft_old.log
$NEW finetune --model pre_old $FT --out ft_new --set dropout=0 attn_dropout=0 > ft_new.log
$PY - <<'PY'
import json
def records(path):
    return [json.loads(line) for line in open(path)]
for name in ("pre", "ft"):
    old, new = records(f"{name}_old/metrics.jsonl"), records(f"{name}_new/metrics.jsonl")
    diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(old, new) if "loss" in a and "loss" in b)
    print(f"{name}: {len(old)} vs {len(new)} log records, largest per-step loss difference {diff:.3g}")
for d in ("ft_old", "ft_new"):
    r = json.load(open(f"{d}/eval_results.json"))
    print(d, "validation", r["validation"], "test", r.get("test"))
PY
