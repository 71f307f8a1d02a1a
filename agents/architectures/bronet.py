"""BroNet, the residual network of BRC's critic and actor (Nauman et al., "Bigger, Regularized,
Categorical: High-Capacity Value Functions are Efficient Multi-Task Learners", 2025), as
naumix/BiggerRegularizedCategorical builds it (``jaxrl/networks.py``: ``BronetBlock``,
``BroNet``, ``TaskEmbedding``, ``Critic``, ``NormalTanhPolicy``; ``jaxrl/agent/update.py``:
``build_actor_input``)."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from mtrl.agents.architectures.common import TaskTable, per_member, rows
from mtrl.agents.layer_norm import EnsembleLayerNorm
from mtrl.agents.networks import EnsembleLinear

ROLES = ("critic", "actor")
GAIN = math.sqrt(2)  # jaxrl/networks.py default_init: orthogonal(√2) for every dense layer


def orthogonal_(weight: Tensor, gain: float) -> None:
    """Each member's ``[in, out]`` matrix drawn orthogonal with ``gain``, as Flax's
    ``nn.initializers.orthogonal`` draws a kernel."""
    with torch.no_grad():
        for index in itertools.product(*map(range, weight.shape[:-2])):
            drawn = torch.empty_like(weight[index])
            nn.init.orthogonal_(drawn, gain=gain)
            weight[index].copy_(drawn)


def dense(members: int, fan_in: int, fan_out: int, gain: float = GAIN) -> EnsembleLinear:
    """A shared dense layer, orthogonal with ``gain`` and a zero bias (Flax's default)."""
    layer = EnsembleLinear(members, 1, fan_in, fan_out, bias_bound=0.0)
    orthogonal_(layer.weight, gain)
    return layer


class BroNet(nn.Module):
    """Dense → LayerNorm → ReLU, then ``depth`` residual blocks (Dense → LayerNorm → ReLU →
    Dense → LayerNorm, plus the block's input), then a dense output layer; every dense layer
    orthogonal with gain √2 and a zero bias, every LayerNorm's scale one and shift zero.

    The critic (``role="critic"``, ``critic_width`` × ``critic_depth``) owns a task embedding
    of ``embedding_width`` (Flax's ``nn.Embed``: N(0, 1/width)), L2-normalised and concatenated
    after the state and the action; the one-hot task id is not an input. The actor
    (``role="actor"``, ``actor_width`` × ``actor_depth``) reads the online critic's embedding,
    without gradient, after the state (:meth:`read_embedding` points it at the critic); its
    output is the means, then the log standard deviations, whose half of the output layer is
    drawn with gain 1 (the reference's separate log-std head, ``log_std_scale=1``).

    ``hidden`` (``agent.net_arch``) is not read: the widths and depths are the options above.
    Defaults: ``train.py`` (critic 4096 wide, 2 blocks), ``NormalTanhPolicy`` (actor 256 wide,
    1 block), ``BRC.__init__`` (embedding 32).
    """

    def __init__(
        self,
        state_dim,
        out_dim,
        *,
        members,
        num_tasks,
        hidden,
        init,
        head_bound,
        role: str = "critic",
        critic_width: int = 4096,
        critic_depth: int = 2,
        actor_width: int = 256,
        actor_depth: int = 1,
        embedding_width: int = 32,
    ) -> None:
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"role={role!r}; valid: {', '.join(ROLES)}")
        self.role, self.members = role, members
        critic = role == "critic"
        width = critic_width if critic else actor_width
        depth = critic_depth if critic else actor_depth
        if role == "critic":
            self.embedding = TaskTable(1, num_tasks, embedding_width, std=embedding_width**-0.5)
        else:
            self._critic_embedding: tuple[TaskTable, ...] = ()  # set by read_embedding
        self.input = dense(members, state_dim + embedding_width, width)
        self.input_norm = EnsembleLayerNorm(members, width)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [
                    dense(members, width, width),
                    EnsembleLayerNorm(members, width),
                    dense(members, width, width),
                    EnsembleLayerNorm(members, width),
                ]
            )
            for _ in range(depth)
        )
        self.output = dense(members, width, out_dim)
        if role == "actor":
            half = out_dim // 2
            orthogonal_(self.output.weight[..., :half], GAIN)
            orthogonal_(self.output.weight[..., half:], 1.0)

    def read_embedding(self, critic: BroNet) -> None:
        """Take the task embedding from ``critic`` (the online critic). It is held outside this
        module's parameters, in a tuple: the actor's optimizer and checkpoint leave it to the
        critic, which owns it."""
        if self.role != "actor" or critic.role != "critic":
            raise ValueError("an actor BroNet reads the embedding of a critic BroNet")
        self._critic_embedding = (critic.embedding,)

    def task_embedding(self, task_onehot: Tensor) -> Tensor:
        """The L2-normalised embedding of each row's task, ``[1, N, embedding_width]``."""
        if self.role == "critic":
            table = self.embedding.weight
        else:
            if not self._critic_embedding:
                raise RuntimeError("this actor reads no critic's embedding: call read_embedding")
            table = self._critic_embedding[0].weight.detach().to(task_onehot.device)
        onehot = task_onehot.reshape(-1, task_onehot.shape[-1]).to(table.dtype)
        embedding = torch.einsum("nk,mkw->mnw", onehot, table)
        return embedding / torch.linalg.vector_norm(embedding, dim=-1, keepdim=True)

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead = state.shape[:-1]
        embedding = self.task_embedding(task_onehot).to(state.dtype).expand(self.members, -1, -1)
        h = torch.cat([per_member(rows(state), self.members), embedding], dim=-1)
        h = torch.relu(self.input_norm(self.input(h, None, "mixed", 1)))
        for first, first_norm, second, second_norm in self.blocks:
            residual = torch.relu(first_norm(first(h, None, "mixed", 1)))
            h = h + second_norm(second(residual, None, "mixed", 1))
        out = self.output(h, None, "mixed", 1)
        return out.view(self.members, *lead, out.shape[-1])

    def shared_layers(self) -> dict[str, nn.Module]:
        layers: dict[str, nn.Module] = {"input": self.input, "input_norm": self.input_norm}
        names = ("dense0", "norm0", "dense1", "norm1")
        for index, block in enumerate(self.blocks):
            layers |= {f"block{index}_{n}": layer for n, layer in zip(names, block, strict=True)}
        return layers | {"output": self.output}
