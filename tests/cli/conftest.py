"""Helpers to compose training configs and read TensorBoard event files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

import mtrl.cli.train  # noqa: F401  (registers the config resolver)


def train_config(*overrides: str):
    with initialize_config_module("mtrl.configs", version_base="1.3"):
        return compose("train", overrides=["progress_bar=false", *overrides])


def read_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


@pytest.fixture(scope="session")
def mt1_run(tmp_path_factory) -> Path:
    """A finished smoke run on MT1 reach-v3, for tests that need a run directory."""
    from mtrl.cli.train import run

    run_dir = tmp_path_factory.mktemp("mt1-run")
    run(train_config("experiment=smoke", "benchmark=mt1", "total_steps=200"), run_dir)
    return run_dir


def tensorboard_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of a run, tag → step → value, over all its event files (one per process
    that trained it). Where two processes logged a step (a run killed after its checkpoint,
    then resumed), the later process's value counts."""
    files = []
    for path in Path(run_dir).glob("events.out.tfevents.*"):
        events = list(LegacyEventFileLoader(str(path)).Load())  # drops a truncated last record
        if events:
            files.append((events[0].wall_time, events))
    scalars: dict[str, dict[int, float]] = {}
    for _, events in sorted(files, key=lambda item: item[0]):
        for event in events:
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars
