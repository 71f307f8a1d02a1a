#!/usr/bin/env bash
# The MT50 method comparison: mean, PCGrad, CAGrad and GradOPS, 10 seeds each, the standard
# budget (2M vector steps), then the comparison report.
#
#   bash scripts/sweep_mt50.sh                          # on this machine, JOBS runs at a time
#   LAUNCHER=slurm bash scripts/sweep_mt50.sh hydra.launcher.partition=gpu
#   LAUNCHER=ray_cluster bash scripts/sweep_mt50.sh     # on a running Ray cluster
#
# The cluster launchers need their extra: .venv/bin/pip install -e ".[slurm]" (or ".[ray]").
# Run the same command again after an interruption: finished runs are skipped and stopped runs
# resume from their checkpoints. Extra arguments go to mtrl-train (e.g. device=cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
make --no-print-directory .venv/.installed >/dev/null
METHODS=${METHODS:-mean,pcgrad,cagrad,gradops}
LAUNCHER=${LAUNCHER:-joblib}
JOBS=${JOBS:-2}
launcher_args=("hydra/launcher=$LAUNCHER")
[ "$LAUNCHER" = joblib ] && launcher_args+=("hydra.launcher.n_jobs=$JOBS")
.venv/bin/mtrl-train -m benchmark=mt50 method="$METHODS" seed="$(seq -s, 0 9)" \
  sweep=mt50-comparison progress_bar=false "${launcher_args[@]}" "$@"
.venv/bin/mtrl-compare runs/sweeps/mt50-comparison --out runs/sweeps/mt50-comparison/report
