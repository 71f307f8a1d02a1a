"""Reading scalars back from a run's TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_scalars(run_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of one scalar, in step order, over every event file of the run.

    A resumed run writes a new event file; when two files hold the same step, the later wins.
    """
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return []
    return sorted({event.step: event.value for event in events.Scalars(tag)}.items())
