#!/usr/bin/env bash
# The packages that scripts/device_check.sh needs and a GPU machine without network lacks, as
# CPython 3.12 x86-64 wheels in an ignored folder (default device-wheels/) that travels with
# the working tree. The machine brings torch, numpy, scipy, pandas, matplotlib, tensorboard,
# tqdm, imageio, pyyaml, pytest and hypothesis; everything else the check imports is here, at the
# versions this checkout's .venv runs (or the newest, without one). mtrl-compare's rliable is left
# out: the check does not compare runs.
#
#   bash scripts/device_wheels.sh                 # into device-wheels/
#   bash scripts/device_wheels.sh /tmp/wheels
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-device-wheels}
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
BINARY=(metaworld mujoco gymnasium stable-baselines3 hydra-core omegaconf hydra-joblib-launcher
  joblib cloudpickle farama-notifications glfw pyopengl absl-py etils fsspec zipp packaging
  typing-extensions setuptools)  # setuptools: to install mtrl itself without network
SOURCE_ONLY=(antlr4-python3-runtime)  # published as an sdist only: built into a wheel here

pinned() {  # name==version as installed here, else the bare name
  "$PYTHON" - "$@" <<'PY'
import sys
from importlib import metadata
for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(name)
PY
}

rm -rf "$OUT" && mkdir -p "$OUT"
mapfile -t binary < <(pinned "${BINARY[@]}")
mapfile -t source < <(pinned "${SOURCE_ONLY[@]}")
"$PYTHON" -m pip download --quiet --no-deps --dest "$OUT" --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any "${binary[@]}"
# A pure-Python sdist builds into a wheel for every Python 3.
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$OUT" "${source[@]}"
ls -1 "$OUT"
size=$(du -sm "$OUT" | cut -f1)
echo "$(ls "$OUT" | wc -l) wheels, ${size} MB in $OUT"
if [ "$size" -ge 60 ]; then
  echo "device_wheels.sh: $OUT holds ${size} MB, more than the 60 MB that travel" >&2
  exit 1
fi
