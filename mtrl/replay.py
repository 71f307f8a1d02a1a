"""A multi-task replay buffer on the device, sampled per task or uniformly over all transitions.

SB3's buffers keep numpy arrays on the host and copy every batch to the device. Here the
storage is torch tensors on the training device, and a batch is drawn with a generator on that
device, so sampling never waits for the host. The buffer keeps SB3's interface (``add``,
``sample``) and its conventions: one column per environment, ``buffer_size`` counting
transitions over all of them, and time-limit truncations that bootstrap.

A batch is grouped by task, ``[K, B]``, so that each task's loss reads its own rows. A
stratified batch gives every task the same B rows. A uniform batch (BRC's: each of its
transitions drawn from all of them) gives task k a random count n_k; it is laid out as
``[K, C]``, C a capacity that n_k exceeds with a probability below :data:`OVERFLOW`, and
``weights`` marks the rows in use (:meth:`MultiTaskReplayBuffer.sample_uniform`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from scipy.stats import binom
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from torch import Tensor

from mtrl.generators import restore_generator

_STORAGE = ("observations", "next_observations", "actions", "rewards", "terminals")

# The chance, per uniform batch, that some task draws more rows than the batch holds for it.
OVERFLOW = 1e-6


def uniform_capacity(batch_size: int, tasks: int) -> int:
    """Rows per task of a uniform batch: the least C with ``tasks · P(n > C) ≤ OVERFLOW`` for
    n ~ Binomial(batch_size, 1 / tasks), a task's count when every transition is drawn from
    ``tasks`` equally filled tasks (a union bound over the tasks)."""
    if batch_size < 1 or tasks < 1:
        raise ValueError(f"need a positive batch size and task count, got {batch_size}, {tasks}")
    return int(binom.isf(OVERFLOW / tasks, batch_size, 1 / tasks))


class TaskBatch(NamedTuple):
    """Transitions grouped by task: every field has a leading ``[K, B]``."""

    observations: Tensor
    actions: Tensor
    next_observations: Tensor
    dones: Tensor  # 1 only for true terminations: time-limit truncations bootstrap
    rewards: Tensor
    # Each row's weight in its task's loss, ``[K, B]``: None for a stratified batch (all rows
    # weigh 1); for a uniform batch K·C/B on the rows drawn and 0 on the rest, so that the mean of
    # the K task losses is the mean loss over the batch's B transitions.
    weights: Tensor | None = None


class MultiTaskReplayBuffer(BaseBuffer):
    """One environment per task; a stratified batch is B rows drawn for each task's column.

    The buffer keeps its own seeded generator, so that a resumed run draws the batches it
    would have drawn.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        n_envs: int = 1,
        seed: int | None = None,
        **_: Any,
    ) -> None:
        super().__init__(buffer_size, observation_space, action_space, device, n_envs)
        self.buffer_size = max(buffer_size // n_envs, 1)
        rows = (self.buffer_size, n_envs)
        # empty, not zeros: rows are written before they are read, and untouched pages of a
        # large buffer then cost no memory
        self.observations = torch.empty(*rows, *self.obs_shape, device=self.device)
        self.next_observations = torch.empty(*rows, *self.obs_shape, device=self.device)
        self.actions = torch.empty(*rows, self.action_dim, device=self.device)
        self.rewards = torch.empty(*rows, device=self.device)
        self.terminals = torch.empty(*rows, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ())))
        self._tasks = torch.arange(n_envs, device=self.device)[:, None]

    def _to_device(self, array: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.float32)).to(self.device)

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Store one step of every environment; truncations by a time limit are not terminal."""
        truncated = np.array([info.get("TimeLimit.truncated", False) for info in infos])
        row = self.pos
        self.observations[row] = self._to_device(obs)
        self.next_observations[row] = self._to_device(next_obs)
        self.actions[row] = self._to_device(np.reshape(action, (self.n_envs, self.action_dim)))
        self.rewards[row] = self._to_device(reward)
        self.terminals[row] = self._to_device(np.logical_and(done, ~truncated))
        self.pos = (self.pos + 1) % self.buffer_size
        self.full = self.full or self.pos == 0

    def sample_tasks(self, batch_per_task: int) -> TaskBatch:
        """``batch_per_task`` transitions drawn uniformly from each task's history."""
        filled = self.size()
        if filled == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        rows = torch.randint(
            filled, (self.n_envs, batch_per_task), generator=self.generator, device=self.device
        )
        return TaskBatch(
            self.observations[rows, self._tasks],
            self.actions[rows, self._tasks],
            self.next_observations[rows, self._tasks],
            self.terminals[rows, self._tasks],
            self.rewards[rows, self._tasks],
        )

    def sample_uniform(self, batch_size: int, capacity: int) -> tuple[TaskBatch, Tensor]:
        """``batch_size`` transitions drawn uniformly from all of them, grouped by task into
        ``capacity`` rows each (:func:`uniform_capacity`), and the count of transitions that did
        not fit (0 but with a chance below :data:`OVERFLOW`).

        The tasks hold equally many transitions (every task steps at each vector step), so a
        uniform draw picks each transition's task uniformly: task k's count n_k is the number of
        the ``batch_size`` task draws that fall on k, and its transitions are the first n_k of
        ``capacity`` rows drawn uniformly from its history. Everything stays on the device.
        """
        tasks = torch.randint(
            self.n_envs, (batch_size,), generator=self.generator, device=self.device
        )
        batch = self.sample_tasks(capacity)
        counts = torch.zeros(self.n_envs, dtype=torch.int64, device=self.device)
        counts.scatter_add_(0, tasks, torch.ones_like(tasks))
        used = torch.arange(capacity, device=self.device) < counts[:, None]
        weights = used.to(batch.rewards.dtype) * (self.n_envs * capacity / batch_size)
        return batch._replace(weights=weights), (counts - capacity).clamp_min(0).sum()

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

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> ReplayBufferSamples:
        raise NotImplementedError("MultiTaskReplayBuffer samples with sample_tasks()")

    def state_dict(self) -> dict[str, Any]:
        """The stored transitions (filled rows only, on the CPU), the position, the generator
        and its device."""
        state: dict[str, Any] = {
            name: getattr(self, name)[: self.size()].cpu() for name in _STORAGE
        }
        state.update(pos=self.pos, full=self.full, generator=self.generator.get_state())
        state["device"] = str(self.generator.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in _STORAGE:
            stored, target = state[name], getattr(self, name)
            if stored.shape[1:] != target.shape[1:] or len(stored) > len(target):
                raise ValueError(
                    f"replay buffer {name} of shape {tuple(stored.shape)} does not fit a buffer "
                    f"of shape {tuple(target.shape)}"
                )
            target[: len(stored)] = stored.to(self.device)
        self.pos, self.full = int(state["pos"]), bool(state["full"])
        # the saved batches continue on the same device, a stream seeded from them on another;
        # a state without its device was saved by a buffer on this one
        saved_on = state.get("device", self.generator.device)
        self.generator = restore_generator(state["generator"], saved_on, self.device)
