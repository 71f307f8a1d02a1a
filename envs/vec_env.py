"""Stable-Baselines3 view of a gymnasium vector env (SB3 cannot consume a gymnasium VectorEnv)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from mtrl.envs.benchmarks import env_task_names, upright
from mtrl.envs.env_state import env_state, load_env_state


def _unbatch(info: dict[str, Any], num_envs: int) -> list[dict[str, Any]]:
    """Split gymnasium's batched info (arrays plus "_key" presence masks) into one dict per env."""
    out: list[dict[str, Any]] = [{} for _ in range(num_envs)]
    for key, value in info.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        values = _unbatch(value, num_envs) if isinstance(value, dict) else value
        mask = info.get(f"_{key}")
        for i in range(num_envs) if mask is None else np.flatnonzero(mask):
            out[i][key] = values[i]
    return out


class MetaWorldVecEnv(VecEnv):
    """SB3 ``VecEnv`` over a gymnasium vector env with SAME_STEP autoreset (sync or async).

    It follows SB3's conventions (``DummyVecEnv`` + ``Monitor``): when an episode ends the returned
    observation is already the reset one, and ``infos[i]`` holds the last step's info plus
    ``terminal_observation``, ``TimeLimit.truncated`` (so the replay buffer bootstraps time-outs),
    ``episode`` and ``is_success``. Meta-World's ``info["success"]`` is per step, so ``is_success``
    is whether it was ever 1 during the episode, as in Meta-World's evaluation protocol.

    :attr:`during_step`, when set, is called once per step while the sub-envs simulate it: in
    their worker processes for an async env (the agent's update then runs meanwhile), just before
    the step for a sync one, which gives the same results without the overlap.
    """

    def __init__(self, env: gym.vector.VectorEnv):
        if env.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
            raise ValueError(
                "MetaWorldVecEnv needs a vector env with SAME_STEP autoreset, got "
                f"{env.metadata.get('autoreset_mode')!r}; build it with make_vector_env"
            )
        # Set before VecEnv.__init__, which already calls get_attr("render_mode").
        self.vector_env = env
        self.task_names = env_task_names(env)
        space = env.single_observation_space
        # SB3's replay buffer stores observations with the space's dtype: keep it float32.
        observation_space = gym.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
        )
        super().__init__(env.num_envs, observation_space, env.single_action_space)
        self._actions: np.ndarray | None = None
        self.during_step: Callable[[], None] | None = None
        self._episode_returns = np.zeros(self.num_envs)
        self._episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._ever_succeeded = np.zeros(self.num_envs, dtype=bool)
        self._start_time = time.time()

    def reset(self) -> VecEnvObs:
        options = self._options[0]
        if any(o != options for o in self._options):
            raise ValueError("gymnasium vector envs take one options dict for all sub-envs")
        seeds = None if all(s is None for s in self._seeds) else self._seeds
        obs, info = self.vector_env.reset(seed=seeds, options=options or None)
        self.reset_infos = _unbatch(info, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        self._episode_returns[:] = 0.0
        self._episode_lengths[:] = 0
        self._ever_succeeded[:] = False
        return np.asarray(obs, dtype=np.float32)

    @property
    def steps_in_workers(self) -> bool:
        """Whether the sub-envs step in worker processes (an async env), so that work done
        meanwhile overlaps with the simulation."""
        return isinstance(self.vector_env, gym.vector.AsyncVectorEnv)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions
        if self.steps_in_workers:
            self.vector_env.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        if self.during_step is not None:
            self.during_step()
        if self.steps_in_workers:
            obs, rewards, terminated, truncated, info = self.vector_env.step_wait()
        else:
            obs, rewards, terminated, truncated, info = self.vector_env.step(self._actions)
        dones = np.logical_or(terminated, truncated)
        self._episode_returns += rewards
        self._episode_lengths += 1
        infos = _unbatch(info, self.num_envs)
        final_infos = _unbatch(info["final_info"], self.num_envs) if dones.any() else []
        for i in range(self.num_envs):
            if dones[i]:
                # Under SAME_STEP the top-level info of an ended env is its reset info.
                self.reset_infos[i] = infos[i]
                timed_out = bool(truncated[i] and not terminated[i])
                infos[i] = self._end_episode(i, final_infos[i], info["final_obs"][i], timed_out)
            else:
                self._ever_succeeded[i] |= bool(infos[i].get("success", False))
        return (
            np.asarray(obs, dtype=np.float32),
            np.asarray(rewards, dtype=np.float32),
            dones,
            infos,
        )

    def _end_episode(
        self, i: int, last_info: dict[str, Any], last_obs: np.ndarray, timed_out: bool
    ) -> dict[str, Any]:
        """SB3's info for env ``i``'s last step; starts its next episode's statistics."""
        succeeded = self._ever_succeeded[i] or bool(last_info.get("success", False))
        last_info.pop("episode", None)  # Meta-World's own statistics, replaced by SB3's format
        last_info["terminal_observation"] = np.asarray(last_obs, dtype=np.float32)
        last_info["TimeLimit.truncated"] = timed_out
        last_info["episode"] = {
            "r": float(self._episode_returns[i]),
            "l": int(self._episode_lengths[i]),
            "t": round(time.time() - self._start_time, 6),
        }
        last_info["is_success"] = bool(succeeded)
        self._episode_returns[i] = 0.0
        self._episode_lengths[i] = 0
        self._ever_succeeded[i] = False
        return last_info

    @property
    def restores_episodes(self) -> bool:
        """Whether :meth:`load_state_dict` restores the episodes in progress: sub-envs in this
        process can be read and written whole; those of an async env live in worker processes,
        which only Meta-World's own checkpoint (goals and generators) reaches."""
        return isinstance(self.vector_env, gym.vector.SyncVectorEnv)

    def state_dict(self) -> dict[str, Any]:
        """The sub-envs' state as plain data: whole (episodes in progress included) for a sync
        env, Meta-World's checkpoint of goals and generators for an async one."""
        if self.restores_episodes:
            envs = [env_state(env) for env in self.vector_env.envs]
        else:
            envs = [{"metaworld": state} for state in self.vector_env.call("get_checkpoint")]
        return {
            "envs": envs,
            "episode_returns": torch.from_numpy(self._episode_returns.copy()),
            "episode_lengths": torch.from_numpy(self._episode_lengths.copy()),
            "ever_succeeded": torch.from_numpy(self._ever_succeeded.copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> bool:
        """Continue from :meth:`state_dict`; returns whether the episodes in progress came back.

        Without them (an async env, or a state saved from one) the next :meth:`reset` starts new
        episodes from the saved goals and generators.
        """
        envs = state["envs"]
        if len(envs) != self.num_envs:
            raise ValueError(
                f"the saved state has {len(envs)} environments, this env {self.num_envs}"
            )
        whole = all("physics" in env for env in envs)
        if self.restores_episodes and whole:
            for env, saved in zip(self.vector_env.envs, envs, strict=True):
                load_env_state(env, saved)
            self._episode_returns[:] = state["episode_returns"].numpy()
            self._episode_lengths[:] = state["episode_lengths"].numpy()
            self._ever_succeeded[:] = state["ever_succeeded"].numpy()
            return True
        self.vector_env.call("load_checkpoint", [env["metaworld"] for env in envs])
        return False

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Kept for SB3 (``set_random_seed`` calls it); it has no effect on Meta-World.

        Meta-World ignores reset seeds: an env is seeded once, when it is built
        (``make_vector_env(spec, seed)``). The seeds are still passed to the next ``reset()``.
        """
        return super().seed(seed)

    def close(self) -> None:
        self.vector_env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        values = self.vector_env.get_attr(attr_name)
        return [values[i] for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        indices = list(self._get_indices(indices))
        if len(indices) == self.num_envs:
            values = [value] * self.num_envs
        else:  # gymnasium sets every sub-env: write the others' current values back
            values = list(self.vector_env.get_attr(attr_name))
            for i in indices:
                values[i] = value
        self.vector_env.set_attr(attr_name, values)

    def env_method(
        self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs
    ) -> list[Any]:
        indices = list(self._get_indices(indices))
        if len(indices) == self.num_envs:
            return list(self.vector_env.call(method_name, *method_args, **method_kwargs))
        if isinstance(self.vector_env, gym.vector.SyncVectorEnv):
            envs = self.vector_env.envs
            return [
                envs[i].get_wrapper_attr(method_name)(*method_args, **method_kwargs)
                for i in indices
            ]
        raise NotImplementedError(
            "gymnasium's AsyncVectorEnv can only call a method on all sub-envs; use indices=None"
        )

    def env_is_wrapped(
        self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None
    ) -> list[bool]:
        """Whether sub-envs are wrapped; always False for async envs, whose wrappers live in
        worker processes (SB3 only asks this about its ``Monitor``, which these envs never have)."""
        indices = self._get_indices(indices)
        if isinstance(self.vector_env, gym.vector.SyncVectorEnv):
            return [is_wrapped(self.vector_env.envs[i], wrapper_class) for i in indices]
        return [False for _ in indices]

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Frames of every sub-env, right way up; needs ``render_mode="rgb_array"``."""
        frames = self.vector_env.call("render")
        cameras = self.vector_env.get_attr("camera_name")
        return [
            None if frame is None else upright(frame, camera)
            for frame, camera in zip(frames, cameras, strict=True)
        ]
