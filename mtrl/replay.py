"""A replay buffer that samples the same number of transitions from every task."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch import Tensor

_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class TaskBatch(NamedTuple):
    """Transitions grouped by task: every field has a leading ``[K, B]``."""

    observations: Tensor
    actions: Tensor
    next_observations: Tensor
    dones: Tensor  # 1 only for true terminations: time-limit truncations bootstrap
    rewards: Tensor


class MultiTaskReplayBuffer(ReplayBuffer):
    """SB3's :class:`ReplayBuffer` with one environment per task, sampled task by task.

    SB3 stores transitions as ``[rows, n_envs, ...]``; with one environment per task, column k
    holds task k's transitions, and a stratified batch is B rows drawn for each column. The
    buffer keeps its own random generator, so that a resumed run draws the batches it would
    have drawn. ``buffer_size`` counts transitions over all tasks, as in SB3.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        n_envs: int = 1,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(buffer_size, observation_space, action_space, device, n_envs, **kwargs)
        if not self.handle_timeout_termination:
            raise ValueError("multi-task SAC needs handle_timeout_termination=True")
        self.rng = np.random.default_rng(seed)

    def sample_tasks(self, batch_per_task: int) -> TaskBatch:
        """``batch_per_task`` transitions drawn uniformly from each task's history."""
        filled = self.buffer_size if self.full else self.pos
        if filled == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        rows = self.rng.integers(0, filled, size=(self.n_envs, batch_per_task))
        tasks = np.arange(self.n_envs)[:, None]
        done = self.dones[rows, tasks] * (1 - self.timeouts[rows, tasks])
        return TaskBatch(
            self.to_torch(self.observations[rows, tasks]),
            self.to_torch(self.actions[rows, tasks]),
            self.to_torch(self.next_observations[rows, tasks]),
            self.to_torch(done),
            self.to_torch(self.rewards[rows, tasks]),
        )

    def sample(self, batch_size: int, env: Any = None) -> ReplayBufferSamples:
        """SB3's flat batch, stratified: ``batch_size`` must be a multiple of the task count."""
        if batch_size % self.n_envs:
            raise ValueError(f"batch_size {batch_size} is not a multiple of {self.n_envs} tasks")
        batch = self.sample_tasks(batch_size // self.n_envs)
        return ReplayBufferSamples(
            batch.observations.flatten(0, 1),
            batch.actions.flatten(0, 1),
            batch.next_observations.flatten(0, 1),
            batch.dones.reshape(-1, 1),
            batch.rewards.reshape(-1, 1),
        )

    def state_dict(self) -> dict[str, Any]:
        """The stored transitions (only the filled rows), the write position and the generator."""
        filled = self.buffer_size if self.full else self.pos
        state: dict[str, Any] = {
            name: torch.from_numpy(getattr(self, name)[:filled].copy()) for name in _ARRAYS
        }
        state.update(pos=self.pos, full=self.full, rng=self.rng.bit_generator.state)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in _ARRAYS:
            stored = state[name].numpy()
            target = getattr(self, name)
            if stored.shape[1:] != target.shape[1:] or len(stored) > len(target):
                raise ValueError(
                    f"replay buffer {name} of shape {tuple(stored.shape)} does not fit a buffer "
                    f"of shape {target.shape}"
                )
            target[: len(stored)] = stored
        self.pos, self.full = int(state["pos"]), bool(state["full"])
        self.rng.bit_generator.state = state["rng"]
