# `make test` and `make train` each create or update the virtual environment they run in.
# TORCH pins the build that tests use: torch 2.13.0 installs a CPU build from this machine's disk,
# while an unpinned torch pulls a multi-GB CUDA build. On a GPU machine: make train TORCH=torch
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: test test-numerics train lint clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet --editable ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# The rounding-sensitive tests again, with the portable CPU kernels and one thread: reductions
# then add up in another order, as on another machine.
test-numerics: $(VENV)/.installed
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 $(BIN)/pytest -m numerical

# The main job: MT10 with GradOPS, the standard budget, device auto, into runs/.
# Extra settings go in ARGS, e.g. make train ARGS="method=cagrad seed=1".
train: $(VENV)/.installed
	$(BIN)/mtrl-train $(ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
