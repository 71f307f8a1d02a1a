"""Actor and twin critic for multi-task SAC, written as plain tensor maths so that they vmap.

``torch.func.vmap`` needs pure functions: no ``torch.distributions`` argument checks and no
data-dependent Python branches. The squashed Gaussian is therefore written out by hand, and the
twin critic is one ensemble whose members share each layer's batched matrix product.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
LOG_TWO = math.log(2.0)


def _uniform(shape: Sequence[int], bound: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-bound, bound))


class EnsembleMLP(nn.Module):
    """``members`` MLPs of the same shape, evaluated together with one batched product per layer.

    With ``multi_head`` the last layer has one copy per task, and each sample uses the head of
    its own task (read off the one-hot task id). The heads are then the task-specific
    parameters; every other parameter is shared by all tasks.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        members: int = 1,
        num_tasks: int = 1,
        multi_head: bool = False,
    ) -> None:
        super().__init__()
        self.members = members
        self.multi_head = multi_head
        dims = [in_dim, *hidden]
        # The default initialisation of nn.Linear, member by member.
        self.weights = nn.ParameterList(
            _uniform((members, fan_in, fan_out), 1 / math.sqrt(fan_in))
            for fan_in, fan_out in itertools.pairwise(dims)
        )
        self.biases = nn.ParameterList(
            _uniform((members, 1, fan_out), 1 / math.sqrt(fan_in))
            for fan_in, fan_out in itertools.pairwise(dims)
        )
        heads = num_tasks if multi_head else 1
        bound = 1 / math.sqrt(dims[-1])
        self.head_weight = _uniform((members, heads, dims[-1], out_dim), bound)
        self.head_bias = _uniform((members, heads, 1, out_dim), bound)

    def task_specific_parameters(self) -> list[str]:
        """Names of the parameters that belong to single tasks (none without ``multi_head``)."""
        return ["head_weight", "head_bias"] if self.multi_head else []

    def forward(self, x: Tensor, task_onehot: Tensor) -> Tensor:
        """``x`` of shape ``[B, in]`` → ``[members, B, out]``."""
        h = x.unsqueeze(0).expand(self.members, *x.shape)
        for weight, bias in zip(self.weights, self.biases, strict=True):
            h = torch.relu(torch.baddbmm(bias, h, weight))
        if not self.multi_head:
            return torch.baddbmm(self.head_bias[:, 0], h, self.head_weight[:, 0])
        # Every head on every sample costs K times the (tiny) output layer, and keeps the
        # selection a product with the one-hot rather than an index that would not vmap.
        every_head = torch.einsum("ebh,ekho->ebko", h, self.head_weight)
        every_head = every_head + self.head_bias.transpose(1, 2)
        return (every_head * task_onehot[None, :, :, None]).sum(dim=2)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy with a log standard deviation bounded by a tanh."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        *,
        num_tasks: int,
        multi_head: bool = False,
        log_std_bounds: tuple[float, float] = (-20.0, 2.0),
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.log_std_min, self.log_std_max = log_std_bounds
        self.net = EnsembleMLP(
            obs_dim, hidden, 2 * action_dim, num_tasks=num_tasks, multi_head=multi_head
        )

    def distribution(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log standard deviation of the Gaussian before the tanh."""
        out = self.net(obs, obs[..., -self.num_tasks :])[0]
        mean, log_std = out.chunk(2, dim=-1)
        span = self.log_std_max - self.log_std_min
        return mean, self.log_std_min + 0.5 * span * (torch.tanh(log_std) + 1)

    def forward(self, obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """A reparameterised action for standard-normal ``noise``, and its log-probability."""
        mean, log_std = self.distribution(obs)
        pre_tanh = mean + log_std.exp() * noise
        action = torch.tanh(pre_tanh)
        gaussian = (-0.5 * noise.square() - log_std - HALF_LOG_TWO_PI).sum(dim=-1)
        # log(1 − tanh(u)²) = 2 (log 2 − u − softplus(−2u)), stable for large |u|
        squash = (2 * (LOG_TWO - pre_tanh - nn.functional.softplus(-2 * pre_tanh))).sum(dim=-1)
        return action, gaussian - squash

    def deterministic(self, obs: Tensor) -> Tensor:
        return torch.tanh(self.distribution(obs)[0])


class Critic(nn.Module):
    """``n_critics`` Q-functions evaluated as one ensemble: ``Q(s, a)`` of shape ``[n, B]``."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        *,
        num_tasks: int,
        multi_head: bool = False,
        n_critics: int = 2,
    ) -> None:
        super().__init__()
        self.num_tasks = num_tasks
        self.net = EnsembleMLP(
            obs_dim + action_dim,
            hidden,
            1,
            members=n_critics,
            num_tasks=num_tasks,
            multi_head=multi_head,
        )

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        return self.net(torch.cat([obs, action], dim=-1), obs[..., -self.num_tasks :])[..., 0]
