#!/usr/bin/env bash
# The GPU check, one command that fits a short lease (about 5 minutes on one H100/H200):
#
#   bash scripts/device_wheels.sh              # here, with network: the missing packages
#   bash scripts/device_check.sh OUT           # there: results in OUT, one file per stage
#   bash scripts/device_check.sh OUT --device cpu    # the same stages at tiny sizes, on the CPU
#   ONLY="00-machine 06-train" bash scripts/device_check.sh OUT    # some stages only
#   TRAIN_SECONDS=300 bash scripts/device_check.sh OUT                # a longer training stage
#
# Each stage writes OUT/<stage>.txt as soon as it ends, so a run cut off early still leaves
# the figures of the stages before. A stage that fails is marked FAILED in OUT/summary.txt and
# the others still run; the exit status says whether all passed.
#
# On CUDA it makes a virtual environment (.device-venv) that keeps the machine's own torch
# (--system-site-packages), installs the wheels of device-wheels/ (--no-index) and mtrl itself
# (--no-deps). With --device cpu it runs in this checkout's .venv (or $PYTHON's environment).
#
# Stages: the tests under the `cuda` marker (each method's update on the device equals the
# CPU's, the sync watch, the captured step); bench_update.py at 3 x 400, 1024 and 2048 wide, K = 10
# and 50, with peak memory, compile=True against eager, and one width-4096 MT50 update for its
# memory; bench_train.py; bench_overlap.py (environments in workers during the update against
# in this process); a 2-minute MT10 GradOPS training that prints vector steps/s, then a
# short evaluation of what it learnt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: device_check.sh OUT [--device cuda|cpu]}
DEVICE=cuda
if [ "${2:-}" = "--device" ]; then DEVICE=${3:?--device needs a value}; fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
RUN_DIR=$(mktemp -d)  # the training run's checkpoints stay behind: they are large

if [ "$DEVICE" = cuda ]; then
  PY=.device-venv/bin/python
  if [ ! -x "$PY" ]; then
    python3 -m venv --system-site-packages .device-venv
  fi
  "$PY" -m pip install --quiet --no-index --find-links device-wheels device-wheels/*.whl
  "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation --editable .
  TRAIN_SECONDS=${TRAIN_SECONDS:-120}
  NETS=("400 400 400" "1024 1024 1024" "2048 2048 2048")
  TASKS=(10 50)
  WIDE=(--net 4096 4096 4096 --tasks 50)
  BENCH=(--repeats 20 --rows 300)
  TRAIN=(agent.warmup_steps=200)
  BENCH_TRAIN=(--steps 100 --rounds 3 --warmup 100)
  BENCH_OVERLAP=(--steps 100 --rounds 3 --warmup 100)
else
  PY=${PYTHON:-.venv/bin/python}
  TRAIN_SECONDS=${TRAIN_SECONDS:-60}  # MT10 takes a while to build on 2 busy cores
  NETS=("16 16")
  TASKS=(3)
  WIDE=(--net 64 64 --tasks 5)
  BENCH=(--repeats 2 --rows 50 --batch-per-task 8)
  # a short warm-up, so that the run trains and logs its rate within the time even when other
  # work shares the cores
  TRAIN=(agent.net_arch=[32,32] agent.batch_size_per_task=8 benchmark.episode_length=50
    agent.warmup_steps=20)
  BENCH_TRAIN=(--steps 5 --rounds 1 --warmup 5 --net 16 16 --batch-per-task 8)
  BENCH_OVERLAP=(--steps 5 --rounds 1 --warmup 10 --net 16 16 --batch-per-task 8)
fi

stage() {  # stage NAME SECONDS COMMAND...: run it, its output into OUT/NAME.txt
  local name=$1 seconds=$2
  shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local start=$SECONDS
  echo "== $name: $*" | tee "$OUT/$name.txt"
  timeout --signal=TERM --kill-after=20 "$seconds" "$@" >>"$OUT/$name.txt" 2>&1
  local status=$?
  local verdict=passed
  [ $status -eq 0 ] || verdict="FAILED (exit $status)"
  echo "$name: $verdict in $((SECONDS - start)) s" | tee -a "$SUMMARY"
  tail -n 25 "$OUT/$name.txt"
}

stage 00-machine 60 "$PY" -c "
import os, platform, torch
print('python', platform.python_version(), '| torch', torch.__version__, '| cores', os.cpu_count())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), '| CUDA', torch.version.cuda,
          '| memory', round(torch.cuda.get_device_properties(0).total_memory / 2**30), 'GiB')
"

stage 01-tests 150 env MTRL_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -m cuda -p no:cacheprovider \
  tests/test_cuda.py

for net in "${NETS[@]}"; do
  # shellcheck disable=SC2206
  widths=($net)
  stage "02-update-${widths[0]}" 120 "$PY" scripts/bench_update.py --devices "$DEVICE" \
    --tasks "${TASKS[@]}" --net "${widths[@]}" --methods gradops pcgrad cagrad \
    --modes auto grouped --loop-methods "${BENCH[@]}"
done
stage 03-compile 120 "$PY" scripts/bench_update.py --devices "$DEVICE" --tasks "${TASKS[0]}" \
  --net ${NETS[0]} --methods mean gradops pcgrad cagrad --compile-ratio "${BENCH[@]}"
stage 04-wide-update 120 "$PY" scripts/bench_update.py --devices "$DEVICE" "${WIDE[@]}" \
  --methods gradops --modes auto --loop-methods --repeats 2 --rows 20

stage 05-train-bench 120 "$PY" scripts/bench_train.py --device "$DEVICE" "${BENCH_TRAIN[@]}"
stage 05-overlap 150 "$PY" scripts/bench_overlap.py --device "$DEVICE" "${BENCH_OVERLAP[@]}"

# A real run, stopped by SIGTERM as a cluster would stop it: it writes its checkpoint and exits.
stage 06-train $((TRAIN_SECONDS + 90)) bash -c "
  timeout --signal=TERM $TRAIN_SECONDS $PY -m mtrl.cli.train benchmark=mt10 \
    method=gradops device=$DEVICE total_steps=100000000 \
    eval.every=100000000 checkpoint.every=100000000 progress_bar=false ${TRAIN[*]} \
    hydra.run.dir=$RUN_DIR/run
  $PY scripts/device_rate.py $RUN_DIR/run
  $PY -m mtrl.cli.evaluate checkpoint=$RUN_DIR/run episodes=2 device=$DEVICE
"
cp "$RUN_DIR"/run/*.json "$RUN_DIR"/run/events.out.tfevents.* "$OUT/" 2>/dev/null
rm -rf "$RUN_DIR"

echo "== summary" && cat "$SUMMARY"
! grep -q FAILED "$SUMMARY"
