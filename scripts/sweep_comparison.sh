#!/usr/bin/env bash
# The MT10 or MT50 method comparison: mean, PCGrad, CAGrad and GradOPS, 10 seeds each, the
# standard budget (2M vector steps), then the comparison report.
#
#   bash scripts/sweep_comparison.sh mt10             # on this machine, JOBS runs at a time
#   bash scripts/sweep_comparison.sh mt50 device=cuda
#   LAUNCHER=slurm bash scripts/sweep_comparison.sh mt10 hydra.launcher.partition=gpu
#   LAUNCHER=ray_cluster bash scripts/sweep_comparison.sh mt50   # on a running Ray cluster
#
# The cluster launchers need their extra: .venv/bin/pip install -e ".[slurm]" (or ".[ray]").
# Run the same command again after an interruption: finished runs are skipped and stopped runs
# resume from their checkpoints. Arguments after the benchmark go to mtrl-train.
set -euo pipefail
cd "$(dirname "$0")/.."
BENCHMARK=${1:?usage: sweep_comparison.sh mt10|mt25|mt50 [mtrl-train overrides]}
shift
case "$BENCHMARK" in mt10 | mt25 | mt50) ;; *) echo "benchmark must be mt10, mt25 or mt50" >&2; exit 2 ;; esac
make --no-print-directory .venv/.installed >/dev/null
METHODS=${METHODS:-mean,pcgrad,cagrad,gradops}
LAUNCHER=${LAUNCHER:-joblib}
JOBS=${JOBS:-2}
launcher_args=("hydra/launcher=$LAUNCHER")
[ "$LAUNCHER" = joblib ] && launcher_args+=("hydra.launcher.n_jobs=$JOBS")
.venv/bin/mtrl-train -m benchmark="$BENCHMARK" method="$METHODS" seed="$(seq -s, 0 9)" \
  sweep="$BENCHMARK-comparison" progress_bar=false "${launcher_args[@]}" "$@"
.venv/bin/mtrl-compare "runs/sweeps/$BENCHMARK-comparison" \
  --out "runs/sweeps/$BENCHMARK-comparison/report"
