"""An MLP on the state whose hidden units each task gates, built from mtrl's layers."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtrl.agents.architectures import TaskTable
from mtrl.agents.networks import EnsembleLinear, head_bounds, hidden_bounds


class TaskGatedMLP(nn.Module):
    """``h_{l+1} = relu(W_l h_l + b_l) · 2σ(z_{k,l})``: every layer is shared by the tasks, and
    task k scales each hidden unit by a gate of its own (``z`` a task table, drawn
    N(0, ``gate_std``²), so the gates start near 1 and the network as a plain MLP).

    The shared layers are :class:`~mtrl.agents.networks.EnsembleLinear`, which form per-task
    gradients from one pass; the gates are :class:`~mtrl.agents.architectures.TaskTable`, whose
    rows each task reaches alone.
    """

    def __init__(
        self,
        state_dim: int,
        out_dim: int,
        *,
        members: int,
        num_tasks: int,
        hidden: Sequence[int],
        init: str,
        head_bound: float | None,
        gate_std: float = 0.1,
    ) -> None:
        super().__init__()
        if not (math.isfinite(gate_std) and gate_std > 0):
            raise ValueError(f"gate_std must be a positive number, got {gate_std}")
        self.members = members
        dims = [state_dim, *hidden, out_dim]
        last = len(dims) - 2

        def bounds(index: int, fan_in: int) -> tuple[float | None, float | None]:
            if index == last and head_bound is not None:
                return head_bounds(init, head_bound)
            return hidden_bounds(init, fan_in)

        self.layers = nn.ModuleList(
            EnsembleLinear(members, 1, fan_in, fan_out, *bounds(index, fan_in))
            for index, (fan_in, fan_out) in enumerate(itertools.pairwise(dims))
        )
        self.gates = nn.ModuleList(
            TaskTable(members, num_tasks, width, std=gate_std) for width in hidden
        )

    def forward(self, state: Tensor, task_onehot: Tensor, layout: str = "mixed") -> Tensor:
        """``state`` ``[..., state_dim]`` and its one-hot ``[..., K]`` → ``[members, ..., out]``
        (the layers are shared, so every layout is computed alike)."""
        lead = state.shape[:-1]
        h = state.reshape(1, -1, state.shape[-1]).expand(self.members, -1, -1)
        for index, layer in enumerate(self.layers):
            h = layer(h, task_onehot, layout, 1)
            if index < len(self.gates):
                h = torch.relu(h) * 2 * torch.sigmoid(self.gates[index](task_onehot))
        return h.view(self.members, *lead, h.shape[-1])

    def shared_layers(self) -> dict[str, nn.Module]:
        return {f"layer{index}": layer for index, layer in enumerate(self.layers)}
