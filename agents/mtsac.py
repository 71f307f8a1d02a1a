"""Multi-task soft actor-critic with per-task gradients combined by a deconfliction method.

One update (:meth:`MTSAC.update`): the replay buffer samples B transitions from each of the K
tasks, a ``[K, B, ...]`` batch; the critic's and then the actor's per-task losses go through
each network's multi-task backward step (:class:`mtrl.backward.MultiTaskBackward`), which
combines the tasks' gradients with the method and steps the optimizer; then the temperatures and
the target critic. Per-task temperatures follow the multi-task SAC of the Meta-World papers: a
log-α per task, target entropy −|A|.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import RolloutReturn
from torch import Tensor
from torch.func import functional_call

from mtrl.agents import saving
from mtrl.agents.networks import Actor, Critic
from mtrl.agents.policies import MTSACPolicy
from mtrl.aggregators import make_aggregator
from mtrl.backward import (
    GRADIENT_MODES,
    MultiTaskBackward,
    StepResult,
    finite,
    step_if_finite,
)
from mtrl.capture import CapturedUpdate, check_capturable
from mtrl.checkpoint import load_state, save_atomic
from mtrl.conflict import ConflictRecorder
from mtrl.replay import MultiTaskReplayBuffer, TaskBatch
from mtrl.stats import DeviceMeans

DEFAULT_BATCH_PER_TASK = 128
# Vector steps of uniform random actions before learning, by default (warmstart_steps of
# rainx0r/metaworld-algorithms and rainx0r/mtrl).
WARMUP_VECTOR_STEPS = 4000

__all__ = ["GRADIENT_MODES", "MTSAC", "actor_task_loss", "critic_task_loss"]


# The losses take one task's slice of a batch (``layout="single"``, under vmap) or the whole
# ``[K, B]`` batch (``layout="grouped"``), and return one loss per task.


def critic_task_loss(params, obs, actions, target, critic: Critic, layout: str):
    """Critic loss: half the summed mean squared TD errors of the critics."""
    q_values = functional_call(critic, params, (obs, actions), {"layout": layout})
    loss = 0.5 * (q_values - target).square().mean(dim=-1).sum(dim=0)
    return loss, loss


def actor_task_loss(params, obs, noise, alpha, actor: Actor, critic: Critic, critic_params, layout):
    """Actor loss ``E[α log π(a|s) − min_i Q_i(s, a)]``, with the critic frozen."""
    actions, log_prob = functional_call(actor, params, (obs, noise), {"layout": layout})
    q_value = functional_call(critic, critic_params, (obs, actions), {"layout": layout})
    loss = (alpha.unsqueeze(-1) * log_prob - q_value.min(dim=0).values).mean(dim=-1)
    return loss, (loss, log_prob.mean(dim=-1))


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
        learning_starts: environment steps (over all tasks) of uniform random actions first;
            ``None``: :data:`WARMUP_VECTOR_STEPS` per task (the JAX recipes' warm-up), so that
            MT50 gets as many per task as MT10.
        initial_alpha: starting temperature of every task.
        target_entropy: ``"auto"`` for −|A|.
        per_task_gradients: how per-task gradients are had, one of
            :data:`mtrl.backward.GRADIENT_MODES`: ``"auto"`` (the default: each shared layer's
            stored where small, Gram-first where not), ``"grouped"`` (all stored), ``"gram"``
            (all Gram-first: no ``[K, P]`` tensor is ever held), ``"vmap"``, ``"loop"`` (K
            backward passes, a reference), or ``"none"`` (one backward pass of the weighted
            losses, for methods that need no Gram matrix: ``mean`` is then plain multi-task
            SAC, without conflict logging). Loss-based methods (``famo``) never compute
            per-task gradients.
        gram_update: how Gram-first layers form the update, ``"products"`` (one product of the
            inputs and the weighted output gradients) or ``"backward"`` (a second backward pass
            of ``Σ_k w_k L_k``).
        recon_threshold: S of Recon's per-layer conflict scores (``recon/...`` in TensorBoard):
            a task pair conflicts on a layer when its cosine there is below S.
        compile: on CUDA, capture the whole update (critic, actor, temperatures, target) as one
            CUDA graph and compile the method's K×K computation (:mod:`mtrl.capture`); on the
            CPU, compile the K×K computation, a long chain of tiny kernels for the
            solver-based methods (CAGrad, MGDA, Nash-MTL, ...).
        max_grad_norm: clip each network's combined update to this global norm (``None``: no
            clipping), 1.0 as in the JAX recipes.
        max_q_value: clip the critics' TD targets to ``[−max_q_value, max_q_value]`` (``None``:
            no clipping, as the JAX recipes; their PaCo runs use 5000).
        overlap_updates: run each step's updates while the environments simulate the next step
            (``None``: when they step in worker processes, an async env). The acting policy then
            lags one update behind: the action of step t+1 comes from the policy before the
            updates asked for after step t, which see the same data as without the overlap.
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
        learning_starts: int | None = None,
        batch_size: int | None = None,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int = 1,
        gradient_steps: int = 1,
        initial_alpha: float = 1.0,
        target_entropy: str | float = "auto",
        per_task_gradients: str = "auto",
        gram_update: str = "products",
        recon_threshold: float = 0.0,
        compile: bool = False,
        max_grad_norm: float | None = 1.0,
        max_q_value: float | None = None,
        overlap_updates: bool | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        tensorboard_log: str | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        self.aggregator_name = aggregator
        self.aggregator_kwargs = dict(aggregator_kwargs or {})
        # Fail on a bad method, gradient mode or hyperparameter before anything is allocated.
        method = make_aggregator(self.aggregator_name, **self.aggregator_kwargs)
        MultiTaskBackward.check(method, per_task_gradients, gram_update)
        if initial_alpha <= 0:
            raise ValueError(f"initial_alpha must be positive, got {initial_alpha}")
        self.per_task_gradients, self.gram_update = per_task_gradients, gram_update
        self.recon_threshold = recon_threshold
        self.compile = compile
        self.max_grad_norm = max_grad_norm
        if max_q_value is not None and not max_q_value > 0:
            raise ValueError(f"max_q_value must be positive or None, got {max_q_value}")
        self.max_q_value = max_q_value
        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts or 0,
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
        if learning_starts is None:
            self.learning_starts = WARMUP_VECTOR_STEPS * self.n_envs
        if overlap_updates is None:
            overlap_updates = bool(getattr(self.env, "steps_in_workers", False))
        elif overlap_updates and self.env is not None and not hasattr(self.env, "during_step"):
            raise ValueError(
                "overlap_updates=True needs an env that runs work while it steps "
                f"(mtrl.envs.MetaWorldVecEnv), got {type(self.env).__name__}"
            )
        self.overlap_updates = overlap_updates
        self.pending_updates = 0  # asked for by SB3, to run during the next step (overlap)
        self.task_names: list[str] = []
        if env is not None:
            self._bind_tasks()
        if _init_setup_model:
            self._setup_model()

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
        self.actor, self.critic = self.policy.actor, self.policy.critic
        self.critic_target = self.policy.critic_target
        num_tasks = self.policy.num_tasks
        if self.target_entropy == "auto":
            self.target_entropy = -float(np.prod(self.action_space.shape))
        self.target_entropy = float(self.target_entropy)
        self.log_alpha = torch.full(
            (num_tasks,), math.log(self.initial_alpha), device=self.device, requires_grad=True
        )
        # fused: it can skip a non-finite step on the device (see mtrl.backward.step_if_finite)
        self.alpha_optimizer = torch.optim.Adam(
            [self.log_alpha], lr=self.lr_schedule(1), eps=self.policy.adam_eps, fused=True
        )
        self.alpha_skipped = torch.zeros((), dtype=torch.int64, device=self.device)
        methods = [self._method(network) for network in (self.critic, self.actor)]
        # Loss-based methods (FAMO) take one backward pass per network: no per-task gradients.
        mode = "none" if methods[0].loss_based else self.per_task_gradients
        self.critic_step, self.actor_step = (
            MultiTaskBackward(
                network,
                network.optimizer,
                method,
                mode,
                self.gram_update,
                self.compile,
                self.max_grad_norm,
            )
            for network, method in zip((self.critic, self.actor), methods, strict=True)
        )
        self.critic_conflicts, self.actor_conflicts = (
            ConflictRecorder(
                name, self.task_names, step.layer_names, self.recon_threshold, self.device
            )
            for name, step in (("critic", self.critic_step), ("actor", self.actor_step))
        )
        self.stats = DeviceMeans(self.device)  # the train/ scalars, read when logging
        self.captured = self._capture() if self.compile and self.device.type == "cuda" else None
        # Plain data that callbacks keep across a resume (best evaluation so far, benchmark).
        self.run_state: dict[str, Any] = {}
        self.stop_requested = False
        self._last_dump = (time.perf_counter(), 0, 0)

    def _capture(self) -> CapturedUpdate:
        """The update as a CUDA graph (:mod:`mtrl.capture`), with optimizers that keep their
        step counts on the device."""
        check_capturable(self.aggregator_name)
        for optimizer in (self.actor.optimizer, self.critic.optimizer, self.alpha_optimizer):
            if isinstance(optimizer, torch.optim.Adam):
                for group in optimizer.param_groups:
                    group["capturable"] = True
                optimizer.defaults["capturable"] = True
        steps = (self.critic_step, self.actor_step)
        return CapturedUpdate(
            self.gradient_step, lambda: [g for s in steps for g in s.aggregator.generators()]
        )

    def _method(self, network: Actor | Critic):
        """Each network's own method (stateful methods keep one state per network). Methods
        that take logarithms of the losses leave the actor, whose loss can be negative, to the
        mean."""
        method = make_aggregator(self.aggregator_name, **self.aggregator_kwargs)
        if network is self.actor and method.requires_positive_losses:
            return make_aggregator("mean")
        return method

    # -- the update ---------------------------------------------------------------------------

    def train(self, gradient_steps: int, batch_size: int) -> None:
        if self.overlap_updates:
            self.pending_updates += gradient_steps  # run while the next step is simulated
            return
        self._train(gradient_steps, batch_size)

    def _run_pending_updates(self) -> None:
        """The updates asked for after the last step (the env's :attr:`during_step`)."""
        steps, self.pending_updates = self.pending_updates, 0
        if steps:
            self._train(steps, self.batch_size)
            self.policy.set_training_mode(False)  # the policy acts next

    def _train(self, gradient_steps: int, batch_size: int) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(
            [self.actor.optimizer, self.critic.optimizer, self.alpha_optimizer]
        )
        for _ in range(gradient_steps):
            self.update(self.replay_buffer.sample_tasks(batch_size // self.policy.num_tasks))
        self._n_updates += gradient_steps

    def update(self, batch: TaskBatch) -> None:
        """One gradient step of the critic, the actor and the temperatures on a ``[K, B]`` batch,
        then its statistics (outside the CUDA graph, when the step is captured)."""
        critic, actor, log_probs = (self.captured or self.gradient_step)(batch)
        self.critic_conflicts.add(critic)
        self.actor_conflicts.add(actor)
        self.stats.add("train/critic_loss", critic.losses.mean(), weight=critic.finite)
        self.stats.add("train/actor_loss", actor.losses.mean(), weight=actor.finite)
        self.stats.add("train/entropy", -log_probs.mean(), weight=finite(log_probs))
        self.stats.add("train/alpha", self.log_alpha.detach().exp(), self.task_names)

    def gradient_step(self, batch: TaskBatch) -> tuple[StepResult, StepResult, Tensor]:
        """The update itself: the critic's, the actor's and the temperatures' steps and the
        target critic's, with no host synchronisation (so that it can be captured)."""
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_actions, next_log_prob = self.actor(
                batch.next_observations, torch.randn_like(batch.actions), "grouped"
            )
            next_q = self.critic_target(batch.next_observations, next_actions, "grouped")
            soft_value = next_q.min(dim=0).values - alpha.unsqueeze(-1) * next_log_prob
            target = batch.rewards + (1 - batch.dones) * self.gamma * soft_value
            if self.max_q_value is not None:
                target = target.clamp(-self.max_q_value, self.max_q_value)

        critic = self.critic_step(
            critic_task_loss, (batch.observations, batch.actions, target), (self.critic,)
        )
        frozen_critic = {name: p.detach() for name, p in self.critic.named_parameters()}
        actor = self.actor_step(
            actor_task_loss,
            (batch.observations, torch.randn_like(batch.actions), alpha),
            (self.actor, self.critic, frozen_critic),
        )
        log_probs = actor.aux[1].detach()

        alpha_loss = -(self.log_alpha * (log_probs + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad()
        alpha_loss.backward()
        alpha_ok = finite(alpha_loss)
        step_if_finite(self.alpha_optimizer, alpha_ok)
        self.alpha_skipped += ~alpha_ok

        with torch.no_grad():
            # SB3's polyak_update, in one operation rather than two per parameter
            torch._foreach_lerp_(
                list(self.critic_target.parameters()), list(self.critic.parameters()), self.tau
            )
        return critic, actor, log_probs

    @property
    def skipped_updates(self) -> dict[str, int]:
        """Updates skipped for non-finite values, per network (read from the device)."""
        counts = (self.critic_step.skipped, self.actor_step.skipped, self.alpha_skipped)
        return dict(zip(("critic", "actor", "alpha"), map(int, counts), strict=True))

    def collect_rollouts(self, env: Any, callback: Any, *args: Any, **kwargs: Any) -> RolloutReturn:
        """SB3's collection of one step, unless a stop was asked for (:attr:`stop_requested`).

        A stop then takes effect between two steps, where the last step is stored and trained
        on: a checkpoint written there continues exactly. (SB3 itself stops inside a step, when
        a callback's ``on_step`` returns False, before that step's transitions are stored.)
        """
        if self.stop_requested:
            return RolloutReturn(0, 0, continue_training=False)
        return super().collect_rollouts(env, callback, *args, **kwargs)

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
        if self.overlap_updates:
            self.env.during_step = self._run_pending_updates
        interval = log_interval or self.n_envs
        return super().learn(
            total_timesteps, callback, interval, tb_log_name, reset_num_timesteps, progress_bar
        )

    def dump_logs(self) -> None:
        means = self.stats.pop() | self.critic_conflicts.means() | self.actor_conflicts.means()
        for key, value in (means | self._skip_counts()).items():
            self.logger.record(key, value)
        now, steps, updates = time.perf_counter(), self.num_timesteps, self._n_updates
        last_time, last_steps, last_updates = self._last_dump
        elapsed = max(now - last_time, 1e-9)
        if steps > last_steps:
            self.logger.record("time/env_steps_per_s", (steps - last_steps) / elapsed)
            self.logger.record("time/updates_per_s", (updates - last_updates) / elapsed)
        self._last_dump = (now, steps, updates)
        super().dump_logs()

    def _skip_counts(self) -> dict[str, int]:
        return {f"train/skipped_updates/{n}": c for n, c in self.skipped_updates.items()}

    def record_pairwise_conflicts(self) -> None:
        """Log the mean cosine of every task pair since the last call, as ``grad/<net>/cos/a/b``
        (the evaluation callback does, at every evaluation)."""
        for recorder in (self.critic_conflicts, self.actor_conflicts):
            for key, value in recorder.pairwise_means().items():
                self.logger.record(key, value)

    # -- saving and loading -------------------------------------------------------------------

    def parts(self) -> dict[str, Any]:
        """What a checkpoint holds besides the hyperparameters, counters and generators: name →
        an object with ``state_dict`` and ``load_state_dict``."""
        return {
            "policy": self.policy,
            "critic": self.critic_step,
            "actor": self.actor_step,
            "temperature": saving.Temperature(self),
            "statistics": self.stats,
            "critic_conflicts": self.critic_conflicts,
            "actor_conflicts": self.actor_conflicts,
        }

    def checkpoint_state(self, include_replay_buffer: bool = True) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stopped, as plain data (see
        :func:`mtrl.agents.saving.checkpoint_state`)."""
        return saving.checkpoint_state(self, include_replay_buffer)

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
        return saving.from_state(cls, state, env, device, source)
