"""MTSAC's checkpoint format: plain data only, so that ``torch.load(weights_only=True)`` reads it.

A checkpoint is a dict: its format and version, the constructor's arguments, the spaces and
task names, then the state of each part of the agent by name (:meth:`MTSAC.checkpoint_state`
declares which). Format 1 kept the networks' optimizers, methods and skip counts in separate
dicts keyed by network, and formats 1 and 2 kept only the policy settings that were given
(defaults have changed since); :func:`migrate` brings both to the current layout and meaning.
Format 4 builds the architectures as their reference code does: formats up to 3 of networks
whose parameters changed shape are refused, FiLM's are rewritten to mean what they meant.
"""

from __future__ import annotations

import collections
import inspect
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

import mtrl
from mtrl.checkpoint import CheckpointError, load_state, save_atomic

FORMAT = "mtrl.MTSAC"
VERSION = 4
# Settings that formats 1 and 2 kept only when they were given, with the values they then had.
EARLIER_POLICY_VALUES = {
    "log_std_bounding": "tanh",
    "init": "torch",
    "adam_eps": 1e-8,
    "weight_decay": 0.0,
}
EARLIER_HYPERPARAMETERS = {
    "max_grad_norm": None,
    "max_q_value": None,
    "gram_update": "products",
    "overlap_updates": False,
    # Before these existed: targets alone clipped, one learning rate, unweighted task losses.
    "clip_q_predictions": False,
    "alpha_learning_rate": None,
    "task_loss_weights": "none",
    # Before BRC's recipe: squared TD errors, and SAC's temperatures, one per task.
    "critic_loss": "mse",
    "temperature": "per_task",
    "alpha_betas": [0.9, 0.999],
    "alpha_loss": "log_alpha",
    "target_entropy_scale": 1.0,
    "reward_normalization": "none",
    "reset_every": None,
    "batch_sampling": "per_task",
}

# What format 4 changed in each architecture whose parameters no longer fit (the defaults,
# encoder_width = embedding_width = 50, leave CARE's and FiLM's shapes as they were).
RESHAPED = {
    "soft-modules": (
        "its modules now read a 400-wide state trunk's output, the routing gates multiply "
        "(W_d relu(e * W_u p)) and the task embedding has a shared bias"
    ),
    "paco": "its task compositions now have a shared bias",
    "care": "its state encoders now output embedding_width values, not encoder_width",
    "film": "its state encoder now outputs embedding_width values, not encoder_width",
}


# Constructor arguments a checkpoint does not keep: the environment and where to log or run.
NOT_SAVED = ("self", "policy", "env", "tensorboard_log", "verbose", "device", "_init_setup_model")
# The policy's settings a checkpoint keeps as they were built, given or not: a later change of
# a default must not change a saved model.
POLICY_SETTINGS = (
    "net_arch",
    "network",
    "network_options",
    "actor_task_layers",
    "critic_task_layers",
    "n_critics",
    "log_std_bounds",
    "log_std_bounding",
    "init",
    "optimizer",
    "adam_eps",
    "weight_decay",
)


def hyperparameters(model: Any) -> dict[str, Any]:
    """An MTSAC's constructor arguments, as plain data, to rebuild it from a file: each is the
    attribute of its name (``aggregator`` is ``aggregator_name``)."""
    for key in ("optimizer_class", "optimizer_kwargs"):
        if key in model.policy_kwargs:
            raise ValueError(f"cannot save a model built with a custom {key}")
    names = [n for n in inspect.signature(type(model).__init__).parameters if n not in NOT_SAVED]
    values = {n: getattr(model, "aggregator_name" if n == "aggregator" else n) for n in names}
    values["train_freq"] = int(model.train_freq.frequency)
    values["batch_size"] = int(model.batch_size)
    built = model.policy._get_constructor_parameters()
    policy = {k: built[k] for k in POLICY_SETTINGS} | dict(model.policy_kwargs)
    policy["multi_head"] = False  # network says it
    policy["network"] = built["network"]
    values["policy_kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in policy.items()}
    return values


def box_to_data(box: spaces.Box) -> dict[str, Any]:
    return {"low": box.low.tolist(), "high": box.high.tolist(), "dtype": str(box.dtype)}


def box_from_data(data: dict[str, Any]) -> spaces.Box:
    dtype = np.dtype(data["dtype"])
    return spaces.Box(np.array(data["low"], dtype), np.array(data["high"], dtype), dtype=dtype)


def rng_state(action_space: spaces.Space) -> dict[str, Any]:
    """Every random generator a training step draws from, as tensors and plain data."""
    # SB3 seeds numpy's legacy global generator, so that is the one to carry over.
    name, keys, position, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
        "action_space": action_space.np_random.bit_generator.state,
    }


def set_rng_state(state: dict[str, Any], action_space: spaces.Space) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    action_space.np_random.bit_generator.state = state["action_space"]


def _empty_means() -> dict[str, Any]:
    return {"sums": {}, "counts": {}, "labels": {}}


def migrate(state: dict[str, Any], source: str) -> dict[str, Any]:
    """``state`` in the current layout; refuses what is not an MTSAC checkpoint of a known
    version, or whose network's weights no longer fit, saying why."""
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not an MTSAC checkpoint")
    version = state.get("format_version", 1)
    if version > VERSION:
        raise CheckpointError(
            f"{source} was written by a newer mtrl ({state.get('mtrl_version')}, checkpoint "
            f"format {version}); this one reads formats up to {VERSION}: upgrade mtrl to load it"
        )
    if version == VERSION:
        return state
    state = dict(state)
    network, options = _network(state)
    _refuse_reshaped(network, options, state, source, version)
    # a setting the checkpoint lacks came later: its runs had the value of before
    state["hyperparameters"] = EARLIER_HYPERPARAMETERS | dict(state["hyperparameters"])
    if version <= 2:
        _given_settings_only(state)
    if version == 1:
        _parts_by_network(state)
    if network == "film":
        _film_scales_and_shifts(state, options.get("encoder_depth", 2))
    state["format_version"] = VERSION
    return state


def _given_settings_only(state: dict[str, Any]) -> None:
    """Formats 1 and 2 kept only the policy settings that were given: the others get the values
    they then had; ``compile`` was ``compile_aggregator``."""
    hyperparameters = dict(state["hyperparameters"])
    hyperparameters["policy_kwargs"] = EARLIER_POLICY_VALUES | dict(
        hyperparameters["policy_kwargs"]
    )
    hyperparameters["compile"] = hyperparameters.pop("compile_aggregator", False)
    state["hyperparameters"] = hyperparameters


def _parts_by_network(state: dict[str, Any]) -> None:
    """Format 1 kept the optimizers, methods and skip counts in dicts keyed by network."""
    skipped = state["counters"].pop("skipped_updates")
    optimizers, aggregators = state.pop("optimizers"), state.pop("aggregators")
    for network in ("critic", "actor"):
        state[network] = {
            "optimizer": optimizers[network],
            "aggregator": aggregators[network],
            "skipped": skipped[network],
        }
    state["temperature"] = {
        "log_alpha": state.pop("log_alpha"),
        "optimizer": optimizers["alpha"],
        "skipped": skipped["alpha"],
    }
    layers = state.pop("layer_conflicts")
    state["conflicts"] = {
        network: {
            "layers": layers[network],
            "stats": _empty_means(),
            "pairwise": _empty_means(),
            "pending": {"rows": []},
        }
        for network in ("critic", "actor")
    }
    state["statistics"] = _empty_means()


def _network(state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The checkpoint's network and the options it was given."""
    policy = state["hyperparameters"]["policy_kwargs"]
    network = policy.get("network") or ("multi-head" if policy.get("multi_head") else "mlp")
    return network, dict(policy.get("network_options") or {})


def _refuse_reshaped(network: str, options: dict, state: dict, source: str, version: int) -> None:
    """Refuse, saying what changed, a network whose parameters changed shape in format 4."""
    widths = {options.get("encoder_width", 50), options.get("embedding_width", 50)}
    if network in ("soft-modules", "paco") or (network in ("care", "film") and len(widths) > 1):
        raise CheckpointError(
            f"{source} holds a {network} network in checkpoint format {version} (mtrl "
            f"{state.get('mtrl_version')}); format {VERSION} builds {network} as its reference "
            f"code does and {RESHAPED[network]}, so these weights no longer fit: retrain it, or "
            "load it with the mtrl that wrote it"
        )


def _film_scales_and_shifts(state: dict[str, Any], depth: int) -> None:
    """FiLM's scale-and-shift layer gave all scales then all shifts, and each scale was the
    output itself; now they alternate (γ₀, β₀, γ₁, …) and each scale is one plus the output.
    Its last layer's columns (and their optimizer moments) are reordered and the scales' biases
    lowered by one, so that the network computes what it computed."""
    layers = depth + 1
    order = [column for i in range(layers) for column in (i, layers + i)]
    policy = dict(state["policy"])
    for network in ("actor", "critic", "critic_target"):
        names = [name for name in policy if name.startswith(f"{network}.")]
        for kind in ("weight", "bias"):
            name = f"{network}.net.film.layers.{depth}.{kind}"
            policy[name] = policy[name][..., order]
            if kind == "bias":
                policy[name][..., 0::2] -= 1.0  # the scales' columns, now one apart
            if network != "critic_target":  # whose copy has no optimizer
                _reorder_moments(state, network, names.index(name), order)
    state["policy"] = policy


def _reorder_moments(state: dict[str, Any], network: str, index: int, order: list[int]) -> None:
    """Reorder the last axis of a parameter's optimizer state (Adam's or AdaTask's moments),
    which the optimizer keys by the parameter's place among its network's parameters."""
    part = state[network] = dict(state[network])
    optimizer = part["optimizer"] = dict(part["optimizer"])
    moments = optimizer["state"] = dict(optimizer["state"])
    if index in moments:
        moments[index] = {
            key: value[..., order] if torch.is_tensor(value) and value.dim() > 0 else value
            for key, value in moments[index].items()
        }


class Checkpointing:
    """``save``, ``load`` and the states behind them, for MTSAC (which declares its parts)."""

    def checkpoint_state(self, include_replay_buffer: bool = True) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stopped, as plain data (see
        :func:`checkpoint_state`)."""
        return checkpoint_state(self, include_replay_buffer)

    def save(self, path: str | Path, include_replay_buffer: bool = False) -> Path:
        """Write the model atomically; with the replay buffer, the file is a full checkpoint."""
        return save_atomic(self.checkpoint_state(include_replay_buffer), path)

    @classmethod
    def load(cls, path: str | Path, env: Any = None, device: Any = "auto", **_: Any) -> Any:
        """Rebuild a model saved by :meth:`save`; with ``env`` it is ready to continue training.

        The file is read with ``weights_only=True``: nothing in it is executed.
        """
        return cls.from_state(load_state(path), env, device, source=str(path))

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        env: Any = None,
        device: Any = "auto",
        source: str = "the checkpoint",
    ) -> Any:
        """Rebuild a model from a state read with :func:`mtrl.checkpoint.load_state`."""
        return from_state(cls, state, env, device, source)


def checkpoint_state(model: Any, full: bool = True) -> dict[str, Any]:
    """Everything needed to continue training ``model`` (an MTSAC) exactly where it stopped.

    With ``full`` the state is a full checkpoint: the replay buffer and the episodes in progress
    (the environments' state, the last observations) come too. Nothing is changed by taking it.
    """
    state: dict[str, Any] = {
        "format": FORMAT,
        "format_version": VERSION,
        "mtrl_version": mtrl.__version__,
        "hyperparameters": hyperparameters(model),
        "spaces": {
            "observation": box_to_data(model.observation_space),
            "action": box_to_data(model.action_space),
        },
        "task_names": list(model.task_names),
        "counters": {
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(model._n_updates),
            "episode_num": int(model._episode_num),
            "pending_updates": int(model.pending_updates),
        },
        "rng": rng_state(model.action_space),
        "run_state": dict(model.run_state),
    }
    state.update({name: part.state_dict() for name, part in model.parts().items()})
    if full:
        state["replay_buffer"] = model.replay_buffer.state_dict()
        state["rollout"] = _rollout_state(model)
    return state


def from_state(cls: type, state: dict[str, Any], env: Any, device: Any, source: str) -> Any:
    """Rebuild an MTSAC (``cls``) from a checkpoint's state; with ``env`` it is ready to
    continue training."""
    state = migrate(state, source)
    # A key the file lacks did not exist when it was written: the run did what was then done.
    hyperparameters = EARLIER_HYPERPARAMETERS | dict(state["hyperparameters"])
    hyperparameters["policy_kwargs"] = dict(hyperparameters["policy_kwargs"])
    model = cls("MlpPolicy", env, device=device, _init_setup_model=False, **hyperparameters)
    if env is None:
        model.observation_space = box_from_data(state["spaces"]["observation"])
        model.action_space = box_from_data(state["spaces"]["action"])
        model.n_envs = hyperparameters["policy_kwargs"]["num_tasks"]
        model.task_names = list(state["task_names"])
    elif model.task_names != list(state["task_names"]):
        raise CheckpointError(
            f"{source} was trained on tasks {state['task_names']}, "
            f"but the env runs {model.task_names}"
        )
    model._setup_model()
    for name, part in model.parts().items():
        part.load_state_dict(state[name])
    counters = state["counters"]
    model.num_timesteps = counters["num_timesteps"]
    model._n_updates = counters["n_updates"]
    model._episode_num = counters["episode_num"]
    model.pending_updates = counters.get("pending_updates", 0)  # before overlap existed: none
    model.run_state = dict(state["run_state"])
    if "replay_buffer" in state:
        model.replay_buffer.load_state_dict(state["replay_buffer"])
    if "rollout" in state:
        _load_rollout_state(model, state["rollout"])
    set_rng_state(state["rng"], model.action_space)
    return model


def _rollout_state(model: Any) -> dict[str, Any]:
    """The episodes in progress: the environments' state where they can give it, the last
    observations that the next action is chosen from, SB3's episode statistics."""
    state: dict[str, Any] = {
        "episode_infos": list(model.ep_info_buffer or []),
        "episode_successes": [bool(s) for s in model.ep_success_buffer or []],
    }
    if model._last_obs is not None and hasattr(model.env, "state_dict"):
        state["env"] = model.env.state_dict()
        state["last_obs"] = torch.from_numpy(np.array(model._last_obs))
        state["last_episode_starts"] = torch.from_numpy(np.array(model._last_episode_starts))
    return state


def _load_rollout_state(model: Any, state: dict[str, Any]) -> None:
    window = model._stats_window_size
    model.ep_info_buffer = collections.deque(state["episode_infos"], maxlen=window)
    model.ep_success_buffer = collections.deque(state["episode_successes"], maxlen=window)
    restorable = "env" in state and hasattr(model.env, "load_state_dict")
    # Where the episodes in progress come back whole, SB3 must not reset the envs: the next
    # action is chosen from the last observation, as it would have been.
    if restorable and model.env.load_state_dict(state["env"]):
        model._last_obs = state["last_obs"].numpy().copy()
        model._last_episode_starts = state["last_episode_starts"].numpy().copy()


class Temperature:
    """An MTSAC's per-task temperatures and their optimizer, as one part of a checkpoint."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        model = self.model
        return {
            "log_alpha": model.log_alpha.detach().cpu(),
            "optimizer": model.alpha_optimizer.state_dict(),
            "skipped": int(model.alpha_skipped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model = self.model
        with torch.no_grad():
            model.log_alpha.copy_(state["log_alpha"])
        model.alpha_optimizer.load_state_dict(state["optimizer"])
        model.alpha_skipped.fill_(state["skipped"])
