"""Multi-task soft actor-critic with per-task gradients combined by a deconfliction method.

One update, as in ``train``:

1. the replay buffer samples B transitions from each of the K tasks, a ``[K, B, ...]`` batch;
2. the critic's and then the actor's per-task losses are differentiated task by task in one
   vectorised pass (:func:`mtrl.jacobian.per_task_gradients`), giving a Jacobian ``J [K, P]``
   over the shared parameters;
3. the aggregator turns the Gram matrix ``J Jᵀ`` into task weights ``w``; ``Jᵀ w`` goes into
   ``.grad`` and the optimizer steps. Task-specific parameters (per-task heads) get their own
   task's gradient; each task's temperature is its own.

Per-task temperatures follow the multi-task SAC of the Meta-World papers: a log-α per task, target
entropy −|A|.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import polyak_update
from torch import Tensor
from torch.func import functional_call

import mtrl
from mtrl.agents.networks import Actor, Critic
from mtrl.agents.policies import MTSACPolicy
from mtrl.aggregators import NonFiniteGradientError, aggregate, make_aggregator
from mtrl.checkpoint import CheckpointError, load_state, save_atomic
from mtrl.conflict import conflict_stats
from mtrl.jacobian import flatten_gradients, per_task_gradients, unflatten_update
from mtrl.replay import MultiTaskReplayBuffer, TaskBatch
from mtrl.stats import DeviceMeans

CHECKPOINT_FORMAT = "mtrl.MTSAC"
CHECKPOINT_VERSION = 1
DEFAULT_BATCH_PER_TASK = 128


def critic_task_loss(
    params: dict[str, Tensor], obs: Tensor, actions: Tensor, target: Tensor, critic: Critic
) -> tuple[Tensor, Tensor]:
    """One task's critic loss: half the summed mean squared TD errors of the critics."""
    q_values = functional_call(critic, params, (obs, actions))
    loss = 0.5 * (q_values - target).square().mean(dim=1).sum()
    return loss, loss


def actor_task_loss(
    params: dict[str, Tensor],
    obs: Tensor,
    noise: Tensor,
    alpha: Tensor,
    actor: Actor,
    critic: Critic,
    critic_params: dict[str, Tensor],
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One task's actor loss ``E[α log π(a|s) − min_i Q_i(s, a)]``, with the critic frozen."""
    actions, log_prob = functional_call(actor, params, (obs, noise))
    q_value = functional_call(critic, critic_params, (obs, actions)).min(dim=0).values
    loss = (alpha * log_prob - q_value).mean()
    return loss, (loss, log_prob.mean())


def _box_to_data(box: spaces.Box) -> dict[str, Any]:
    return {"low": box.low.tolist(), "high": box.high.tolist(), "dtype": str(box.dtype)}


def _box_from_data(data: dict[str, Any]) -> spaces.Box:
    dtype = np.dtype(data["dtype"])
    return spaces.Box(np.array(data["low"], dtype), np.array(data["high"], dtype), dtype=dtype)


class MTSAC(OffPolicyAlgorithm):
    """Multi-task SAC on a vector env with one sub-environment per task.

    Observations must end with a one-hot task id (Meta-World's ``use_one_hot``), and sub-env k
    must run task k. Follows Stable-Baselines3 usage::

        model = MTSAC("MlpPolicy", env, aggregator="gradops")
        model.learn(total_timesteps=...)

    Args:
        aggregator: config name of the deconfliction method (:func:`mtrl.aggregators.available`).
        aggregator_kwargs: its hyperparameters.
        batch_size: transitions per update over all tasks; a multiple of the task count
            (default 128 per task).
        buffer_size: replay capacity in transitions over all tasks, as in SB3.
        learning_starts: environment steps (over all tasks) of uniform random actions first.
        initial_alpha: starting temperature of every task.
        target_entropy: ``"auto"`` for −|A|.
        Other arguments are those of SB3's off-policy algorithms.
    """

    policy_aliases: ClassVar[dict[str, type[MTSACPolicy]]] = {"MlpPolicy": MTSACPolicy}
    policy: MTSACPolicy
    replay_buffer: MultiTaskReplayBuffer

    def __init__(
        self,
        policy: str | type[MTSACPolicy],
        env: Any,
        aggregator: str = "gradops",
        aggregator_kwargs: dict[str, Any] | None = None,
        learning_rate: float = 3e-4,
        buffer_size: int = 1_000_000,
        learning_starts: int = 10_000,
        batch_size: int | None = None,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int = 1,
        gradient_steps: int = 1,
        initial_alpha: float = 1.0,
        target_entropy: str | float = "auto",
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        self.aggregator_name = aggregator
        self.aggregator_kwargs = dict(aggregator_kwargs or {})
        # Fail on a bad method name or hyperparameter before anything is allocated.
        make_aggregator(self.aggregator_name, **self.aggregator_kwargs)
        if initial_alpha <= 0:
            raise ValueError(f"initial_alpha must be positive, got {initial_alpha}")
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size or 0,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            replay_buffer_class=MultiTaskReplayBuffer,
            replay_buffer_kwargs={"seed": seed},
            policy_kwargs=policy_kwargs,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            support_multi_env=True,
            seed=seed,
            sde_support=False,
            supported_action_spaces=(spaces.Box,),
        )
        self.initial_alpha = initial_alpha
        self.target_entropy = target_entropy
        self.requested_batch_size = batch_size
        self.task_names: list[str] = []
        if env is not None:
            self._bind_tasks()
        if _init_setup_model:
            self._setup_model()

    # -- construction -------------------------------------------------------------------------

    def _bind_tasks(self) -> None:
        """Read the task count and names off the environment and check the batch against them."""
        num_tasks = self.n_envs
        self.policy_kwargs["num_tasks"] = num_tasks
        names = getattr(self.env, "task_names", None)
        self.task_names = list(names) if names else [f"task{k}" for k in range(num_tasks)]
        if self.requested_batch_size is None:
            self.batch_size = DEFAULT_BATCH_PER_TASK * num_tasks
        if self.batch_size <= 0 or self.batch_size % num_tasks:
            raise ValueError(
                f"batch_size {self.batch_size} must be a positive multiple of the "
                f"{num_tasks} tasks, so that every task gets the same share"
            )

    def _setup_model(self) -> None:
        super()._setup_model()
        self.actor = self.policy.actor
        self.critic = self.policy.critic
        self.critic_target = self.policy.critic_target
        num_tasks = self.policy.num_tasks
        if self.target_entropy == "auto":
            self.target_entropy = -float(np.prod(self.action_space.shape))
        self.target_entropy = float(self.target_entropy)
        self.log_alpha = torch.full(
            (num_tasks,), math.log(self.initial_alpha), device=self.device, requires_grad=True
        )
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=self.lr_schedule(1))
        # Stateful methods (PCGrad's generator, GradVac's targets) keep one state per network.
        self.aggregators = {
            name: make_aggregator(self.aggregator_name, **self.aggregator_kwargs)
            for name in ("critic", "actor")
        }
        self.stats = DeviceMeans()
        # Plain data that callbacks keep across a resume (best evaluation so far, benchmark).
        self.run_state: dict[str, Any] = {}
        self.stop_requested = False
        self.skipped_updates = {"critic": 0, "actor": 0, "alpha": 0}
        self._last_dump = (time.perf_counter(), 0, 0)

    # -- the update ---------------------------------------------------------------------------

    def train(self, gradient_steps: int, batch_size: int) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(
            [self.actor.optimizer, self.critic.optimizer, self.alpha_optimizer]
        )
        for _ in range(gradient_steps):
            self.update(self.replay_buffer.sample_tasks(batch_size // self.policy.num_tasks))
        self._n_updates += gradient_steps

    def update(self, batch: TaskBatch) -> None:
        """One gradient step of the critic, the actor and the temperatures on a ``[K, B]`` batch."""
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_obs = batch.next_observations.flatten(0, 1)
            noise = torch.randn(*next_obs.shape[:-1], batch.actions.shape[-1], device=self.device)
            next_actions, next_log_prob = self.actor(next_obs, noise)
            next_q = self.critic_target(next_obs, next_actions).min(dim=0).values
            soft_value = next_q - alpha.repeat_interleave(batch.rewards.shape[1]) * next_log_prob
            target = batch.rewards + (1 - batch.dones) * self.gamma * soft_value.view_as(
                batch.rewards
            )

        critic_params = dict(self.critic.named_parameters())
        gradients, critic_losses = per_task_gradients(
            critic_task_loss,
            critic_params,
            (batch.observations, batch.actions, target),
            (self.critic,),
        )
        self._apply(self.critic, gradients, critic_losses, "critic")

        frozen_critic = {name: p.detach() for name, p in critic_params.items()}
        actor_noise = torch.randn_like(batch.actions)
        gradients, (actor_losses, log_probs) = per_task_gradients(
            actor_task_loss,
            dict(self.actor.named_parameters()),
            (batch.observations, actor_noise, alpha),
            (self.actor, self.critic, frozen_critic),
        )
        self._apply(self.actor, gradients, actor_losses, "actor")

        alpha_loss = -(self.log_alpha * (log_probs + self.target_entropy)).mean()
        if self._all_finite(alpha_loss):
            self.alpha_optimizer.zero_grad()
            alpha_loss.backward()
            self.alpha_optimizer.step()
        else:
            self.skipped_updates["alpha"] += 1

        polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
        self.stats.add("train/critic_loss", critic_losses.mean())
        self.stats.add("train/actor_loss", actor_losses.mean())
        self.stats.add("train/entropy", -log_probs.mean())
        self.stats.add("train/alpha", self.log_alpha.detach().exp(), self.task_names)

    @staticmethod
    def _all_finite(*tensors: Tensor) -> bool:
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def _apply(
        self,
        network: Actor | Critic,
        gradients: dict[str, Tensor],
        losses: Tensor,
        name: str,
    ) -> None:
        """Combine per-task gradients into ``.grad`` and step; skip if anything is not finite."""
        params = dict(network.named_parameters())
        own = {f"net.{p}" for p in network.net.task_specific_parameters()}
        shared = {n: p for n, p in params.items() if n not in own}
        if not self._all_finite(losses, *(gradients[n] for n in own)):
            self.skipped_updates[name] += 1
            return
        try:
            update, weights, gram = aggregate(
                self.aggregators[name], flatten_gradients(gradients, list(shared)), losses
            )
        except NonFiniteGradientError:
            self.skipped_updates[name] += 1
            return
        for param_name, grad in unflatten_update(update, shared).items():
            params[param_name].grad = grad
        for param_name in own:
            # The mean over tasks, as for the shared parameters under plain averaging.
            params[param_name].grad = gradients[param_name].mean(dim=0)
        network.optimizer.step()
        self._record_conflicts(name, gram, weights)

    def _record_conflicts(self, name: str, gram: Tensor, weights: Tensor) -> None:
        stats = conflict_stats(gram, weights)
        prefix = f"grad/{name}"
        self.stats.add(f"{prefix}/conflicting_pairs", stats.conflicting_pairs)
        self.stats.add(f"{prefix}/cos_min", stats.cos_min)
        self.stats.add(f"{prefix}/update_conflicts", stats.update_conflicts)
        self.stats.add(f"{prefix}/update_norm_ratio", stats.update_norm_ratio)
        self.stats.add(f"{prefix}/weight", stats.weights, self.task_names)

    # -- logging ------------------------------------------------------------------------------

    def learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        log_interval: int | None = None,
        tb_log_name: str = "MTSAC",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> MTSAC:
        """SB3's ``learn``; logs are written once per round of episodes by default."""
        return super().learn(
            total_timesteps,
            callback=callback,
            log_interval=log_interval or self.n_envs,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def dump_logs(self) -> None:
        for key, value in self.stats.pop().items():
            self.logger.record(key, value)
        for name, count in self.skipped_updates.items():
            self.logger.record(f"train/skipped_updates/{name}", count)
        now, steps, updates = time.perf_counter(), self.num_timesteps, self._n_updates
        last_time, last_steps, last_updates = self._last_dump
        elapsed = max(now - last_time, 1e-9)
        if steps > last_steps:
            self.logger.record("time/env_steps_per_s", (steps - last_steps) / elapsed)
            self.logger.record("time/updates_per_s", (updates - last_updates) / elapsed)
        self._last_dump = (now, steps, updates)
        super().dump_logs()

    # -- saving and loading -------------------------------------------------------------------

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments, as plain data, to rebuild this model from a file."""
        policy_kwargs = dict(self.policy_kwargs)
        for key in ("optimizer_class", "optimizer_kwargs"):
            if key in policy_kwargs:
                raise ValueError(f"cannot save a model built with a custom {key}")
        return {
            "aggregator": self.aggregator_name,
            "aggregator_kwargs": dict(self.aggregator_kwargs),
            "learning_rate": float(self.learning_rate),
            "buffer_size": int(self.buffer_size),
            "learning_starts": int(self.learning_starts),
            "batch_size": int(self.batch_size),
            "tau": float(self.tau),
            "gamma": float(self.gamma),
            "train_freq": int(self.train_freq.frequency),
            "gradient_steps": int(self.gradient_steps),
            "initial_alpha": float(self.initial_alpha),
            "target_entropy": float(self.target_entropy),
            "policy_kwargs": {
                k: list(v) if isinstance(v, tuple) else v for k, v in policy_kwargs.items()
            },
            "seed": self.seed,
        }

    def checkpoint_state(self, include_replay_buffer: bool = True) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stopped, as plain data."""
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "mtrl_version": mtrl.__version__,
            "hyperparameters": self.hyperparameters(),
            "spaces": {
                "observation": _box_to_data(self.observation_space),
                "action": _box_to_data(self.action_space),
            },
            "task_names": list(self.task_names),
            "policy": self.policy.state_dict(),
            "optimizers": {
                "actor": self.actor.optimizer.state_dict(),
                "critic": self.critic.optimizer.state_dict(),
                "alpha": self.alpha_optimizer.state_dict(),
            },
            "log_alpha": self.log_alpha.detach().cpu(),
            "aggregators": {name: agg.state_dict() for name, agg in self.aggregators.items()},
            "counters": {
                "num_timesteps": int(self.num_timesteps),
                "n_updates": int(self._n_updates),
                "episode_num": int(self._episode_num),
                "skipped_updates": dict(self.skipped_updates),
            },
            "rng": _rng_state(self.action_space),
            "run_state": dict(self.run_state),
        }
        if include_replay_buffer:
            state["replay_buffer"] = self.replay_buffer.state_dict()
        return state

    def save(self, path: str | Path, include_replay_buffer: bool = False) -> Path:  # type: ignore[override]
        """Write the model atomically; with the replay buffer, the file is a full checkpoint."""
        return save_atomic(self.checkpoint_state(include_replay_buffer), path)

    @classmethod
    def load(  # type: ignore[override]
        cls, path: str | Path, env: Any = None, device: torch.device | str = "auto", **_: Any
    ) -> MTSAC:
        """Rebuild a model saved by :meth:`save`; with ``env`` it is ready to continue training.

        The file is read with ``weights_only=True``: nothing in it is executed.
        """
        return cls.from_state(load_state(path), env, device, source=str(path))

    @classmethod
    def from_state(
        cls,
        state: dict[str, Any],
        env: Any = None,
        device: torch.device | str = "auto",
        source: str = "the checkpoint",
    ) -> MTSAC:
        """Rebuild a model from a state read with :func:`mtrl.checkpoint.load_state`."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{source} is not an MTSAC checkpoint")
        hyperparameters = dict(state["hyperparameters"])
        hyperparameters["policy_kwargs"] = dict(hyperparameters["policy_kwargs"])
        model = cls("MlpPolicy", env, device=device, _init_setup_model=False, **hyperparameters)
        if env is None:
            model.observation_space = _box_from_data(state["spaces"]["observation"])
            model.action_space = _box_from_data(state["spaces"]["action"])
            model.n_envs = hyperparameters["policy_kwargs"]["num_tasks"]
            model.task_names = list(state["task_names"])
        elif model.task_names != list(state["task_names"]):
            raise CheckpointError(
                f"{source} was trained on tasks {state['task_names']}, "
                f"but the env runs {model.task_names}"
            )
        model._setup_model()
        model.load_checkpoint_state(state)
        return model

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.actor.optimizer.load_state_dict(state["optimizers"]["actor"])
        self.critic.optimizer.load_state_dict(state["optimizers"]["critic"])
        self.alpha_optimizer.load_state_dict(state["optimizers"]["alpha"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        for name, aggregator in self.aggregators.items():
            aggregator.load_state_dict(state["aggregators"][name])
        counters = state["counters"]
        self.num_timesteps = counters["num_timesteps"]
        self._n_updates = counters["n_updates"]
        self._episode_num = counters["episode_num"]
        self.skipped_updates = dict(counters["skipped_updates"])
        self.run_state = dict(state["run_state"])
        if "replay_buffer" in state:
            self.replay_buffer.load_state_dict(state["replay_buffer"])
        _set_rng_state(state["rng"], self.action_space)


def _rng_state(action_space: spaces.Space) -> dict[str, Any]:
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


def _set_rng_state(state: dict[str, Any], action_space: spaces.Space) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    action_space.np_random.bit_generator.state = state["action_space"]
