"""A tiny multi-task environment for fast agent tests: move a point to a task's own goal.

Observations are the point's position followed by a one-hot task id, as in Meta-World's
multi-task benchmarks; episodes are truncated by a time limit, never terminated.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv


class PointTask(gym.Env):
    def __init__(self, task: int, num_tasks: int, episode_length: int = 20) -> None:
        self.task, self.num_tasks = task, num_tasks
        angle = 2 * np.pi * task / num_tasks
        self.goal = np.array([np.cos(angle), np.sin(angle)], dtype=np.float32)
        self.episode_length = episode_length
        low = np.concatenate([np.full(2, -5.0), np.zeros(num_tasks)]).astype(np.float32)
        high = np.concatenate([np.full(2, 5.0), np.ones(num_tasks)]).astype(np.float32)
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)

    def _obs(self) -> np.ndarray:
        onehot = np.eye(self.num_tasks, dtype=np.float32)[self.task]
        return np.concatenate([self.position, onehot])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self.steps = 0
        return self._obs(), {}

    def step(self, action):
        self.position = np.clip(self.position + 0.2 * np.asarray(action), -5, 5).astype(np.float32)
        self.steps += 1
        distance = float(np.linalg.norm(self.position - self.goal))
        info = {"success": float(distance < 0.2)}
        return self._obs(), -distance, False, self.steps >= self.episode_length, info


def point_tasks(num_tasks: int = 3, episode_length: int = 20, seed: int = 0) -> DummyVecEnv:
    """An SB3 vec env with one sub-env per task; SB3's TimeLimit handling marks truncations."""
    env = DummyVecEnv(
        [
            lambda k=k: gym.wrappers.TimeLimit(
                PointTask(k, num_tasks, episode_length), episode_length
            )
            for k in range(num_tasks)
        ]
    )
    env.seed(seed)
    env.task_names = [f"point-{k}" for k in range(num_tasks)]
    return env
