"""The multi-task SAC policy: actor, twin critic and target critic behind SB3's policy API."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor

from mtrl.agents.networks import Actor, Critic, read_critic_embedding
from mtrl.optim import AdaTask

OPTIMIZERS = ("adam", "adamw", "adatask")


class MTSACPolicy(BasePolicy):
    """Actor and critics over observations that end with a one-hot task id of ``num_tasks``.

    Args:
        net_arch: hidden layer sizes, shared by the actor and the critics.
        num_tasks: length of the one-hot task id at the end of every observation.
        multi_head: one output head per task for the actor and the critics.
        actor_task_layers, critic_task_layers: further layers (0 is the first) with one copy
            per task, e.g. the high-conflict layers that Recon finds.
        n_critics: number of Q-functions (their minimum is used, as in SAC).
        optimizer: ``"adam"``, ``"adamw"`` (Adam with a decoupled weight decay, BRC's), or
            ``"adatask"`` for Adam moments kept per task on the shared parameters
            (:class:`mtrl.optim.AdaTask`).
        adam_eps: Adam's ε (the JAX Meta-World+ and parameter-scaling code use 1e-5).
        weight_decay: AdamW's decoupled weight decay, on every parameter (BRC: 1e-4).
        critic_outputs: each critic's outputs: 1 (a Q-value), or a categorical critic's atoms.
        log_std_bounds: range of the actor's log standard deviation.
        log_std_bounding: ``"tanh"`` or ``"clamp"`` onto that range (see
            :class:`mtrl.agents.networks.Actor`).
        init: ``"torch"`` or ``"he"`` initialisation (see
            :class:`mtrl.agents.networks.EnsembleMLP`).
        network: ``"mlp"``, ``"multi-head"`` (as ``multi_head=True``), or one of the
            architectures of :mod:`mtrl.agents.architectures` (``moore``, ``soft-modules``,
            ``care``, ``paco``, ``film``, ``bronet``), with its ``network_options``.
    """

    actor: Actor
    critic: Critic
    critic_target: Critic

    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        *,
        num_tasks: int,
        net_arch: Sequence[int] = (400, 400, 400),
        multi_head: bool = False,
        actor_task_layers: Sequence[int] = (),
        critic_task_layers: Sequence[int] = (),
        n_critics: int = 2,
        log_std_bounds: tuple[float, float] = (-20.0, 2.0),
        log_std_bounding: str = "clamp",
        init: str = "he",
        network: str = "mlp",
        network_options: dict[str, Any] | None = None,
        optimizer: str = "adam",
        adam_eps: float = 1e-5,
        weight_decay: float = 0.0,
        critic_outputs: int = 1,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if weight_decay < 0 or (weight_decay and optimizer != "adamw"):
            raise ValueError(
                f"weight_decay={weight_decay!r}: a decoupled weight decay, >= 0, for "
                f"optimizer='adamw' only (not {optimizer!r})"
            )
        super().__init__(
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=True,
        )
        obs_dim = int(observation_space.shape[0])
        action_dim = int(action_space.shape[0])
        self.net_arch = list(net_arch)
        self.num_tasks = num_tasks
        self.actor_task_layers = list(actor_task_layers)
        self.critic_task_layers = list(critic_task_layers)
        self.n_critics = n_critics
        if multi_head and network not in ("mlp", "multi-head"):
            raise ValueError(f"multi_head=True is network='multi-head', not {network!r}")
        self.network = "multi-head" if multi_head else network
        self.multi_head = self.network == "multi-head"
        self.network_options = dict(network_options or {})
        self.log_std_bounds = tuple(log_std_bounds)
        self.log_std_bounding, self.init, self.adam_eps = log_std_bounding, init, adam_eps
        self.weight_decay = weight_decay
        self.actor = Actor(
            obs_dim,
            action_dim,
            self.net_arch,
            num_tasks=num_tasks,
            task_layers=self.actor_task_layers,
            log_std_bounds=self.log_std_bounds,
            log_std_bounding=log_std_bounding,
            init=init,
            network=self.network,
            network_options=self.network_options,
        )
        self.critic = Critic(
            obs_dim,
            action_dim,
            self.net_arch,
            num_tasks=num_tasks,
            task_layers=self.critic_task_layers,
            n_critics=n_critics,
            init=init,
            network=self.network,
            network_options=self.network_options,
            outputs=critic_outputs,
        )
        self.critic_outputs = critic_outputs
        read_critic_embedding(self.actor, self.critic)
        self.critic_target = copy.deepcopy(self.critic)
        self.critic_target.requires_grad_(False)
        self.critic_target.train(False)
        self.optimizer_name = optimizer
        lr = lr_schedule(1)
        for network in (self.actor, self.critic):
            if optimizer == "adatask":
                network.optimizer = AdaTask(network.parameters(), num_tasks, lr=lr, eps=adam_eps)
            elif optimizer == "adamw":  # BRC's: optax.adamw on every parameter, no mask
                network.optimizer = torch.optim.AdamW(
                    network.parameters(), lr=lr, eps=adam_eps, weight_decay=weight_decay, fused=True
                )
            else:
                kwargs = dict(self.optimizer_kwargs)
                if optimizer_class is torch.optim.Adam:
                    # fused Adam can skip a non-finite step on the device, without a host sync
                    kwargs.setdefault("fused", True)
                    kwargs.setdefault("eps", adam_eps)
                network.optimizer = optimizer_class(network.parameters(), lr=lr, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            num_tasks=self.num_tasks,
            net_arch=self.net_arch,
            multi_head=self.multi_head,
            actor_task_layers=self.actor_task_layers,
            critic_task_layers=self.critic_task_layers,
            n_critics=self.n_critics,
            log_std_bounds=self.log_std_bounds,
            log_std_bounding=self.log_std_bounding,
            init=self.init,
            network=self.network,
            network_options=self.network_options,
            optimizer=self.optimizer_name,
            adam_eps=self.adam_eps,
            weight_decay=self.weight_decay,
            critic_outputs=self.critic_outputs,
        )
        return data

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        if deterministic:
            return self.actor.deterministic(observation)
        noise = torch.randn(*observation.shape[:-1], self.action_space.shape[0], device=self.device)
        return self.actor(observation, noise)[0]

    def forward(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        return self._predict(observation, deterministic)

    def set_training_mode(self, mode: bool) -> None:
        self.actor.train(mode)
        self.critic.train(mode)
        self.training = mode


class PolicySnapshot:
    """The deterministic policy as it is at one moment, picklable: a copy of the actor (without
    its optimizer) and the action bounds, so that an evaluation in another process acts as
    ``policy.predict(obs, deterministic=True)`` would, while training changes the policy."""

    def __init__(self, policy: MTSACPolicy, device: torch.device | str = "cpu") -> None:
        actor = policy.actor
        # the memo entry leaves the optimizer (and its moments) out of the copy
        self.actor = copy.deepcopy(actor, memo={id(getattr(actor, "optimizer", None)): None})
        self.actor.to(device).eval()
        self.device = torch.device(device)
        self.low = policy.action_space.low
        self.high = policy.action_space.high

    def __call__(self, observations: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
            actions = self.actor.deterministic(obs).cpu().numpy()
        # SB3's unscale_action: the actor's [-1, 1] onto the action space
        return self.low + 0.5 * (actions + 1.0) * (self.high - self.low)
