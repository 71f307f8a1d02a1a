"""A background evaluation whose worker process dies says so and goes on in this process, with
the results the worker would have given."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from metaworld.policies import SawyerReachV3Policy

from mtrl.envs.benchmarks import BenchmarkSpec
from mtrl.envs.evaluation import BackgroundEvaluation, InlineEvaluation
from mtrl.runs import FINISHED
from tests.cli.conftest import tensorboard_scalars

# Long enough for the scripted policy to reach some goals and not others: the result depends on
# which goals the evaluation seed draws.
SPEC = BenchmarkSpec("mt1", "reach-v3", episode_length=60)
EPISODES = 4
DIED = "the background evaluation worker process died"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high"),  # the scripted policy
]


class ScriptedReach:
    """Meta-World's scripted reach policy, over the 39 Meta-World values of each row."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        policy = SawyerReachV3Policy()
        return np.stack([policy.get_action(row[:39]) for row in obs])


class DiesInWorker(ScriptedReach):
    """The same policy, which kills the worker process that runs it (as the kernel's
    out-of-memory killer would)."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(obs)


def inline_results(steps: list[int]) -> list:
    inline = InlineEvaluation(SPEC, seed=5, episodes=EPISODES)
    try:
        for step in steps:
            inline.submit(ScriptedReach(), step)
        return inline.finished()
    finally:
        inline.close()


def test_a_worker_killed_during_an_evaluation_is_replaced_by_this_process():
    expected = inline_results([100, 200])
    assert expected[0][1] != expected[1][1]  # the steps' seeds draw other goals
    background = BackgroundEvaluation(SPEC, seed=5, episodes=EPISODES)
    try:
        background.submit(DiesInWorker(), 100)
        with pytest.warns(UserWarning, match=DIED):
            assert background.finished(wait=True) == expected[:1]
        background.submit(ScriptedReach(), 200)  # from now on, here
        assert background.running() == []
        assert background.finished() == expected[1:]
    finally:
        background.close()


def test_a_worker_killed_between_evaluations_is_found_at_the_next_one():
    expected = inline_results([100, 200, 300])
    background = BackgroundEvaluation(SPEC, seed=5, episodes=EPISODES)
    try:
        background.submit(ScriptedReach(), 100)
        assert background.finished(wait=True) == expected[:1]
        for pid in list(background.pool._processes):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not background.pool._broken:  # the pool notices the death on its own thread
            assert time.monotonic() < deadline, "the pool never noticed its worker's death"
            time.sleep(0.05)
        with pytest.warns(UserWarning, match=DIED):
            background.submit(ScriptedReach(), 200)
        background.submit(ScriptedReach(), 300)
        assert background.finished() == expected[1:]
    finally:
        background.close()


# mtrl-train, whose evaluation worker is killed once its first evaluation is done.
KILL_THE_WORKER = """
import os, signal, sys
from mtrl.envs.evaluation import BackgroundEvaluation
submit = BackgroundEvaluation.submit
def kill_then_submit(self, policy, vector_step):
    if self.pool is not None and self.pending:
        self.pending[0][2].result()
        for pid in list(self.pool._processes):
            os.kill(pid, signal.SIGKILL)
    submit(self, policy, vector_step)
BackgroundEvaluation.submit = kill_then_submit
from mtrl.cli.train import main
sys.argv = ["mtrl-train", *sys.argv[1:]]
main()
"""


def test_a_training_run_whose_evaluation_worker_is_killed_warns_and_finishes(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_THE_WORKER,
            "experiment=smoke",
            "benchmark=mt1",
            "benchmark.episode_length=50",
            "total_steps=300",
            "eval.every=100",
            "eval.background=true",
            "threads=1",
            "progress_bar=false",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert DIED in result.stderr and "Traceback" not in result.stderr
    assert set(tensorboard_scalars(run_dir)["eval/success_rate"]) == {100, 200, 300}
    assert (run_dir / FINISHED).exists()
