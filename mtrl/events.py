"""Reading scalars back from a run's TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator, ScalarEvent


class RunEvents:
    """Every scalar of a run, over all its event files (a resumed run adds a new file)."""

    def __init__(self, run_dir: str | Path) -> None:
        self._events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        self._events.Reload()
        self.tags = set(self._events.Tags()["scalars"])

    def series(self, tag: str) -> list[ScalarEvent]:
        """The events of one scalar in step order; where two files hold a step, the later wins."""
        if tag not in self.tags:
            return []
        by_step = {event.step: event for event in self._events.Scalars(tag)}
        return [by_step[step] for step in sorted(by_step)]


def read_scalars(run_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` pairs of one scalar of a run, in step order."""
    return [(event.step, event.value) for event in RunEvents(run_dir).series(tag)]
