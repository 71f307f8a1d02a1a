"""The whole state of a Meta-World environment, episode in progress included, as plain data.

Meta-World's own checkpoint (``CheckpointWrapper.get_checkpoint``) holds each task's goals and
random generators, which is enough to restart at an episode boundary. Continuing a stopped run
exactly also needs the episode in progress:

- the MuJoCo integration state (positions, velocities, controls, mocap targets, the solver's
  warm start, the clock);
- the model fields that resets move (bodies and sites placed at the episode's goal);
- the plain attributes of the environment and of each wrapper: the step counters of the env and
  of ``TimeLimit``, the goal vector, the previous observation that Meta-World stacks, the
  episode statistics.

Arrays whose memory MuJoCo owns (``get_body_com`` returns such views) follow the physics and are
left alone; every other attribute is restored by value. Values become tensors and plain Python
data, so that a checkpoint holding them loads with ``weights_only=True``.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch

# mjSTATE_INTEGRATION: everything mj_step reads (time, qpos, qvel, act, warm start, ctrl,
# applied forces, mocap, equality activations, user data, plugin state).
INTEGRATION = mujoco.mjtState.mjSTATE_INTEGRATION
# The model fields that Meta-World's resets write (body and site positions of the goal and the
# objects); the rest of the model is fixed at construction.
MOVED_MODEL_FIELDS = ("body_pos", "body_quat", "site_pos", "geom_pos")
# Wall-clock values mean nothing in another process.
WALL_CLOCK = frozenset({"episode_start_time"})
_PLAIN = (bool, int, float, str, type(None), np.generic)


def _physics_view(value: np.ndarray) -> bool:
    """Whether ``value`` is a view of memory that MuJoCo owns (a body position, say)."""
    return value.base is not None and not isinstance(value.base, np.ndarray)


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return {"numpy": torch.from_numpy(np.array(value)), "scalar": isinstance(value, np.generic)}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "numpy" in value:
        array = value["numpy"].numpy().copy()
        return array[()] if value["scalar"] else array
    return value


def _attributes(layer: Any) -> dict[str, Any]:
    """The plain attributes of one env or wrapper, encoded."""
    return {
        name: _encode(value)
        for name, value in vars(layer).items()
        if name not in WALL_CLOCK
        and (
            isinstance(value, _PLAIN)
            or (
                isinstance(value, np.ndarray)
                and value.dtype.kind in "biuf"
                and not _physics_view(value)
            )
        )
    }


def _layers(env: gym.Env) -> list[Any]:
    """The env's wrappers, outermost first, then the raw env."""
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _forget_cached_properties(layer: Any) -> None:
    """Drop values that ``functools.cached_property`` computed from the attributes just replaced
    (Meta-World's observation bounds follow whether the goal is observed), so that they are
    computed again from the restored ones."""
    for cls in type(layer).__mro__:
        for name, member in vars(cls).items():
            if isinstance(member, functools.cached_property):
                vars(layer).pop(name, None)


def env_state(env: gym.Env) -> dict[str, Any]:
    """Everything needed to continue ``env`` (one Meta-World task, with its wrappers) exactly."""
    raw = env.unwrapped
    physics = np.empty(mujoco.mj_stateSize(raw.model, INTEGRATION))
    mujoco.mj_getState(raw.model, raw.data, physics, INTEGRATION)
    return {
        "metaworld": env.get_wrapper_attr("get_checkpoint")(),
        "physics": torch.from_numpy(physics),
        "model": {
            name: torch.from_numpy(getattr(raw.model, name).copy()) for name in MOVED_MODEL_FIELDS
        },
        "attributes": [_attributes(layer) for layer in _layers(env)],
    }


def load_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Put ``env`` (built like the one ``state`` came from) into that state."""
    layers = _layers(env)
    if len(layers) != len(state["attributes"]):
        raise ValueError(
            f"the saved environment had {len(state['attributes'])} wrapper layers, this one "
            f"{len(layers)}: it was built differently"
        )
    # Meta-World's own part first: goals, task choice and the generators.
    env.get_wrapper_attr("load_checkpoint")([state["metaworld"]])
    for layer, attributes in zip(layers, state["attributes"], strict=True):
        for name, value in attributes.items():
            setattr(layer, name, _decode(value))
        _forget_cached_properties(layer)
    raw = env.unwrapped
    for name, value in state["model"].items():
        getattr(raw.model, name)[:] = value.numpy()
    physics = state["physics"].numpy()
    mujoco.mj_setState(raw.model, raw.data, physics, INTEGRATION)
    # Derived quantities (body positions, contacts) for anything that reads them before the next
    # step; mj_forward also rewrites the solver's warm start, which the state then restores.
    mujoco.mj_forward(raw.model, raw.data)
    mujoco.mj_setState(raw.model, raw.data, physics, INTEGRATION)
