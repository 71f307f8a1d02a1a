#!/usr/bin/env bash
# Evidence of learning: train MT1 reach-v3 with `mean` and with `gradops`, then print the
# evaluated success rate against environment steps for both (and plot it).
#
#   bash scripts/learn_mt1.sh                # 100k steps each, seed 0
#   STEPS=50000 SEED=1 bash scripts/learn_mt1.sh
#
# With a single task GradOPS has no other gradient to project against, so both methods take the
# same update: the two curves differ only by floating-point rounding. The run checks that the
# agent, its replay, its evaluation and its logging learn a Meta-World task end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory .venv/.installed >/dev/null
STEPS=${STEPS:-100000}
SEED=${SEED:-0}
OUT=runs/learn_mt1/$(date +%Y%m%d-%H%M%S)
for method in mean gradops; do
  .venv/bin/mtrl-train benchmark=mt1 benchmark.task=reach-v3 method="$method" seed="$SEED" \
    total_steps="$STEPS" eval.every=10000 eval.episodes=10 checkpoint.every=50000 \
    hydra.run.dir="$OUT/$method"
done
.venv/bin/python scripts/success_curve.py "$OUT/mean" "$OUT/gradops"
