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

import collections
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import RolloutReturn
from torch import Tensor
from torch.func import functional_call

import mtrl
from mtrl.agents.networks import Actor, Critic
from mtrl.agents.policies import MTSACPolicy
from mtrl.aggregators import make_aggregator
from mtrl.checkpoint import CheckpointError, load_state, save_atomic
from mtrl.conflict import LayerConflicts, conflict_stats
from mtrl.jacobian import (
    combine,
    per_task_gradients,
    per_task_gradients_grouped,
    per_task_gradients_loop,
    task_gram,
)
from mtrl.optim import AdaTask
from mtrl.replay import MultiTaskReplayBuffer, TaskBatch
from mtrl.stats import DeviceMeans, PendingRows

CHECKPOINT_FORMAT = "mtrl.MTSAC"
CHECKPOINT_VERSION = 2
DEFAULT_BATCH_PER_TASK = 128
GRADIENT_MODES = ("grouped", "vmap", "loop", "none")
# Updates whose conflict statistics are computed together (mtrl.stats.PendingRows): some forty
# operations on K × K matrices per network, about 1% of a GradOPS update on two CPU cores when
# run every update.
CONFLICT_BATCH = 256


# The losses below take one task's slice of a batch (``layout="single"``, under vmap) or the
# whole ``[K, B]`` batch (``layout="grouped"``), and then return one loss per task.


def critic_task_loss(
    params: dict[str, Tensor],
    obs: Tensor,
    actions: Tensor,
    target: Tensor,
    critic: Critic,
    layout: str,
) -> tuple[Tensor, Tensor]:
    """Critic loss: half the summed mean squared TD errors of the critics."""
    q_values = functional_call(critic, params, (obs, actions), {"layout": layout})
    loss = 0.5 * (q_values - target).square().mean(dim=-1).sum(dim=0)
    return loss, loss


def actor_task_loss(
    params: dict[str, Tensor],
    obs: Tensor,
    noise: Tensor,
    alpha: Tensor,
    actor: Actor,
    critic: Critic,
    critic_params: dict[str, Tensor],
    layout: str,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Actor loss ``E[α log π(a|s) − min_i Q_i(s, a)]``, with the critic frozen."""
    actions, log_prob = functional_call(actor, params, (obs, noise), {"layout": layout})
    q_value = functional_call(critic, critic_params, (obs, actions), {"layout": layout})
    loss = (alpha.unsqueeze(-1) * log_prob - q_value.min(dim=0).values).mean(dim=-1)
    return loss, (loss, log_prob.mean(dim=-1))


def _finite(*tensors: Tensor) -> Tensor:
    """A 0-d boolean tensor: no NaN or infinity in any of ``tensors`` (no host sync).

    A NaN or an infinity makes a tensor's sum non-finite, and one pass over each tensor is a
    third of what ``isfinite(t).all()`` reads and writes on every parameter's gradient. (A sum
    can also overflow without either, from float32 values near 1e38: no usable gradient.)
    """
    return torch.stack([t.sum().isfinite() for t in tensors]).all()


def _skips_on_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` changes nothing when its ``found_inf`` flag is set: torch's
    fused optimizers (as under GradScaler) and AdaTask. (The flag GradScaler reads,
    ``_step_supports_amp_scaling``, does not survive a copy or a pickle; ``fused`` does.)"""
    return isinstance(optimizer, AdaTask) or bool(optimizer.defaults.get("fused"))


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
        per_task_gradients: how per-task gradients are computed: ``"grouped"`` (one forward and
            backward pass, per-task weight gradients from each layer's inputs and output
            gradients; the default), ``"vmap"`` (``torch.func.vmap`` over tasks), ``"loop"`` (one
            backward pass per task, as older code bases do; a reference), or ``"none"`` (one
            backward pass of the weighted task losses, for methods that need no Gram matrix,
            such as ``mean``, which is then plain multi-task SAC, without conflict logging).
            Loss-based methods (``famo``) never compute per-task gradients.
        recon_threshold: S of Recon's per-layer conflict scores (``recon/...`` in TensorBoard):
            a task pair conflicts on a layer when its cosine there is below S.
        compile_aggregator: ``torch.compile`` the method's K×K computation, a long chain of
            tiny kernels for the solver-based methods (CAGrad, MGDA, Nash-MTL, ...): fused on
            the CPU, captured as a CUDA graph on a GPU.
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
        per_task_gradients: str = "grouped",
        recon_threshold: float = 0.0,
        compile_aggregator: bool = False,
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
        method = make_aggregator(self.aggregator_name, **self.aggregator_kwargs)
        if per_task_gradients not in GRADIENT_MODES:
            raise ValueError(
                f"per_task_gradients={per_task_gradients!r}; valid: {', '.join(GRADIENT_MODES)}"
            )
        if per_task_gradients == "none" and method.needs_gram:
            raise ValueError(
                f"method {aggregator!r} combines per-task gradients, so per_task_gradients "
                "cannot be 'none' (only methods that weight losses, such as mean, can)"
            )
        self.per_task_gradients = per_task_gradients
        self.recon_threshold = recon_threshold
        self.compile_aggregator = compile_aggregator
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
        # fused: it can skip a non-finite step on the device (see _step_if_finite)
        self.alpha_optimizer = torch.optim.Adam(
            [self.log_alpha], lr=self.lr_schedule(1), fused=True
        )
        # Stateful methods (PCGrad's generator, GradVac's targets) keep one state per network.
        self.aggregators = {
            name: make_aggregator(self.aggregator_name, **self.aggregator_kwargs)
            for name in ("critic", "actor")
        }
        if self.aggregators["actor"].requires_positive_losses:
            self.aggregators["actor"] = make_aggregator("mean")  # the actor loss can be negative
        if self.compile_aggregator:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            for aggregator in self.aggregators.values():
                aggregator.weights = torch.compile(aggregator.weights, mode=mode, dynamic=False)
        # Loss-based methods (FAMO) take one backward pass: no per-task gradient anywhere.
        self.summed_losses = (
            self.per_task_gradients == "none" or self.aggregators["critic"].loss_based
        )
        self.stats = DeviceMeans()
        self.pairwise = DeviceMeans()
        # Gram matrices of recent updates, whose conflict statistics are computed in batches
        self._pending_conflicts = {
            name: PendingRows(CONFLICT_BATCH) for name in ("critic", "actor")
        }
        self.layer_conflicts = {
            name: LayerConflicts(self.shared_layers(network), self.recon_threshold)
            for name, network in (("critic", self.critic), ("actor", self.actor))
        }
        # Plain data that callbacks keep across a resume (best evaluation so far, benchmark).
        self.run_state: dict[str, Any] = {}
        self.stop_requested = False
        # Counted on the device, read when logging.
        self.skipped_updates = {
            name: torch.zeros((), dtype=torch.int64, device=self.device)
            for name in ("critic", "actor", "alpha")
        }
        self._pairs = torch.triu_indices(num_tasks, num_tasks, offset=1, device=self.device)
        first, second = self._pairs.tolist()
        self._pair_labels = [
            f"{self.task_names[i]}/{self.task_names[j]}" for i, j in zip(first, second, strict=True)
        ]
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
            next_actions, next_log_prob = self.actor(
                batch.next_observations, torch.randn_like(batch.actions), "grouped"
            )
            next_q = self.critic_target(batch.next_observations, next_actions, "grouped")
            soft_value = next_q.min(dim=0).values - alpha.unsqueeze(-1) * next_log_prob
            target = batch.rewards + (1 - batch.dones) * self.gamma * soft_value

        self._step(
            self.critic,
            critic_task_loss,
            (batch.observations, batch.actions, target),
            (self.critic,),
            "critic",
        )
        frozen_critic = {name: p.detach() for name, p in self.critic.named_parameters()}
        _, log_probs = self._step(
            self.actor,
            actor_task_loss,
            (batch.observations, torch.randn_like(batch.actions), alpha),
            (self.actor, self.critic, frozen_critic),
            "actor",
        )

        alpha_loss = -(self.log_alpha * (log_probs.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad()
        alpha_loss.backward()
        self._step_if_finite(self.alpha_optimizer, "alpha", _finite(alpha_loss))

        with torch.no_grad():
            # SB3's polyak_update, in one operation rather than two per parameter
            torch._foreach_lerp_(
                list(self.critic_target.parameters()), list(self.critic.parameters()), self.tau
            )
        finite = _finite(log_probs)
        self.stats.add("train/entropy", -log_probs.mean(), weight=finite)
        self.stats.add("train/alpha", self.log_alpha.detach().exp(), self.task_names)

    def _step_if_finite(self, optimizer: torch.optim.Optimizer, name: str, finite: Tensor) -> None:
        """Step ``optimizer`` unless ``finite`` (a 0-d flag, see :func:`_finite`) is false.

        The flag stays on the device: fused Adam (and AdaTask) skip a step whose ``found_inf``
        is set, as they do under mixed precision, so the host never waits for the answer. The
        skip is counted and logged.
        """
        if _skips_on_found_inf(optimizer):
            optimizer.found_inf = (~finite).to(torch.float32)
        else:
            # Any other optimizer cannot skip (torch's unfused Adam even refuses the flag): it
            # steps on zero gradients, so weights stay finite though its moments still move.
            for group in optimizer.param_groups:
                for param in group["params"]:
                    if param.grad is not None:
                        param.grad = torch.where(finite, param.grad, 0.0)
        optimizer.step()
        self.skipped_updates[name] += ~finite

    def _step(
        self,
        network: Actor | Critic,
        loss_fn: Callable[..., tuple[Tensor, Any]],
        task_inputs: tuple[Tensor, ...],
        shared_inputs: tuple[Any, ...],
        name: str,
    ) -> Any:
        """Update ``network`` on its per-task losses; returns ``loss_fn``'s per-task outputs."""
        aggregator = self.aggregators[name]
        params = dict(network.named_parameters())
        if self.summed_losses:
            # One backward pass of the weighted task losses: no Jacobian at all.
            losses, aux = loss_fn(params, *task_inputs, *shared_inputs, "grouped")
            weights = aggregator.weights(None, losses.detach())
            network.optimizer.zero_grad()
            (weights * losses).sum().backward()
            grads = [p.grad for p in params.values() if p.grad is not None]
            finite = _finite(losses, *grads)
            self._step_if_finite(network.optimizer, name, finite)
            self.stats.add(f"grad/{name}/weight", weights, self.task_names, weight=finite)
            self.stats.add(f"train/{name}_loss", losses.mean(), weight=finite)
            if aggregator.loss_based:
                # Loss-based methods learn from how the step changed each task's loss.
                with torch.no_grad():
                    after, _ = loss_fn(params, *task_inputs, *shared_inputs, "grouped")
                aggregator.observe(losses.detach(), after)
            return aux
        if self.per_task_gradients == "grouped":
            shared, own, aux = per_task_gradients_grouped(
                loss_fn, network, params, task_inputs, shared_inputs
            )
        else:
            compute = (
                per_task_gradients if self.per_task_gradients == "vmap" else per_task_gradients_loop
            )
            gradients, aux = compute(loss_fn, params, task_inputs, shared_inputs)
            own_names = {f"net.{p}" for p in network.net.task_specific_parameters()}
            shared = {n: g for n, g in gradients.items() if n not in own_names}
            own = {n: gradients[n].mean(dim=0) for n in own_names}
        losses = aux[0] if isinstance(aux, tuple) else aux
        self._apply(network, shared, own, losses, name)
        return aux

    def _apply(
        self,
        network: Actor | Critic,
        shared: dict[str, Tensor],
        own: dict[str, Tensor],
        losses: Tensor,
        name: str,
    ) -> None:
        """Combine the per-task gradients ``shared`` (``[K, *shape]``) into ``.grad``, give the
        task-specific parameters their gradients ``own``, and step, unless anything is not
        finite: then nothing reaches the weights (decided on the device, see
        :meth:`_step_if_finite`)."""
        params = dict(network.named_parameters())
        # The Jacobian stays in per-parameter pieces. Their Gram matrices add up to each shared
        # layer's, which gives the layer's own conflicts, and those add up to J Jᵀ.
        layer_grams = torch.stack(
            [
                task_gram(shared[f"net.{weight}"]) + task_gram(shared[f"net.{bias}"])
                for layer, (weight, bias) in enumerate(network.net.layer_parameters())
                if layer not in network.net.task_layers
            ]
        )
        gram = layer_grams.sum(dim=0)
        finite = _finite(losses, gram, *own.values())
        # On a skipped update the method and its state see orthogonal unit gradients rather
        # than NaNs; the step is skipped in _step_if_finite.
        eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        safe_gram = torch.where(finite, gram, eye)
        weights = self.aggregators[name].weights(safe_gram, losses)
        for param_name, grad in shared.items():
            params[param_name].grad = combine(weights, grad)
        for param_name, grad in own.items():
            params[param_name].grad = grad
        if isinstance(network.optimizer, AdaTask):
            # Each task's share w_t g_t of the update gets its own Adam moments.
            network.optimizer.set_task_gradients(
                {
                    params[n]: weights.view(-1, *[1] * (grad.dim() - 1)) * grad
                    for n, grad in shared.items()
                }
            )
        self._step_if_finite(network.optimizer, name, finite)
        self.stats.add(f"train/{name}_loss", losses.mean(), weight=finite)
        # A non-finite layer Gram counts no conflict, and the update is left out anyway.
        if self._pending_conflicts[name].append(safe_gram, weights, layer_grams, finite):
            self._record_conflicts(name)

    @staticmethod
    def shared_layers(network: Actor | Critic) -> list[str]:
        """Names of the layers that every task shares (``layer0`` is the first)."""
        depth = len(network.net.layer_parameters())
        return [f"layer{i}" for i in range(depth) if i not in network.net.task_layers]

    def _record_conflicts(self, name: str) -> None:
        """Turn the pending updates' Gram matrices into conflict statistics, all in one batch."""
        pending = self._pending_conflicts[name]
        if not pending.filled:
            return
        grams, weights, layer_grams, finite = pending.take()
        stats = conflict_stats(grams, weights)
        prefix = f"grad/{name}"
        for key in ("conflicting_pairs", "cos_min", "update_conflicts", "update_norm_ratio"):
            self.stats.add_batch(f"{prefix}/{key}", getattr(stats, key), weights=finite)
        self.stats.add_batch(f"{prefix}/weight", stats.weights, self.task_names, weights=finite)
        first, second = self._pairs
        self.pairwise.add_batch(
            f"{prefix}/cos", stats.cosines[:, first, second], self._pair_labels, weights=finite
        )
        conflicts = self.layer_conflicts[name]
        fractions = conflicts.add(layer_grams, weight=finite)
        self.stats.add_batch(f"recon/{name}", fractions, conflicts.layers, weights=finite)

    def record_conflicts(self) -> None:
        """Bring the conflict statistics up to date with every update so far."""
        for name in self._pending_conflicts:
            self._record_conflicts(name)

    def record_pairwise_conflicts(self) -> None:
        """Log the mean cosine of every task pair since the last call, as ``grad/<net>/cos/a/b``.

        K(K−1)/2 numbers per network are too many to log at every dump on MT50, so callers log
        them at a slower pace (the evaluation callback does, at every evaluation).
        """
        self.record_conflicts()
        for key, value in self.pairwise.pop().items():
            self.logger.record(key, value)

    # -- collecting -------------------------------------------------------------------------

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
        return super().learn(
            total_timesteps,
            callback=callback,
            log_interval=log_interval or self.n_envs,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def dump_logs(self) -> None:
        self.record_conflicts()
        for key, value in self.stats.pop().items():
            self.logger.record(key, value)
        for name, count in self.skipped_updates.items():
            self.logger.record(f"train/skipped_updates/{name}", int(count))
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
            "per_task_gradients": self.per_task_gradients,
            "recon_threshold": float(self.recon_threshold),
            "compile_aggregator": bool(self.compile_aggregator),
            "policy_kwargs": {
                k: list(v) if isinstance(v, tuple) else v for k, v in policy_kwargs.items()
            },
            "seed": self.seed,
        }

    def checkpoint_state(self, include_replay_buffer: bool = True) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stopped, as plain data.

        With ``include_replay_buffer`` the state is a full checkpoint: the replay buffer, the
        episodes in progress (the environments' state and the last observations) and the
        training statistics not yet logged come too. Nothing is changed by taking it.
        """
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
                "skipped_updates": {k: int(v) for k, v in self.skipped_updates.items()},
            },
            "rng": _rng_state(self.action_space),
            "run_state": dict(self.run_state),
            "layer_conflicts": {n: c.state_dict() for n, c in self.layer_conflicts.items()},
        }
        if include_replay_buffer:
            state["replay_buffer"] = self.replay_buffer.state_dict()
            state["rollout"] = self._rollout_state()
            state["statistics"] = {
                "stats": self.stats.state_dict(),
                "pairwise": self.pairwise.state_dict(),
                "pending_conflicts": {
                    name: rows.state_dict() for name, rows in self._pending_conflicts.items()
                },
            }
        return state

    def _rollout_state(self) -> dict[str, Any]:
        """The episodes in progress: the environments' state where they can give it, the last
        observations that the next action is chosen from, SB3's episode statistics."""
        state: dict[str, Any] = {
            "episode_infos": list(self.ep_info_buffer or []),
            "episode_successes": [bool(s) for s in self.ep_success_buffer or []],
        }
        if self._last_obs is not None and hasattr(self.env, "state_dict"):
            state["env"] = self.env.state_dict()
            state["last_obs"] = torch.from_numpy(np.array(self._last_obs))
            state["last_episode_starts"] = torch.from_numpy(np.array(self._last_episode_starts))
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
        if state.get("format_version", 1) > CHECKPOINT_VERSION:
            raise CheckpointError(
                f"{source} was written by a newer mtrl ({state.get('mtrl_version')}, checkpoint "
                f"format {state['format_version']}); this one reads formats up to "
                f"{CHECKPOINT_VERSION}: upgrade mtrl to load it"
            )
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
        for name, count in counters["skipped_updates"].items():
            self.skipped_updates[name].fill_(count)
        self.run_state = dict(state["run_state"])
        for name, conflicts in self.layer_conflicts.items():
            conflicts.load_state_dict(state["layer_conflicts"][name])
        if "replay_buffer" in state:
            self.replay_buffer.load_state_dict(state["replay_buffer"])
        if "rollout" in state:
            self._load_rollout_state(state["rollout"])
        if "statistics" in state:
            statistics = state["statistics"]
            self.stats.load_state_dict(statistics["stats"], self.device)
            self.pairwise.load_state_dict(statistics["pairwise"], self.device)
            for name, rows in self._pending_conflicts.items():
                rows.load_state_dict(statistics["pending_conflicts"][name], self.device)
        _set_rng_state(state["rng"], self.action_space)

    def _load_rollout_state(self, state: dict[str, Any]) -> None:
        window = self._stats_window_size
        self.ep_info_buffer = collections.deque(state["episode_infos"], maxlen=window)
        self.ep_success_buffer = collections.deque(state["episode_successes"], maxlen=window)
        restorable = "env" in state and hasattr(self.env, "load_state_dict")
        # Where the episodes in progress come back whole, SB3 must not reset the envs: the
        # next action is chosen from the last observation, as it would have been.
        if restorable and self.env.load_state_dict(state["env"]):
            self._last_obs = state["last_obs"].numpy().copy()
            self._last_episode_starts = state["last_episode_starts"].numpy().copy()


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
