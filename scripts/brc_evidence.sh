#!/usr/bin/env bash
# BRC's recipe (experiment=brc) on MT10 at a reduced budget that fits a 2-core machine, with
# `mean` (the contender as published) and `gradops` (BRC + GradOPS), two seeds each, the four
# runs side by side on one thread each (about two hours in all: a vector step, two updates
# and ten env steps, takes about 0.8 s on half a core), then the comparison report with its
# learning curves and per-task success.
#
#   bash scripts/brc_evidence.sh                   # into runs/sweeps/brc-evidence
#   STEPS=4000 bash scripts/brc_evidence.sh        # a shorter look
#
# Every override below shrinks the preset to fit: the critics 256 wide instead of 4096 (still
# two residual blocks; the actor keeps BRC's 256 x 1 block), 64 transitions per task per update
# instead of 102, in equal shares rather than drawn uniformly over all transitions (the same
# loss in expectation, at 1.7x fewer rows at this batch), 50 000 of replay per task, 1 500
# warm-up steps per task instead of 5 000, and 5 evaluation episodes per task every 1 000
# steps. The rest is the preset's: categorical critics, reward normalisation, AdamW, one
# temperature, two updates per step. At this budget the curves show that the chain learns;
# they rank nothing.
# Started again after an interruption, the sweep skips finished runs and resumes stopped ones.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory .venv/.installed >/dev/null
STEPS=${STEPS:-8000}
SWEEP=${SWEEP:-brc-evidence}
.venv/bin/mtrl-train -m experiment=brc method=mean,gradops seed=0,1 sweep="$SWEEP" \
  total_steps="$STEPS" network.critic_width=256 agent.batch_size_per_task=64 \
  agent.batch_sampling=per_task \
  agent.buffer_size_per_task=50000 agent.warmup_steps=1500 \
  eval.every=1000 eval.episodes=5 checkpoint.every=2000 \
  hydra.launcher.n_jobs=4 threads=1 progress_bar=false
.venv/bin/mtrl-compare "runs/sweeps/$SWEEP" --out "runs/sweeps/$SWEEP/report"
