"""What ``mtrl-train`` tells the user about a run's life: where a resume starts, how a run
that stopped before its first checkpoint starts again, and a summary when a run ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Where the TensorBoard events of an attempt that left no checkpoint are moved, renamed so that
# TensorBoard (which reads every file with "tfevents" in its name, in every subfolder) and
# mtrl-compare no longer draw them beside the new attempt's.
SET_ASIDE = "discarded-events"


def resuming(run_dir: Path, checkpoint: Path, vector_step: int, total_steps: int) -> str:
    return (
        f"resuming {run_dir}\n"
        f"  from {checkpoint}\n"
        f"  at vector step {vector_step:,} of {total_steps:,}"
    )


def start_again(run_dir: Path) -> str:
    """Set aside the events of an attempt that stopped before its first checkpoint, and say
    that the run starts again from the start."""
    events = sorted(run_dir.glob("events.out.tfevents.*"))
    message = (
        f"{run_dir} stopped before its first checkpoint: starting it again from the start, "
        "with its own config and seed"
    )
    if events:
        aside = run_dir / SET_ASIDE
        aside.mkdir(exist_ok=True)
        for path in events:
            path.replace(aside / path.name.replace("tfevents", "discarded"))
        message += f"\n  its partial TensorBoard events are in {aside}, out of TensorBoard's view"
    return message


def summary(
    run_dir: Path, run_state: dict[str, Any], vector_step: int, total_steps: int, stopped: bool
) -> str:
    """The end of a run in a few lines: where it is, how far it got, how well it did, and the
    commands to look at it."""
    if stopped:
        head = f"stopped at vector step {vector_step:,} of {total_steps:,}: {run_dir}"
    else:
        head = f"finished {total_steps:,} vector steps: {run_dir}"
    lines = [head]
    last = run_state.get("last_evaluation")
    if last is None:
        lines.append("no evaluation yet")
    else:
        success = last["success"]
        mean = sum(success.values()) / len(success)
        lines.append(f"last evaluation, at vector step {last['vector_step']:,}: ")
        lines[-1] += f"mean success {mean:.2f}"
        width = max(len(task) for task in success)
        lines += [f"  {task:<{width}}  {rate:.2f}" for task, rate in success.items()]
        lines.append(f"best mean success so far: {run_state.get('best_success', mean):.2f}")
    lines.append(f"  curves:   tensorboard --logdir {run_dir}")
    lines.append(f"  evaluate: mtrl-eval checkpoint={run_dir}")
    if stopped:
        lines.append(f"  resume:   mtrl-train resume={run_dir}")
    return "\n".join(lines)
