"""Evaluation in a worker process on a snapshot of the policy gives the inline result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtrl.agents.mtsac import MTSAC
from mtrl.agents.policies import PolicySnapshot
from mtrl.envs.benchmarks import make_vector_env
from mtrl.envs.evaluation import BackgroundEvaluation, InlineEvaluation
from mtrl.envs.vec_env import MetaWorldVecEnv
from tests.envs.conftest import MT10_SHORT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    env = MetaWorldVecEnv(make_vector_env(MT10_SHORT, seed=0))
    model = MTSAC("MlpPolicy", env, policy_kwargs={"net_arch": [32, 32]}, seed=0, device="cpu")
    yield model
    env.close()


def test_a_snapshot_acts_as_the_deterministic_policy_and_keeps_its_weights(model):
    observations = np.random.default_rng(0).uniform(-1, 1, (10, 49)).astype(np.float32)
    observations[:, 39:] = np.eye(10, dtype=np.float32)
    snapshot = PolicySnapshot(model.policy)
    expected = model.predict(observations, deterministic=True)[0]
    np.testing.assert_allclose(snapshot(observations), expected, rtol=0, atol=1e-6)
    assert getattr(snapshot.actor, "optimizer", None) is None  # no Adam moments in the copy
    with torch.no_grad():
        for parameter in model.policy.actor.parameters():
            parameter.add_(1.0)
    assert not np.allclose(model.predict(observations, deterministic=True)[0], expected)
    np.testing.assert_allclose(snapshot(observations), expected, rtol=0, atol=1e-6)


def test_a_background_evaluation_gives_the_inline_result(model):
    snapshots = {step: PolicySnapshot(model.policy) for step in (100, 200)}
    with torch.no_grad():  # the second snapshot acts differently
        for parameter in snapshots[200].actor.parameters():
            parameter.mul_(3.0)
    background = BackgroundEvaluation(MT10_SHORT, seed=3, episodes=2)
    inline = InlineEvaluation(MT10_SHORT, seed=3, episodes=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the worker's count: the same arithmetic, so the same actions
    try:
        for step, snapshot in snapshots.items():
            background.submit(snapshot, step)
        assert [step for step, _ in background.running()] == [100, 200]
        for step, snapshot in snapshots.items():
            inline.submit(snapshot, step)
        expected = inline.finished()
    finally:
        torch.set_num_threads(threads)
        inline.close()
    try:
        assert background.finished(wait=True) == expected
        assert background.running() == [] and background.finished() == []
    finally:
        background.close()
    assert [step for step, _ in expected] == [100, 200]
    assert expected[0][1] != expected[1][1]
