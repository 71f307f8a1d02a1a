#!/usr/bin/env bash
# Multi-task learning through the whole chain on a 2-core machine: MT10 at a reduced budget with
# `mean`, `pcgrad` and `gradops`, two seeds each, two runs at a time on one thread each (about two
# hours in all), then the comparison report with its learning curves, per-task curves and
# per-task success.
#
#   bash scripts/mt10_evidence.sh                  # into runs/sweeps/mt10-evidence
#   STEPS=20000 bash scripts/mt10_evidence.sh      # a shorter look
#
# The budget (35k steps per task) is far below the standard 2M and the networks (2 x 256) are
# smaller than 3 x 400, so the numbers say that every method learns several MT10 tasks, not
# which is best.
# Started again after an interruption, the sweep skips finished runs and resumes stopped ones.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory .venv/.installed >/dev/null
STEPS=${STEPS:-35000}
SWEEP=${SWEEP:-mt10-evidence}
.venv/bin/mtrl-train -m benchmark=mt10 method=mean,pcgrad,gradops seed=0,1 sweep="$SWEEP" \
  total_steps="$STEPS" 'agent.net_arch=[256,256]' agent.batch_size_per_task=64 \
  agent.buffer_size_per_task=50000 agent.warmup_steps=1500 \
  eval.every=2500 eval.episodes=5 checkpoint.every=10000 \
  hydra.launcher.n_jobs=2 threads=1 progress_bar=false
.venv/bin/mtrl-compare "runs/sweeps/$SWEEP" --out "runs/sweeps/$SWEEP/report"
