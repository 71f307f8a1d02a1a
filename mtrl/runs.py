"""Run directories: where a run keeps its config, its TensorBoard events and its checkpoints."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtrl.checkpoint import CheckpointError, RunFileError, write_text_atomic

CHECKPOINTS = "checkpoints"
CONFIG = "config.yaml"
PROTOCOL = "protocol.json"
FINISHED = "finished.json"  # written when a run completes its budget
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
# What the config of every run holds, whichever version of mtrl wrote it: sections, then keys.
CONFIG_SECTIONS = ("benchmark", "method", "agent", "eval", "checkpoint")
CONFIG_KEYS = ("seed", "total_steps")


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
        if old == kept:
            continue
        try:
            old.unlink(missing_ok=True)
        except OSError as error:
            # Only disk space is at stake: the run and its newer checkpoints are sound.
            warnings.warn(
                f"cannot delete the old checkpoint {old} ({error.strerror or error}); "
                "the run goes on, delete it by hand to free its space",
                stacklevel=2,
            )


def _reason(error: Exception) -> str:
    """What is wrong with a file, in one line (YAML's own messages span several)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        return f"{error.problem} at line {error.problem_mark.line + 1}"
    return str(error).splitlines()[0]


def _read_json(path: Path, what: str, remedy: str) -> dict[str, Any]:
    """The JSON object in ``path``, or a :class:`RunFileError` that says what the file is
    (``what``) and what to do about it (``remedy``)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: bad JSON, or bytes that are not text
        raise RunFileError(f"{path} cannot be read ({_reason(error)}); {what}: {remedy}") from error
    if not isinstance(data, dict):
        raise RunFileError(f"{path} does not hold a JSON object; {what}: {remedy}")
    return data


def read_finished(run_dir: str | Path) -> dict[str, Any] | None:
    """What a run that completed its budget recorded (``total_steps``, ``env_steps`` and its
    final ``checkpoint`` relative to the run directory), or ``None``."""
    path = Path(run_dir) / FINISHED
    if not path.is_file():
        return None
    what = "it records that the run finished its budget"
    remedy = f"delete it, and resuming the run (mtrl-train resume={run_dir}) writes it again"
    record = _read_json(path, what, remedy)
    if not isinstance(record.get("total_steps"), int):
        raise RunFileError(f"{path} lacks the run's total_steps; {what}: {remedy}")
    return record


def read_protocol(
    run_dir: str | Path,
    remedy: str = "delete it to resume the run with a new one (which then lacks the record of "
    "earlier resumes)",
) -> dict[str, Any]:
    """The run's ``protocol.json``, or a :class:`RunFileError` naming it and ``remedy``."""
    return _read_json(
        Path(run_dir) / PROTOCOL, "it records what the run's results depend on", remedy
    )


def read_config(run_dir: str | Path) -> DictConfig:
    """The run's saved ``config.yaml``, as it was written, or a :class:`RunFileError` that says
    why it cannot be read back."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunFileError(f"{run_dir} is not a run directory: it has no {CONFIG}")
    remedy = (
        "it holds the run's config, which resuming or extending the run needs: restore it "
        "(the run's TensorBoard text tab, run/config, shows the config the run started with)"
    )
    try:
        config = OmegaConf.load(path)
    # ValueError: bytes that are not text; omegaconf's own errors: a broken ${...}
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as error:
        raise RunFileError(f"{path} cannot be read ({_reason(error)}); {remedy}") from error
    if not isinstance(config, DictConfig):
        raise RunFileError(f"{path} does not hold a mapping of keys; {remedy}")
    missing = [key for key in CONFIG_SECTIONS if not isinstance(config.get(key), DictConfig)]
    missing += [key for key in CONFIG_KEYS if key not in config]
    if missing:
        raise RunFileError(f"{path} is damaged: it lacks {', '.join(missing)}; {remedy}")
    return config


def write_finished(run_dir: str | Path, total_steps: int, env_steps: int) -> None:
    """Record that a run completed ``total_steps`` vector steps, with the checkpoint it ended
    with."""
    checkpoint = checkpoint_path(run_dir, env_steps).relative_to(run_dir)
    record = {"total_steps": total_steps, "env_steps": env_steps, "checkpoint": str(checkpoint)}
    write_text_atomic(Path(run_dir) / FINISHED, json.dumps(record) + "\n")
