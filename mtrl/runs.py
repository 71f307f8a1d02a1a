"""Run directories: where a run keeps its config, its TensorBoard events and its checkpoints."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mtrl.checkpoint import CheckpointError, write_text_atomic

CHECKPOINTS = "checkpoints"
CONFIG = "config.yaml"
PROTOCOL = "protocol.json"
FINISHED = "finished.json"  # written when a run completes its budget
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    """The checkpoint file for a given number of environment steps."""
    return Path(run_dir) / CHECKPOINTS / f"step_{step:012d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    found = [p for p in folder.glob("step_*.pt") if _STEP_FILE.search(p.name)]
    return sorted(found, key=lambda p: int(_STEP_FILE.search(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint of a run, with an error that says what is there if there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run directory at {run_dir}")
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise CheckpointError(f"run directory {run_dir} has no checkpoints in {CHECKPOINTS}/")
    return checkpoints[-1]


def describe_earlier(path: Path) -> str:
    """A hint naming the checkpoints written before ``path``, for error messages."""
    earlier = [p for p in list_checkpoints(path.parent.parent) if p != path]
    if not earlier:
        return "there is no earlier checkpoint in this run"
    return (
        f"the earlier checkpoint {earlier[-1]} is still there: move {path.name} aside "
        "to resume from it"
    )


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints, never the one a finished run ended with
    (:func:`read_finished`): extending a finished run must not lose its policy."""
    finished = read_finished(run_dir)
    kept = Path(run_dir) / finished["checkpoint"] if finished and "checkpoint" in finished else None
    for old in list_checkpoints(run_dir)[:-keep]:
        if old != kept:
            old.unlink(missing_ok=True)


def read_finished(run_dir: str | Path) -> dict[str, Any] | None:
    """What a run that completed its budget recorded (``total_steps``, ``env_steps`` and its
    final ``checkpoint`` relative to the run directory), or ``None``."""
    path = Path(run_dir) / FINISHED
    return json.loads(path.read_text()) if path.is_file() else None


def write_finished(run_dir: str | Path, total_steps: int, env_steps: int) -> None:
    """Record that a run completed ``total_steps`` vector steps, with the checkpoint it ended
    with."""
    checkpoint = checkpoint_path(run_dir, env_steps).relative_to(run_dir)
    record = {"total_steps": total_steps, "env_steps": env_steps, "checkpoint": str(checkpoint)}
    write_text_atomic(Path(run_dir) / FINISHED, json.dumps(record) + "\n")
