"""Turns a composed training config into the objects a run is built from.

Types, ranges and choices of every key are declared in :mod:`mtrl.cli.schema`; what is checked
here is what one key alone cannot say (a layer index within the network's depth, bounds in
order, a method that needs per-task gradients), and what other code owns (the benchmark's
choices, each method's hyperparameters, the devices this machine has). Everything runs before
any environment is built, with a message that names the key and what is valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mtrl.agents import architectures
from mtrl.aggregators import make_aggregator
from mtrl.aggregators.base import aggregator_class
from mtrl.cli.schema import ConfigError, validate
from mtrl.envs.benchmarks import BenchmarkSpec, choose_vector_strategy
from mtrl.plugins import (
    METHODS,
    NETWORKS,
    PLAIN_NETWORKS,
    network_class,
    network_options,
    plugin,
)

__all__ = ["ConfigError", "TrainSettings", "integer", "resolve_device", "train_settings"]


def integer(key: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


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
    eval_background: bool | None  # None: where the machine has cores to spare
    checkpoint_every: int
    checkpoint_keep: int
    checkpoint_replay_buffer: bool
    preset: str | None = None

    @property
    def total_env_steps(self) -> int:
        return self.total_steps * self.benchmark.num_tasks


def _layers(key: str, value: list[int], depth: int) -> list[int]:
    """Layer indices of a network with ``depth`` layers (0 is the first, depth-1 the output)."""
    if any(index >= depth for index in value):
        raise ConfigError(f"{key} must list layer indices from 0 to {depth - 1}, got {value!r}")
    return list(value)


def _shown(value: Any) -> str:
    """``value`` as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _defaults(cls: type) -> dict[str, Any]:
    """A method's hyperparameters that have defaults, with them."""
    defaults = {}
    for spec in dataclasses.fields(cls):
        if spec.init and spec.default is not dataclasses.MISSING:
            defaults[spec.name] = spec.default
        elif spec.init and spec.default_factory is not dataclasses.MISSING:
            defaults[spec.name] = spec.default_factory()
    return defaults


def refusal(
    group: str,
    name: str,
    package: str,
    given: dict[str, Any],
    defaults: dict[str, Any],
    build: Callable[..., Any],
    error: Exception,
) -> str:
    """The message for a method or network that refused its values when built (``build(**given)``
    raised ``error``): the keys it refused with their values, the package it comes from, and
    its own words. The keys are those whose value alone, the others at their defaults, is
    refused; else all that differ from the defaults."""
    changed = [key for key in given if key not in defaults or given[key] != defaults[key]]

    def refused(key: str) -> bool:
        values = given | {k: defaults[k] for k in changed if k != key and k in defaults}
        try:
            build(**values)
        except (TypeError, ValueError):
            return True
        return False

    keys = [key for key in changed if refused(key)] or changed or list(given)
    shown = ", ".join(f"{group}.{key}={_shown(given[key])}" for key in keys)
    return f"{shown} refused by the {group} {name!r} of {package}: {error}"


def _check_network(
    name: str, options: dict[str, Any], agent: dict[str, Any], num_tasks: int
) -> None:
    """Build another package's network once, on the meta device (no memory, no time), so that
    its own checks of its options run before any environment is built."""
    cls = network_class(name)

    def build(**values: Any) -> None:
        with torch.device("meta"):
            cls(
                8,
                2,
                members=1,
                num_tasks=num_tasks,
                hidden=list(agent["net_arch"]),
                init=agent["init"],
                head_bound=1e-3,
                **values,
            )

    try:
        build(**options)
    except (TypeError, ValueError) as error:
        defaults = {
            option: parameter.default
            for option, parameter in network_options(cls).items()
            if parameter.default is not parameter.empty
        }
        package = plugin(NETWORKS, name).package
        message = refusal("network", name, package, options, defaults, build, error)
        raise ConfigError(message) from error
    except Exception:  # an operator the meta device lacks: building it for the run will tell
        pass


def agent_kwargs(
    agent: dict[str, Any], num_tasks: int, optimizer: str, network: dict[str, Any]
) -> dict[str, Any]:
    """MTSAC's constructor arguments from the (validated) ``agent`` and ``network`` groups."""
    network = dict(network)
    name = network.pop("name")
    if name not in PLAIN_NETWORKS:
        try:
            architectures.check_options(name, network)
        except ValueError as error:
            raise ConfigError(f"network: {error}") from error
        if not plugin(NETWORKS, name).builtin:
            _check_network(name, network, agent, num_tasks)
    if name not in ("mlp", "multi-head") and (
        agent["actor_task_layers"] or agent["critic_task_layers"]
    ):
        raise ConfigError(
            f"agent.actor_task_layers and agent.critic_task_layers (Recon's task-specific "
            f"layers) need network=mlp or multi-head, not {name}"
        )
    depth = len(agent["net_arch"]) + 1  # hidden layers and the output layer
    low, high = agent["log_std_bounds"][:2]
    if len(agent["log_std_bounds"]) != 2 or not low < high:
        raise ConfigError(
            f"agent.log_std_bounds must be [low, high] with low < high, got "
            f"{agent['log_std_bounds']}"
        )
    if agent["clip_q_predictions"] and agent["max_q_value"] is None:
        raise ConfigError(
            "agent.clip_q_predictions=true clips the Q predictions to ±agent.max_q_value, "
            "which is null: set agent.max_q_value too (their PaCo runs: 5000)"
        )
    if agent["critic_loss"] == "categorical" and agent["max_q_value"] is not None:
        raise ConfigError(
            "agent.critic_loss=categorical bounds the values by its support "
            "(agent.categorical.v_max): agent.max_q_value must be null"
        )
    if len(agent["alpha_betas"]) != 2:
        raise ConfigError(f"agent.alpha_betas must be [b1, b2], got {agent['alpha_betas']}")
    if agent["weight_decay"] and optimizer != "adamw":
        raise ConfigError(
            f"agent.weight_decay={agent['weight_decay']} is AdamW's decoupled weight decay: "
            f"it needs optimizer=adamw, not {optimizer}"
        )
    alpha_lr = agent["alpha_learning_rate"]
    return {
        "learning_rate": float(agent["learning_rate"]),
        "alpha_learning_rate": None if alpha_lr is None else float(alpha_lr),
        "gamma": float(agent["gamma"]),
        "tau": float(agent["tau"]),
        "batch_size": agent["batch_size_per_task"] * num_tasks,
        "batch_sampling": agent["batch_sampling"],
        "buffer_size": agent["buffer_size_per_task"] * num_tasks,
        "learning_starts": agent["warmup_steps"] * num_tasks,
        "gradient_steps": agent["gradient_steps"],
        "initial_alpha": float(agent["initial_alpha"]),
        "temperature": agent["temperature"],
        "alpha_betas": [float(beta) for beta in agent["alpha_betas"]],
        "alpha_loss": agent["alpha_loss"],
        "target_entropy_scale": float(agent["target_entropy_scale"]),
        "compile": agent["compile"],
        "max_grad_norm": agent["max_grad_norm"],
        "max_q_value": agent["max_q_value"],
        "clip_q_predictions": agent["clip_q_predictions"],
        "task_loss_weights": agent["task_loss_weights"],
        "critic_loss": agent["critic_loss"],
        "categorical_atoms": agent["categorical"]["atoms"],
        "categorical_v_max": float(agent["categorical"]["v_max"]),
        "reward_normalization": agent["reward_normalization"],
        "reset_every": agent["reset_every"],
        "recon_threshold": float(agent["recon_threshold"]),
        "per_task_gradients": agent["per_task_gradients"],
        "gram_update": agent["gram_update"],
        "policy_kwargs": {
            "net_arch": list(agent["net_arch"]),
            "network": name,
            "network_options": network,
            "actor_task_layers": _layers(
                "agent.actor_task_layers", agent["actor_task_layers"], depth
            ),
            "critic_task_layers": _layers(
                "agent.critic_task_layers", agent["critic_task_layers"], depth
            ),
            "n_critics": agent["n_critics"],
            "log_std_bounds": [float(low), float(high)],
            "log_std_bounding": agent["log_std_bounding"],
            "init": agent["init"],
            "optimizer": optimizer,
            "adam_eps": float(agent["adam_eps"]),
            "weight_decay": float(agent["weight_decay"]),
        },
    }


def train_settings(cfg: DictConfig) -> TrainSettings:
    """Validate a composed ``train`` config; raises :class:`ConfigError`."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:  # a method's hyperparameter or a network's option without a default
        raise ConfigError(
            f"{', '.join(missing)} must be given: no default is declared, e.g. {missing[0]}=..."
        )
    container = OmegaConf.to_container(cfg, resolve=True)
    validate(container)
    method = dict(container["method"])
    name = method.pop("name")
    if container["benchmark"]["vector_strategy"] == "auto":
        container["benchmark"]["vector_strategy"] = choose_vector_strategy()
    try:
        benchmark = BenchmarkSpec(**container["benchmark"])
    except ValueError as error:
        raise ConfigError(f"benchmark: {error}") from error
    try:
        cls = aggregator_class(name)  # the error names the package of a method that fails
    except ValueError as error:
        raise ConfigError(str(error)) from error
    try:
        aggregator = make_aggregator(name, **method)  # each method checks its own values
    except (TypeError, ValueError) as error:
        package = plugin(METHODS, name).package
        message = refusal("method", name, package, method, _defaults(cls), cls, error)
        raise ConfigError(message) from error
    agent = agent_kwargs(
        container["agent"], benchmark.num_tasks, container["optimizer"], container["network"]
    )
    if agent["per_task_gradients"] == "none" and aggregator.needs_gram:
        raise ConfigError(
            f"method {name!r} combines per-task gradients: agent.per_task_gradients must be "
            "auto, grouped, gram, vmap or loop"
        )
    evaluation, checkpoint = container["eval"], container["checkpoint"]
    return TrainSettings(
        benchmark=benchmark,
        method=name,
        method_kwargs=method,
        agent_kwargs=agent,
        seed=container["seed"],
        device=resolve_device(str(container["device"])),
        total_steps=container["total_steps"],
        eval_every=evaluation["every"],
        eval_episodes=evaluation["episodes"],
        eval_background=evaluation["background"],
        checkpoint_every=checkpoint["every"],
        checkpoint_keep=checkpoint["keep"],
        checkpoint_replay_buffer=checkpoint["replay_buffer"],
        preset=container.get("preset"),
    )
