"""Training with evaluations in a worker process: results logged at the step of their policy
snapshot, the same as inline, and evaluations still running at a stop done again on resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from mtrl.callbacks import RUNNING
from mtrl.checkpoint import load_state
from mtrl.cli import train as train_cli
from mtrl.envs.evaluation import BackgroundEvaluation
from mtrl.runs import list_checkpoints
from tests.cli.conftest import tensorboard_scalars, train_config

RUN = [
    "experiment=smoke",
    "benchmark=mt1",
    "benchmark.vector_strategy=sync",
    "benchmark.episode_length=50",
    "eval.every=100",
    "eval.episodes=2",
    "checkpoint.every=100",
    "threads=1",
]

pytestmark = pytest.mark.slow


def train(run_dir: Path, *overrides: str, callbacks=()):
    return train_cli.run(train_config(*RUN, *overrides), run_dir, list(callbacks))


def evaluations(run_dir: Path) -> dict[str, dict[int, float]]:
    return {tag: v for tag, v in tensorboard_scalars(run_dir).items() if tag.startswith("eval/")}


def assert_same_weights(model, other) -> None:
    for mine, theirs in zip(model.policy.parameters(), other.policy.parameters(), strict=True):
        assert torch.equal(mine, theirs)


class StopAt(BaseCallback):
    def __init__(self, vector_step: int) -> None:
        super().__init__()
        self.vector_step = vector_step

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.vector_step:  # MT1: one env step per vector step
            self.model.stop_requested = True
        return True


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("inline")
    return run_dir, train(run_dir, "total_steps=300", "eval.background=false")


def test_background_evaluations_are_logged_at_their_snapshot_steps_as_inline(inline_run, tmp_path):
    inline_dir, inline = inline_run
    model = train(tmp_path, "total_steps=300", "eval.background=true")
    logged = evaluations(tmp_path)
    assert set(logged["eval/success_rate"]) == {100, 200, 300}
    assert logged == evaluations(inline_dir)
    assert_same_weights(model, inline)
    assert model.run_state["best_success"] == inline.run_state["best_success"]


def test_evaluations_running_at_a_stop_are_done_again_on_resume(inline_run, tmp_path, monkeypatch):
    inline_dir, inline = inline_run
    # a slow worker: nothing finishes before training waits for it
    finished = BackgroundEvaluation.finished
    monkeypatch.setattr(
        BackgroundEvaluation,
        "finished",
        lambda self, wait=False: finished(self, wait) if wait else [],
    )
    train(tmp_path, "total_steps=300", "eval.background=true", callbacks=[StopAt(150)])
    assert "eval/success_rate" not in tensorboard_scalars(tmp_path)  # still running at the stop
    stopped = load_state(list_checkpoints(tmp_path)[-1])
    assert [e["vector_step"] for e in stopped["run_state"][RUNNING]] == [100]
    cfg = train_config(*RUN, "total_steps=300", "eval.background=true", f"resume={tmp_path}")
    cfg = train_cli.resume_config(cfg, tmp_path, {"resume"})
    resumed = train_cli.run(cfg, tmp_path)
    assert evaluations(tmp_path) == evaluations(inline_dir)
    assert_same_weights(resumed, inline)
