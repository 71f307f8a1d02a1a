"""BRC's per-task reward normalisation (Nauman et al., 2025; naumix/BiggerRegularizedCategorical
``jaxrl/normalizer.py``, ``RewardNormalizer``, and ``train.py``, which applies it).

Each task's rewards are divided by the largest magnitude of its discounted returns seen so far,
widened by the entropy bonus a return collects over the effective horizon, so that every task's
soft returns fit the categorical critics' support ``[−v_max, v_max]``:

    scale_k = max(max_k, |min_k|)
    reward / ((scale_k − α_k · H · H̄ / 2) / v_max),    H = 1 / (1 − γ), H̄ the target entropy

where ``min_k`` and ``max_k`` run over the discounted return at every step of every finished
episode of task k. A return is bootstrapped at a time-out by the episode's mean reward times H,
and not at a termination. Until a task has finished an episode its rewards normalise to zero, as
the reference's infinite initial scale gives.

The replay buffer keeps the raw rewards; a sampled batch is normalised with the temperatures of
the moment, before the step's updates. The scales live on the device and change only where an
episode ends, in the rollout: an update reads nothing from the host.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

REWARD_NORMALIZATIONS = ("none", "per_task")

__all__ = ["REWARD_NORMALIZATIONS", "RewardNormalizer", "discounted_returns"]


def discounted_returns(rewards: list[float], gamma: float, bootstrap: float) -> np.ndarray:
    """The discounted return from every step of one episode, with ``bootstrap`` after its last
    reward."""
    values = np.empty(len(rewards))
    following = bootstrap
    for index in reversed(range(len(rewards))):
        following = values[index] = rewards[index] + gamma * following
    return values


class RewardNormalizer:
    """Each task's running extremes of its discounted returns, its rewards of the episode in
    progress, and the divisor of its sampled rewards (see the module's docstring)."""

    def __init__(
        self, num_tasks: int, gamma: float, v_max: float, device: torch.device | str
    ) -> None:
        self.gamma, self.v_max = gamma, v_max
        self.horizon = 1.0 / (1.0 - gamma)
        self.returns_min = np.full(num_tasks, np.inf)
        self.returns_max = np.full(num_tasks, -np.inf)
        self.rewards: list[list[float]] = [[] for _ in range(num_tasks)]
        self.scale = torch.full((num_tasks,), math.inf, dtype=torch.float32, device=device)

    def observe(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> None:
        """Take one vector step's raw rewards (task k's in entry k) and where episodes ended."""
        ended = False
        for task, reward in enumerate(np.asarray(rewards, dtype=np.float64)):
            episode = self.rewards[task]
            episode.append(float(reward))
            if not (terminated[task] or truncated[task]):
                continue
            timed_out = bool(truncated[task]) and not bool(terminated[task])
            bootstrap = float(np.mean(episode)) * self.horizon if timed_out else 0.0
            values = discounted_returns(episode, self.gamma, bootstrap)
            self.returns_min[task] = min(self.returns_min[task], values.min())
            self.returns_max[task] = max(self.returns_max[task], values.max())
            self.rewards[task] = []
            ended = True
        if ended:
            scale = np.maximum(self.returns_max, np.abs(self.returns_min))
            self.scale.copy_(torch.from_numpy(scale.astype(np.float32)))

    def normalize(self, rewards: Tensor, alphas: Tensor, target_entropy: float) -> Tensor:
        """``[K, B]`` raw rewards, divided task by task; ``alphas`` ``[K]``, on the device."""
        divisor = (self.scale - alphas * (self.horizon * target_entropy / 2)) / self.v_max
        return rewards / divisor.unsqueeze(-1).to(rewards.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {
            "returns_min": self.returns_min.tolist(),
            "returns_max": self.returns_max.tolist(),
            "rewards": [list(episode) for episode in self.rewards],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.returns_min = np.array(state["returns_min"], dtype=np.float64)
        self.returns_max = np.array(state["returns_max"], dtype=np.float64)
        self.rewards = [list(episode) for episode in state["rewards"]]
        scale = np.maximum(self.returns_max, np.abs(self.returns_min))
        self.scale.copy_(torch.from_numpy(scale.astype(np.float32)))
