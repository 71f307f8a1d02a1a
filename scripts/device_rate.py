"""The training rate a run logged, and what it means for a full-budget run.

Two rates: the training rate, from the run's TensorBoard ``time/env_steps_per_s`` and
``time/updates_per_s`` (each over one round of episodes, so their harmonic mean is steps over
time), and the end-to-end rate, from the wall times of the first and last of those logs, which
also counts evaluations and checkpoints (and, in a resumed run, the time it stood still). Each
is given over all tasks and as vector steps (one step of every task at once), with the hours
that 2M steps per task would take end to end. Logs of the warm-up, which collects without
updating, are left out.

    python scripts/device_rate.py runs/mt10/gradops/seed0-...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

STEPS_PER_TASK = 2_000_000  # the field's standard budget


def scalars(run_dir: Path, tag: str) -> np.ndarray:
    """Rows of (step, wall time, value)."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return np.empty((0, 3))
    return np.array([(e.step, e.wall_time, e.value) for e in events.Scalars(tag)])


def rates(run_dir: Path) -> dict[str, float]:
    if not any(run_dir.glob("events.out.tfevents.*")):
        raise SystemExit(f"device_rate.py: no TensorBoard events in {run_dir}")
    protocol = json.loads((run_dir / "protocol.json").read_text())
    tasks = len(protocol["tasks"])
    env_steps = scalars(run_dir, "time/env_steps_per_s")
    updates = scalars(run_dir, "time/updates_per_s")
    if len(env_steps) == 0:
        raise SystemExit(f"device_rate.py: {run_dir} logged no training rate yet")
    # After the warm-up: the logs that counted updates (SB3 logs both tags together).
    trained = updates[:, 2] > 0 if len(updates) == len(env_steps) else np.ones(len(env_steps), bool)
    if not trained.any():
        raise SystemExit(f"device_rate.py: {run_dir} has not updated yet (still warming up)")
    env_steps, updates = env_steps[trained], updates[trained]
    training = harmonic_mean(env_steps[:, 2])
    result = {
        "tasks": tasks,
        "logs": int(trained.sum()),
        "training_env_steps_per_s": training,
        "training_vector_steps_per_s": training / tasks,
        "updates_per_s": harmonic_mean(updates[:, 2]) if len(updates) else float("nan"),
    }
    if len(env_steps) > 1:  # the end-to-end rate needs two logs after the warm-up
        (first_step, first_time), (last_step, last_time) = env_steps[[0, -1], :2]
        end_to_end = (last_step - first_step) / (last_time - first_time)
        result["end_to_end_env_steps_per_s"] = float(end_to_end)
        result["end_to_end_vector_steps_per_s"] = float(end_to_end / tasks)
        result["hours_for_2M_steps_per_task"] = STEPS_PER_TASK * tasks / end_to_end / 3600
    return result


def harmonic_mean(values: np.ndarray) -> float:
    return float(len(values) / np.sum(1 / values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()
    for key, value in rates(args.run_dir).items():
        print(f"{key:<30} {value:.4g}" if isinstance(value, float) else f"{key:<30} {value}")


if __name__ == "__main__":
    main()
