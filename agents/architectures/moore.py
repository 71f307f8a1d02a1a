"""MOORE, the mixture of orthogonal experts (Hendawy et al., ICLR 2024), as the JAX Meta-World+
code builds it (metaworld_algorithms/nn/moore.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mtrl.agents.architectures.common import (
    TaskTable,
    one_hot_bounds,
    prefixed,
    rows,
    task_count,
)
from mtrl.agents.networks import EnsembleLinear, EnsembleMLP, head_bounds


def gram_schmidt(vectors: Tensor, eps: float = 1e-8) -> Tensor:
    """Orthonormalise ``vectors`` ``[..., E, d]`` along E, in order: each vector less its
    projections on the unit vectors before it, all taken from the vector itself (classical
    Gram–Schmidt, as the reference's ``orthogonal_1d``), divided by its norm plus ``eps``."""
    units: list[Tensor] = []
    for vector in vectors.unbind(-2):
        coefficients = [(vector * unit).sum(-1, keepdim=True) for unit in units]
        for coefficient, unit in zip(coefficients, units, strict=True):
            vector = vector - coefficient * unit
        units.append(vector / (vector.norm(dim=-1, keepdim=True) + eps))
    return torch.stack(units, dim=-2)


class MOORE(nn.Module):
    """E expert MLPs on the state, their outputs orthonormalised per sample (Gram–Schmidt),
    mixed by each task's weights, a tanh, then one output head per task.

    The experts have ``agent.net_arch``'s hidden layers but the last, and end in a layer of the
    last width, drawn as a hidden layer (He, zero bias); the task weights are a dense layer on
    the one-hot without bias, He-uniform; the heads are drawn as the agent's output layers.
    """

    def __init__(
        self, state_dim, out_dim, *, members, num_tasks, hidden, init, head_bound, experts: int = 4
    ) -> None:
        super().__init__()
        self.members, self.experts = members, experts
        self.expert_net = EnsembleMLP(
            state_dim,
            hidden[:-1],
            hidden[-1],
            members=members * experts,
            init=init,
            head_bound=None,
        )
        # a dense layer on the one-hot without bias: a table, drawn as that layer's weight
        self.task_weights = TaskTable(
            members, num_tasks, experts, bound=one_hot_bounds(init, num_tasks)[0]
        )
        self.head = EnsembleLinear(
            members, num_tasks, hidden[-1], out_dim, *head_bounds(init, head_bound)
        )

    def basis(self, state: Tensor) -> Tensor:
        """The experts' outputs for rows of states, orthonormalised per row: ``[M, N, E,
        width]``."""
        outputs = self.expert_net(rows(state), None, "mixed")  # [M·E, N, width]
        outputs = outputs.view(self.members, self.experts, -1, outputs.shape[-1])
        return gram_schmidt(outputs.transpose(1, 2))

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str) -> Tensor:
        lead = state.shape[:-1]
        basis = self.basis(state)
        mixed = torch.einsum("mne,mnew->mnw", self.task_weights(task_onehot), basis)
        out = self.head(torch.tanh(mixed), task_onehot, layout, task_count(layout, lead))
        return out.view(self.members, *lead, -1)

    def shared_layers(self) -> dict[str, nn.Module]:
        return prefixed(expert=self.expert_net)
