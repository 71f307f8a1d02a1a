#!/usr/bin/env bash
# The reference presets of MOORE and Soft Modules against multi-head SAC on MT10, one seed each,
# at a reduced budget that fits a 2-core machine (about two hours): two runs at a time
# on one thread each, MOORE first as the longest, then the comparison report with its curves.
#
#   bash scripts/reference_evidence.sh                 # into runs/sweeps/reference-evidence
#   STEPS=10000 bash scripts/reference_evidence.sh     # a shorter look
#
# Every override below shrinks the presets to fit: 2 x 256 hidden layers (the experts' too, for
# MOORE; Soft Modules keeps its own widths), 64 transitions per task per update, 50 000
# of replay per task, 1 500 warm-up steps per task, and 5 evaluation episodes per task every
# 2 500 steps instead of 50 every 20 000. The rest is each preset's: protocol=metaworld-plus
# (v2 rewards, 500-step episodes), method=mean, the presets' initialisations, log-std bounds,
# temperature rates and task weights. At this budget the curves show that each chain learns;
# they rank nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory .venv/.installed >/dev/null
STEPS=${STEPS:-30000}
SWEEP=${SWEEP:-reference-evidence}
.venv/bin/mtrl-train -m experiment=reference-moore,reference-soft-modules,reference-multi-head \
  seed=0 sweep="$SWEEP" total_steps="$STEPS" 'agent.net_arch=[256,256]' \
  agent.batch_size_per_task=64 \
  agent.buffer_size_per_task=50000 agent.warmup_steps=1500 \
  eval.every=2500 eval.episodes=5 checkpoint.every=10000 \
  hydra.launcher.n_jobs=2 threads=1 progress_bar=false \
  'hydra.sweep.subdir=${benchmark.name}-${network.name}-seed${seed}'
.venv/bin/mtrl-compare "runs/sweeps/$SWEEP" --out "runs/sweeps/$SWEEP/report"
