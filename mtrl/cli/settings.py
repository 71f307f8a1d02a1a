"""Checks a composed training config and turns it into the objects a run is built from.

Everything a user can get wrong on the command line is caught here, before any environment is
built, with a message that names the key and what is valid.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mtrl.agents.mtsac import GRADIENT_MODES
from mtrl.agents.policies import OPTIMIZERS
from mtrl.aggregators import make_aggregator
from mtrl.envs.benchmarks import BenchmarkSpec


class ConfigError(ValueError):
    """A config value that cannot be run, with what is valid instead."""


def integer(key: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _number(key: str, value: Any, low: float, high: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if value < low or value > high or (open_low and value == low):
        bracket = "(" if open_low else "["
        raise ConfigError(f"{key} must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def _choice(key: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ConfigError(f"{key}={value!r} is not valid; valid values: {', '.join(valid)}")
    return value


def _layers(key: str, value: Any, depth: int) -> list[int]:
    """Layer indices of a network with ``depth`` layers (0 is the first, depth-1 the output)."""
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < depth for i in value
    ):
        raise ConfigError(f"{key} must list layer indices from 0 to {depth - 1}, got {value!r}")
    return list(value)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else must be a device torch knows and has."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ConfigError(
            f"device={device!r} is not a device; valid: auto, cpu, cuda, cuda:N"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} asked for CUDA, which this machine does not have")
    return resolved


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """A validated training config."""

    benchmark: BenchmarkSpec
    method: str
    method_kwargs: dict[str, Any]
    agent_kwargs: dict[str, Any]
    seed: int
    device: torch.device
    total_steps: int
    eval_every: int
    eval_episodes: int
    checkpoint_every: int
    checkpoint_keep: int
    checkpoint_replay_buffer: bool

    @property
    def total_env_steps(self) -> int:
        return self.total_steps * self.benchmark.num_tasks


def agent_kwargs(agent: dict[str, Any], num_tasks: int) -> dict[str, Any]:
    """MTSAC's constructor arguments from the ``agent`` config group, checked."""
    net_arch = agent["net_arch"]
    if not isinstance(net_arch, list) or not net_arch:
        raise ConfigError(
            f"agent.net_arch must be a non-empty list of layer sizes, got {net_arch!r}"
        )
    for size in net_arch:
        integer("agent.net_arch entries", size, 1)
    depth = len(net_arch) + 1  # hidden layers and the output layer
    low, high = agent["log_std_bounds"]
    if not low < high:
        raise ConfigError(
            f"agent.log_std_bounds must be [low, high] with low < high, got {[low, high]}"
        )
    per_task = integer("agent.batch_size_per_task", agent["batch_size_per_task"], 1)
    buffer_size = integer("agent.buffer_size", agent["buffer_size"], num_tasks)
    warmup = integer("agent.warmup_steps", agent["warmup_steps"], 0)
    return {
        "learning_rate": _number(
            "agent.learning_rate", agent["learning_rate"], 0, 1, open_low=True
        ),
        "gamma": _number("agent.gamma", agent["gamma"], 0, 1),
        "tau": _number("agent.tau", agent["tau"], 0, 1, open_low=True),
        "batch_size": per_task * num_tasks,
        "buffer_size": buffer_size,
        "learning_starts": warmup * num_tasks,
        "gradient_steps": integer("agent.gradient_steps", agent["gradient_steps"], 1),
        "initial_alpha": _number(
            "agent.initial_alpha", agent["initial_alpha"], 0, 1e6, open_low=True
        ),
        "compile_aggregator": bool(agent["compile_aggregator"]),
        "recon_threshold": _number("agent.recon_threshold", agent["recon_threshold"], -1, 0),
        "per_task_gradients": _choice(
            "agent.per_task_gradients", agent["per_task_gradients"], GRADIENT_MODES
        ),
        "policy_kwargs": {
            "net_arch": list(net_arch),
            "multi_head": bool(agent["multi_head"]),
            "actor_task_layers": _layers(
                "agent.actor_task_layers", agent["actor_task_layers"], depth
            ),
            "critic_task_layers": _layers(
                "agent.critic_task_layers", agent["critic_task_layers"], depth
            ),
            "n_critics": integer("agent.n_critics", agent["n_critics"], 1),
            "log_std_bounds": [float(low), float(high)],
        },
    }


def train_settings(cfg: DictConfig) -> TrainSettings:
    """Validate a composed ``train`` config; raises :class:`ConfigError` or ``ValueError``."""
    container = OmegaConf.to_container(cfg, resolve=True)
    method = dict(container["method"])
    name = method.pop("name")
    try:
        benchmark = BenchmarkSpec(**container["benchmark"])
        aggregator = make_aggregator(name, **method)  # unknown names and bad values fail here
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error)) from error
    agent = agent_kwargs(container["agent"], benchmark.num_tasks)
    agent["policy_kwargs"]["optimizer"] = _choice("optimizer", container["optimizer"], OPTIMIZERS)
    if agent["per_task_gradients"] == "none" and aggregator.needs_gram:
        raise ConfigError(
            f"method {name!r} combines per-task gradients: agent.per_task_gradients must be "
            "vmap or loop"
        )
    evaluation, checkpoint = container["eval"], container["checkpoint"]
    return TrainSettings(
        benchmark=benchmark,
        method=name,
        method_kwargs=method,
        agent_kwargs=agent,
        seed=integer("seed", container["seed"], 0),
        device=resolve_device(str(container["device"])),
        total_steps=integer("total_steps", container["total_steps"], 1),
        eval_every=integer("eval.every", evaluation["every"], 1),
        eval_episodes=integer("eval.episodes", evaluation["episodes"], 1),
        checkpoint_every=integer("checkpoint.every", checkpoint["every"], 1),
        checkpoint_keep=integer("checkpoint.keep", checkpoint["keep"], 1),
        checkpoint_replay_buffer=bool(checkpoint["replay_buffer"]),
    )
