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
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import RolloutReturn
from torch import Tensor
from torch.func import functional_call

from mtrl.agents import saving
from mtrl.agents.categorical import (
    cross_entropy,
    expectation,
    mean_probabilities,
    project,
    support,
)
from mtrl.agents.logs import TrainingLogs
from mtrl.agents.networks import Actor, Critic
from mtrl.agents.overlap import OverlappedUpdates
from mtrl.agents.policies import MTSACPolicy
from mtrl.agents.reward_normalization import REWARD_NORMALIZATIONS, RewardNormalizer
from mtrl.aggregators import make_aggregator
from mtrl.backward import GRADIENT_MODES, MultiTaskBackward, StepResult, finite, step_if_finite
from mtrl.capture import capture_update
from mtrl.conflict import ConflictRecorder
from mtrl.replay import MultiTaskReplayBuffer, TaskBatch, uniform_capacity
from mtrl.stats import DeviceMeans

DEFAULT_BATCH_PER_TASK = 128
# How each task's critic and actor losses are weighted (agent.task_loss_weights).
TASK_LOSS_WEIGHTS = ("none", "temperature")
# The critics' loss (agent.critic_loss): the squared TD error, or BRC's cross-entropy with a
# projected target distribution (mtrl.agents.categorical).
CRITIC_LOSSES = ("mse", "categorical")
# One temperature per task (SAC's multi-task recipes), or one for all tasks (BRC's).
TEMPERATURES = ("per_task", "shared")
# What the temperature's loss differentiates: log α, as SAC, or α itself, as BRC, whose
# gradient is then α times SAC's.
ALPHA_LOSSES = ("log_alpha", "alpha")
# How a batch is drawn: the same share from every task, or uniformly over all transitions (BRC's),
# each task's share then varying from batch to batch (mtrl.replay).
BATCH_SAMPLINGS = ("per_task", "uniform")
# Vector steps of uniform random actions before learning, by default (warmstart_steps of
# rainx0r/metaworld-algorithms and rainx0r/mtrl).
WARMUP_VECTOR_STEPS = 4000

__all__ = [
    "ALPHA_LOSSES",
    "BATCH_SAMPLINGS",
    "CRITIC_LOSSES",
    "GRADIENT_MODES",
    "MTSAC",
    "TASK_LOSS_WEIGHTS",
    "TEMPERATURES",
    "actor_task_loss",
    "categorical_actor_task_loss",
    "categorical_critic_task_loss",
    "critic_task_loss",
    "temperature_task_weights",
    "weighted_by_rows",
    "weighted_by_task",
]


# The losses take one task's slice of a batch (``layout="single"``, under vmap) or the whole
# ``[K, B]`` batch (``layout="grouped"``), and return one loss per task. ``rows`` weighs each
# row in its task's mean (a uniform batch's, see mtrl.replay); None weighs all alike.


def row_mean(values: Tensor, rows: Tensor | None) -> Tensor:
    """The mean over the last (row) axis, each row weighted by ``rows`` where given."""
    return values.mean(dim=-1) if rows is None else (values * rows).mean(dim=-1)


def critic_task_loss(
    params,
    obs,
    actions,
    target,
    critic: Critic,
    layout: str,
    max_q_value: float | None = None,
    rows: Tensor | None = None,
):
    """Critic loss: half the summed mean squared TD errors of the critics. With
    ``max_q_value``, the predictions are clipped to ±it first, so that a prediction past the
    bound gets no gradient (the JAX code's Q clipping, which its PaCo runs used)."""
    q_values = functional_call(critic, params, (obs, actions), {"layout": layout})
    if max_q_value is not None:
        q_values = q_values.clamp(-max_q_value, max_q_value)
    loss = 0.5 * row_mean((q_values - target).square(), rows).sum(dim=0)
    return loss, loss


def actor_task_loss(
    params, obs, noise, alpha, actor: Actor, critic: Critic, critic_params, layout, rows=None
):
    """Actor loss ``E[α log π(a|s) − min_i Q_i(s, a)]``, with the critic frozen."""
    actions, log_prob = functional_call(actor, params, (obs, noise), {"layout": layout})
    q_value = functional_call(critic, critic_params, (obs, actions), {"layout": layout})
    loss = row_mean(alpha.unsqueeze(-1) * log_prob - q_value.min(dim=0).values, rows)
    return loss, (loss, row_mean(log_prob, rows))


def categorical_critic_task_loss(
    params, obs, actions, target, critic: Critic, layout: str, rows: Tensor | None = None
):
    """Categorical critic loss: the cross-entropy of each critic's distribution with the target
    distribution, averaged over the batch and summed over the critics."""
    logits = functional_call(critic, params, (obs, actions), {"layout": layout})
    loss = row_mean(cross_entropy(logits, target), rows).sum(dim=0)
    return loss, loss


def categorical_actor_task_loss(
    params,
    obs,
    noise,
    alpha,
    actor: Actor,
    critic: Critic,
    critic_params,
    layout,
    *,
    atoms,
    rows=None,
):
    """Actor loss ``E[α log π(a|s) − V(s, a)]``, ``V`` the expectation over the support
    ``atoms`` of the critics' mean distribution (BRC has no minimum over the critics)."""
    actions, log_prob = functional_call(actor, params, (obs, noise), {"layout": layout})
    logits = functional_call(critic, critic_params, (obs, actions), {"layout": layout})
    loss = row_mean(alpha.unsqueeze(-1) * log_prob - expectation(logits, atoms), rows)
    return loss, (loss, row_mean(log_prob, rows))


def weighted_by_rows(
    loss_fn: Callable[..., tuple[Tensor, Any]], task_inputs: int
) -> Callable[..., tuple[Tensor, Any]]:
    """``loss_fn``, which takes ``task_inputs`` task inputs and a ``rows`` keyword, taking the
    row weights as one more task input after those (``[K, B]``, so that vmap slices them with
    the rest)."""

    def weighted(params, *args):
        inputs, rows, rest = args[:task_inputs], args[task_inputs], args[task_inputs + 1 :]
        return loss_fn(params, *inputs, *rest, rows=rows)

    return weighted


def weighted_by_task(
    loss_fn: Callable[..., tuple[Tensor, Any]], task_inputs: int
) -> Callable[..., tuple[Tensor, Any]]:
    """``loss_fn``, which takes ``task_inputs`` task inputs, with each task's loss multiplied by
    a weight given as one more task input after those (a ``[K]`` tensor). The losses in ``aux``
    (``aux`` itself, or its first entry: what the methods read) are scaled alike."""

    def weighted(params, *args):
        inputs, weights, rest = args[:task_inputs], args[task_inputs], args[task_inputs + 1 :]
        losses, aux = loss_fn(params, *inputs, *rest)
        losses = weights * losses
        aux = (losses, *aux[1:]) if isinstance(aux, tuple) else losses
        return losses, aux

    return weighted


def temperature_task_weights(log_alpha: Tensor) -> Tensor:
    """``K · softmax(−log α)``: tasks whose temperature is low, whose policies are already sure,
    weigh more; the weights average 1, so a uniform α leaves the losses as they are. They are
    constants of the step (computed from the detached temperatures)."""
    return log_alpha.numel() * torch.softmax(-log_alpha.detach(), dim=0)


class MTSAC(TrainingLogs, OverlappedUpdates, saving.Checkpointing, OffPolicyAlgorithm):
    """Multi-task SAC on a vector env with one sub-environment per task.

    Observations must end with a one-hot task id (Meta-World's ``use_one_hot``), and sub-env k
    must run task k. Follows Stable-Baselines3 usage::

        model = MTSAC("MlpPolicy", env, aggregator="gradops")
        model.learn(total_timesteps=...)

    Args:
        aggregator: config name of the deconfliction method (:func:`mtrl.aggregators.available`).
        aggregator_kwargs: its hyperparameters.
        batch_size: transitions per update over all tasks (default 128 per task); with
            ``batch_sampling="per_task"``, a multiple of the task count.
        batch_sampling: ``"per_task"``, the same number of transitions from every task, or
            ``"uniform"``, each drawn from all transitions, as BRC (replay_buffer.py): task k
            then gets a random count n_k, and its loss is the sum over its rows ÷ (B / K), so
            that the mean of the task losses (``mean``) is BRC's loss over the batch, and every
            method weighs a task by its share of the batch; a task with no row has a zero loss
            and gradient. The batch holds :func:`mtrl.replay.uniform_capacity` rows per task
            (1.5× the rows on MT10, 2.4× on MT50, at about 100 and 20 per task).
        buffer_size: replay capacity in transitions over all tasks, as in SB3.
        learning_starts: environment steps (over all tasks) of uniform random actions first;
            ``None``: :data:`WARMUP_VECTOR_STEPS` per task (the JAX recipes' warm-up), so that
            MT50 gets as many per task as MT10.
        initial_alpha: starting temperature of every task.
        target_entropy: ``"auto"`` for −``target_entropy_scale`` · |A|.
        target_entropy_scale: the scale of the automatic target entropy (BRC: 0.5).
        temperature: ``"per_task"``, one temperature per task, or ``"shared"``, one for all
            (BRC's), trained on every task's entropy.
        alpha_betas: the temperatures' Adam betas (BRC: b1 = 0.5).
        alpha_loss: ``"log_alpha"``, SAC's ``−log α · (log π + H̄)``, or ``"alpha"``, BRC's
            ``α · (H − H̄)`` (jaxrl/agent/update.py ``update_temperature``).
        per_task_gradients: how per-task gradients are had (:data:`mtrl.backward.GRADIENT_MODES`):
            ``"auto"`` stores each shared layer's where small and forms the rest Gram-first,
            never holding a ``[K, P]`` tensor; ``"none"`` is one backward pass of the weighted
            losses (``mean`` is then plain multi-task SAC, without conflict logging).
        gram_update: how Gram-first layers form the update, ``"products"`` or ``"backward"``
            (a second backward pass of ``Σ_k w_k L_k``).
        recon_threshold: S of Recon's per-layer conflict scores (``recon/...`` in TensorBoard).
        compile: on CUDA, capture the whole update as one CUDA graph (:mod:`mtrl.capture`); on
            both, compile the method's K×K computation.
        max_grad_norm: clip each network's combined update to this global norm (``None``: no
            clipping), 1.0 as in the JAX recipes.
        max_q_value: clip the critics' TD targets to ``[−max_q_value, max_q_value]`` (``None``:
            no clipping, as the JAX recipes; their PaCo runs use 5000).
        clip_q_predictions: clip the critics' predictions to the same bound as the targets
            (needs ``max_q_value``), as the JAX code did when it clipped.
        alpha_learning_rate: the temperatures' own learning rate (``None``: ``learning_rate``);
            the JAX MOORE runs use 1e-4.
        critic_loss: ``"mse"``, or ``"categorical"`` for BRC's critics: logits over
            ``categorical_atoms`` values evenly spaced on ``[−categorical_v_max,
            categorical_v_max]``, trained on the cross-entropy with the projected target
            distribution of the target critics' mean probabilities; the actor maximises the
            expectation (:mod:`mtrl.agents.categorical`). Not with ``max_q_value``.
        task_loss_weights: ``"none"``, or ``"temperature"`` to weight each task's critic and
            actor losses by :func:`temperature_task_weights` (the JAX code's
            ``use_task_weights``, from Soft Modularization); the method combines, and
            ``train/`` logs, the weighted losses; the temperatures' loss is not weighted.
        reward_normalization: ``"none"``, or ``"per_task"``: BRC's division of each task's
            sampled rewards by the scale of its returns, so that they fit the support
            ``[−categorical_v_max, categorical_v_max]`` (:mod:`mtrl.agents.reward_normalization`).
        reset_every: draw the actor's and the critics' weights afresh and zero their optimizers'
            moments every this many updates (``None``: never, as BRC), as the replay-ratio
            scaling work does (D'Oro et al., ICLR 2023); the temperatures, the replay buffer
            and the methods' states are kept. Logged as ``train/resets``.
        overlap_updates: run each step's updates while the environments simulate the next
            step (:mod:`mtrl.agents.overlap`; ``None``: when they step in worker processes).
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
        batch_sampling: str = "per_task",
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int = 1,
        gradient_steps: int = 1,
        initial_alpha: float = 1.0,
        target_entropy: str | float = "auto",
        target_entropy_scale: float = 1.0,
        temperature: str = "per_task",
        alpha_betas: Sequence[float] = (0.9, 0.999),
        alpha_loss: str = "log_alpha",
        per_task_gradients: str = "auto",
        gram_update: str = "products",
        recon_threshold: float = 0.0,
        compile: bool = False,
        max_grad_norm: float | None = 1.0,
        max_q_value: float | None = None,
        clip_q_predictions: bool = False,
        alpha_learning_rate: float | None = None,
        task_loss_weights: str = "none",
        critic_loss: str = "mse",
        categorical_atoms: int = 101,
        categorical_v_max: float = 10.0,
        reward_normalization: str = "none",
        reset_every: int | None = None,
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
        if not target_entropy_scale > 0:
            raise ValueError(f"target_entropy_scale must be positive, got {target_entropy_scale}")
        if temperature not in TEMPERATURES:
            raise ValueError(f"temperature={temperature!r}; valid: {', '.join(TEMPERATURES)}")
        if alpha_loss not in ALPHA_LOSSES:
            raise ValueError(f"alpha_loss={alpha_loss!r}; valid: {', '.join(ALPHA_LOSSES)}")
        if len(alpha_betas) != 2 or not all(0 <= beta < 1 for beta in alpha_betas):
            raise ValueError(f"alpha_betas must be two numbers in [0, 1), got {alpha_betas}")
        self.target_entropy_scale, self.temperature = target_entropy_scale, temperature
        self.alpha_betas, self.alpha_loss = [float(beta) for beta in alpha_betas], alpha_loss
        self.per_task_gradients, self.gram_update = per_task_gradients, gram_update
        self.recon_threshold = recon_threshold
        self.compile = compile
        self.max_grad_norm = max_grad_norm
        if max_q_value is not None and not max_q_value > 0:
            raise ValueError(f"max_q_value must be positive or None, got {max_q_value}")
        self.max_q_value = max_q_value
        if clip_q_predictions and max_q_value is None:
            raise ValueError("clip_q_predictions clips to ±max_q_value, which is None: set both")
        self.clip_q_predictions = clip_q_predictions
        if alpha_learning_rate is not None and not alpha_learning_rate > 0:
            raise ValueError(
                f"alpha_learning_rate must be positive or None, got {alpha_learning_rate}"
            )
        self.alpha_learning_rate = alpha_learning_rate
        if task_loss_weights not in TASK_LOSS_WEIGHTS:
            raise ValueError(
                f"task_loss_weights={task_loss_weights!r}; valid: {', '.join(TASK_LOSS_WEIGHTS)}"
            )
        self.task_loss_weights = task_loss_weights
        if critic_loss not in CRITIC_LOSSES:
            raise ValueError(f"critic_loss={critic_loss!r}; valid: {', '.join(CRITIC_LOSSES)}")
        if critic_loss == "categorical":
            if max_q_value is not None:
                raise ValueError(
                    "critic_loss='categorical' bounds the values by its support "
                    "(categorical_v_max): max_q_value must be None"
                )
            support(categorical_atoms, categorical_v_max)  # refuses bad values now
        self.critic_loss = critic_loss
        if reward_normalization not in REWARD_NORMALIZATIONS:
            raise ValueError(
                f"reward_normalization={reward_normalization!r}; valid: "
                f"{', '.join(REWARD_NORMALIZATIONS)}"
            )
        self.reward_normalization = reward_normalization
        if reset_every is not None and not (isinstance(reset_every, int) and reset_every > 0):
            raise ValueError(f"reset_every must be a positive number of updates, got {reset_every}")
        self.reset_every = reset_every
        if batch_sampling not in BATCH_SAMPLINGS:
            raise ValueError(
                f"batch_sampling={batch_sampling!r}; valid: {', '.join(BATCH_SAMPLINGS)}"
            )
        self.batch_sampling = batch_sampling
        self.categorical_atoms, self.categorical_v_max = categorical_atoms, categorical_v_max
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
        if critic_loss == "categorical":
            self.policy_kwargs["critic_outputs"] = categorical_atoms
        self._setup_overlap(overlap_updates)
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
        if self.batch_sampling == "uniform":
            if self.batch_size <= 0:
                raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        elif self.batch_size <= 0 or self.batch_size % num_tasks:
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
            self.target_entropy = -self.target_entropy_scale * float(
                np.prod(self.action_space.shape)
            )
        self.target_entropy = float(self.target_entropy)
        self.batch_capacity = None
        if self.batch_sampling == "uniform":
            self.batch_capacity = uniform_capacity(self.batch_size, num_tasks)
        temperatures = num_tasks if self.temperature == "per_task" else 1
        self.log_alpha = torch.full(
            (temperatures,), math.log(self.initial_alpha), device=self.device, requires_grad=True
        )
        alpha_lr = self.alpha_learning_rate or self.lr_schedule(1)
        # fused: it can skip a non-finite step on the device (see mtrl.backward.step_if_finite)
        self.alpha_optimizer = torch.optim.Adam(
            [self.log_alpha],
            lr=alpha_lr,
            betas=tuple(self.alpha_betas),
            eps=self.policy.adam_eps,
            fused=True,
        )
        self.critic_loss_fn, self.actor_loss_fn = critic_task_loss, actor_task_loss
        if self.clip_q_predictions:
            self.critic_loss_fn = partial(critic_task_loss, max_q_value=self.max_q_value)
        self.atoms = None
        if self.critic_loss == "categorical":
            self.atoms = support(self.categorical_atoms, self.categorical_v_max, device=self.device)
            self.critic_loss_fn = categorical_critic_task_loss
            self.actor_loss_fn = partial(categorical_actor_task_loss, atoms=self.atoms)
        task_inputs = 3
        if self.batch_sampling == "uniform":
            self.critic_loss_fn = weighted_by_rows(self.critic_loss_fn, task_inputs)
            self.actor_loss_fn = weighted_by_rows(self.actor_loss_fn, task_inputs)
            task_inputs += 1
        if self.task_loss_weights != "none":
            self.critic_loss_fn = weighted_by_task(self.critic_loss_fn, task_inputs)
            self.actor_loss_fn = weighted_by_task(self.actor_loss_fn, task_inputs)
        self.alpha_skipped = torch.zeros((), dtype=torch.int64, device=self.device)
        self.reward_normalizer = None
        if self.reward_normalization == "per_task":
            self.reward_normalizer = RewardNormalizer(
                num_tasks, self.gamma, self.categorical_v_max, self.device
            )
        methods = [self._method(network) for network in (self.critic, self.actor)]
        # Loss-based methods (FAMO) take one backward pass per network: no per-task gradients.
        mode = "none" if methods[0].loss_based else self.per_task_gradients
        settings = (mode, self.gram_update, self.compile, self.max_grad_norm)
        self.critic_step, self.actor_step = (
            MultiTaskBackward(network, network.optimizer, method, *settings)
            for network, method in zip((self.critic, self.actor), methods, strict=True)
        )
        self.critic_conflicts, self.actor_conflicts = (
            ConflictRecorder(
                name, self.task_names, step.layer_names, self.recon_threshold, self.device
            )
            for name, step in (("critic", self.critic_step), ("actor", self.actor_step))
        )
        self.stats = DeviceMeans(self.device)  # the train/ scalars, read when logging
        self.captured = (
            capture_update(self) if self.compile and self.device.type == "cuda" else None
        )
        # Plain data that callbacks keep across a resume (best evaluation so far, benchmark).
        self.run_state: dict[str, Any] = {}
        self.stop_requested = False

    def _method(self, network: Actor | Critic):
        """Each network's own method (stateful methods keep one state per network). Methods
        that take logarithms of the losses leave the actor, whose loss can be negative, to the
        mean."""
        method = make_aggregator(self.aggregator_name, **self.aggregator_kwargs)
        if network is self.actor and method.requires_positive_losses:
            return make_aggregator("mean")
        return method

    # -- the update ---------------------------------------------------------------------------

    def _train(self, gradient_steps: int, batch_size: int) -> None:
        self.policy.set_training_mode(True)
        optimizers = [self.actor.optimizer, self.critic.optimizer]
        if self.alpha_learning_rate is None:  # else the temperatures keep their own rate
            optimizers.append(self.alpha_optimizer)
        self._update_learning_rate(optimizers)
        alphas = self.alphas()  # the rewards of every step's batch are normalised with these
        for _ in range(gradient_steps):
            batch = self.sample_batch(batch_size)
            if self.reward_normalizer is not None:
                rewards = self.reward_normalizer.normalize(
                    batch.rewards, alphas, self.target_entropy
                )
                batch = batch._replace(rewards=rewards)
            self.update(batch)
            self._n_updates += 1
            if self.reset_every and self._n_updates % self.reset_every == 0:
                self.reset_networks()

    def sample_batch(self, batch_size: int) -> TaskBatch:
        """A batch of ``batch_size`` transitions drawn as :attr:`batch_sampling` says."""
        if self.batch_sampling == "per_task":
            return self.replay_buffer.sample_tasks(batch_size // self.policy.num_tasks)
        batch, overflow = self.replay_buffer.sample_uniform(batch_size, self.batch_capacity)
        self.stats.add("train/batch_overflow", overflow)
        return batch

    def reset_networks(self) -> None:
        """The actor's, the critics' and the target critics' weights drawn afresh as at the
        start, and their optimizers' moments and step counts zeroed in place (so that a
        captured update keeps its tensors)."""
        fresh = self.policy_class(
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        )
        self.policy.load_state_dict(fresh.state_dict())
        for network in (self.actor, self.critic):
            for state in network.optimizer.state.values():
                for value in state.values():
                    if isinstance(value, Tensor):
                        value.zero_()

    def update(self, batch: TaskBatch) -> None:
        """One gradient step of the critic, the actor and the temperatures on a ``[K, B]`` batch,
        then its statistics (outside the CUDA graph, when the step is captured)."""
        critic, actor, log_probs = (self.captured or self.gradient_step)(batch)
        self.critic_conflicts.add(critic)
        self.actor_conflicts.add(actor)
        self.stats.add("train/critic_loss", critic.losses.mean(), weight=critic.finite)
        self.stats.add("train/actor_loss", actor.losses.mean(), weight=actor.finite)
        self.stats.add("train/entropy", -log_probs.mean(), weight=finite(log_probs))
        self.stats.add("train/alpha", self.alphas(), self.task_names)

    def gradient_step(self, batch: TaskBatch) -> tuple[StepResult, StepResult, Tensor]:
        """The update itself: the critic's, the actor's and the temperatures' steps and the
        target critic's, with no host synchronisation (so that it can be captured)."""
        alpha = self.alphas()
        with torch.no_grad():
            next_actions, next_log_prob = self.actor(
                batch.next_observations, torch.randn_like(batch.actions), "grouped"
            )
            next_q = self.critic_target(batch.next_observations, next_actions, "grouped")
            entropy = alpha.unsqueeze(-1) * next_log_prob
            if self.atoms is not None:  # the target critics' mean distribution, projected
                next_probs = mean_probabilities(next_q)
                target = project(
                    next_probs, batch.rewards, batch.dones, self.gamma, entropy, self.atoms
                )
            else:
                soft_value = next_q.min(dim=0).values - entropy
                target = batch.rewards + (1 - batch.dones) * self.gamma * soft_value
            if self.max_q_value is not None:
                target = target.clamp(-self.max_q_value, self.max_q_value)

        # Weighted losses take each task's weight after their own task inputs (weighted_by_task),
        # from the temperatures before this step's update.
        # A uniform batch's row weights come first (weighted_by_rows).
        weights = () if batch.weights is None else (batch.weights,)
        if self.task_loss_weights == "temperature":
            weights += (temperature_task_weights(self.log_alpha.expand(self.policy.num_tasks)),)
        critic = self.critic_step(
            self.critic_loss_fn,
            (batch.observations, batch.actions, target, *weights),
            (self.critic,),
        )
        frozen_critic = {name: p.detach() for name, p in self.critic.named_parameters()}
        actor = self.actor_step(
            self.actor_loss_fn,
            (batch.observations, torch.randn_like(batch.actions), alpha, *weights),
            (self.actor, self.critic, frozen_critic),
        )
        log_probs = actor.aux[1].detach()

        scale = self.log_alpha.exp() if self.alpha_loss == "alpha" else self.log_alpha
        alpha_loss = -(scale * (log_probs + self.target_entropy)).mean()
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

    def alphas(self) -> Tensor:
        """Each task's temperature, ``[K]``, without gradient (a shared one repeated)."""
        return self.log_alpha.detach().exp().expand(self.policy.num_tasks)

    @property
    def skipped_updates(self) -> dict[str, int]:
        """Updates skipped for non-finite values, per network (read from the device)."""
        counts = (self.critic_step.skipped, self.actor_step.skipped, self.alpha_skipped)
        return dict(zip(("critic", "actor", "alpha"), map(int, counts), strict=True))

    def _store_transition(
        self,
        replay_buffer: Any,
        buffer_action: np.ndarray,
        new_obs: np.ndarray,
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        if self.reward_normalizer is not None:
            truncated = np.array([info.get("TimeLimit.truncated", False) for info in infos])
            self.reward_normalizer.observe(reward, dones & ~truncated, truncated)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)

    def collect_rollouts(self, env: Any, callback: Any, *args: Any, **kwargs: Any) -> RolloutReturn:
        """SB3's collection of one step, unless a stop was asked for (:attr:`stop_requested`).

        A stop then takes effect between two steps, where the last step is stored and trained
        on: a checkpoint written there continues exactly. (SB3 itself stops inside a step, when
        a callback's ``on_step`` returns False, before that step's transitions are stored.)
        """
        if self.stop_requested:
            # What is due at this step (an evaluation, a checkpoint) happens first, as in a run
            # that goes on: a run resumed here starts after it.
            callback.on_rollout_start()
            return RolloutReturn(0, 0, continue_training=False)
        return super().collect_rollouts(env, callback, *args, **kwargs)

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
        } | ({"reward_normalizer": self.reward_normalizer} if self.reward_normalizer else {})
