import numpy as np
import pytest
import torch
from gymnasium import spaces

from mtrl.replay import MultiTaskReplayBuffer

TASKS = 3


def filled_buffer(rows: int = 40, seed: int = 0) -> MultiTaskReplayBuffer:
    obs_space = spaces.Box(-10, 10, (2 + TASKS,), np.float32)
    buffer = MultiTaskReplayBuffer(
        1000, obs_space, spaces.Box(-1, 1, (2,), np.float32), "cpu", TASKS, seed=seed
    )
    onehot = np.eye(TASKS, dtype=np.float32)
    for row in range(rows):
        obs = np.concatenate([np.full((TASKS, 2), row, np.float32), onehot], axis=1)
        truncated = row % 10 == 9  # every tenth step ends an episode by the time limit
        buffer.add(
            obs,
            obs + 1,
            np.zeros((TASKS, 2), np.float32),
            np.arange(TASKS, dtype=np.float32),
            np.full(TASKS, truncated),
            [{"TimeLimit.truncated": truncated}] * TASKS,
        )
    return buffer


def test_each_task_gets_the_same_number_of_its_own_transitions():
    batch = filled_buffer().sample_tasks(16)
    assert batch.observations.shape == (TASKS, 16, 2 + TASKS)
    assert batch.rewards.shape == batch.dones.shape == (TASKS, 16)
    for task in range(TASKS):
        assert torch.all(batch.observations[task, :, 2 + task] == 1)
        assert torch.all(batch.rewards[task] == task)


def test_time_limit_truncations_bootstrap():
    batch = filled_buffer().sample_tasks(200)
    assert batch.dones.sum() == 0  # every stored done was a truncation
    assert torch.all(batch.next_observations[..., 0] == batch.observations[..., 0] + 1)


def test_flat_sample_is_stratified_and_refuses_uneven_batches():
    buffer = filled_buffer()
    flat = buffer.sample(12)
    assert flat.observations.shape == (12, 2 + TASKS)
    assert flat.observations[:, 2:].sum(0).tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="not a multiple of 3 tasks"):
        buffer.sample(10)


def test_state_round_trip_continues_the_same_batches():
    buffer = filled_buffer()
    buffer.sample_tasks(8)
    state = buffer.state_dict()
    expected = buffer.sample_tasks(8)
    restored = filled_buffer(rows=0, seed=123)
    restored.load_state_dict(state)
    assert restored.pos == buffer.pos and restored.full == buffer.full
    torch.testing.assert_close(restored.sample_tasks(8).observations, expected.observations)


def test_empty_buffer_says_so():
    with pytest.raises(ValueError, match="empty replay buffer"):
        filled_buffer(rows=0).sample_tasks(4)


def test_a_state_saved_without_its_device_continues_on_this_one():
    buffer = filled_buffer()
    state = buffer.state_dict()
    assert state["device"] == "cpu"
    del state["device"]  # as checkpoints written before the device was recorded
    expected = buffer.sample_tasks(8)
    restored = filled_buffer(rows=0, seed=123)
    restored.load_state_dict(state)
    assert torch.equal(restored.sample_tasks(8).observations, expected.observations)
