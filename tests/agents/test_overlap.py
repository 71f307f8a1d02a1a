"""Updates that run while the environments simulate the next step (``overlap_updates``)."""

from __future__ import annotations

import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from mtrl.agents.mtsac import MTSAC
from mtrl.envs.benchmarks import BenchmarkSpec, make_vector_env
from mtrl.envs.vec_env import MetaWorldVecEnv

TASKS = 10
WARMUP = 20  # vector steps
STEPS = 50  # vector steps of a run; episodes of 30 steps end inside it

pytestmark = pytest.mark.slow


def meta_world(strategy: str) -> MetaWorldVecEnv:
    spec = BenchmarkSpec("mt10", episode_length=30, vector_strategy=strategy)
    return MetaWorldVecEnv(make_vector_env(spec, seed=0))


def make_model(env: MetaWorldVecEnv, overlap: bool | None) -> MTSAC:
    return MTSAC(
        "MlpPolicy",
        env,
        aggregator="pcgrad",  # random visiting orders: the same draws in the same order
        overlap_updates=overlap,
        learning_starts=WARMUP * TASKS,
        batch_size=8 * TASKS,
        buffer_size=2000,
        policy_kwargs={"net_arch": [32, 32]},
        seed=0,
        device="cpu",
    )


def assert_same_training(model: MTSAC, other: MTSAC) -> None:
    assert model._n_updates == other._n_updates
    for mine, theirs in zip(model.policy.parameters(), other.policy.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    filled = model.replay_buffer.size()
    for name in ("observations", "actions", "rewards"):
        stored = getattr(model.replay_buffer, name)[:filled]
        assert torch.equal(getattr(other.replay_buffer, name)[:filled], stored), name


class UpdatesSeenByEachAction(BaseCallback):
    """How many updates the policy has had when it chooses each step's actions."""

    def __init__(self) -> None:
        super().__init__()
        self.updates: list[int] = []

    def _on_rollout_start(self) -> None:
        self.updates.append(self.model._n_updates)

    def _on_step(self) -> bool:
        return True


def test_an_async_env_overlaps_by_default_and_trains_as_a_sync_env_running_the_updates_first():
    overlapped = make_model(meta_world("async"), overlap=None)
    assert overlapped.overlap_updates
    assert not make_model(meta_world("sync"), overlap=None).overlap_updates
    overlapped.learn(STEPS * TASKS)
    in_turn = make_model(meta_world("sync"), overlap=True)
    in_turn.learn(STEPS * TASKS)
    assert_same_training(overlapped, in_turn)
    overlapped.env.close()


def test_the_overlapped_policy_acts_one_update_behind():
    seen = {}
    for overlap in (False, True):
        model = make_model(meta_world("sync"), overlap)
        record = UpdatesSeenByEachAction()
        model.learn(STEPS * TASKS, callback=record)
        seen[overlap] = record.updates
        # SB3 asks for one update after each step past the warm-up; the last one waits for the
        # next step when the updates overlap with it.
        assert model._n_updates + model.pending_updates == STEPS - WARMUP
        assert model.pending_updates == int(overlap)
    lagging = [max(count - 1, 0) for count in seen[False]]
    assert seen[True] == lagging


def test_a_resumed_overlapped_run_continues_exactly(tmp_path):
    uninterrupted = make_model(meta_world("sync"), overlap=True)
    uninterrupted.learn(STEPS * TASKS)
    first = make_model(meta_world("sync"), overlap=True)
    first.learn(35 * TASKS)
    assert first.pending_updates == 1  # asked for after the last step, not yet run
    path = first.save(tmp_path / "checkpoint.pt", include_replay_buffer=True)
    resumed = MTSAC.load(path, env=meta_world("sync"))
    assert resumed.overlap_updates and resumed.pending_updates == 1
    resumed.learn((STEPS - 35) * TASKS, reset_num_timesteps=False)
    assert_same_training(resumed, uninterrupted)


def test_overlap_needs_an_env_that_can_work_while_it_steps():
    from tests.agents.point_tasks import point_tasks

    with pytest.raises(ValueError, match="overlap_updates=True needs an env that runs work"):
        MTSAC("MlpPolicy", point_tasks(2), overlap_updates=True, device="cpu")
